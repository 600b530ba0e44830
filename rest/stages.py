"""The pipeline's stages as plain functions of a run directory: what the Prefect tasks in flows/ call.

    run = start_run(path, cfg)                            # checks every input, then writes config.yaml, run.json
    make_policy0(path)                                    # BC on data.train -> policy-0/
    for g in 1..G:
        for s in plan_grow(path, g): grow_shard(path, g, s)   # any order, any process -> grow-g/shard-*.parquet
        finish_grow(path, g)                              # -> grow-g/_manifest.json
        for i in 1..I: improve(path, g, i)                # -> improve-g-i/
    finish_run(path)                                      # best policy by validation reward; test metrics

Every stage takes and returns names and paths, opens the run (rest/run.py), and returns at once when its artifact
is already published for the same config and parents (idempotence from manifests, not from Prefect). A policy step
has three phases that can run apart: `fit` (training), `assess` (validation metrics and monitors) and
`publish_policy` (the artifact, written whole, manifest last).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from rest import artifacts, distributed, engines
from rest.artifacts import existing, publish, run_lock, staging, write_json_atomic
from rest.config import HOW_TO_TRAIN, BCConfig, GrowConfig, ImproveConfig, PolicyOptimFields, RunConfig
from rest.data import grow_sources, load_split, superbatch
from rest.errors import RestError
from rest.evaluation import evaluate, target_nll
from rest.filtering import epoch_batches, mix_batches, preference_pairs, select, sparse_selection, text_lengths
from rest.models import Policy, build_policy, count_parameters, load_policy
from rest.monitors import input_use_line, meteor_within, policy_monitors
from rest.objectives import Batch, Objective, PairBatch, objective_for, token_weights
from rest.preflight import check_run_inputs
from rest.rewards import artifact_dependencies, needs_reference, reward_names, score_config, token_columns
from rest.run import METRICS_FILE, VALID_OUTPUTS, Run
from rest.shards import grow_columns, read_grow, shard_name, shard_paths, write_shard
from rest.training import train

log = logging.getLogger("rest")


def _progress(total: int, desc: str) -> tqdm:
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


def section_keys(section: str, model: type, leave_out: tuple[str, ...] = ()) -> list[str]:
    """`section.field` for every field of a config model but `leave_out`: an artifact's lineage follows its config
    model, so a field added to the model is in the artifact's key without anyone remembering to add it."""
    return [f"{section}.{name}" for name in model.model_fields if name not in leave_out]


# What every policy depends on besides its own training settings (validation metrics use data.valid and reward).
POLICY_KEYS = ["seed", "data.train", "data.valid", "model", "reward", "eval.max_new_tokens"]
# Grow: how the work is spread (workers), how vLLM runs and how many steps a run has do not change a step's rows.
GROW_KEYS = ["seed", "data.grow_on", "data.train", "data.pool", "model.prompt_template", "model.max_source_tokens",
             *section_keys("grow", GrowConfig, leave_out=("steps", "workers", "vllm")), "reward"]
# How a training step is computed (config.HOW_TO_TRAIN) is in no artifact's key.
BC_KEYS = [*POLICY_KEYS, *section_keys("bc", BCConfig, leave_out=HOW_TO_TRAIN)]
# Improve: every improve.* key but the thresholds list (each step records its own tau).
IMPROVE_KEYS = [*POLICY_KEYS, *section_keys("improve", ImproveConfig, leave_out=("thresholds", *HOW_TO_TRAIN))]


# ---------------------------------------------------------------------------------------------------------------
# The phases of a policy step: fit, assess, publish


def fit(
    policy: Policy, batches: list[Batch], optim: PolicyOptimFields, cfg: RunConfig, seed: int, desc: str,
    objective: Objective | None = None, reference: Policy | None = None,
) -> dict[str, Any]:
    """Train `policy` in place on `batches` (one optimiser step each). Returns the training stats."""
    with _progress(len(batches), desc) as bar:
        def progress(step: int, loss: float) -> None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.3f}")

        return train(policy, batches, optim, cfg.model, seed=seed, objective=objective, reference=reference, on_progress=progress)


