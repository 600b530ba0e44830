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


def select(rows: pd.DataFrame, tau: float) -> pd.DataFrame:
    """Rows with reward >= tau, one per (source, normalised completion): the best-rewarded, then lowest index.

    Dedup matters because a confident policy samples the same correct answer N times; training on N copies
    would weight easy sources N times more than hard ones.
    """
    kept = rows[rows["reward"] >= tau].copy()
    kept["_norm"] = kept["completion"].map(normalise_text)
    kept = kept.sort_values(["source_id", "_norm", "reward", "sample_index"], ascending=[True, True, False, True])
    kept = kept.drop_duplicates(["source_id", "_norm"], keep="first").drop(columns="_norm")
    return kept.reset_index(drop=True)


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
