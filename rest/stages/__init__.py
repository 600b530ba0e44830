"""The pipeline's stages as plain functions of a run directory: what the Prefect flows (rest/flows/) call.

    run = start_run(path, cfg)                            # checks every input, then writes config.yaml, run.json
    make_policy0(path)                                    # BC on data.train -> policy-0/
    for g in 1..G:
        for s in plan_grow(path, g): grow_shard(path, g, s)   # any order, any process -> grow-g/shard-*.parquet
        finish_grow(path, g)                              # -> grow-g/_manifest.json
        for i in 1..I: improve(path, g, i)                # -> improve-g-i/
    make_control(path)                                    # eval.control: BC of the same total steps -> control/
    finish_run(path)                                      # best policy by validation reward; test metrics

One file per stage (policy0, grow, improve, control, finish), what they share (common: the phases; keys: an
artifact's key; early_stopping: validation inside training), the checks before a run (preflight) and one rank of a
multi-process step (rank). Every stage takes and returns names and paths, opens the run
(rest/artifacts/run.py), and returns at once when its artifact is already published for the same config and parents
(idempotence from manifests, not from Prefect). A policy step has three phases that can run apart: `fit`
(training), `assess` (validation metrics and monitors) and `publish_policy` (the artifact, written whole, manifest
last).
"""

from rest.seeds import derive_seed
from rest.stages.common import (
    assess,
    dropout_seed,
    fit,
    progress_bar,
    publish_policy,
    start_run,
    train_stats,
)
from rest.stages.control import make_control
from rest.stages.finish import finish_run
from rest.stages.grow import (
    METEOR_SOURCES,
    GrowPlan,
    finish_grow,
    grow_plan,
    grow_shard,
    grow_stats,
    plan_grow,
)
from rest.stages.improve import improve, validated
from rest.stages.keys import BC_KEYS, GROW_KEYS, IMPROVE_KEYS, POLICY_KEYS, config_slice, section_keys
from rest.stages.policy0 import make_policy0

__all__ = [
    "progress_bar",
    "derive_seed",
    "start_run",
    "config_slice",
    "section_keys",
    "POLICY_KEYS",
    "GROW_KEYS",
    "BC_KEYS",
    "IMPROVE_KEYS",
    "make_control",
    "fit",
    "assess",
    "publish_policy",
    "train_stats",
    "dropout_seed",
    "make_policy0",
    "GrowPlan",
    "grow_plan",
    "plan_grow",
    "grow_shard",
    "METEOR_SOURCES",
    "grow_stats",
    "finish_grow",
    "improve",
    "validated",
    "finish_run",
]
