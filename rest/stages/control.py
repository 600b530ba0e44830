"""The BC control (eval.control): behaviour cloning alone, for as many optimiser steps as the run's policies took
in all, on the same data, model, seed and bc.* settings, validated at each of the run's policies' step counts and
picked among those by eval.select_by, as ReST's best policy is. `RUN/control/` is an artifact like a policy's (its
weights, metrics.json with the curve, valid_outputs.parquet) plus curve.parquet: the validation outputs at every
step count, which rest/evaluation/control.py compares with the policy of the same step count row by row.

It is trained after the run's Improve steps, when their step counts are known, and is in no other artifact's
lineage: turning eval.control on or off changes no id of the run."""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import pandas as pd

from rest.artifacts import manifests
from rest.artifacts.manifests import read_manifest
from rest.artifacts.run import Run
from rest.evaluation.control import CONTROL, CURVE_FILE, control_marks
from rest.evaluation.policy import selection_score
from rest.models.policy import count_parameters
from rest.stages.common import dropout_seed, fit, publish_policy, train_stats, valid_split
from rest.stages.early_stopping import validate_in_training
from rest.stages.keys import BC_KEYS, config_slice
from rest.stages.policy0 import bc_start
from rest.training.objectives import NLL

log = logging.getLogger("rest")


def make_control(run_dir: Path) -> str | None:
    """Train and publish RUN/control/ when eval.control is on (None when it is off). A control made for other step
    counts (a run extended by more Grow steps) is made again."""
    run = Run.open(run_dir)
    cfg = run.config
    if not cfg.eval.control:
        return None
    marks = control_marks(run)
    if not marks:
        return None
    total = marks[-1]
    # all `total` steps, no early stopping: the control picks among its step counts by validation instead
    ccfg = cfg.model_copy(update={"bc": cfg.bc.model_copy(update={"steps": total, "valid_every": None})})
    cfg_slice = {**config_slice(ccfg, *BC_KEYS), "control": {"marks": marks}}
    art = run.dir(CONTROL)
    manifest = read_manifest(art)
    if manifest is not None and not manifest.get("_unreadable"):
        if not manifests.diff_config(manifest["config"], cfg_slice) and manifests.existing(art, cfg_slice, []):
            log.info("control: published, skipping")
            return CONTROL
        log.info(f"control: made for other step counts ({manifest['config'].get('control')}); training it again")
    manifests.clear(art)
    policy, batches = bc_start(ccfg, total)
    valid_df = valid_split(cfg)
    curve: list[dict] = []
    outputs: dict[int, pd.DataFrame] = {}
    best: dict = {}

    def at_mark(step: int, loss: float) -> None:
        if step not in marks:
            return
        valid, out = validate_in_training(policy, cfg, valid_df)
        curve.append({"steps": step, **valid})
        outputs[step] = out.assign(steps=step)
        if not best or selection_score(valid, cfg) > best["score"]:  # earliest on ties, as finish_run
            best.update(score=selection_score(valid, cfg), steps=step, valid=valid)
            best["state"] = None if step == total else copy.deepcopy(policy.model.state_dict())

    stats = fit(policy, batches, ccfg.bc, cfg, dropout_seed(cfg.seed, "bc"), "control", NLL(), None, at_mark)
    if not curve:  # no step at all (a pretrained model, bc.steps 0, no Improve step): the model as it is
        at_mark(total, 0.0)
    if best["state"] is not None:
        policy.model.load_state_dict(best["state"])
    curve_df = pd.concat([outputs[m] for m in sorted(outputs)], ignore_index=True)
    curve_df = curve_df[["steps", "source_id", "source", "reference", "output", "reward"]]
    metrics = {
        "valid": best["valid"],
        "train": train_stats(stats),
        "curve": curve,
        "selected_steps": best["steps"],
        "total_steps": total,
    }
    publish_policy(
        run,
        CONTROL,
        policy,
        outputs[best["steps"]],
        metrics,
        [],
        cfg_slice,
        {"parameters": count_parameters(policy.model), "timing": stats},
        keep=False,
        files={CURVE_FILE: curve_df},
    )
    log.info(
        f"control: BC {total} steps, validated at {marks}; the checkpoint at {best['steps']} steps by "
        f"{cfg.eval.select_by}: valid exact match {best['valid']['exact_match']:.1f}"
    )
    return CONTROL
