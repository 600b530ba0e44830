"""policy-0: behaviour cloning on data.train, the start of every run."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from rest.artifacts.manifests import (
    existing,
)
from rest.artifacts.run import Run
from rest.config import RunConfig
from rest.data.batching import epoch_batches, text_lengths
from rest.data.conversations import turn_texts
from rest.data.splits import data_split
from rest.models.policy import Policy, build_policy, count_parameters
from rest.seeds import derive_seed
from rest.stages.common import assess, dropout_seed, fit, publish_policy, train_stats
from rest.stages.early_stopping import EarlyStopping
from rest.stages.keys import BC_KEYS, config_slice
from rest.training import distributed
from rest.training.batches import Batch
from rest.training.objectives import NLL

log = logging.getLogger("rest")

# ---------------------------------------------------------------------------------------------------------------
# policy-0


def bc_start(cfg: RunConfig, steps: int) -> tuple[Policy, list[Batch]]:
    """The policy BC starts from (built, or the pretrained one) and its `steps` batches of data.train (bc.*): what
    policy-0 and the BC control (stages/control.py) train, the same for both up to their number of steps."""
    train_df = data_split(cfg.data, "train")
    sources, targets = train_df["source"].tolist(), train_df["reference"].tolist()
    policy = build_policy(
        cfg.model, turn_texts(sources) + targets, seed=cfg.seed, device=distributed.rank_device(cfg.device)
    )
    rng = np.random.default_rng(derive_seed(cfg.seed, "bc"))
    batches = [
        Batch([sources[j] for j in idx], [targets[j] for j in idx])
        for idx in epoch_batches(
            len(train_df),
            cfg.bc.batch_size,
            steps,
            rng,
            text_lengths(sources, targets) if cfg.bc.group_by_length else None,
        )
    ]
    return policy, batches


def make_policy0(run_dir: Path) -> str:
    """policy-0 = BC(D): a fresh (or pretrained) model trained with token-level NLL on data.train."""
    run = Run.open(run_dir)
    cfg = run.config
    cfg_slice = config_slice(cfg, *BC_KEYS)
    if existing(run.dir("policy-0"), cfg_slice, []):
        log.info("policy-0: published, skipping")
        return "policy-0"
    if cfg.bc.processes > 1 and not distributed.launched():
        distributed.launch("policy-0", run_dir, processes=cfg.bc.processes, key="bc.processes")
        run.verified("policy-0")
        return "policy-0"
    policy, batches = bc_start(cfg, cfg.bc.steps)
    stop = EarlyStopping(policy, cfg, cfg.bc.valid_every, cfg.bc.patience) if cfg.bc.valid_every else None
    stats = fit(policy, batches, cfg.bc, cfg, dropout_seed(cfg.seed, "bc"), "policy-0", NLL(), None, stop)
    if stop is not None:
        stop.restore_best(stats["steps"])
    if distributed.world()[0] != 0:
        return "policy-0"  # rank 0 validates and publishes
    valid, outputs, monitors = assess(run, "policy-0", policy, previous=None)
    metrics = {"valid": valid, "train": train_stats(stats), "monitors": monitors}
    if stop is not None:  # BC's early stopping: its validations and the checkpoint it kept
        metrics["early_stopping"] = {"curve": stop.curve, "best_steps": stop.best.get("steps")}
    publish_policy(
        run,
        "policy-0",
        policy,
        outputs,
        metrics,
        [],
        cfg_slice,
        {"parameters": count_parameters(policy.model), "timing": stats},
        keep=False,  # built, not loaded: its config and tokenizer save other bytes than a loaded one's (below)
    )
    log.info(
        f"policy-0: BC {stats['steps']} steps ({stats['examples_per_s']:.0f} ex/s), valid exact match "
        f"{valid['exact_match']:.1f}, chrF {valid['chrf']:.1f}"
    )
    return "policy-0"
