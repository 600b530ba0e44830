"""Loading a config: YAML, dotted overrides, a deployment's typed overrides, and errors that name the key.

    cfg = load_config("configs/numbers.yaml", ["grow.num_samples=4", "improve.thresholds=[0.9, 1.0]"])

Unknown keys are errors with a "did you mean" (a typo in an experiment config must not silently run the default);
an error names the file, or the override that set the key.
"""

from __future__ import annotations

import copy
import difflib
from pathlib import Path
from typing import Annotated, Any, Optional

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    create_model,
)

from rest.config.schema import RunConfig
from rest.errors import RestError

# ---------------------------------------------------------------------------------------------------------------
# Overrides as a typed model: what a Prefect deployment takes as a parameter


def _partial(model: type[BaseModel], name: str) -> type[BaseModel]:
    """`model` with every field optional (default None) and its constraints kept (ge, le, Literal, ...).

    Prefect turns it into the JSON schema of a deployment's parameters: the UI shows a form with every key's
    description, and the server rejects a value the schema rules out (`grow.num_samples: 0`) before a flow run
    exists. Rules the schema cannot express (thresholds rising) are checked when the flow starts, before any task.
    """
    fields: dict[str, Any] = {}
    for key, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            ann = _partial(ann, ann.__name__.replace("Config", "") + "Overrides")
        elif field.metadata:
            ann = Annotated[(ann, *field.metadata)]
        # a runtime type: pydantic builds the model from it (what a static checker cannot read as a type form)
        fields[key] = (Optional[ann], Field(None, description=field.description))  # noqa: UP045  # ty: ignore[invalid-type-form]
    doc = f"Overrides of {model.__name__}: the keys set here replace the config file's."
    return create_model(name, __config__=ConfigDict(extra="forbid"), __doc__=doc, **fields)


ConfigOverrides = _partial(RunConfig, "ConfigOverrides")


def overrides_dict(overrides: BaseModel | dict | None) -> dict[str, Any]:
    """The keys a ConfigOverrides sets, as a nested dict (an explicit null stays: `data.pool: null`)."""
    if overrides is None:
        return {}
    if isinstance(overrides, BaseModel):
        return overrides.model_dump(mode="json", exclude_unset=True)
    return ConfigOverrides.model_validate(overrides).model_dump(mode="json", exclude_unset=True)


def _merge(base: dict[str, Any], updates: dict[str, Any]) -> dict[str, Any]:
    for key, value in updates.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict) and key != "components":
            _merge(base[key], value)
        else:
            base[key] = value
    return base


# ---------------------------------------------------------------------------------------------------------------
# Loading


def _known_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    keys = []
    for name, field in model.model_fields.items():
        keys.append(prefix + name)
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            keys.extend(_known_keys(ann, prefix + name + "."))
    return keys


def _check_keys(
    raw: dict[str, Any],
    model: type[BaseModel],
    where: str,
    prefix: str = "",
    root: type[BaseModel] | None = None,
    origins: dict[str, str] | None = None,
) -> None:
    """Unknown keys are errors with a "did you mean": pydantic's own message would not suggest one."""
    root = root or model
    origins = origins or {}
    for key, value in raw.items():
        if key not in model.model_fields:
            dotted = prefix + key
            where = _origin(dotted, origins, where)
            close = difflib.get_close_matches(dotted, _known_keys(root), n=1, cutoff=0.6)
            hint = (
                f"; did you mean `{close[0]}`?"
                if close
                else f"; known keys under `{prefix or '.'}`: " + ", ".join(model.model_fields)
            )
            raise RestError(f"{where}: unknown config key `{dotted}`{hint}")
        ann = model.model_fields[key].annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            if value is None:
                continue
            if not isinstance(value, dict):
                raise RestError(
                    f"{_origin(prefix + key, origins, where)}: config key `{prefix + key}` must be a mapping, got "
                    f"{value!r}"
                )
            _check_keys(value, ann, where, prefix + key + ".", root, origins)


