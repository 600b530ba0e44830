"""What every stage shares: seeds, config slices (an artifact's key), and a policy step's phases: fit, assess,
publish."""

from __future__ import annotations

import hashlib
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pydantic import BaseModel
from tqdm.auto import tqdm

from rest.artifacts import manifests
from rest.artifacts.manifests import (
    publish,
    run_lock,
    staging,
    write_json_atomic,
)
from rest.artifacts.run import METRICS_FILE, VALID_OUTPUTS, Run
from rest.config import (
    BCConfig,
    GrowConfig,
    ImproveConfig,
    PolicyOptimFields,
    RewardConfig,
    RunConfig,
    in_key,
)
from rest.data.splits import data_split, row_columns
from rest.evaluation.monitors import policy_monitors
from rest.evaluation.names import input_use_line
from rest.evaluation.policy import evaluate, target_nll
from rest.grow import engines
from rest.models import resident
from rest.models.policy import Policy
from rest.stages.preflight import check_run_inputs
from rest.training import distributed
from rest.training.batches import Batch
from rest.training.loop import train
from rest.training.objectives import Objective

log = logging.getLogger("rest")


def progress_bar(total: int, desc: str) -> tqdm:
    # Bars on a terminal; in logs (CI, Prefect workers) one line per stage is enough.
    return tqdm(total=total, desc=desc, leave=False, disable=not sys.stderr.isatty(), dynamic_ncols=True)


def derive_seed(*parts: Any) -> int:
    """A seed from (run seed, stage, step, shard): stable across processes and Python versions (unlike hash())."""
    return int.from_bytes(hashlib.sha256("/".join(map(str, parts)).encode()).digest()[:8], "little") % (2**63)


def start_run(path: Path, cfg: RunConfig) -> Run:
    """Check every input the config names (nothing is written on bad input, not even the run directory), then
    start or reopen the run under its lock. What `rest run|grow|improve` and the `rest` flow call."""
    check_run_inputs(cfg)
    with run_lock(path):
        return Run.create(path, cfg)


def config_slice(cfg: RunConfig, *keys: str) -> dict[str, Any]:
    """The part of the config an artifact depends on, by dotted keys: what its manifest records and checks."""
    full = cfg.model_dump(mode="json")
    out: dict[str, Any] = {}
    for key in keys:
        src, dst = full, out
        parts = key.split(".")
        for part in parts[:-1]:
            src = src[part]
            dst = dst.setdefault(part, {})
        dst[parts[-1]] = src[parts[-1]]
    return out


def policy_slice(cfg: RunConfig, *keys: str) -> dict[str, Any]:
    """config_slice of a policy artifact: with eval.valid_rows, BC's early stopping (bc.valid_every, bc.patience)
    and improve.accumulate only when they are set, so that the policies of runs made before the settings existed
    still match their manifests."""
    out = config_slice(cfg, *keys)
    if cfg.eval.valid_rows is not None:
        out["eval"]["valid_rows"] = cfg.eval.valid_rows
    if "bc" in out and cfg.bc.valid_every is None:
        out["bc"].pop("valid_every", None)
        out["bc"].pop("patience", None)
    if "improve" in out and not cfg.improve.accumulate:
        out["improve"].pop("accumulate", None)
    return out


def valid_split(cfg: RunConfig) -> pd.DataFrame:
    """The rows policies are validated on: data.valid, or eval.valid_rows of them drawn with the run's seed (the
    same rows for every policy of the run, in the file's order)."""
    df = data_split(cfg.data, "valid")
    n = cfg.eval.valid_rows
    if n is None or n >= len(df):
        return df
    rows = np.random.default_rng(derive_seed(cfg.seed, "valid-rows")).choice(len(df), size=n, replace=False)
    return df.iloc[np.sort(rows)].reset_index(drop=True)


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


# ---------------------------------------------------------------------------------------------------------------
# The phases of a policy step: fit, assess, publish


def fit(
    policy: Policy,
    batches: list[Batch],
    optim: PolicyOptimFields,
    cfg: RunConfig,
    seed: int,
    desc: str,
    objective: Objective | None = None,
    reference: Policy | None = None,
    on_step: Callable[[int, float], bool | None] | None = None,
) -> dict[str, Any]:
    """Train `policy` in place on `batches` (one optimiser step each). Returns the training stats. `on_step(step,
    loss)` is called after each step (early stopping and the BC control validate at some); True stops training."""
    with progress_bar(len(batches), desc) as bar:

        def progress(step: int, loss: float) -> bool | None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.3f}")
            return on_step(step, loss) if on_step is not None else None

        return train(
            policy, batches, optim, cfg.model, seed=seed, objective=objective, reference=reference, on_progress=progress
        )


def validate_in_training(policy: Policy, cfg: RunConfig, valid_df: pd.DataFrame) -> tuple[dict[str, Any], pd.DataFrame]:
    """Validation metrics and greedy outputs of a policy in the middle of its training (early stopping, the BC
    control's curve). Its random stream (dropout's) and its train mode go on as if nothing happened, so the
    weights are those of training without it."""
    import torch

    training = policy.model.training
    with torch.random.fork_rng(devices=[]):
        out = evaluate(engines.engine_on(policy, cfg), valid_df, cfg, derive_seed(cfg.seed, "eval", "valid"))
    policy.model.train(training)
    return out


