"""A policy step's phases, which every stage that makes a policy shares: fit, assess, publish (and the run's
start, the validation rows, the dropout seed of a step)."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from rest.artifacts import manifests, run_record
from rest.artifacts.lock import run_lock
from rest.artifacts.manifests import (
    staging,
    write_json_atomic,
)
from rest.artifacts.run import METRICS_FILE, VALID_OUTPUTS, Run
from rest.config import PolicyOptimFields, RunConfig
from rest.data.splits import data_split, row_columns
from rest.evaluation.monitors import policy_monitors
from rest.evaluation.names import input_use_line
from rest.evaluation.policy import evaluate
from rest.grow import engines
from rest.models import resident
from rest.models.policy import Policy
from rest.seeds import derive_seed
from rest.stages.preflight import check_run_inputs
from rest.training import distributed
from rest.training.batches import Batch
from rest.training.loop import train
from rest.training.objectives import Objective, target_nll

log = logging.getLogger("rest")


def progress_bar(total: int, desc: str) -> tqdm:
    # Bars on a terminal; in logs (CI, Prefect workers) one line per stage is enough.
    return tqdm(total=total, desc=desc, leave=False, disable=not sys.stderr.isatty(), dynamic_ncols=True)


def start_run(path: Path, cfg: RunConfig) -> Run:
    """Check every input the config names (nothing is written on bad input, not even the run directory), then
    start or reopen the run under its lock. What `rest run|grow|improve` and the `rest` flow call."""
    check_run_inputs(cfg)
    with run_lock(path):
        return Run.create(path, cfg)


def valid_split(cfg: RunConfig) -> pd.DataFrame:
    """The rows policies are validated on: data.valid, or eval.valid_rows of them drawn with the run's seed (the
    same rows for every policy of the run, in the file's order)."""
    df = data_split(cfg.data, "valid")
    n = cfg.eval.valid_rows
    if n is None or n >= len(df):
        return df
    rows = np.random.default_rng(derive_seed(cfg.seed, "valid-rows")).choice(len(df), size=n, replace=False)
    return df.iloc[np.sort(rows)].reset_index(drop=True)


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
            policy,
            batches,
            optim,
            cfg.model,
            seed=seed,
            objective=objective,
            reference=reference,
            on_progress=progress,
            logits_mb=cfg.logits_mb,
        )


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
    nlls = (
        target_nll(policy, sources, references, cfg.model, logits_mb=cfg.logits_mb),
        target_nll(policy, shuffled, references, cfg.model, logits_mb=cfg.logits_mb),
    )
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
    outputs: pd.DataFrame | None,
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
    manifest = run_record.publish(art, manifests.POLICY, parents, cfg_slice, extra)
    if keep:
        resident.keep(art, policy, manifest["id"])  # the next stage of this process samples or trains it: no reload
    return manifest


def train_stats(stats: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in stats.items() if k in ("steps", "examples", "loss_first") or k.endswith("_last")}


def dropout_seed(*parts: Any) -> int:
    """The seed of a training step's dropout masks; each rank of a multi-process step draws its own."""
    rank, world = distributed.world()
    return derive_seed(*parts, "dropout") if world == 1 else derive_seed(*parts, "dropout", rank)