def apply_overrides(raw: dict[str, Any], overrides: list[str], origins: dict[str, str] | None = None) -> dict[str, Any]:
    """Apply `key.sub=value` overrides; values are parsed as YAML (`3`, `0.5`, `[0.9, 1.0]`, `null`).

    `origins`, when given, gets `dotted key -> "override `key=value`"` for every key set here, so an error about
    that key names the override rather than the config file.
    """
    for item in overrides:
        if "=" not in item:
            raise RestError(f"override {item!r} must look like key.sub=value, e.g. grow.num_samples=4")
        dotted, _, text = item.partition("=")
        parts = dotted.strip().split(".")
        node = raw
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise RestError(f"override {item!r}: `{part}` is not a section")
            node = child
        try:
            node[parts[-1]] = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError as exc:
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise RestError(
                f"override `{item}`: the value `{text}` is not valid YAML ({problem}). Write a YAML value: a list "
                f"as improve.thresholds=[0.9,1.0], text with YAML quotes inside the shell's: "
                f'\'{dotted}="{text}"\' (a YAML string may hold any character but an unescaped ")'
            ) from None
        if origins is not None:
            origins[dotted.strip()] = f"override `{item}`"
    return raw


# Options removed from the run config (docs/results.md, "Options removed"), with the value that meant "off". A run's
# config.yaml lists every option, so those of runs made before are read without them while they hold that value.
REMOVED: dict[str, Any] = {
    "grow.hard_samples": 0,
    "improve.accumulate": False,
    "eval.correct_at": 1.0,
    "tracking.sample_rows": 64,
}


def _without_removed(raw: dict[str, Any], where: str, origins: dict[str, str]) -> dict[str, Any]:
    """`raw` without the REMOVED options that hold their "off" value; a RestError for one set to anything else."""
    raw = copy.deepcopy(raw)
    for dotted, off in REMOVED.items():
        *parents, leaf = dotted.split(".")
        node = raw
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, dict) or leaf not in node:
            continue
        if node[leaf] != off:
            raise RestError(
                f"{_origin(dotted, origins, where)}: `{dotted}` was removed (it beat no recipe it was studied in: "
                "docs/results.md, Options removed); drop it from the config"
            )
        del node[leaf]
    return raw


def _origin(key: str, origins: dict[str, str], where: str) -> str:
    """Who set config key `key` (dotted): the override that set it or a section above it, else `where`."""
    parts = key.split(".")
    for n in range(len(parts), 0, -1):
        hit = origins.get(".".join(parts[:n]))
        if hit:
            return hit
    return where


def config_from_dict(
    raw: dict[str, Any],
    where: str = "config",
    model: type[BaseModel] | None = None,
    origins: dict[str, str] | None = None,
) -> Any:
    """Validate `raw` as a `model` (RunConfig by default). Errors name the config key and `where` it came from:
    the file, or the override that set the key (`origins`, from apply_overrides)."""
    model = model or RunConfig
    origins = origins or {}
    if model is RunConfig:
        raw = _without_removed(raw, where, origins)
    _check_keys(raw, model, where, origins=origins)
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = [str(p) for p in err["loc"]]
        # a key inside a mapping value (reward.components.chrF) is named by the field that holds it
        key = ".".join(loc) or "(top level)"
        msg = err["msg"].removeprefix("Value error, ")
        raise RestError(f"{_origin(key, origins, where)}: config key `{key}`: {msg}") from None


def load_config(
    path: str | Path | None,
    overrides: list[str] | None = None,
    updates: BaseModel | dict | None = None,
    model: type[BaseModel] | None = None,
) -> Any:
    """Read a YAML config (or the defaults when `path` is None), apply dotted overrides, then `updates`
    (a ConfigOverrides or the same nested dict: what a deployment passes). `model`: RunConfig (default) or
    RewardModelConfig."""
    raw: dict[str, Any] = {}
    where = "defaults"
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise RestError(f"config file {path} does not exist; the shipped ones are in configs/")
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise RestError(f"{path}: not valid YAML: {exc}") from None
        if not isinstance(raw, dict):
            raise RestError(f"{path}: a config is a YAML mapping of sections (data:, model:, ...)")
        where = str(path)
    origins: dict[str, str] = {}
    raw = _merge(apply_overrides(raw, list(overrides or []), origins), overrides_dict(updates))
    return config_from_dict(raw, where, model, origins)


def dump_config(cfg: BaseModel) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
