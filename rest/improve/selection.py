"""Improve's data: the Grow rows whose reward clears tau, deduplicated per source, and preference pairs.

kept = select(shards, tau=1.0)
pairs = preference_pairs(rows, tau=0.5, pairs="best_worst", margin=0.1)   # a preference loss's data
"""

from __future__ import annotations

import re
import unicodedata

import pandas as pd

_SPACE = re.compile(r"\s+")


def normalise_text(text: str) -> str:
    """The form two completions are compared in for dedup: NFKC, whitespace runs collapsed, ends stripped.

    >>> normalise_text("  zwei\\u00a0 tausend ")
    'zwei tausend'

    Case is kept: for many tasks "Eins" and "eins" are different outputs.
    """
    return _SPACE.sub(" ", unicodedata.normalize("NFKC", text)).strip()


def select(
    rows: pd.DataFrame,
    tau: float,
    selection: str = "threshold",
    percentile: float = 0.75,
    top_k: int = 1,
    max_per_source: int | None = None,
) -> pd.DataFrame:
    """Rows with reward >= tau, one per (source, normalised completion): the best-rewarded, then lowest index.

    Dedup matters because a confident policy samples the same correct answer N times; training on N copies
    would weight easy sources N times more than hard ones. Then, per source:
      selection="percentile": only rows at or above the `percentile` quantile of that source's N rewards
                              (relative to how hard the source is: a hard source still contributes its best);
      selection="top_k":      only its `top_k` best distinct completions;
      max_per_source:         at most that many, best reward first (ReST-EM's cap).

    Rewards [0.2, 0.5, 0.9, 0.9] of one source, distinct completions, tau 0.3: threshold keeps 0.5, 0.9, 0.9;
    percentile 0.75 (quantile 0.9) keeps 0.9, 0.9; top_k 1 keeps the first 0.9.
    """
    if selection not in ("threshold", "percentile", "top_k"):
        raise ValueError(f"unknown selection {selection!r}; known: threshold, percentile, top_k")
    floor = (
        rows.groupby("source_id")["reward"].transform(lambda r: r.quantile(percentile))
        if selection == "percentile"
        else None
    )
    keep = rows["reward"] >= tau
    if floor is not None:
        keep &= rows["reward"] >= floor - 1e-12
    kept = rows[keep].copy()
    kept["_norm"] = kept["completion"].map(normalise_text)
    kept = kept.sort_values(["source_id", "_norm", "reward", "sample_index"], ascending=[True, True, False, True])
    kept = kept.drop_duplicates(["source_id", "_norm"], keep="first")
    cap = top_k if selection == "top_k" else None
    if max_per_source is not None:
        cap = max_per_source if cap is None else min(cap, max_per_source)
    if cap is not None:
        best_first = kept.sort_values(["source_id", "reward", "sample_index"], ascending=[True, False, True])
        kept = best_first.groupby("source_id", sort=False).head(cap).sort_values(["source_id", "_norm"])
    return kept.drop(columns="_norm").reset_index(drop=True)


SPARSE_KEEP = 0.01  # under this share of a Grow step's samples kept, Improve learns little but data.train


def sparse_selection(tau: float, kept_fraction: float, rows: int, quantiles: dict[str, float]) -> str | None:
    """What to tell the user when tau keeps under 1% of a Grow step's samples, else None.

    The usual cause is a threshold on another scale than the reward's: ReST's thresholds are written for a metric
    in [0, 1] that reaches 1, while a learned reward model regresses towards the mean and rarely predicts its top.

    >>> sparse_selection(0.95, 0.3, 1000, {"p50": 0.8, "p90": 1.0}) is None
    True
    >>> print(sparse_selection(0.95, 0.0007, 32000, {"p50": 0.349, "p90": 0.61}))  # doctest: +NORMALIZE_WHITESPACE
    tau=0.95 keeps 0.07% of the 32000 Grow samples (their rewards: median 0.349, p90 0.61), so this step learns little
    but data.train. Put improve.thresholds on this reward's scale (a learned reward model's scores are its own), or keep
    each source's best with improve.selection: top_k and a threshold under the rewards' median.
    """
    if kept_fraction >= SPARSE_KEEP:
        return None
    kept = "none" if kept_fraction <= 0 else f"{kept_fraction:.2%}"
    return (
        f"tau={tau} keeps {kept} of the {rows} Grow samples (their rewards: median "
        f"{quantiles.get('p50')}, p90 {quantiles.get('p90')}), so this step learns little but data.train. Put "
        "improve.thresholds on this reward's scale (a learned reward model's scores are its own), or keep each "
        "source's best with improve.selection: top_k and a threshold under the rewards' median."
    )


def preference_pairs(rows: pd.DataFrame, tau: float, pairs: str = "best_worst", margin: float = 0.1) -> pd.DataFrame:
    """Pairs (chosen, rejected) of one source's distinct samples (normalised as for dedup) for a preference loss:
    the chosen one's reward clears tau, the gap is at least `margin` and above 0.

    pairs="best_worst": one pair per source, its best against its worst (a tie for best: the lower sample_index);
    pairs="margin":     every such pair of its distinct samples.

    One source, distinct completions with rewards a 0.9, b 0.6, c 0.2, tau 0.5, margin 0.3: best_worst gives
    (a, c); margin gives (a, b), (a, c), (b, c). Columns: source_id, source, chosen, rejected, chosen_reward,
    rejected_reward; sorted by source_id, then chosen reward (highest first).
    """
    if pairs not in ("best_worst", "margin"):
        raise ValueError(f"unknown pairs {pairs!r}; known: best_worst, margin")
    df = rows.assign(_norm=rows["completion"].map(normalise_text))
    df = df.sort_values(["source_id", "_norm", "reward", "sample_index"], ascending=[True, True, False, True])
    df = df.drop_duplicates(["source_id", "_norm"], keep="first")
    df = df.sort_values(["source_id", "reward", "sample_index"], ascending=[True, False, True])
    out: list[tuple] = []
    for source_id, group in df.groupby("source_id", sort=True):
        source = group["source"].iloc[0]
        comp, rew = group["completion"].tolist(), group["reward"].tolist()
        if pairs == "best_worst":
            candidates = [(0, len(comp) - 1)] if len(comp) > 1 else []
        else:
            candidates = [(i, j) for i in range(len(comp)) for j in range(i + 1, len(comp))]
        for i, j in candidates:
            gap = rew[i] - rew[j]
            if rew[i] >= tau and gap > 0 and gap >= margin - 1e-12:
                out.append((source_id, source, comp[i], comp[j], rew[i], rew[j]))
    columns = ["source_id", "source", "chosen", "rejected", "chosen_reward", "rejected_reward"]
    return pd.DataFrame(out, columns=columns)
