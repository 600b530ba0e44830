"""Improve step i after Grow g: fine-tune on the Grow rows that clear tau_i, mixed with data.train."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from rest.artifacts.manifests import (
    existing,
)
from rest.artifacts.run import Run
from rest.config import (
    RunConfig,
)
from rest.data.splits import data_split
from rest.errors import RestError
from rest.grow import engines
from rest.improve.objectives import IMPROVE_LOSSES
from rest.models import resident
from rest.seeds import derive_seed
from rest.stages.common import assess, dropout_seed, fit, publish_policy, train_stats
from rest.stages.keys import IMPROVE_KEYS, config_slice
from rest.training import distributed

log = logging.getLogger("rest")

# ---------------------------------------------------------------------------------------------------------------
# Improve


def improve(run_dir: Path, g: int, i: int) -> str:
    """Improve step i after Grow g: fine-tune on grow-g rows with reward >= tau_i, mixed with data.train."""
    run = Run.open(run_dir)
    cfg = run.config
    ic = cfg.improve
    if not 1 <= i <= len(ic.thresholds):
        raise RestError(f"improve.thresholds has {len(ic.thresholds)} entries; there is no Improve step {i}")
    tau = ic.thresholds[i - 1]
    name = f"improve-{g}-{i}"
    init, grow_name = run.improve_init(g, i), f"grow-{g}"
    # verified: a damaged input is refused here
    parents = [run.artifact_id(init), run.artifact_id(grow_name)]
    cfg_slice = config_slice(cfg, *IMPROVE_KEYS)
    cfg_slice["improve"]["tau"] = tau
    if existing(run.dir(name), cfg_slice, parents):
        log.info(f"{name}: published, skipping")
        return name
    engines.suspend()  # the Grow engine is not needed while training (here or in the ranks launched): asleep or gone
    if ic.processes > 1 and not distributed.launched():
        distributed.launch("improve", run_dir, g, i, processes=ic.processes, key="improve.processes")
        run.verified(name)
        return name
    grow_summary = run.verified(grow_name)["stats"]
    train_df = data_split(cfg.data, "train")
    rng = np.random.default_rng(derive_seed(cfg.seed, "improve", g, i))
    loss = IMPROVE_LOSSES[ic.loss]
    objective = loss.objective(ic)
    learnt = loss.data.build(run, grow_name, grow_summary, tau, ic, train_df, rng)
    batches, selection = learnt.batches, learnt.selection
    if learnt.warning:
        log.warning(f"{name}: {learnt.warning}")
    device = distributed.rank_device(cfg.device)
    policy = resident.take(run.dir(init), device=device)  # the policy just published stays in memory
    reference = None
    if objective.needs_reference:
        # KL prior: policy-0; a preference loss: the policy that sampled the Grow step, or policy-0
        ref_name = run.grow_policy(g) if loss.reference(ic) == "grower" else "policy-0"
        run.verified(ref_name)
        # The reference is the start with LoRA: the policy with its adapter switched off, no second copy.
        reference = policy if ic.lora and init == ref_name else resident.get(run.dir(ref_name), device=device)
    stats = fit(policy, batches, ic, cfg, dropout_seed(cfg.seed, "improve", g, i), name, objective, reference)
    if distributed.world()[0] != 0:
        return name  # rank 0 validates and publishes
    if validated(cfg, g):
        valid, outputs, monitors = assess(run, name, policy, previous=run.improve_previous(g, i))
    else:
        valid, outputs, monitors = None, None, None
    metrics = {"valid": valid, "improve": selection, "train": train_stats(stats), "monitors": monitors}
    publish_policy(
        run, name, policy, outputs, metrics, parents, cfg_slice, {"init": init, "grow": grow_name, "timing": stats}
    )
    checked = (
        f"valid exact match {valid['exact_match']:.1f}, chrF {valid['chrf']:.1f}"
        if valid
        else f"not validated (eval.every={cfg.eval.every})"
    )
    log.info(f"{name}: tau={tau} learnt from {loss.data.summary(selection)}, {checked}")
    return name


def validated(cfg: RunConfig, g: int) -> bool:
    """Whether the Improve policies of Grow step g are validated: every eval.every-th step, and the last."""
    return g % cfg.eval.every == 0 or g >= cfg.grow.steps
