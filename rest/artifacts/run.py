"""A run directory as an object: its config (read once), its published artifacts and how they relate.

    run = Run.open("runs/numbers")          # an existing run (RestError if it is not one)
    run = Run.create("runs/numbers", cfg)   # start one, or reopen it with the same config
    run.config.grow.num_samples; run.policies(); run.grow_policy(2); run.best_policy; run.metrics("policy-0")

Everything that reads an artifact goes through `verified` (sha256 of every file and of the manifest, once per
process): a damaged artifact is refused with a message naming it and how to redo it, never used. No torch here:
the report, tracking and `rest inspect` use it without loading a model.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Set as AbstractSet
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml

from rest.artifacts import manifests, run_record
from rest.artifacts.manifests import CONFIG_FILE, MANIFEST
from rest.artifacts.run_record import RUN_RECORD
from rest.config import RunConfig, config_from_dict, dump_config, unkeyed_keys
from rest.errors import RestError

METRICS_FILE = "metrics.json"  # in every policy artifact
VALID_OUTPUTS = "valid_outputs.parquet"  # in every policy artifact: its greedy outputs on data.valid

# Config keys whose change does not touch any finished artifact: a run may be extended or resumed with them changed
# (how the work is spread, where it runs and where it is tracked do not change what it makes).
# The config marks them (IN_NO_KEY in rest/config/base.py).
EXTENDABLE = tuple(unkeyed_keys(RunConfig))

OPENED: dict[tuple, Run] = {}
log = logging.getLogger("rest")


def check_run_path(path: Path) -> None:
    """A run directory path must not name a file (it is created if missing)."""
    if path.exists() and not path.is_dir():
        raise RestError(
            f"--run {path}: is a file, not a run directory; give a directory path (it is created if missing)"
        )


def _step_key(name: str) -> list[int]:
    return [int(x) for x in name.split("-")[1:]]


# A table longer than this is summarised (a run of 50 SuperHF iterations has 101 artifacts): see `shown`.
SUMMARY_ROWS = 12


def shown(n: int, keep: AbstractSet[int] = frozenset(), limit: int = SUMMARY_ROWS) -> list[int]:
    """Which of n rows a summary shows: all of them up to `limit`; else the first two, the last two, `keep` (the
    best, a damaged one) and evenly spaced ones between, about `limit` in all.

    >>> shown(5), shown(51, {30}, limit=8)
    ([0, 1, 2, 3, 4], [0, 1, 13, 25, 30, 37, 49, 50])
    """
    if n <= limit:
        return list(range(n))
    picked = {0, 1, n - 2, n - 1, *keep}
    inner = max(0, limit - len(picked))
    picked |= {round(1 + (n - 3) * (k + 1) / (inner + 1)) for k in range(inner)}
    return sorted(picked)


class Run:
    def __init__(self, path: Path, config: RunConfig):
        self.path = Path(path)
        self.config = config

    # -----------------------------------------------------------------------------------------------------------
    # Opening and starting

    @classmethod
    def open(cls, path: str | Path) -> Run:
        """The run at `path`; its config.yaml is read once per process (again only if it changes)."""
        path = Path(path)
        file = path / CONFIG_FILE
        check_run_path(path)
        if not file.is_file():
            raise RestError(
                f"{path} is not a run directory (no {CONFIG_FILE}); start it with `rest run --config FILE --run {path}`"
            )
        st = file.stat()
        key = (str(path.resolve()), st.st_mtime_ns, st.st_size)
        if key not in OPENED:
            OPENED[key] = cls(path, config_from_dict(yaml.safe_load(file.read_text()) or {}, str(file)))
        return OPENED[key]

    @classmethod
    def create(cls, path: str | Path, cfg: RunConfig) -> Run:
        """Start a run directory with `cfg`, or reopen it. A directory whose published artifacts were made with
        another config refuses it (only EXTENDABLE keys may change); one with nothing published yet takes the new
        config (a first attempt that failed on bad input leaves nothing that depends on its config)."""
        path = Path(path)
        check_run_path(path)
        if (path / CONFIG_FILE).is_file():
            run = cls.open(path)
            changed = [
                c
                for c in manifests.diff_config(run.config.model_dump(mode="json"), cfg.model_dump(mode="json"))
                if not c.split(":")[0].startswith(EXTENDABLE)
            ]
            if changed and run.published_names():
                raise RestError(
                    f"{path} was started with another config ({'; '.join(changed[:3])}). "
                    "Use a new --run directory for a new experiment."
                )
        path.mkdir(parents=True, exist_ok=True)
        if (path / RUN_RECORD).is_file() and run_record.run_record_problem(path / RUN_RECORD):
            problem = run_record.run_record_problem(path / RUN_RECORD)
            record = run_record.rebuild_run(path)
            log.warning(
                f"{path / RUN_RECORD} was {problem}: rebuilt from the {len(record['artifacts'])} published "
                "manifests (the best policy and test metrics are written again at the end of the run)"
            )
        if not (path / RUN_RECORD).is_file():
            manifests.write_json_atomic(
                path / RUN_RECORD,
                {
                    "name": path.name,
                    "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    "config": CONFIG_FILE,
                    "artifacts": [],
                },
            )
        manifests.write_atomic(path / CONFIG_FILE, dump_config(cfg).encode())
        return cls.open(path)

    # -----------------------------------------------------------------------------------------------------------
    # Artifacts

    def dir(self, name: str) -> Path:
        return self.path / name

    def manifest(self, name: str) -> dict[str, Any] | None:
        """The manifest as written, unverified (listing what exists); readers of its content use `verified`."""
        return manifests.read_manifest(self.path / name)

    def verified(self, name: str) -> dict[str, Any]:
        """The manifest of published artifact `name` after every checksum matched, or a RestError."""
        return manifests.verified(
            self.path / name,
            f"`rest run --run {self.path}` redoes it (or delete it and the artifacts made after it, and rerun)",
        )

    def check_published(self) -> None:
        """Verify every published artifact (a RestError names the first damaged one): what `rest grow` and
        `rest improve` do before they start, since they read artifacts of every earlier step."""
        for name in self.published_names():
            self.verified(name)

    def artifact_id(self, name: str) -> str:
        return self.verified(name)["id"]

    def published(self, prefix: str) -> list[str]:
        """Artifact directories named `prefix*` that have a manifest, in step order (grow-2 before grow-10)."""
        return sorted((p.name for p in self.path.glob(f"{prefix}*") if (p / MANIFEST).is_file()), key=_step_key)

    def published_names(self) -> list[str]:
        return self.policies() + self.published("grow-")

    def policies(self) -> list[str]:
        """Published policies in the order they were made."""
        return (["policy-0"] if self.manifest("policy-0") else []) + self.published("improve-")

    def assessed_policies(self) -> list[str]:
        """Published policies with validation metrics (eval.every leaves some without), in the order they were made."""
        return [n for n in self.policies() if self.metrics(n)["valid"] is not None]

    def grow_steps(self) -> list[int]:
        return [int(n.split("-")[1]) for n in self.published("grow-")]

    def next_grow_step(self) -> int:
        return len(self.grow_steps()) + 1

    def latest_grow_step(self) -> int:
        steps = self.grow_steps()
        if not steps:
            raise RestError(f"{self.path} has no published Grow step; run `rest grow --run {self.path}` first")
        return steps[-1]

    def grow_policy(self, g: int) -> str:
        """The policy Grow step g samples from: policy-0, then the last Improve policy of the previous Grow (ReST)."""
        if g == 1:
            return "policy-0"
        name = f"improve-{g - 1}-{len(self.config.improve.thresholds)}"
        if self.manifest(name) is None:
            raise RestError(
                f"Grow step {g} samples from {name}, which is not published: run `rest improve --run {self.path}` first"
            )
        return name

    def improve_previous(self, g: int, i: int) -> str:
        """The policy made just before Improve step (g, i): what it is compared with (drift, alarm)."""
        return self.grow_policy(g) if i == 1 else f"improve-{g}-{i - 1}"

    def improve_init(self, g: int, i: int) -> str:
        """The policy Improve step (g, i) fine-tunes: the previous one (ReST) or policy-0 (improve.init=policy-0)."""
        return "policy-0" if self.config.improve.init == "policy-0" else self.improve_previous(g, i)

    def metrics(self, name: str) -> dict[str, Any]:
        """metrics.json of a published policy (verified)."""
        self.verified(name)
        return json.loads((self.path / name / METRICS_FILE).read_text())

    # -----------------------------------------------------------------------------------------------------------
    # run.json

    @property
    def record(self) -> dict[str, Any]:
        return run_record.read_run(self.path)

    @property
    def best_policy(self) -> str | None:
        return self.record.get("best_policy")

    def update_record(self, **fields: Any) -> None:
        run_record.update_run(self.path, **fields)

    @cached_property
    def name(self) -> str:
        return self.path.resolve().name
