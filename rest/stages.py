"""The pipeline's stages as plain functions of a run directory: what the Prefect tasks in flows/ call.

    check_inputs(cfg); init_run(run, cfg)
    make_policy0(run)                                     # BC on data.train -> policy-0/
    for g in 1..G:
        for s in plan_grow(run, g): grow_shard(run, g, s) # any order, any process -> grow-g/shard-*.parquet
        finish_grow(run, g)                               # -> grow-g/_manifest.json
        for i in 1..I: improve(run, g, i)                 # -> improve-g-i/
    finish_run(run)                                       # best policy by validation reward; test metrics

Every stage takes and returns names and paths, reads the run's config.yaml, and returns at once when its
artifact is already published for the same config and parents (idempotence from manifests, not from Prefect).
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
import yaml
from tqdm.auto import tqdm

from rest import artifacts
from rest.artifacts import existing, publish, read_manifest, staging, update_run, write_json_atomic
from rest.config import RunConfig, config_from_dict, dump_config
from rest.data import grow_sources, load_split
from rest.errors import RestError
from rest.evaluation import evaluate
from rest.filtering import epoch_batches, mix_batches, select
from rest.models import build_policy, count_parameters, load_policy
from rest.monitors import policy_monitors
from rest.rewards import reward_names, score_config
from rest.sampling import generate
from rest.shards import read_grow, shard_name, write_shard
from rest.training import train

log = logging.getLogger("rest")
CONFIG_FILE = artifacts.CONFIG_FILE
VALID_OUTPUTS = "valid_outputs.parquet"  # in every policy directory: its greedy outputs on data.valid


def _progress(total: int, desc: str) -> tqdm:
    # Bars on a terminal; in logs (CI, Prefect workers) one line per stage is enough.
    return tqdm(total=total, desc=desc, leave=False, disable=not sys.stderr.isatty(), dynamic_ncols=True)


def derive_seed(*parts: Any) -> int:
    """A seed from (run seed, stage, step, shard): stable across processes and Python versions (unlike hash())."""
    return int.from_bytes(hashlib.sha256("/".join(map(str, parts)).encode()).digest()[:8], "little") % (2**63)


def run_config(run_dir: Path) -> RunConfig:
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise RestError(f"{run_dir} has no {CONFIG_FILE}: start the run with `rest run --config FILE --run {run_dir}`")
    return config_from_dict(yaml.safe_load(path.read_text()) or {}, str(path))


def _slice(cfg: RunConfig, *keys: str) -> dict[str, Any]:
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


# Config keys whose change does not touch any finished artifact: a run may be extended or resumed with them changed
# (how the work is spread and where it is tracked do not change what it makes).
EXTENDABLE = ("grow.steps", "grow.workers", "orchestration.", "tracking.")


def init_run(run_dir: Path, cfg: RunConfig) -> None:
    """Create the run directory (or reopen it) with the resolved config and run.json."""
    run_dir = Path(run_dir)
    path = run_dir / CONFIG_FILE
    if path.is_file():
        old = run_config(run_dir).model_dump(mode="json")
        changed = [c for c in artifacts._diff(old, cfg.model_dump(mode="json")) if not c.split(":")[0].startswith(EXTENDABLE)]
        if changed:
            raise RestError(
                f"{run_dir} was started with another config ({'; '.join(changed[:3])}). "
                "Use a new --run directory for a new experiment."
            )
    run_dir.mkdir(parents=True, exist_ok=True)
    if not (run_dir / artifacts.RUN_RECORD).is_file():
        write_json_atomic(
            run_dir / artifacts.RUN_RECORD,
            {"name": run_dir.name, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "config": CONFIG_FILE, "artifacts": []},
        )
    artifacts.write_atomic(path, dump_config(cfg).encode())


def _artifact_id(run_dir: Path, name: str) -> str:
    manifest = read_manifest(Path(run_dir) / name)
    if manifest is None:
        raise RestError(f"{Path(run_dir) / name} is not published yet; run the step that makes it first")
    return manifest["id"]


def _fit_and_publish(
    run_dir: Path,
    name: str,
    policy,
    batches: list[tuple[list[str], list[str]]],
    optim,
    seed: int,
    parents: list[str],
    cfg_slice: dict[str, Any],
    metrics: dict[str, Any],
    extra: dict[str, Any],
    previous: str | None = None,
    objective: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Train `policy` on `batches`, evaluate it on data.valid and publish it as artifact `name`.

    The artifact holds the policy, metrics.json (validation metrics, training stats, the reward-hacking monitors
    against policy-0 and against `previous`, the policy made just before) and valid_outputs.parquet (its greedy
    outputs: what drift is measured on). The policy is saved to a hidden staging directory and renamed into place
    whole; the manifest that makes it an artifact comes last. Returns (validation metrics, training stats).
    """
    cfg = run_config(run_dir)
    with _progress(len(batches), name) as bar:
        stats = train(policy, batches, optim, cfg.model, seed=seed, on_progress=lambda s, loss: (bar.update(1), bar.set_postfix(loss=f"{loss:.3f}")), **(objective or {}))
    valid_df = load_split(cfg.data.valid, "data.valid")
    valid, outputs = evaluate(policy, valid_df, cfg)
    base = outputs if previous is None else pd.read_parquet(Path(run_dir) / "policy-0" / VALID_OUTPUTS)
    monitors = policy_monitors(
        outputs["output"].tolist(), base["output"].tolist(), valid_df["source"].tolist(), valid_df["reference"].tolist(),
        cfg.reward, valid, (previous, policy_metrics(run_dir, previous)["valid"]) if previous else None,
        seed=derive_seed(cfg.seed, "probes"),
    )
    metrics = {"valid": valid, **metrics, "train": {k: stats[k] for k in ("steps", "examples", "loss_first", "loss_last", "kl_last") if k in stats}, "monitors": monitors}
    art = Path(run_dir) / name
    stage = staging(art)
    artifacts.clear(art)  # a partial directory or staging copy left by a crash
    policy.save(stage)
    outputs[["source_id", "source", "reference", "output", "reward"]].to_parquet(stage / VALID_OUTPUTS, index=False)
    write_json_atomic(stage / "metrics.json", metrics)
    os.replace(stage, art)
    publish(art, "policy", parents, cfg_slice, {**extra, "timing": stats})
    return valid, stats


