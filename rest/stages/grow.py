"""Grow step g: the plan (sources, shards, the sampling policy), each shard sampled and scored, and the step's
manifest."""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from rest.artifacts import manifests, run_record
from rest.artifacts.manifests import (
    existing,
    write_json_atomic,
)
from rest.artifacts.run import Run
from rest.artifacts.shards import (
    grow_columns,
    shard_name,
    shard_paths,
    write_shard,
)
from rest.config import (
    RunConfig,
)
from rest.data.splits import as_python, grow_extras, grow_sources, superbatch
from rest.errors import RestError
from rest.evaluation.monitors import meteor_within
from rest.grow import engines
from rest.grow.base import Engine
from rest.rewards.components import reward_names, score_config, token_columns
from rest.rewards.kinds import RewardLineage, lineage
from rest.seeds import derive_seed
from rest.stages.common import progress_bar
from rest.stages.keys import GROW_KEYS, config_slice

log = logging.getLogger("rest")

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
    reward: RewardLineage  # what the step inherits from its reward (parents, key, what the manifest records)
    extra: pa.Schema  # the sources' other columns, as every shard stores them

    @property
    def cfg(self) -> RunConfig:
        return self.run.config

    @property
    def n_shards(self) -> int:
        return math.ceil(len(self.sources) / self.cfg.grow.shard_size)


def grow_plan(run_dir: Path, g: int) -> GrowPlan:
    run = Run.open(run_dir)
    cfg = run.config
    cfg_slice = config_slice(cfg, *GROW_KEYS)
    policy = run.grow_policy(g)
    # lineage: the sampling policy, then every artifact the reward reads (a learned reward model); the code and
    # weights that scored it join the key (an edited reward function is another step)
    reward = lineage(cfg.reward)
    parents = [run.artifact_id(policy), *reward.parents]
    cfg_slice = {**cfg_slice, **reward.key}
    sources = grow_sources(cfg.data, need_reference=reward.needs_reference)
    if cfg.grow.sources_per_step is not None:
        sources = superbatch(sources, g, cfg.grow.sources_per_step, derive_seed(cfg.seed, "superbatch"))
    sources, extra = grow_extras(sources)
    key = manifests.sha256_json({"config": cfg_slice, "parents": parents, "sources": len(sources)})
    return GrowPlan(run, cfg_slice, parents, policy, sources, run.dir(f"grow-{g}"), key, reward, extra)


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
    return rec.get("plan") == plan and rec.get("sha256") == manifests.sha256_file(path)


def plan_grow(run_dir: Path, g: int) -> list[int]:
    """The shards of Grow step g still to sample. [] when the step is published.

    An interrupted step keeps the shards it finished for the same plan (config, policy, sources): a shard is
    a pure function of them, so resuming gives the rows an uninterrupted run gives. Anything else in the
    directory (a stale manifest, temp files, shards of another plan, a damaged shard) is removed first.
    """
    plan = grow_plan(run_dir, g)
    grow_dir = plan.directory
    if existing(grow_dir, plan.cfg_slice, plan.parents):
        return []
    grow_dir.mkdir(parents=True, exist_ok=True)
    (grow_dir / manifests.MANIFEST).unlink(missing_ok=True)
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
    plan = grow_plan(run_dir, g)
    cfg, grow_dir = plan.cfg, plan.directory
    if _shard_done(grow_dir, index, plan.key):
        return json.loads(_shard_record_path(grow_dir, index).read_text())
    part = plan.sources.iloc[index * cfg.grow.shard_size : (index + 1) * cfg.grow.shard_size]
    if part.empty:
        raise RestError(f"grow-{g}: shard {index} is past the end of the {len(plan.sources)} sources")
    engine = engines.engine_for(cfg, plan.run.dir(plan.policy), plan.parents[0])
    n = cfg.grow.num_samples
    started = time.perf_counter()
    columns, rewards, sampled = _sample_and_score(
        plan, engine, part, n, 0, derive_seed(cfg.seed, "grow", g, index), g, index
    )
    src = columns["source"]
    names, per_token = reward_names(cfg.reward), token_columns(rewards)
    columns.update(
        {
            "reward": rewards["reward"].tolist(),
            **{f"reward_{name}": rewards[f"reward_{name}"].tolist() for name in names},
            **{col: list(rewards[col]) for col in per_token},
        }
    )
    path = grow_dir / shard_name(index)
    write_shard(path, columns, names, per_token, plan.extra)
    seconds = time.perf_counter() - started
    record = {
        "shard": shard_name(index),
        "plan": plan.key,
        "rows": len(src),
        "sha256": manifests.sha256_file(path),
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "seconds": round(seconds, 2),
        "samples_per_s": round(len(src) / sampled, 1),
    }
    write_json_atomic(_shard_record_path(grow_dir, index), record)  # after the shard: the record marks it done
    log.info(
        f"grow-{g}: {shard_name(index)} {len(src)} samples in {seconds:.1f}s, mean reward "
        f"{np.mean(rewards['reward']):.3f}"
    )
    return record