def assess(run: Run, name: str, policy: Policy, previous: str | None) -> tuple[dict[str, Any], pd.DataFrame, dict[str, Any]]:
    """Validation metrics, greedy outputs and monitors of a policy (in memory, not yet published).

    Monitors compare with policy-0's outputs (drift) and with `previous`, the policy made just before (alarm);
    policy-0 itself has no previous and is its own drift base.
    """
    cfg = run.config
    if previous is not None and run.metrics(previous)["valid"] is None:  # not validated (eval.every): the last one that was
        made = run.assessed_policies()
        previous = made[-1] if made else None
    valid_df = load_split(cfg.data.valid, "data.valid")
    valid, outputs = evaluate(engines.engine_on(policy, cfg), valid_df, cfg)
    base = outputs if previous is None else pd.read_parquet(run.dir("policy-0") / VALID_OUTPUTS)
    sources, references = valid_df["source"].tolist(), valid_df["reference"].tolist()
    shuffled = [sources[j] for j in np.random.default_rng(derive_seed(cfg.seed, "input-probe")).permutation(len(sources))]
    nlls = (target_nll(policy, sources, references, cfg.model), target_nll(policy, shuffled, references, cfg.model))
    monitors = policy_monitors(
        outputs["output"].tolist(), base["output"].tolist(), sources, references,
        cfg.reward, valid, (previous, run.metrics(previous)["valid"]) if previous else None,
        seed=derive_seed(cfg.seed, "probes"), nlls=nlls,
    )
    if monitors["input"]["ignores_input"]:
        log.warning("MONITOR: " + input_use_line(name, monitors["input"]))
    return valid, outputs, monitors


def publish_policy(
    run: Run, name: str, policy: Policy, outputs: pd.DataFrame, metrics: dict[str, Any], parents: list[str],
    cfg_slice: dict[str, Any], extra: dict[str, Any],
) -> dict[str, Any]:
    """Write policy artifact `name`: the policy (save_pretrained), metrics.json and valid_outputs.parquet, in a
    hidden staging directory renamed into place whole; the manifest that makes it an artifact comes last."""
    art = run.dir(name)
    stage = staging(art)
    artifacts.clear(art)  # a partial directory or staging copy left by a crash
    policy.save(stage)
    if outputs is not None:  # None: not validated (eval.every)
        outputs[["source_id", "source", "reference", "output", "reward"]].to_parquet(stage / VALID_OUTPUTS, index=False)
    write_json_atomic(stage / METRICS_FILE, metrics)
    os.replace(stage, art)
    return publish(art, artifacts.POLICY, parents, cfg_slice, extra)


def _train_stats(stats: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in stats.items() if k in ("steps", "examples", "loss_first") or k.endswith("_last")}


def _dropout_seed(*parts: Any) -> int:
    """The seed of a training step's dropout masks; each rank of a multi-process step draws its own."""
    rank, world = distributed.world()
    return derive_seed(*parts, "dropout") if world == 1 else derive_seed(*parts, "dropout", rank)


# ---------------------------------------------------------------------------------------------------------------
# policy-0


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
    train_df = load_split(cfg.data.train, "data.train")
    sources, targets = train_df["source"].tolist(), train_df["reference"].tolist()
    policy = build_policy(cfg.model, sources + targets, seed=cfg.seed, device=distributed.rank_device(cfg.device))
    rng = np.random.default_rng(derive_seed(cfg.seed, "bc"))
    batches = [
        Batch([sources[j] for j in idx], [targets[j] for j in idx])
        for idx in epoch_batches(len(train_df), cfg.bc.batch_size, cfg.bc.steps, rng,
                                 text_lengths(sources, targets) if cfg.bc.group_by_length else None)
    ]
    stats = fit(policy, batches, cfg.bc, cfg, _dropout_seed(cfg.seed, "bc"), "policy-0", objective_for(cfg.bc))
    if distributed.world()[0] != 0:
        return "policy-0"  # rank 0 validates and publishes
    valid, outputs, monitors = assess(run, "policy-0", policy, previous=None)
    metrics = {"valid": valid, "train": _train_stats(stats), "monitors": monitors}
    publish_policy(run, "policy-0", policy, outputs, metrics, [], cfg_slice,
                   {"parameters": count_parameters(policy.model), "timing": stats})
    log.info(f"policy-0: BC {stats['steps']} steps ({stats['examples_per_s']:.0f} ex/s), valid exact match {valid['exact_match']:.1f}, chrF {valid['chrf']:.1f}")
    return "policy-0"