# ---------------------------------------------------------------------------------------------------------------
# policy-0


# What every policy depends on besides its own training settings (validation metrics use data.valid and reward).
POLICY_KEYS = ["seed", "data.train", "data.valid", "model", "reward", "eval.max_new_tokens"]


def make_policy0(run_dir: Path) -> str:
    """policy-0 = BC(D): a fresh (or pretrained) model trained with token-level NLL on data.train."""
    cfg = run_config(run_dir)
    art = Path(run_dir) / "policy-0"
    cfg_slice = _slice(cfg, *POLICY_KEYS, "bc")
    if existing(art, cfg_slice, []):
        log.info("policy-0: published, skipping")
        return "policy-0"
    train_df = load_split(cfg.data.train, "data.train")
    sources, targets = train_df["source"].tolist(), train_df["reference"].tolist()
    policy = build_policy(cfg.model, sources + targets, seed=cfg.seed)
    rng = np.random.default_rng(derive_seed(cfg.seed, "bc"))
    batches = [
        ([sources[j] for j in idx], [targets[j] for j in idx])
        for idx in epoch_batches(len(train_df), cfg.bc.batch_size, cfg.bc.steps, rng)
    ]
    valid, stats = _fit_and_publish(
        run_dir, "policy-0", policy, batches, cfg.bc, derive_seed(cfg.seed, "bc", "dropout"), [], cfg_slice, {},
        {"parameters": count_parameters(policy.model)},
    )
    log.info(f"policy-0: BC {stats['steps']} steps ({stats['examples_per_s']:.0f} ex/s), valid exact match {valid['exact_match']:.1f}, chrF {valid['chrf']:.1f}")
    return "policy-0"


