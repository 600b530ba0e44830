"""Improve's data: the Grow rows whose reward clears tau, deduplicated per source, mixed with the labelled set.

    kept = select(shards, tau=1.0)
    batches = mix_batches(len(kept), len(train), train_mix=0.25, batch_size=32, steps=300, rng=rng)
"""

from __future__ import annotations

import re
import unicodedata

import numpy as np
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
    floor = rows.groupby("source_id")["reward"].transform(lambda r: r.quantile(percentile)) if selection == "percentile" else None
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


def epoch_batches(n: int, batch_size: int, steps: int, rng: np.random.Generator) -> list[np.ndarray]:
    """`steps` batches of indices into n items, walking through a fresh permutation each epoch."""
    if n == 0 or batch_size == 0:
        return [np.zeros(0, dtype=np.int64) for _ in range(steps)]
    out, pool = [], np.zeros(0, dtype=np.int64)
    for _ in range(steps):
        while len(pool) < batch_size:
            pool = np.concatenate([pool, rng.permutation(n)])
        out.append(pool[:batch_size])
        pool = pool[batch_size:]
    return out


def mix_batches(
    n_kept: int, n_train: int, train_mix: float, batch_size: int, steps: int, rng: np.random.Generator
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per step: (indices into kept, indices into train), with round(train_mix * batch_size) from train.

    With nothing kept every row comes from train, so Improve degrades to more BC rather than failing.
    """
    n_from_train = batch_size if n_kept == 0 else round(train_mix * batch_size)
    if n_train == 0:
        n_from_train = 0
    kept = epoch_batches(n_kept, batch_size - n_from_train, steps, rng)
    train = epoch_batches(n_train, n_from_train, steps, rng)
    return list(zip(kept, train))