# ---------------------------------------------------------------------------------------------------------------
# Grow


@dataclass(frozen=True)
class GrowPlan:
    """What Grow step g is made from; `key` identifies it, so shards of another plan are never reused."""

    run: Run
    cfg_slice: dict[str, Any]
    parents: list[str]
    policy: str
    sources: pd.DataFrame
    directory: Path
    key: str

    @property
    def cfg(self) -> RunConfig:
        return self.run.config

    @property
    def n_shards(self) -> int:
        return math.ceil(len(self.sources) / self.cfg.grow.shard_size)


def _grow_plan(run_dir: Path, g: int) -> GrowPlan:
    run = Run.open(run_dir)
    cfg = run.config
    cfg_slice = config_slice(cfg, *GROW_KEYS)
    policy = run.grow_policy(g)
    # lineage: the sampling policy, then every artifact the reward reads (a learned reward model)
    parents = [run.artifact_id(policy)] + [m["id"] for m in artifact_dependencies(cfg.reward)]
    sources = grow_sources(cfg.data, need_reference=needs_reference(cfg.reward))
    if cfg.grow.sources_per_step is not None:
        sources = superbatch(sources, g, cfg.grow.sources_per_step, derive_seed(cfg.seed, "superbatch"))
    key = artifacts.sha256_json({"config": cfg_slice, "parents": parents, "sources": len(sources)})
    return GrowPlan(run, cfg_slice, parents, policy, sources, run.dir(f"grow-{g}"), key)


def _shard_record_path(grow_dir: Path, index: int) -> Path:
    return grow_dir / f"_{shard_name(index).removesuffix('.parquet')}.json"


def _shard_done(grow_dir: Path, index: int, plan: str) -> bool:
    """A shard counts as done only with its record, for this plan, and matching bytes (it may be half-copied)."""
    rec_path, path = _shard_record_path(grow_dir, index), grow_dir / shard_name(index)
    if not (rec_path.is_file() and path.is_file()):
        return False
    try:
        rec = json.loads(rec_path.read_text())
    except json.JSONDecodeError:
        return False
    return rec.get("plan") == plan and rec.get("sha256") == artifacts.sha256_file(path)


def plan_grow(run_dir: Path, g: int) -> list[int]:
    """The shards of Grow step g still to sample. [] when the step is published.

    An interrupted step keeps the shards it finished for the same plan (config, policy, sources): a shard is
    a pure function of them, so resuming gives the rows an uninterrupted run gives. Anything else in the
    directory (a stale manifest, temp files, shards of another plan, a damaged shard) is removed first.
    """
    plan = _grow_plan(run_dir, g)
    grow_dir = plan.directory
    if existing(grow_dir, plan.cfg_slice, plan.parents):
        return []
    grow_dir.mkdir(parents=True, exist_ok=True)
    (grow_dir / artifacts.MANIFEST).unlink(missing_ok=True)
    done = {i for i in range(plan.n_shards) if _shard_done(grow_dir, i, plan.key)}
    keep = {shard_name(i) for i in done} | {_shard_record_path(grow_dir, i).name for i in done}
    for path in grow_dir.iterdir():
        if path.name not in keep:
            path.unlink()
    if done:
        log.info(f"grow-{g}: resuming, {len(done)} of {plan.n_shards} shards already done")
    return [i for i in range(plan.n_shards) if i not in done]