class EarlyStopping:
    """bc.valid_every / bc.patience as fit's on_step: validates every `every` steps, keeps the best checkpoint by
    eval.select_by (earliest on ties), and stops after `patience` validations in a row without a better one."""

    def __init__(self, policy: Policy, cfg: RunConfig, every: int, patience: int):
        from rest.evaluation.policy import selection_score

        self.policy, self.cfg, self.every, self.patience = policy, cfg, every, patience
        self.valid_df, self.score = valid_split(cfg), selection_score
        self.best: dict[str, Any] = {}
        self.bad, self.curve = 0, []

    def __call__(self, step: int, loss: float) -> bool:
        if step % self.every:
            return False
        valid, _ = validate_in_training(self.policy, self.cfg, self.valid_df)
        score = self.score(valid, self.cfg)
        self.curve.append({"steps": step, "score": score, "exact_match": valid["exact_match"]})
        if not self.best or score > self.best["score"]:
            import copy

            self.best = {"score": score, "steps": step, "state": copy.deepcopy(self.policy.model.state_dict())}
            self.bad = 0
        else:
            self.bad += 1
        log.info(f"policy-0: step {step} validation {score:.4f} (best at {self.best['steps']})")
        return self.bad >= self.patience

    def restore_best(self, steps_taken: int) -> None:
        """Load the best checkpoint unless training ended there (or nothing was validated)."""
        if self.best and self.best["steps"] != steps_taken:
            self.policy.model.load_state_dict(self.best["state"])


def assess(
    run: Run, name: str, policy: Policy, previous: str | None
) -> tuple[dict[str, Any], pd.DataFrame, dict[str, Any]]:
    """Validation metrics, greedy outputs and monitors of a policy (in memory, not yet published).

    Monitors compare with policy-0's outputs (drift) and with `previous`, the policy made just before (alarm);
    policy-0 itself has no previous and is its own drift base.
    """
    cfg = run.config
    if (
        previous is not None and run.metrics(previous)["valid"] is None
    ):  # not validated (eval.every): the last one that was
        made = run.assessed_policies()
        previous = made[-1] if made else None
    valid_df = valid_split(cfg)
    valid, outputs = evaluate(engines.engine_on(policy, cfg), valid_df, cfg, derive_seed(cfg.seed, "eval", "valid"))
    base = outputs if previous is None else pd.read_parquet(run.dir("policy-0") / VALID_OUTPUTS)
    sources, references = valid_df["source"].tolist(), valid_df["reference"].tolist()
    shuffled = [
        sources[j] for j in np.random.default_rng(derive_seed(cfg.seed, "input-probe")).permutation(len(sources))
    ]
    nlls = (target_nll(policy, sources, references, cfg.model), target_nll(policy, shuffled, references, cfg.model))
    monitors = policy_monitors(
        outputs["output"].tolist(),
        base["output"].tolist(),
        sources,
        references,
        cfg.reward,
        valid,
        (previous, run.metrics(previous)["valid"]) if previous else None,
        seed=derive_seed(cfg.seed, "probes"),
        nlls=nlls,
        device=cfg.device,
        columns=row_columns(valid_df),
    )
    if monitors["input"]["ignores_input"]:
        log.warning("MONITOR: " + input_use_line(name, monitors["input"]))
    return valid, outputs, monitors


def publish_policy(
    run: Run,
    name: str,
    policy: Policy,
    outputs: pd.DataFrame,
    metrics: dict[str, Any],
    parents: list[str],
    cfg_slice: dict[str, Any],
    extra: dict[str, Any],
    keep: bool = True,
    files: dict[str, pd.DataFrame] | None = None,
) -> dict[str, Any]:
    """Write policy artifact `name`: the policy (save_pretrained), metrics.json and valid_outputs.parquet, in a
    hidden staging directory renamed into place whole; the manifest that makes it an artifact comes last.

    `keep`: hold the policy in memory for the next stage (models/resident.py). Only a policy that was itself loaded
    from an artifact (and trained) may be kept: a model built by BC from scratch or from a user's checkpoint saves
    a config.json and tokenizer_config.json of other bytes than the same policy loaded back (transformers moves
    generation settings out of the config on loading and records where a tokenizer came from), so an Improve step
    trained from it in memory would publish another id than one trained from the loaded policy-0, e.g. after a
    resume. policy-0 is loaded once by the first Grow step and kept from there."""
    art = run.dir(name)
    stage = staging(art)
    manifests.clear(art)  # a partial directory or staging copy left by a crash
    policy.save(stage)
    if outputs is not None:  # None: not validated (eval.every)
        outputs[["source_id", "source", "reference", "output", "reward"]].to_parquet(stage / VALID_OUTPUTS, index=False)
    for file, df in (files or {}).items():  # more tables of the artifact (the BC control's curve)
        df.to_parquet(stage / file, index=False)
    write_json_atomic(stage / METRICS_FILE, metrics)
    os.replace(stage, art)
    manifest = publish(art, manifests.POLICY, parents, cfg_slice, extra)
    if keep:
        resident.keep(art, policy, manifest["id"])  # the next stage of this process samples or trains it: no reload
    return manifest


def train_stats(stats: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in stats.items() if k in ("steps", "examples", "loss_first") or k.endswith("_last")}


def dropout_seed(*parts: Any) -> int:
    """The seed of a training step's dropout masks; each rank of a multi-process step draws its own."""
    rank, world = distributed.world()
    return derive_seed(*parts, "dropout") if world == 1 else derive_seed(*parts, "dropout", rank)
