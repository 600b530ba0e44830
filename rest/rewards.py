"""Rewards: small callables `(sources, completions, references) -> scores in [0, 1]`, chosen by name.

    >>> chrf(["1"], ["eins"], ["eins"])
    array([1.])
    >>> score({"chrf": 3.0, "exact_match": 1.0}, ["1"], ["einz"], ["eins"])["reward_exact_match"]
    array([0.])

`score` returns one array per component (`reward_<name>`) and their weighted mean (`reward`), which is what
the Grow shards store. Every component is normalised to [0, 1] so that thresholds mean the same across rewards.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Mapping, Sequence

import numpy as np
from sacrebleu.metrics import BLEU, CHRF, TER

from rest.errors import RestError

Reward = Callable[[Sequence[str], Sequence[str], Sequence[str | None]], np.ndarray]

# One metric object each: building them is not free, and sentence_score is stateless.
_CHRF = CHRF()
_BLEU = BLEU(effective_order=True)  # effective order: short sentences without 4-grams still get a score
_TER = TER()


def _need_references(name: str, references: Sequence[str | None]) -> Sequence[str]:
    if any(r is None for r in references):
        raise RestError(
            f"reward `{name}` compares with the reference, but some sources have none: give every Grow source a "
            "`reference`, or pick a reward that needs no reference"
        )
    return references  # type: ignore[return-value]


def chrf(sources: Sequence[str], completions: Sequence[str], references: Sequence[str | None]) -> np.ndarray:
    """sacrebleu sentence chrF (char 6-grams, beta 2) / 100. Ignores whitespace: 1.0 is not exact match."""
    refs = _need_references("chrf", references)
    return np.array([_CHRF.sentence_score(c, [r]).score / 100.0 for c, r in zip(completions, refs)], dtype=np.float64)


def bleu(sources: Sequence[str], completions: Sequence[str], references: Sequence[str | None]) -> np.ndarray:
    """sacrebleu sentence BLEU (effective order) / 100."""
    refs = _need_references("bleu", references)
    return np.array([_BLEU.sentence_score(c, [r]).score / 100.0 for c, r in zip(completions, refs)], dtype=np.float64)


def ter(sources: Sequence[str], completions: Sequence[str], references: Sequence[str | None]) -> np.ndarray:
    """1 - sacrebleu TER / 100, floored at 0 (TER is an error rate and can exceed 100)."""
    refs = _need_references("ter", references)
    scores = [1.0 - _TER.sentence_score(c, [r]).score / 100.0 for c, r in zip(completions, refs)]
    return np.clip(np.array(scores, dtype=np.float64), 0.0, 1.0)


def exact_match(sources: Sequence[str], completions: Sequence[str], references: Sequence[str | None]) -> np.ndarray:
    """1.0 where the completion equals the reference after stripping outer whitespace, else 0.0."""
    refs = _need_references("exact_match", references)
    return np.array([float(c.strip() == r.strip()) for c, r in zip(completions, refs)], dtype=np.float64)


REWARDS: dict[str, Reward] = {"chrf": chrf, "bleu": bleu, "ter": ter, "exact_match": exact_match}
LEARNED = "learned"  # the reward-model component: needs the artifact's path (reward.learned), not a reference


def check_reward_names(names: Mapping[str, float] | Sequence[str]) -> None:
    known = [*REWARDS, LEARNED]
    for name in names:
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            hint = f" did you mean `{close[0]}`?" if close else ""
            raise ValueError(f"unknown reward {name!r}.{hint} Known rewards: {', '.join(known)}")


def component(name: str, learned: str | None = None) -> Reward:
    """The reward callable of one component; `learned` loads (once per process) the reward model at that path."""
    if name == LEARNED:
        if not learned:
            raise RestError("the `learned` reward needs the path of a reward model (reward.learned or --reward-model)")
        from rest.reward_model import load_reward_model

        rm = load_reward_model(learned)
        return lambda sources, completions, references: rm.score(sources, completions)
    check_reward_names([name])
    return REWARDS[name]


def score(
    components: Mapping[str, float],
    sources: Sequence[str],
    completions: Sequence[str],
    references: Sequence[str | None],
    learned: str | None = None,
) -> dict[str, np.ndarray]:
    """Score every component and their weighted mean: {"reward_<name>": ..., "reward": ...}."""
    check_reward_names(components)
    total_weight = float(sum(components.values()))
    out: dict[str, np.ndarray] = {}
    total = np.zeros(len(completions), dtype=np.float64)
    for name, weight in components.items():
        values = component(name, learned)(sources, completions, references)
        out[f"reward_{name}"] = values
        total += (weight / total_weight) * values
    out["reward"] = total
    return out


# ---------------------------------------------------------------------------------------------------------------
# Composite rewards (Sparrow): the weighted components, minus a length penalty, zeroed by a format check


def length_deviation(completions: Sequence[str], references: Sequence[str | None]) -> np.ndarray:
    """|len(completion) - len(reference)| / len(reference), in characters, capped at 1.

    >>> length_deviation(["zwei", "zweizwei", ""], ["zwei", "zwei", "zwei"])
    array([0., 1., 1.])
    """
    refs = _need_references("reward.length_penalty", references)
    return np.array([min(1.0, abs(len(c) - len(r)) / max(1, len(r))) for c, r in zip(completions, refs)], dtype=np.float64)


def format_valid(completions: Sequence[str], pattern: str) -> np.ndarray:
    """1.0 where the whole completion matches `pattern` (re.fullmatch), else 0.0."""
    regex = re.compile(pattern)
    return np.array([float(regex.fullmatch(c) is not None) for c in completions], dtype=np.float64)


def reward_names(rc) -> list[str]:
    """The `reward_<name>` columns a reward config writes: its components, then `length` and `format` if set."""
    return list(rc.components) + (["length"] if rc.length_penalty else []) + (["format"] if rc.format_regex else [])


def score_config(rc, sources: Sequence[str], completions: Sequence[str], references: Sequence[str | None]) -> dict[str, np.ndarray]:
    """The reward of a RewardConfig: clip(weighted mean - length_penalty x reward_length, 0, 1) x reward_format.

    `reward_length` is length_deviation (0 = as long as the reference), `reward_format` is format_valid: an
    output that does not match `format_regex` gets reward 0 whatever its components say.
    """
    out = score(rc.components, sources, completions, references, rc.learned)
    total = out["reward"]
    if rc.length_penalty:
        out["reward_length"] = length_deviation(completions, references)
        total = np.clip(total - rc.length_penalty * out["reward_length"], 0.0, 1.0)
    if rc.format_regex:
        out["reward_format"] = format_valid(completions, rc.format_regex)
        total = total * out["reward_format"]
    out["reward"] = total
    return out