def grow_shard(run_dir: Path, g: int, index: int) -> dict[str, Any]:
    """Sample, score and write shard `index` of Grow step g. Returns its record (rows, sha256, host, pid...)."""
    plan = _grow_plan(run_dir, g)
    cfg, grow_dir = plan.cfg, plan.directory
    if _shard_done(grow_dir, index, plan.key):
        return json.loads(_shard_record_path(grow_dir, index).read_text())
    part = plan.sources.iloc[index * cfg.grow.shard_size : (index + 1) * cfg.grow.shard_size]
    if part.empty:
        raise RestError(f"grow-{g}: shard {index} is past the end of the {len(plan.sources)} sources")
    engine = engines.engine_for(cfg, plan.run.dir(plan.policy), plan.parents[0])
    n = cfg.grow.num_samples
    started = time.perf_counter()
    with _progress(len(part) * n, f"grow-{g} {shard_name(index)}") as bar:
        out = engine.sample(
            part["source"].tolist(),
            num_samples=n,
            temperature=cfg.grow.temperature,
            top_p=cfg.grow.top_p,
            top_k=cfg.grow.top_k,
            max_new_tokens=cfg.grow.max_new_tokens,
            seed=derive_seed(cfg.seed, "grow", g, index),
            on_progress=bar.update,
        )
    sampled = time.perf_counter() - started

    def repeat(col: str) -> list:  # one row per sample: each source value N times
        return [v for v in part[col].tolist() for _ in range(n)]

    src, refs = repeat("source"), repeat("reference")
    rewards = score_config(cfg.reward, src, out.completions, refs)
    names, per_token = reward_names(cfg.reward), token_columns(rewards)
    columns = {
        "source_id": repeat("source_id"),
        "source": src,
        "reference": refs,
        "sample_index": [k for _ in range(len(part)) for k in range(n)],
        "completion": out.completions,
        "num_tokens": out.num_tokens,
        "logprob": out.logprobs,
        "reward": rewards["reward"].tolist(),
        **{f"reward_{name}": rewards[f"reward_{name}"].tolist() for name in names},
        **{col: list(rewards[col]) for col in per_token},
        "policy": [plan.parents[0]] * len(src),
        "grow_step": [g] * len(src),
    }
    path = grow_dir / shard_name(index)
    write_shard(path, columns, names, per_token)
    seconds = time.perf_counter() - started
    record = {
        "shard": shard_name(index),
        "plan": plan.key,
        "rows": len(src),
        "sha256": artifacts.sha256_file(path),
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "seconds": round(seconds, 2),
        "samples_per_s": round(len(src) / sampled, 1),
    }
    write_json_atomic(_shard_record_path(grow_dir, index), record)  # after the shard: the record marks it done
    log.info(f"grow-{g}: {shard_name(index)} {len(src)} samples in {seconds:.1f}s, mean reward {np.mean(rewards['reward']):.3f}")
    return record


# How many of a Grow step's sources its METEOR similarity is measured on (8 samples: 56 scores of ~10 us each)
METEOR_SOURCES = 1000


def grow_stats(grow_dir: Path, thresholds: list[float]) -> dict[str, Any]:
    """Summary of a Grow step, read shard by shard (a source's N samples are in one shard), so that memory does
    not grow with the pool: only the rewards (8 bytes a row) are held for the quantiles."""
    rewards, tokens, distinct, sources, within = [], 0, 0, 0, []
    for path in shard_paths(grow_dir):
        df = pd.read_parquet(path, columns=["source_id", "completion", "num_tokens", "reward"])
        rewards.append(df["reward"].to_numpy())
        tokens += int(df["num_tokens"].sum())
        per_source = df.groupby("source_id")["completion"]
        distinct += int(per_source.nunique().sum())
        sources += per_source.ngroups
        if len(within) < METEOR_SOURCES:
            within.extend(meteor_within(c.tolist()) for _, c in per_source)
    reward = np.concatenate(rewards) if rewards else np.zeros(0)
    q = np.quantile(reward, [0.1, 0.25, 0.5, 0.75, 0.9])
    return {
        "rows": len(reward),
        "sources": sources,
        "reward_mean": round(float(reward.mean()), 4),
        "reward_quantiles": {f"p{k}": round(float(v), 4) for k, v in zip((10, 25, 50, 75, 90), q)},
        "kept_fraction": {str(t): round(float((reward >= t).mean()), 4) for t in thresholds},
        "completion_tokens": round(tokens / max(1, len(reward)), 2),
        "distinct_per_source": round(distinct / max(1, sources), 2),
        # SuperHF's mode-collapse measure on the first METEOR_SOURCES sources: 1 - 0.5 / n^3 for n-word copies
        "meteor_within": round(float(np.mean(scored)), 4) if (scored := [w for w in within if w is not None]) else None,
    }


