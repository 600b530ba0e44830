"""`rest reward train`: a reward model's comparisons read from Grow shards (and negatives added), the sources held
out by a hash of their id, training on the one loop (rest/training/loop.py with rest/rewards/reward_objectives.py),
held-out evaluation (pairwise accuracy, MSE, Pearson), and the artifact.

    manifest = train_reward_model(load_config("configs/reward-numbers.yaml", model=RewardModelConfig))
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from rest.artifacts import manifests
from rest.config import RewardModelConfig, dump_config
from rest.data.batching import epoch_batches
from rest.errors import RestError
from rest.models.checkpoints import save
from rest.models.policy import resolve_device
from rest.rewards.metrics import SENTENCE_METRICS
from rest.rewards.reward_model import KIND, REWARD_FILE, RewardModel, build_reward_model, raw_scores
from rest.rewards.reward_objectives import RM_OBJECTIVES, SourceBatch, pairs_of
from rest.rewards.seq2seq_rm import Seq2SeqRewardModel
from rest.training.loop import train

log = logging.getLogger("rest")


# ---------------------------------------------------------------------------------------------------------------
# Data: distinct completions per source, and the held-out split


def load_comparisons(data_cfg) -> tuple[pd.DataFrame, list[str]]:
    """Every distinct (source, completion) of the shards with its score, and the parent ids (grow manifests).

    Columns: source_id, source, reference, completion, score. A completion sampled several times counts once (its
    score is
    the same every time for a deterministic reward; the mean otherwise).
    """
    frames, parents = [], []
    for spec in data_cfg.shards:
        path = Path(spec)
        if not path.exists():
            raise RestError(
                f"data.shards: {spec} does not exist; point it at a Grow step directory such as runs/numbers/grow-1"
            )
        manifest = manifests.read_manifest(path) if path.is_dir() else None
        if path.is_dir() and manifest is None:
            raise RestError(
                f"data.shards: {spec} has no {manifests.MANIFEST}: that Grow step is not finished; finish it first"
            )
        df = pd.read_parquet(path)
        need = ["source_id", "source", "completion", data_cfg.score_column] + (
            ["reference"] if data_cfg.negatives else []
        )
        missing = [c for c in need if c not in df.columns]
        if missing:
            raise RestError(
                f"data.shards: {spec} has no column(s) {', '.join(missing)} (columns: {', '.join(df.columns)}); "
                "data.score_column names the score to learn, e.g. reward_chrf"
            )
        bad = df[data_cfg.score_column].isna()
        if bad.any():
            raise RestError(
                f"data.shards: {spec}: `{data_cfg.score_column}` is missing in {int(bad.sum())} rows (first: row "
                f"{int(bad.to_numpy().nonzero()[0][0])})"
            )
        frames.append(df[need].rename(columns={data_cfg.score_column: "score"}))
        parents.append(manifest["id"] if manifest else manifests.sha256_file(path)[:16])
    df = pd.concat(frames, ignore_index=True)
    if "reference" not in df.columns:
        df["reference"] = None
    df = df.groupby(["source_id", "completion"], sort=True, as_index=False, dropna=False).agg(
        source=("source", "first"), reference=("reference", "first"), score=("score", "mean")
    )
    return df[["source_id", "source", "reference", "completion", "score"]], parents


def add_negatives(df: pd.DataFrame, data_cfg, k: int, seed: int) -> pd.DataFrame:
    """`df` plus, per source, k completions of other sources scored against this source's reference.

    Other sources of the same length (in characters) are preferred: on the numbers task they share most words,
    so their chrF against this reference spreads over the whole range. Rows get `negative` = True.
    """
    metric = data_cfg.score_column.removeprefix("reward_")
    if metric not in SENTENCE_METRICS:
        raise RestError(
            "data.negatives needs data.score_column to be reward_<metric> with a metric of "
            f"{', '.join(SENTENCE_METRICS)} "
            f"(it rescored the new pairs with it); got {data_cfg.score_column}. Set data.negatives: 0"
        )
    sources = df.drop_duplicates("source_id")[["source_id", "source", "reference"]].reset_index(drop=True)
    if sources["reference"].isna().any():
        raise RestError(
            "data.negatives scores other sources' completions against each reference, but some shards have no "
            "reference; set data.negatives: 0"
        )
    rng = np.random.default_rng(seed)
    owner = df["source_id"].to_numpy()
    completions = df["completion"].to_numpy()
    length = df["source"].str.len().to_numpy()
    by_length = {n: np.nonzero(length == n)[0] for n in np.unique(length)}
    rows = []
    for src in sources.itertuples():
        pool = by_length[len(src.source)]
        pool = pool[owner[pool] != src.source_id]
        if len(pool) < k:
            pool = np.nonzero(owner != src.source_id)[0]
        for j in rng.choice(pool, size=min(k, len(pool)), replace=False):
            rows.append((src.source_id, src.source, src.reference, completions[j]))
    neg = pd.DataFrame(rows, columns=["source_id", "source", "reference", "completion"])
    neg["score"] = SENTENCE_METRICS[metric](
        neg["source"].tolist(), neg["completion"].tolist(), neg["reference"].tolist()
    )
    neg["negative"] = True
    out = pd.concat([df.assign(negative=False), neg], ignore_index=True)
    # a sampled completion that is also some other source's completion stays once, as the source's own sample
    return out.drop_duplicates(["source_id", "completion"], keep="first").reset_index(drop=True)


def held_out(source_ids: pd.Series, fraction: float) -> np.ndarray:
    """True for the sources held out: a hash of the id, so the split does not move when shards are added."""

    def unit(sid: str) -> float:
        return int.from_bytes(hashlib.sha256(f"rm-valid/{sid}".encode()).digest()[:8], "little") / 2**64

    return np.array([unit(s) < fraction for s in source_ids.astype(str)])


def pairwise_accuracy(df: pd.DataFrame, predicted: np.ndarray, min_gap: float = 0.0) -> tuple[float | None, int]:
    """Fraction of within-source pairs with different scores that `predicted` orders the same way (ties: 1/2)."""
    hits, n = 0.0, 0
    scores = df["score"].to_numpy()
    for _, idx in df.groupby("source_id", sort=False).indices.items():
        better, worse = pairs_of(scores[idx], min_gap)
        if len(better):
            p = predicted[idx]
            diff = p[better] - p[worse]
            hits += float((diff > 0).sum() + 0.5 * (diff == 0).sum())
            n += len(better)
    return (hits / n if n else None), n


# ---------------------------------------------------------------------------------------------------------------
# Training


def _batches(groups: list[np.ndarray], batch_size: int, steps: int, rng: np.random.Generator) -> list[list[int]]:
    return [list(b) for b in epoch_batches(len(groups), min(batch_size, len(groups)), steps, rng)]


def _evaluate(rm: RewardModel | Seq2SeqRewardModel, df: pd.DataFrame, clear_gap: float) -> dict[str, Any]:
    """Pairwise accuracy (all pairs with different scores, and those at least clear_gap apart), MSE and Pearson
    of the reward against the score, on the sampled completions only (added negatives are training data)."""
    if "negative" in df.columns:
        df = df[~df["negative"]].reset_index(drop=True)
    if df.empty:
        return {"rows": 0, "pairs": 0, "pairwise_accuracy": None}
    raw = raw_scores(rm, df["source"].tolist(), df["completion"].tolist())
    reward = rm.transform(raw)
    acc, n = pairwise_accuracy(df, raw)
    clear, n_clear = pairwise_accuracy(df, raw, clear_gap - 1e-12)
    target = df["score"].to_numpy()
    out: dict[str, Any] = {
        "rows": len(df),
        "pairs": n,
        "pairwise_accuracy": None if acc is None else round(acc, 4),
        "clear_pairs": n_clear,
        "pairwise_accuracy_clear": None if clear is None else round(clear, 4),
    }
    out["mse"] = round(float(np.mean((reward - target) ** 2)), 5)
    out.update(RM_OBJECTIVES[rm.objective].metrics(reward, target, df))
    if len(df) > 1 and np.std(target) > 0 and np.std(reward) > 0:
        out["pearson"] = round(float(np.corrcoef(reward, target)[0, 1]), 4)
    return out


def train_reward_model(cfg: RewardModelConfig) -> dict[str, Any]:
    """Train, evaluate and publish the reward model of `cfg` at cfg.out. Returns its manifest.

    Skips the work when cfg.out already holds a reward model made from the same config and shards.
    """
    out = Path(cfg.out)
    df, parents = load_comparisons(cfg.data)
    cfg_dump = cfg.model_dump(mode="json")
    cfg_slice = {k: v for k, v in cfg_dump.items() if k not in ("out", "device")}  # where it trains is not what
    done = manifests.read_manifest(out)
    if done is not None:
        if (
            done.get("kind") == KIND
            and done["config"] == cfg_slice
            and done["parents"] == parents
            and not manifests.verify(out)
        ):
            log.info(f"{out}: already trained from this config and these shards")
            return done
        raise RestError(
            f"{out} already holds another artifact (other config, shards or files); pick another `out` or delete it"
        )
    objective = RM_OBJECTIVES[cfg.objective](cfg)
    objective.check(df, cfg)
    valid_mask = held_out(df["source_id"], cfg.data.valid_fraction)
    train_df, valid_df = df[~valid_mask].reset_index(drop=True), df[valid_mask].reset_index(drop=True)
    if cfg.data.negatives:
        train_df = add_negatives(train_df, cfg.data, cfg.data.negatives, cfg.seed)
    train_df = objective.prepare(train_df)
    scores = train_df["score"].to_numpy()
    groups = [g for g in train_df.groupby("source_id", sort=True).indices.values() if objective.learns(scores[g])]
    sources, completions = train_df["source"].to_numpy(), train_df["completion"].to_numpy()
    targets = train_df["target"].to_numpy() if "target" in train_df.columns else None
    if not groups:
        raise RestError(
            f"{', '.join(cfg.data.shards)}: no training source has two completions whose `{cfg.data.score_column}` "
            f"differ by more than data.min_gap={cfg.data.min_gap}: nothing to rank (sample more per source)"
        )
    rm = build_reward_model(cfg, train_df["source"].drop_duplicates().tolist() + train_df["completion"].tolist())
    rm.model.to(resolve_device(cfg.device))
    log.info(
        f"reward model ({cfg.objective}): {len(train_df)} completions "
        f"({int(train_df.get('negative', pd.Series(dtype=bool)).sum())} "
        f"of other sources) of {len(groups)} sources to train on, "
        f"{len(valid_df)} held out; {sum(p.numel() for p in rm.model.parameters()):,} parameters"
    )
    rng = np.random.default_rng(cfg.seed)
    batches = []
    for batch in _batches(groups, cfg.train.batch_size, cfg.train.steps, rng):
        idx = np.concatenate([groups[b] for b in batch])
        batches.append(
            SourceBatch(
                sources[idx].tolist(),
                completions[idx].tolist(),
                scores[idx].tolist(),
                [len(groups[b]) for b in batch],
                None if targets is None else targets[idx].tolist(),
            )
        )

    def progress(step: int, loss: float) -> None:
        if step % max(1, len(batches) // 5) == 0:
            log.info(f"reward model step {step}/{len(batches)}: loss {loss:.4f}")

    stats = train(rm, batches, cfg.train, None, seed=cfg.seed, objective=objective, on_progress=progress)
    rm.model.eval()
    metrics = {
        "objective": cfg.objective,
        "score_column": cfg.data.score_column,
        "valid": _evaluate(rm, valid_df, cfg.data.clear_gap),
        "train": _evaluate(rm, train_df, cfg.data.clear_gap),
        "loss_first": stats["loss_first"],
        "loss_last": stats["loss_last"],
        "steps": stats["steps"],
        "seconds": round(stats["seconds"], 1),
    }
    stage = manifests.staging(out)
    manifests.clear(out)
    stage.mkdir(parents=True)
    save(rm.model, stage)
    save(rm.tokenizer, stage)
    manifests.write_json_atomic(
        stage / REWARD_FILE,
        {
            "objective": cfg.objective,
            "output": objective.output,
            "max_tokens": cfg.model.max_tokens,
            "score_column": cfg.data.score_column,
        },
    )
    manifests.write_json_atomic(stage / "metrics.json", metrics)
    manifests.write_atomic(stage / manifests.CONFIG_FILE, dump_config(cfg).encode())
    os.replace(stage, out)
    return manifests.publish(out, KIND, parents, cfg_slice, {"metrics": metrics})
