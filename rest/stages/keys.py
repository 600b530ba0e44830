"""An artifact's key: the part of the config it depends on (its config slice), derived from the config models.

    config_slice(cfg, *GROW_KEYS)    # what a Grow step's manifest records and a resume checks

A section's fields are in its artifacts' keys by themselves (`section_keys`): a field added to a config model is in
the lineage without anyone remembering to add it. Two marks say otherwise: IN_NO_KEY (changes nothing an artifact
holds) and IN_KEY_WHEN_SET, the one lineage rule for a field added later: it stays out of the key while it holds its
default, so the artifacts of runs made before it existed keep their ids.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from rest.config import (
    BCConfig,
    GrowConfig,
    ImproveConfig,
    RewardConfig,
    RunConfig,
    in_key,
    in_key_when_set,
)


def _model_at(parts: list[str]) -> Any:
    """The config model of the section at dotted `parts` under RunConfig (None past a dict or a plain value)."""
    model: Any = RunConfig
    for part in parts:
        field = model.model_fields.get(part) if isinstance(model, type) and issubclass(model, BaseModel) else None
        if field is None:
            return None
        model = field.annotation
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def _unset(model: Any, section: dict[str, Any], name: str) -> bool:
    """Whether field `name` of a section (its model and dumped values) is IN_KEY_WHEN_SET and unset: it, or the
    sibling that decides for it, holds its default."""
    field = model.model_fields.get(name) if model is not None else None
    switch = None if field is None else in_key_when_set(field)
    if switch is None:
        return False
    decider = model.model_fields[switch or name]
    return section.get(switch or name, decider.default) == decider.default


def _without_unset(value: Any, model: Any) -> Any:
    """`value` (a dumped section) without its unset IN_KEY_WHEN_SET fields, at any depth."""
    if not isinstance(value, dict) or model is None:
        return value
    out = {}
    for name, v in value.items():
        if _unset(model, value, name):
            continue
        field = model.model_fields.get(name)
        sub = field.annotation if field is not None else None
        out[name] = _without_unset(v, sub if isinstance(sub, type) and issubclass(sub, BaseModel) else None)
    return out


def config_slice(cfg: RunConfig, *keys: str) -> dict[str, Any]:
    """The part of the config an artifact depends on, by dotted keys: what its manifest records and checks. A field
    marked IN_KEY_WHEN_SET is left out while it (or the field that decides for it) holds its default."""
    full = cfg.model_dump(mode="json")
    out: dict[str, Any] = {}
    for key in keys:
        parts = key.split(".")
        src, dst = full, out
        for part in parts[:-1]:
            src = src[part]
            dst = dst.setdefault(part, {})
        parent = _model_at(parts[:-1])
        if _unset(parent, src, parts[-1]):
            continue
        dst[parts[-1]] = _without_unset(src[parts[-1]], _model_at(parts))
    return out


def section_keys(section: str, model: type[BaseModel], leave_out: tuple[str, ...] = ()) -> list[str]:
    """`section.field` for every field of a config model but `leave_out` and those marked IN_NO_KEY: an artifact's
    lineage follows its config model, so a field added to the model is in the artifact's key without anyone
    remembering to add it."""
    return [
        f"{section}.{name}" for name, field in model.model_fields.items() if name not in leave_out and in_key(field)
    ]


# What every policy depends on besides its own training settings (validation metrics use data.valid and reward).
POLICY_KEYS = [
    "seed",
    "data.train",
    "data.valid",
    "data.columns",
    "model",
    *section_keys("reward", RewardConfig),
    "eval.max_new_tokens",
    "eval.valid_rows",
]
# Grow: fields marked IN_NO_KEY (workers, the engine's own settings, the number of steps) change no step's rows.
GROW_KEYS = [
    "seed",
    "data.grow_on",
    "data.train",
    "data.pool",
    "data.columns",
    "model.prompt_template",
    "model.chat_template",
    "model.system_prompt",
    "model.chat_template_kwargs",
    "model.max_source_tokens",
    *section_keys("grow", GrowConfig),
    *section_keys("reward", RewardConfig),
]
# How a training step is computed (micro-batches, processes: IN_NO_KEY) is in no artifact's key.
BC_KEYS = [*POLICY_KEYS, *section_keys("bc", BCConfig)]
# Improve: every improve.* key but the thresholds list (each step records its own tau).
IMPROVE_KEYS = [*POLICY_KEYS, *section_keys("improve", ImproveConfig, leave_out=("thresholds",))]