def finish_grow(run_dir: Path, g: int) -> str:
    """Publish Grow step g once every shard is done: the manifest lists each shard's rows, sha256 and writer."""
    plan = _grow_plan(run_dir, g)
    grow_dir = plan.directory
    if existing(grow_dir, plan.cfg_slice, plan.parents):
        return grow_dir.name
    missing = [i for i in range(plan.n_shards) if not _shard_done(grow_dir, i, plan.key)]
    if missing:
        raise RuntimeError(f"{grow_dir.name}: shards {missing} are not done; rerun the Grow step to finish them")
    records = [json.loads(_shard_record_path(grow_dir, i).read_text()) for i in range(plan.n_shards)]
    stats = grow_stats(grow_dir, plan.cfg.improve.thresholds)
    stats["samples_per_s"] = round(sum(r["rows"] for r in records) / max(1e-9, sum(r["seconds"] for r in records)), 1)
    extra = {"policy": plan.policy, "grow_step": g, "shards": records, "stats": stats}
    publish(grow_dir, artifacts.GROW, plan.parents, plan.cfg_slice, extra)
    log.info(f"{grow_dir.name}: {stats['rows']} samples, mean reward {stats['reward_mean']:.3f}, kept at tau: {stats['kept_fraction']}")
    return grow_dir.name


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
    parents = [run.artifact_id(init), run.artifact_id(grow_name)]  # verified: a damaged input is refused here
    cfg_slice = config_slice(cfg, *IMPROVE_KEYS)
    cfg_slice["improve"]["tau"] = tau
    if existing(run.dir(name), cfg_slice, parents):
        log.info(f"{name}: published, skipping")
        return name
    engines.release()  # the Grow engine's policy is not needed while training (here or in the ranks launched)
    if ic.processes > 1 and not distributed.launched():
        distributed.launch("improve", run_dir, g, i, processes=ic.processes, key="improve.processes")
        run.verified(name)
        return name
    grow_summary = run.verified(grow_name)["stats"]
    train_df = load_split(cfg.data.train, "data.train")
    rng = np.random.default_rng(derive_seed(cfg.seed, "improve", g, i))
    objective = objective_for(ic)
    make_batches = _pair_batches if objective.data == "pairs" else _row_batches
    batches, selection = make_batches(run, grow_name, grow_summary, tau, ic, train_df, rng)
    if objective.data == "pairs" and not selection["pairs"]:
        log.warning(f"{name}: no pair of Grow samples qualifies (tau={tau}, margin={ic.preference.margin}); this "
                    "step trains on data.train only")
    elif objective.data != "pairs" and (sparse := sparse_selection(
            tau, selection["kept_fraction"] if selection["kept_unique"] else 0.0, selection["grow_rows"],
            grow_summary.get("reward_quantiles", {}))):
        log.warning(f"{name}: {sparse}")
        selection["warning"] = sparse
    device = distributed.rank_device(cfg.device)
    policy = load_policy(run.dir(init), device=device)
    reference = None
    if objective.needs_reference:
        # KL prior: policy-0; a preference loss: the policy that sampled the Grow step, or policy-0
        ref_name = run.grow_policy(g) if objective.data == "pairs" and ic.preference.reference == "grower" else "policy-0"
        run.verified(ref_name)
        # The reference is the start with LoRA: the policy with its adapter switched off, no second copy.
        reference = policy if ic.lora and init == ref_name else load_policy(run.dir(ref_name), device=device)
    stats = fit(policy, batches, ic, cfg, _dropout_seed(cfg.seed, "improve", g, i), name, objective, reference)
    if distributed.world()[0] != 0:
        return name  # rank 0 validates and publishes
    if validated(cfg, g):
        valid, outputs, monitors = assess(run, name, policy, previous=run.improve_previous(g, i))
    else:
        valid, outputs, monitors = None, None, None
    metrics = {"valid": valid, "improve": selection, "train": _train_stats(stats), "monitors": monitors}
    publish_policy(run, name, policy, outputs, metrics, parents, cfg_slice, {"init": init, "grow": grow_name, "timing": stats})
    learnt = (f"{selection['pairs']} pairs of {selection['pair_sources']} sources" if "pairs" in selection
              else f"{selection['kept_unique']} unique samples of {selection['kept_sources']} sources")
    checked = f"valid exact match {valid['exact_match']:.1f}, chrF {valid['chrf']:.1f}" if valid else f"not validated (eval.every={cfg.eval.every})"
    log.info(f"{name}: tau={tau} learnt from {learnt}, {checked}")
    return name