def _sample_and_score(
    plan: GrowPlan, engine: Engine, part: pd.DataFrame, n: int, first_index: int, seed: int, g: int, index: int
) -> tuple[dict[str, list], dict[str, np.ndarray], float]:
    """n samples of each source of `part` (sample_index first_index..), scored: the shard's columns but the reward
    ones, the reward's arrays (score_config), and the seconds sampling took."""
    cfg = plan.cfg
    started = time.perf_counter()
    with progress_bar(len(part) * n, f"grow-{g} {shard_name(index)}") as bar:
        out = engine.sample(
            part["source"].tolist(),
            num_samples=n,
            temperature=cfg.grow.temperature,
            top_p=cfg.grow.top_p,
            top_k=cfg.grow.top_k,
            max_new_tokens=cfg.grow.max_new_tokens,
            seed=seed,
            on_progress=bar.update,
        )
    sampled = time.perf_counter() - started

    def repeat(col: str) -> list:  # one row per sample: each source value n times
        return [v for v in as_python(part[col]) for _ in range(n)]

    src, refs = repeat("source"), repeat("reference")
    extra = {name: repeat(name) for name in plan.extra.names}
    rewards = score_config(
        cfg.reward,
        src,
        out.completions,
        refs,
        engine.device,
        {"source_id": repeat("source_id"), **extra},
        cfg.logits_mb,
    )
    columns = {
        "source_id": repeat("source_id"),
        "source": src,
        "reference": refs,
        "sample_index": [first_index + k for _ in range(len(part)) for k in range(n)],
        "completion": list(out.completions),
        "num_tokens": list(out.num_tokens),
        "logprob": list(out.logprobs),
        "policy": [plan.parents[0]] * len(src),
        "grow_step": [g] * len(src),
        **extra,
    }
    return columns, rewards, sampled


# How many of a Grow step's sources its METEOR similarity is measured on (8 samples: 56 scores of ~10 us each)
METEOR_SOURCES = 1000


QUANTILES = (10, 25, 50, 75, 90)


def _quantiles(values: np.ndarray) -> dict[str, float | None]:
    if not len(values):
        return {f"p{k}": None for k in QUANTILES}
    return {f"p{k}": round(float(v), 4) for k, v in zip(QUANTILES, np.quantile(values, [k / 100 for k in QUANTILES]))}


def grow_stats(grow_dir: Path, thresholds: list[float]) -> dict[str, Any]:
    """Summary of a Grow step, read shard by shard (a source's N samples are in one shard), so that memory does
    not grow with the pool: only the rewards (8 bytes a row and component) are held for the quantiles.

    `components`: each `reward_<name>` column's mean and quantiles over the rows it applies to (and the share of
    rows it applies to): the scale of each reward, to choose thresholds by."""
    names = [c for c in grow_columns(grow_dir) if c.startswith("reward_") and not c.startswith("reward_tokens_")]
    rewards, tokens, distinct, sources, within = [], 0, 0, 0, []
    parts: dict[str, list[np.ndarray]] = {c: [] for c in names}
    for path in shard_paths(grow_dir):
        df = pd.read_parquet(path, columns=["source_id", "completion", "num_tokens", "reward", *names])
        rewards.append(df["reward"].to_numpy())
        for c in names:
            parts[c].append(df[c].to_numpy(dtype=np.float64, na_value=np.nan))
        tokens += int(df["num_tokens"].to_numpy().sum())
        per_source = df.groupby("source_id")["completion"]
        distinct += int(per_source.nunique().to_numpy().sum())
        sources += int(per_source.ngroups)
        if len(within) < METEOR_SOURCES:
            within.extend(meteor_within(c.tolist()) for _, c in per_source)
    reward = np.concatenate(rewards) if rewards else np.zeros(0)
    components = {}
    for c in names:
        values = np.concatenate(parts[c]) if parts[c] else np.zeros(0)
        applies = values[~np.isnan(values)]
        components[c.removeprefix("reward_")] = {
            "mean": round(float(applies.mean()), 4) if len(applies) else None,
            **_quantiles(applies),
            "applies": round(len(applies) / max(1, len(values)), 4),
        }
    return {
        "rows": len(reward),
        "sources": sources,
        "reward_mean": round(float(reward.mean()), 4),
        "reward_quantiles": _quantiles(reward),
        "kept_fraction": {str(t): round(float((reward >= t).mean()), 4) for t in thresholds},
        "components": components,
        "completion_tokens": round(tokens / max(1, len(reward)), 2),
        "distinct_per_source": round(distinct / max(1, sources), 2),
        # SuperHF's mode-collapse measure on the first METEOR_SOURCES sources: 1 - 0.5 / n^3 for n-word copies
        "meteor_within": round(float(np.mean(scored)), 4) if (scored := [w for w in within if w is not None]) else None,
    }


def finish_grow(run_dir: Path, g: int) -> str:
    """Publish Grow step g once every shard is done: the manifest lists each shard's rows, sha256 and writer."""
    plan = grow_plan(run_dir, g)
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
    extra.update(plan.reward.record)
    # The step's id follows the code and the models that scored it, not only the rows it wrote
    run_record.publish(grow_dir, manifests.GROW, plan.parents, plan.cfg_slice, extra, id_extra=plan.reward.key or None)
    log.info(
        f"{grow_dir.name}: {stats['rows']} samples, mean reward {stats['reward_mean']:.3f}, kept at tau: "
        f"{stats['kept_fraction']}"
    )
    return grow_dir.name