# ---------------------------------------------------------------------------------------------------------------
# Grow


def published_steps(run_dir: Path, prefix: str) -> list[str]:
    return sorted(
        (p.name for p in Path(run_dir).glob(f"{prefix}*") if (p / artifacts.MANIFEST).is_file()),
        key=lambda n: [int(x) for x in n.split("-")[1:]],
    )


def next_grow_step(run_dir: Path) -> int:
    return len(published_steps(run_dir, "grow-")) + 1


def latest_grow_step(run_dir: Path) -> int:
    steps = published_steps(run_dir, "grow-")
    if not steps:
        raise RestError(f"{run_dir} has no published Grow step; run `rest grow --run {run_dir}` first")
    return int(steps[-1].split("-")[1])


def grow_policy(run_dir: Path, g: int) -> str:
    """The policy Grow step g samples from: policy-0, then the last Improve policy of the previous Grow (ReST)."""
    if g == 1:
        return "policy-0"
    cfg = run_config(run_dir)
    name = f"improve-{g - 1}-{len(cfg.improve.thresholds)}"
    if read_manifest(Path(run_dir) / name) is None:
        raise RestError(f"Grow step {g} samples from {name}, which is not published: run `rest improve --run {run_dir}` first")
    return name


@dataclass(frozen=True)
class GrowPlan:
    """What Grow step g is made from; `key` identifies it, so shards of another plan are never reused."""

    cfg: RunConfig
    cfg_slice: dict[str, Any]
    parents: list[str]
    policy: str
    sources: pd.DataFrame
    directory: Path
    key: str

    @property
    def n_shards(self) -> int:
        return math.ceil(len(self.sources) / self.cfg.grow.shard_size)


def _grow_plan(run_dir: Path, g: int) -> GrowPlan:
    cfg = run_config(run_dir)
    cfg_slice = _slice(
        cfg, "seed", "data.grow_on", "data.train", "data.pool", "model.prompt_template", "model.max_source_tokens",
        "grow.num_samples", "grow.temperature", "grow.top_p", "grow.top_k", "grow.max_new_tokens", "grow.batch_size",
        "grow.shard_size", "reward",
    )
    policy = grow_policy(run_dir, g)
    parents = [_artifact_id(run_dir, policy)]
    if cfg.reward.learned and "learned" in cfg.reward.components:
        from rest.reward_model import check_reward_model

        parents.append(check_reward_model(cfg.reward.learned, "reward.learned")["id"])  # lineage: which reward model
    sources = grow_sources(cfg.data, need_reference=cfg.reward.needs_reference)
    key = artifacts.sha256_json({"config": cfg_slice, "parents": parents, "sources": len(sources)})
    return GrowPlan(cfg, cfg_slice, parents, policy, sources, Path(run_dir) / f"grow-{g}", key)


def _shard_record_path(grow_dir: Path, index: int) -> Path:
    return grow_dir / f"_{shard_name(index).removesuffix('.parquet')}.json"


def _shard_done(grow_dir: Path, index: int, plan: str) -> bool:
    """A shard counts as done only with its record, for this plan, and matching bytes (it may be half-copied)."""
    rec_path, path = _shard_record_path(grow_dir, index), grow_dir / shard_name(index)
    if not (rec_path.is_file() and path.is_file()):
        return False
    rec = json.loads(rec_path.read_text())
    return rec.get("plan") == plan and rec.get("sha256") == artifacts.sha256_file(path)