def validated(cfg: RunConfig, g: int) -> bool:
    """Whether the Improve policies of Grow step g are validated: every eval.every-th step, and the last."""
    return g % cfg.eval.every == 0 or g >= cfg.grow.steps


def _row_batches(run: Run, grow_name: str, grow_summary: dict[str, Any], tau: float, ic: ImproveConfig,
                 train_df: pd.DataFrame, rng: np.random.Generator) -> tuple[list[Batch], dict[str, Any]]:
    """Improve's rows: the Grow samples selection keeps at tau, mixed with data.train (improve.train_mix)."""
    # Read what selection needs, filtered while reading: memory follows the kept rows, not the Grow step's size
    # (percentile selection compares each source's N rewards, so it reads every row of those columns). The Grow
    # step's row count and kept fraction at each tau are in its manifest (finish_grow's stats).
    columns = ["source_id", "source", "sample_index", "completion", "reward"]
    scores_column = None if ic.token_weights is None else f"reward_tokens_{ic.token_weights}"
    if scores_column is not None:
        if scores_column not in grow_columns(run.dir(grow_name)):
            raise RestError(
                f"improve.token_weights: {ic.token_weights} reads the column {scores_column}, which the shards of "
                f"{run.dir(grow_name)} do not have: only a reward model trained with objective: seq2seq scores tokens "
                "(reward.learned); set improve.token_weights: null for a scalar reward"
            )
        columns.append(scores_column)
    rows = read_grow(run.dir(grow_name), columns, min_reward=None if ic.selection == "percentile" else tau)
    kept = select(rows, tau, ic.selection, ic.percentile, ic.top_k, ic.max_per_source)
    del rows
    k_src, k_tgt, k_w = kept["source"].tolist(), kept["completion"].tolist(), kept["reward"].tolist()
    k_scores = None if scores_column is None else kept[scores_column].tolist()
    t_src, t_tgt = train_df["source"].tolist(), train_df["reference"].tolist()
    lengths = (text_lengths(k_src, k_tgt), text_lengths(t_src, t_tgt)) if ic.group_by_length else None
    plan = mix_batches(len(kept), len(train_df), ic.train_mix, ic.batch_size, ic.steps, rng, lengths)
    batches = [
        Batch(
            [k_src[j] for j in ki] + [t_src[j] for j in ti],
            [k_tgt[j] for j in ki] + [t_tgt[j] for j in ti],
            [k_w[j] for j in ki] + [1.0] * len(ti) if ic.reward_weighted else None,
            None if k_scores is None else [k_scores[j] for j in ki] + [None] * len(ti),
        )
        for ki, ti in plan
    ]
    selection = {
        "tau": tau,
        "grow_rows": grow_summary["rows"],
        "kept_fraction": grow_summary["kept_fraction"][str(tau)],
        "kept_unique": len(kept),
        "kept_sources": int(kept["source_id"].nunique()),
        "kept_reward_mean": round(float(kept["reward"].mean()), 4) if len(kept) else None,
        "train_mix": ic.train_mix,
    }
    if k_scores is not None:  # the share of the kept samples' tokens the loss learns (their mean token weight)
        weights = np.concatenate(token_weights([len(t) for t in k_scores], k_scores) or [np.zeros(0)])
        selection["token_weight_mean"] = round(float(weights.mean()), 4) if len(weights) else None
    return batches, selection


