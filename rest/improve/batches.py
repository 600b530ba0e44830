"""What an Improve step learns from, one builder per shape of data: the Grow rows that clear tau (`ROWS`, for the
NLL losses) or pairs of one source's samples (`PAIRS`, for the preference losses), each mixed with data.train.

    data = ROWS.build(run, "grow-1", grow_summary, tau, cfg.improve, train_df, rng)
    data.batches, data.selection    # one Batch per optimiser step; what was selected (metrics.json's `improve`)

A new shape (say, groups of N samples of one source for a GRPO-like loss) is a builder here and an `ImproveData`
naming it; the loss that reads it (rest/improve/objectives.py) says so in its IMPROVE_LOSSES entry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from rest.artifacts.run import Run
from rest.artifacts.shards import grow_columns, read_grow
from rest.config import ImproveConfig
from rest.data.batching import mix_batches, text_lengths
from rest.errors import RestError
from rest.improve.selection import preference_pairs, select, sparse_selection
from rest.training.batches import Batch, PairBatch, token_weights


@dataclass(frozen=True)
class Learnt:
    """A builder's result: one batch per optimiser step, what was selected (metrics.json's `improve`), and a
    warning line when the Grow step gives little or nothing to learn from."""

    batches: list[Any]
    selection: dict[str, Any]
    warning: str | None = None


def row_batches(
    run: Run,
    grow_name: str,
    grow_summary: dict[str, Any],
    tau: float,
    ic: ImproveConfig,
    train_df: pd.DataFrame,
    rng: np.random.Generator,
) -> Learnt:
    """Improve's rows: the Grow samples selection keeps at tau (one per source and completion), mixed with
    data.train (improve.train_mix)."""
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

    floor = None if ic.selection == "percentile" else tau
    kept = select(
        read_grow(run.dir(grow_name), columns, min_reward=floor).reset_index(drop=True),
        tau,
        ic.selection,
        ic.percentile,
        ic.top_k,
        ic.max_per_source,
    )
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
    sparse = sparse_selection(
        tau,
        selection["kept_fraction"] if selection["kept_unique"] else 0.0,
        selection["grow_rows"],
        grow_summary.get("reward_quantiles", {}),
    )
    if sparse:
        selection["warning"] = sparse
    return Learnt(batches, selection, sparse)


def pair_batches(
    run: Run,
    grow_name: str,
    grow_summary: dict[str, Any],
    tau: float,
    ic: ImproveConfig,
    train_df: pd.DataFrame,
    rng: np.random.Generator,
) -> Learnt:
    """A preference loss's data: pairs of the Grow step's samples (improve.selection.preference_pairs; every row is
    read: the rejected ones are below tau), mixed with data.train rows learnt with NLL (improve.train_mix of a
    batch)."""
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
        PairBatch(
            [p_src[j] for j in ki],
            [p_c[j] for j in ki],
            [p_r[j] for j in ki],
            [t_src[j] for j in ti],
            [t_tgt[j] for j in ti],
        )
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
    warning = None
    if not len(pairs):
        warning = (
            f"no pair of Grow samples qualifies (tau={tau}, margin={pc.margin}); this step trains on data.train only"
        )
    return Learnt(batches, selection, warning)


@dataclass(frozen=True)
class ImproveData:
    """A shape of Improve data: `build(run, grow_name, grow_summary, tau, improve_config, train_df, rng)` and the
    words for what it learnt (`summary(selection)`, the step's log line; `kept(selection)`, `rest inspect`'s column)."""

    build: Callable[..., Learnt]
    summary: Callable[[dict[str, Any]], str]
    kept: Callable[[dict[str, Any]], str]


ROWS = ImproveData(
    row_batches,
    lambda sel: f"{sel['kept_unique']} unique samples of {sel['kept_sources']} sources",
    lambda sel: f"{sel['tau']}:{sel['kept_fraction']:.2f}",
)
PAIRS = ImproveData(
    pair_batches,
    lambda sel: f"{sel['pairs']} pairs of {sel['pair_sources']} sources",
    lambda sel: f"{sel['tau']}:{sel['pairs']} pairs",
)


def data_of(selection: dict[str, Any]) -> ImproveData:
    """The shape of data an Improve step's recorded selection came from (its metrics.json says: pairs or rows)."""
    return PAIRS if "pairs" in selection else ROWS