def plan_grow(run_dir: Path, g: int) -> list[int]:
    """The shards of Grow step g still to sample. [] when the step is published.

    An interrupted step keeps the shards it finished for the same plan (config, policy, sources): a shard is
    a pure function of them, so resuming gives the rows an uninterrupted run gives. Anything else in the
    directory (a stale manifest, temp files, shards of another plan) is removed first.
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
    policy = load_policy(Path(run_dir) / plan.policy)
    n = cfg.grow.num_samples
    started = time.perf_counter()
    with _progress(len(part) * n, f"grow-{g} {shard_name(index)}") as bar:
        out = generate(
            policy,
            part["source"].tolist(),
            cfg.model,
            num_samples=n,
            temperature=cfg.grow.temperature,
            top_p=cfg.grow.top_p,
            top_k=cfg.grow.top_k,
            max_new_tokens=cfg.grow.max_new_tokens,
            batch_size=cfg.grow.batch_size,
            seed=derive_seed(cfg.seed, "grow", g, index),
            on_progress=bar.update,
        )
    sampled = time.perf_counter() - started

    def repeat(col: str) -> list:  # one row per sample: each source value N times
        return [v for v in part[col].tolist() for _ in range(n)]

    src, refs = repeat("source"), repeat("reference")
    rewards = score_config(cfg.reward, src, out.completions, refs)
    names = reward_names(cfg.reward)
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
        "policy": [plan.parents[0]] * len(src),
        "grow_step": [g] * len(src),
    }
    path = grow_dir / shard_name(index)
    write_shard(path, columns, names)
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


def grow_stats(rows: pd.DataFrame, thresholds: list[float]) -> dict[str, Any]:
    q = rows["reward"].quantile([0.1, 0.25, 0.5, 0.75, 0.9])
    return {
        "rows": len(rows),
        "sources": int(rows["source_id"].nunique()),
        "reward_mean": round(float(rows["reward"].mean()), 4),
        "reward_quantiles": {f"p{int(k * 100)}": round(float(v), 4) for k, v in q.items()},
        "kept_fraction": {str(t): round(float((rows["reward"] >= t).mean()), 4) for t in thresholds},
        "completion_tokens": round(float(rows["num_tokens"].mean()), 2),
        "distinct_per_source": round(float(rows.groupby("source_id")["completion"].nunique().mean()), 2),
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
    stats = grow_stats(read_grow(grow_dir), plan.cfg.improve.thresholds)
    stats["samples_per_s"] = round(sum(r["rows"] for r in records) / max(1e-9, sum(r["seconds"] for r in records)), 1)
    extra = {"policy": plan.policy, "grow_step": g, "shards": records, "stats": stats}
    publish(grow_dir, "grow", plan.parents, plan.cfg_slice, extra)
    log.info(f"{grow_dir.name}: {stats['rows']} samples, mean reward {stats['reward_mean']:.3f}, kept at tau: {stats['kept_fraction']}")
    return grow_dir.name


# ---------------------------------------------------------------------------------------------------------------
# Improve


# Every improve.* key but the thresholds list (each step records its own tau).
IMPROVE_KEYS = ("train_mix", "init", "steps", "batch_size", "lr", "warmup_steps", "weight_decay", "grad_clip", "loss",
                "kl_beta", "reward_weighted", "selection", "percentile", "top_k", "max_per_source")


def improve(run_dir: Path, g: int, i: int) -> str:
    """Improve step i after Grow g: fine-tune on grow-g rows with reward >= tau_i, mixed with data.train."""
    cfg = run_config(run_dir)
    thresholds = cfg.improve.thresholds
    if not 1 <= i <= len(thresholds):
        raise RestError(f"improve.thresholds has {len(thresholds)} entries; there is no Improve step {i}")
    tau = thresholds[i - 1]
    name = f"improve-{g}-{i}"
    art = Path(run_dir) / name
    if cfg.improve.init == "policy-0":
        init = "policy-0"
    else:
        init = grow_policy(run_dir, g) if i == 1 else f"improve-{g}-{i - 1}"
    grow_name = f"grow-{g}"
    parents = [_artifact_id(run_dir, init), _artifact_id(run_dir, grow_name)]
    cfg_slice = _slice(cfg, *POLICY_KEYS, *(f"improve.{k}" for k in IMPROVE_KEYS))
    cfg_slice["improve"]["tau"] = tau
    if existing(art, cfg_slice, parents):
        log.info(f"{name}: published, skipping")
        return name
    rows = read_grow(Path(run_dir) / grow_name)
    ic = cfg.improve
    kept = select(rows, tau, ic.selection, ic.percentile, ic.top_k, ic.max_per_source)
    train_df = load_split(cfg.data.train, "data.train")
    if kept.empty:
        log.warning(f"{name}: no Grow sample reaches tau={tau}; this step trains on data.train only")
    rng = np.random.default_rng(derive_seed(cfg.seed, "improve", g, i))
    plan = mix_batches(len(kept), len(train_df), cfg.improve.train_mix, cfg.improve.batch_size, cfg.improve.steps, rng)
    k_src, k_tgt = kept["source"].tolist(), kept["completion"].tolist()
    t_src, t_tgt = train_df["source"].tolist(), train_df["reference"].tolist()
    k_w = kept["reward"].tolist()
    batches = [
        ([k_src[j] for j in ki] + [t_src[j] for j in ti], [k_tgt[j] for j in ki] + [t_tgt[j] for j in ti])
        + (([k_w[j] for j in ki] + [1.0] * len(ti),) if ic.reward_weighted else ())
        for ki, ti in plan
    ]
    selection = {
        "tau": tau,
        "grow_rows": len(rows),
        "kept_fraction": round(float((rows["reward"] >= tau).mean()), 4),
        "kept_unique": len(kept),
        "kept_sources": int(kept["source_id"].nunique()),
        "kept_reward_mean": round(float(kept["reward"].mean()), 4) if len(kept) else None,
        "train_mix": cfg.improve.train_mix,
    }
    valid, _ = _fit_and_publish(
        run_dir, name, load_policy(Path(run_dir) / init), batches, cfg.improve, derive_seed(cfg.seed, "improve", g, i, "dropout"),
        parents, cfg_slice, {"improve": selection}, {"init": init, "grow": grow_name},
        previous=grow_policy(run_dir, g) if i == 1 else f"improve-{g}-{i - 1}",
        objective={"loss": ic.loss, "kl_beta": ic.kl_beta,
                   "reference": load_policy(Path(run_dir) / "policy-0") if ic.kl_beta > 0 else None},
    )
    log.info(f"{name}: tau={tau} kept {selection['kept_unique']} unique samples of {selection['kept_sources']} sources, valid exact match {valid['exact_match']:.1f}, chrF {valid['chrf']:.1f}")
    return name


# ---------------------------------------------------------------------------------------------------------------
# The end of a run


def policies(run_dir: Path) -> list[str]:
    """Published policies in the order they were made."""
    names = ["policy-0"] if read_manifest(Path(run_dir) / "policy-0") else []
    return names + published_steps(run_dir, "improve-")


def policy_metrics(run_dir: Path, name: str) -> dict[str, Any]:
    return json.loads((Path(run_dir) / name / "metrics.json").read_text())


def finish_run(run_dir: Path) -> dict[str, Any]:
    """Name the best policy by validation reward (earliest on ties) in run.json, with test metrics of it and policy-0."""
    cfg = run_config(run_dir)
    names = policies(run_dir)
    if not names:
        raise RestError(f"{run_dir} has no published policy yet")
    valid = {n: policy_metrics(run_dir, n)["valid"] for n in names}
    best = max(names, key=lambda n: (valid[n]["reward"], -names.index(n)))
    test_df = load_split(cfg.data.test, "data.test")
    test = {}
    for name in dict.fromkeys(["policy-0", best]):
        test[name], _ = evaluate(load_policy(Path(run_dir) / name), test_df, cfg)
    summary = {"best_policy": best, "valid": valid, "test": test}
    update_run(run_dir, best_policy=best, test=test)
    return summary
