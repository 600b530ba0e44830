"""What a reward component's builder returns: a small typed value, not attributes set on a function."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

# (sources, completions, references[, logits_mb=]) -> (one score per row, one array of token scores per row)
TokenScores = Callable[..., tuple[np.ndarray, list[np.ndarray]]]


@dataclass(frozen=True)
class Scorer:
    """A component's scorer.

    `score(sources, completions, references)` (with `columns=` when `takes_columns`: the rows' `source_id` and
    extra data columns) -> one value in [0, 1] per row, NaN where it does not apply. `tokens`, when set, scores each
    token too (a seq2seq reward model): Grow stores those as `reward_tokens_<name>`. A model's scorer
    (`takes_budget`) sizes its passes by the run's `logits_mb`.

        >>> s = Scorer(lambda sources, completions, references: np.array([float(c == "a") for c in completions]))
        >>> s(["x", "y"], ["a", "b"], [None, None])
        array([1., 0.])
    """

    score: Callable[..., np.ndarray]
    tokens: TokenScores | None = None
    takes_columns: bool = False
    takes_budget: bool = False  # a model's passes: score (and tokens) take the run's `logits_mb=`

    def __call__(
        self,
        sources: Sequence[str],
        completions: Sequence[str],
        references: Sequence[str | None],
        columns: Mapping[str, Sequence] | None = None,
        logits_mb: int | None = None,
    ) -> np.ndarray:
        extra: dict = {"logits_mb": logits_mb} if self.takes_budget else {}
        if self.takes_columns:
            extra["columns"] = columns
        return self.score(sources, completions, references, **extra)

    def token_scores(
        self, sources: Sequence[str], completions: Sequence[str], references: Sequence[str | None], logits_mb=None
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        assert self.tokens is not None
        extra: dict = {"logits_mb": logits_mb} if self.takes_budget else {}
        return self.tokens(sources, completions, references, **extra)
