"""What a training step reads, torch-free: rows (`Batch`), pairs (`PairBatch`), and per-token weights from token
scores. The objectives that read them are in rest/training/objectives.py (and rest/improve/objectives.py)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Batch:
    """One optimiser step's rows: sources, the targets to learn, per-row loss weights (None: all 1), and per-row
    token scores in [-1, 1] that weight each target token (token_weights; None: all 1, also for one row)."""

    sources: list[str]
    targets: list[str]
    weights: list[float] | None = None
    token_scores: list[Sequence[float] | None] | None = None

    def __len__(self) -> int:
        return len(self.sources)

    def _rows(self, a: int, b: int) -> Batch:
        return Batch(
            self.sources[a:b],
            self.targets[a:b],
            None if self.weights is None else self.weights[a:b],
            None if self.token_scores is None else self.token_scores[a:b],
        )

    def split(self, size: int) -> list[Batch]:
        """Consecutive parts of at most `size` rows (micro-batches of one optimiser step)."""
        return [self._rows(a, a + size) for a in range(0, len(self), size)]

    def share(self, rank: int, world: int) -> Batch:
        """Rank `rank`'s contiguous share of `world` (sizes differ by at most one row; with an even split, the
        shares are the micro-batches of one process with micro_batch_size = len / world)."""
        return self._rows(len(self) * rank // world, len(self) * (rank + 1) // world)


def _cuts(n: int, parts: int) -> list[tuple[int, int]]:
    """`parts` contiguous ranges covering range(n), sizes differing by at most one."""
    return [(n * j // parts, n * (j + 1) // parts) for j in range(parts)]


@dataclass(frozen=True)
class PairBatch:
    """One optimiser step of a preference loss: pairs (source, chosen, rejected) of one source's samples, and
    labelled rows (nll_sources, nll_targets) learnt with NLL beside them. Pieces (micro-batches, a rank's share)
    are contiguous parts of the pairs followed by the labelled rows."""

    sources: list[str]
    chosen: list[str]
    rejected: list[str]
    nll_sources: list[str]
    nll_targets: list[str]

    def __len__(self) -> int:
        return len(self.sources) + len(self.nll_sources)

    def _piece(self, j: int, parts: int) -> PairBatch:
        """Piece j of `parts` of the pairs followed by the labelled rows (none is empty while parts <= len)."""
        a, b = _cuts(len(self), parts)[j]
        n = len(self.sources)
        c, d = max(a - n, 0), max(b - n, 0)
        a, b = min(a, n), min(b, n)
        return PairBatch(
            self.sources[a:b], self.chosen[a:b], self.rejected[a:b], self.nll_sources[c:d], self.nll_targets[c:d]
        )

    def split(self, size: int) -> list[PairBatch]:
        """About len / size pieces (a pair counts as one row: its two sequences share the source)."""
        parts = -(-len(self) // size)
        return [self._piece(j, parts) for j in range(parts)]

    def share(self, rank: int, world: int) -> PairBatch:
        return self._piece(rank, world)


def token_weights(counts: Sequence[int], token_scores: Sequence[Sequence[float] | None]) -> list[np.ndarray]:
    """Per row, a weight for each of its `counts[i]` target tokens from its token scores (a seq2seq reward model's
    +1 before its correction departs from the completion, -1 from there on): (score + 1) / 2, so the tokens the
    reward model would keep count fully and those it would rewrite not at all.

    A row without scores (a labelled row of data.train) weighs 1 per token. A row whose scores do not line up with
    its tokens (another tokenizer than the reward model's, a target cut at max_target_tokens) weighs the mean of
    its weights on every token, i.e. its scalar reward.

    Scores [1, 1, -1] over 3 tokens: [1, 1, 0]; the same over 4 tokens: [2/3] * 4; None over 2 tokens: [1, 1].
    """
    out = []
    for count, scores in zip(counts, token_scores):
        if scores is None:
            out.append(np.ones(count, dtype=np.float32))
            continue
        w = np.clip((np.asarray(scores, dtype=np.float32) + 1) / 2, 0, 1)
        out.append(w if len(w) == count else np.full(count, w.mean() if len(w) else 1.0, dtype=np.float32))
    return out
