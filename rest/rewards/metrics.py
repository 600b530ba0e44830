"""Pure text metrics (sacrebleu and string checks): no model, no config. Rewards and evaluation build on them.

    >>> chrf(["1"], ["eins"], ["eins"])
    array([1.])
    >>> corpus_metrics(["eins", "zwei"], ["eins", "drei"])["exact_match"]
    50.0

Sentence metrics take `(sources, completions, references)` and return one score in [0, 1] per row, which is the
shape of a reward (rest.rewards). Corpus metrics are in points (0-100), as sacrebleu reports them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
from sacrebleu.metrics import BLEU, CHRF, TER

from rest.errors import RestError

# One metric object each: building them is not free, and sentence_score is stateless.
_CHRF = CHRF()
_BLEU = BLEU(effective_order=True)  # effective order: short sentences without 4-grams still get a score
_TER = TER()


def need_references(name: str, references: Sequence[str | None]) -> Sequence[str]:
    """`references`, or a RestError naming `name` when a row has none."""
    if any(r is None for r in references):
        raise RestError(
            f"reward `{name}` compares with the reference, but some sources have none: give every Grow source a "
            "`reference`, or pick a reward that needs no reference"
        )
    return [r for r in references if r is not None]  # all of them (none is None here)


def chrf(sources: Sequence[str], completions: Sequence[str], references: Sequence[str | None]) -> np.ndarray:
    """sacrebleu sentence chrF (char 6-grams, beta 2) / 100. Ignores whitespace: 1.0 is not exact match."""
    refs = need_references("chrf", references)
    return np.array([_CHRF.sentence_score(c, [r]).score / 100.0 for c, r in zip(completions, refs)], dtype=np.float64)


def bleu(sources: Sequence[str], completions: Sequence[str], references: Sequence[str | None]) -> np.ndarray:
    """sacrebleu sentence BLEU (effective order) / 100."""
    refs = need_references("bleu", references)
    return np.array([_BLEU.sentence_score(c, [r]).score / 100.0 for c, r in zip(completions, refs)], dtype=np.float64)


def ter(sources: Sequence[str], completions: Sequence[str], references: Sequence[str | None]) -> np.ndarray:
    """1 - sacrebleu TER / 100, floored at 0 (TER is an error rate and can exceed 100)."""
    refs = need_references("ter", references)
    scores = [1.0 - _TER.sentence_score(c, [r]).score / 100.0 for c, r in zip(completions, refs)]
    return np.clip(np.array(scores, dtype=np.float64), 0.0, 1.0)


def exact_match(sources: Sequence[str], completions: Sequence[str], references: Sequence[str | None]) -> np.ndarray:
    """1.0 where the completion equals the reference after stripping outer whitespace, else 0.0."""
    refs = need_references("exact_match", references)
    return np.array([float(c.strip() == r.strip()) for c, r in zip(completions, refs)], dtype=np.float64)


# The sentence metrics by name: the reference-based reward components, and what a reward model's added negatives
# are rescored with.
SENTENCE_METRICS = {"chrf": chrf, "bleu": bleu, "ter": ter, "exact_match": exact_match}


def serve_chunk(data: bytes) -> None:
    """A scoring helper process (rest.rewards): `data` is a pickled (metric name, (sources, completions,
    references)); writes the pickled ("ok", scores) or ("error", exception) to stdout."""
    import pickle
    import sys

    name, args = pickle.loads(data)
    try:
        result = ("ok", SENTENCE_METRICS[name](*args))
    except Exception as exc:  # the caller re-raises it: a RestError stays one line there
        result = ("error", exc)
    sys.stdout.buffer.write(pickle.dumps(result))
    sys.stdout.buffer.flush()


def length_deviation(completions: Sequence[str], references: Sequence[str | None]) -> np.ndarray:
    """|len(completion) - len(reference)| / len(reference), in characters, capped at 1.

    >>> length_deviation(["zwei", "zweizwei", ""], ["zwei", "zwei", "zwei"])
    array([0., 1., 1.])
    """
    refs = need_references("reward.length_penalty", references)
    return np.array(
        [min(1.0, abs(len(c) - len(r)) / max(1, len(r))) for c, r in zip(completions, refs)], dtype=np.float64
    )


def format_valid(completions: Sequence[str], pattern: str) -> np.ndarray:
    """1.0 where the whole completion matches `pattern` (re.fullmatch), else 0.0."""
    regex = re.compile(pattern)
    return np.array([float(regex.fullmatch(c) is not None) for c in completions], dtype=np.float64)


def corpus_metrics(hypotheses: list[str], references: list[str]) -> dict[str, float]:
    """Corpus chrF and BLEU, and exact match, in points (0-100)."""
    return {
        "exact_match": round(100.0 * float(exact_match([], hypotheses, references).mean()), 2),
        "chrf": round(CHRF().corpus_score(hypotheses, [references]).score, 2),
        "bleu": round(BLEU().corpus_score(hypotheses, [references]).score, 2),
    }