def _pair_batches(run: Run, grow_name: str, grow_summary: dict[str, Any], tau: float, ic: ImproveConfig,
                  train_df: pd.DataFrame, rng: np.random.Generator) -> tuple[list[PairBatch], dict[str, Any]]:
    """A preference loss's data: pairs of the Grow step's samples (filtering.preference_pairs; every row is read:
    the rejected ones are below tau), mixed with data.train rows learnt with NLL (improve.train_mix of a batch)."""
    pc = ic.preference
    rows = read_grow(run.dir(grow_name), ["source_id", "source", "sample_index", "completion", "reward"])
    pairs = preference_pairs(rows, tau, pc.pairs, pc.margin)
    del rows
    p_src, p_c, p_r = pairs["source"].tolist(), pairs["chosen"].tolist(), pairs["rejected"].tolist()
    t_src, t_tgt = train_df["source"].tolist(), train_df["reference"].tolist()
    lengths = None
    if ic.group_by_length:
        lengths = (text_lengths(p_src, [c + r for c, r in zip(p_c, p_r)]), text_lengths(t_src, t_tgt))
    plan = mix_batches(len(pairs), len(train_df), ic.train_mix, ic.batch_size, ic.steps, rng, lengths)
    batches = [
        PairBatch([p_src[j] for j in ki], [p_c[j] for j in ki], [p_r[j] for j in ki],
                  [t_src[j] for j in ti], [t_tgt[j] for j in ti])
        for ki, ti in plan
    ]

    def mean(col: pd.Series) -> float | None:
        return round(float(col.mean()), 4) if len(col) else None

    selection = {
        "tau": tau,
        "grow_rows": grow_summary["rows"],
        "pairs": len(pairs),
        "pair_sources": int(pairs["source_id"].nunique()),
        "chosen_reward_mean": mean(pairs["chosen_reward"]),
        "rejected_reward_mean": mean(pairs["rejected_reward"]),
        # what a summed log-likelihood may learn instead of quality: is the chosen one the longer?
        "chosen_chars_mean": mean(pairs["chosen"].str.len()),
        "rejected_chars_mean": mean(pairs["rejected"].str.len()),
        "train_mix": ic.train_mix,
    }
    return batches, selection


# ---------------------------------------------------------------------------------------------------------------
# The end of a run


def finish_run(run_dir: Path) -> dict[str, Any]:
    """Name the best policy by validation reward (earliest on ties) in run.json, with test metrics of it and policy-0."""
    run = Run.open(run_dir)
    names = run.assessed_policies()
    if not names:
        raise RestError(f"{run_dir} has no published policy yet")
    valid = {n: run.metrics(n)["valid"] for n in names}
    best = max(names, key=lambda n: (valid[n]["reward"], -names.index(n)))
    test_df = load_split(run.config.data.test, "data.test")
    test = {}
    for name in dict.fromkeys(["policy-0", best]):
        engine = engines.engine_for(run.config, run.dir(name), run.artifact_id(name))
        test[name], _ = evaluate(engine, test_df, run.config)
    engines.release()
    run.update_record(best_policy=best, test=test)
    return {"best_policy": best, "valid": valid, "test": test}
