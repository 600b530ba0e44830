"""Batches of row indices: epochs of a labelled set, kept Grow rows mixed with it, grouped by length.

batches = epoch_batches(len(train), batch_size=32, steps=300, rng=rng)
batches = mix_batches(len(kept), len(train), train_mix=0.25, batch_size=32, steps=300, rng=rng)
batches = mix_batches(..., lengths=(kept_lengths, train_lengths))   # batches of rows of similar length
"""

from __future__ import annotations

import numpy as np


def epoch_batches(
    n: int, batch_size: int, steps: int, rng: np.random.Generator, lengths: np.ndarray | None = None
) -> list[np.ndarray]:
    """`steps` batches of indices into n items, walking through a fresh permutation each epoch.

    With `lengths` (one per item), the batches are grouped by length: see group_by_length.
    """
    if n == 0 or batch_size == 0:
        return [np.zeros(0, dtype=np.int64) for _ in range(steps)]
    out, pool = [], np.zeros(0, dtype=np.int64)
    for _ in range(steps):
        while len(pool) < batch_size:
            pool = np.concatenate([pool, rng.permutation(n)])
        out.append(pool[:batch_size])
        pool = pool[batch_size:]
    if lengths is not None:
        window = length_window(n, batch_size)
        out = group_by_length(out, lengths, window, window_order(steps, window, rng))
    return out


def text_lengths(sources: list[str], targets: list[str]) -> np.ndarray:
    """What a row's padding cost is grouped by: its source and target characters (a proxy for tokens that needs
    no tokenizer)."""
    return np.array([len(s) + len(t) for s, t in zip(sources, targets)], dtype=np.int64)


# At most this many consecutive batches are regrouped by length (transformers' `group_by_length` uses megabatches
# of 50 batches): enough to make batches of near-equal lengths, few enough that the order of the data survives.
LENGTH_WINDOW = 50


def length_window(n: int, batch_size: int) -> int:
    """How many consecutive batches one length group spans: at most one epoch of the n items (a window of several
    epochs would put the copies of one item, all of the same length, into the same batch) and at most LENGTH_WINDOW.
    Batches of no rows (a part of a mixed batch that is empty) constrain nothing."""
    if batch_size == 0:
        return LENGTH_WINDOW
    return max(1, min(LENGTH_WINDOW, n // batch_size))


def sort_windows(batches: list[np.ndarray], lengths: np.ndarray, window: int) -> list[np.ndarray]:
    """Within each run of `window` consecutive batches, the same indices dealt again shortest first: batch k of
    the run gets the k-th slice of its indices sorted by length (stable), in the original batch sizes.

    >>> [b.tolist() for b in sort_windows([np.array([0, 1]), np.array([2, 3])], np.array([9, 1, 5, 2]), 2)]
    [[1, 3], [2, 0]]
    """
    out: list[np.ndarray] = []
    for start in range(0, len(batches), window):
        run = batches[start : start + window]
        pooled = np.concatenate(run)
        pooled = pooled[np.argsort(np.asarray(lengths)[pooled], kind="stable")]
        cuts = np.cumsum([len(b) for b in run])[:-1]
        out.extend(np.split(pooled, cuts))
    return out


def window_order(steps: int, window: int, rng: np.random.Generator) -> list[int]:
    """Batch positions with each run of `window` consecutive positions shuffled: a length-grouped run does not
    go from its shortest batch to its longest."""
    return [start + k for start in range(0, steps, window) for k in rng.permutation(min(window, steps - start))]


def group_by_length(batches: list[np.ndarray], lengths: np.ndarray, window: int, order: list[int]) -> list[np.ndarray]:
    """Batches of rows of similar length, so that little of a batch is padding (transformers' `group_by_length`,
    kept to runs of `window` batches): each run's indices sorted by length and dealt again, then the batches put in
    `order` (window_order: each run shuffled). Every item is drawn as often as before, and within the same run of
    steps."""
    sorted_batches = sort_windows(batches, lengths, window)
    return [sorted_batches[k] for k in order]


def mix_batches(
    n_kept: int,
    n_train: int,
    train_mix: float,
    batch_size: int,
    steps: int,
    rng: np.random.Generator,
    lengths: tuple[np.ndarray, np.ndarray] | None = None,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per step: (indices into kept, indices into train), with round(train_mix * batch_size) from train.

    With nothing kept every row comes from train, so Improve degrades to more BC rather than failing. With
    `lengths` (of the kept rows, of the train rows), both parts are grouped by length (group_by_length) and the
    batches are shuffled alike, so that a batch's kept rows and train rows are of similar length and every batch
    keeps its train_mix.
    """
    n_from_train = batch_size if n_kept == 0 else round(train_mix * batch_size)
    if n_train == 0:
        n_from_train = 0
    kept = epoch_batches(n_kept, batch_size - n_from_train, steps, rng)
    train = epoch_batches(n_train, n_from_train, steps, rng)
    if lengths is not None:
        # One window and one order for both parts: the smaller window, so that neither repeats an item within one.
        window = min(length_window(n_kept, batch_size - n_from_train), length_window(n_train, n_from_train))
        order = window_order(steps, window, rng)
        kept, train = (
            group_by_length(kept, lengths[0], window, order),
            group_by_length(train, lengths[1], window, order),
        )
    return list(zip(kept, train))
