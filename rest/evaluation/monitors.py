"""Reward-hacking monitors: is the policy gaming the reward instead of getting better?

ReST's own reward model could be gamed (repeating a sentence raised its score), and PPO raised reward while BLEU
fell by 8 points; SuperHF measured hacking as how far outputs drift from the reference policy's. Every policy
gets these on the validation split, stored under `monitors` in its metrics.json:

    drift_chrf     sacrebleu corpus chrF of its outputs against policy-0's outputs (100 = the same outputs).
    drift_meteor   SuperHF's measure: mean METEOR of each output against policy-0's output for the same source
                   (nltk's meteor_score without synonyms: see `meteor`; 1 = the same outputs, 0 = no word shared)
    length_ratio   mean output length over mean reference length, in characters (1.0 = as long as the references)
    probes         each reward component, and the total, scores perturbed references; a probe that scores at or
                   above the untouched reference is flagged: the reward prefers a corrupted answer to the right one
    alarm          mean reward rose from the previous policy while chrF to the references fell
    input          does the policy read its input? the share of validation outputs that are one and the same
                   string, and how much worse the references' NLL gets when each is paired with another row's
                   source; `ignores_input` when most outputs are identical (far more than the references are) or
                   shuffling the sources leaves the NLL almost unchanged

    >>> probe_reward(lambda s, c, r: np.array([min(1.0, len(x) / (2 * len(y))) for x, y in zip(c, r)]),
    ...              ["1"], ["eins"])["repeated"]["flagged"]
    True
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from sacrebleu.metrics import CHRF

from rest.config import RewardConfig
from rest.rewards.components import component, score_config

Reward = Callable[..., np.ndarray]  # (sources, completions, references[, columns]) -> scores


def drift_chrf(outputs: Sequence[str], base_outputs: Sequence[str]) -> float:
    """Corpus chrF of `outputs` with `base_outputs` (policy-0's, same sources) as the references."""
    return round(CHRF().corpus_score(list(outputs), [list(base_outputs)]).score, 2)


class _NoSynonyms:
    """What nltk's METEOR asks for synonyms (a WordNet reader): none. WordNet's data is a download (or Debian's
    wordnet-base), and neither the phoneme strings of g2p nor German number words have WordNet synonyms."""

    @staticmethod
    def synsets(word: str) -> list:
        return []


def meteor(reference: str, hypothesis: str) -> float:
    """METEOR (nltk's single_meteor_score) of two whitespace-tokenised strings, lower-cased, matching exact words
    and Porter stems, no synonyms. Identical strings of n words score 1 - 0.5 / n^3 (METEOR's fragmentation
    penalty: 0.5 for one word, 0.9375 for two, 0.999 for eight); strings with no word in common score 0."""
    from nltk.translate.meteor_score import (
        single_meteor_score,  # 0.3 s to import: only where it is used
    )

    # nltk types `wordnet` as its corpus reader; it only calls synsets(), which _NoSynonyms answers
    return float(single_meteor_score(reference.split(), hypothesis.split(), wordnet=_NoSynonyms()))  # ty: ignore[invalid-argument-type]


def drift_meteor(outputs: Sequence[str], base_outputs: Sequence[str]) -> float:
    """Mean METEOR of each output against the base policy's output for the same source (SuperHF's drift)."""
    if not len(outputs):
        return float("nan")
    return round(float(np.mean([meteor(b, o) for o, b in zip(outputs, base_outputs)])), 4)


def meteor_within(completions: Sequence[str]) -> float | None:
    """Mean METEOR over every pair of one source's samples, both directions (SuperHF's mode-collapse measure:
    near 1 - 0.5 / n^3 when the samples are all the same string of n words); None for fewer than two samples."""
    scores = [meteor(a, b) for i, a in enumerate(completions) for j, b in enumerate(completions) if i != j]
    return float(np.mean(scores)) if scores else None


def length_ratio(outputs: Sequence[str], references: Sequence[str]) -> float:
    """Mean output length over mean reference length, in characters."""
    ref = float(np.mean([len(r) for r in references])) if len(references) else 0.0
    return round(float(np.mean([len(o) for o in outputs])) / ref, 4) if ref else float("nan")


# ---------------------------------------------------------------------------------------------------------------
# Reward probes


def _shuffle_words(text: str, rng: np.random.Generator) -> str:
    words = text.split()
    return " ".join(words[i] for i in rng.permutation(len(words)))


def _shuffle_chars(text: str, rng: np.random.Generator) -> str:
    return "".join(text[i] for i in rng.permutation(len(text)))


PROBES: dict[str, Callable[[str, np.random.Generator], str]] = {
    "repeated": lambda t, rng: f"{t} {t}",
    "words_shuffled": _shuffle_words,
    "chars_shuffled": _shuffle_chars,
    "truncated": lambda t, rng: t[: len(t) // 2],
    "empty": lambda t, rng: "",
}


def probe_reward(
    reward: Reward,
    sources: Sequence[str],
    references: Sequence[str],
    seed: int = 0,
    columns: Mapping[str, Sequence] | None = None,
) -> dict[str, Any]:
    """Score each probe of PROBES against the untouched references, on the rows the probe actually changes.

    Returns {probe: {"rows", "score", "reference", "flagged"}}: `score` is the mean reward of the perturbed
    references, `reference` the mean reward of the same references untouched (on the same rows). A probe that
    changes no row (shuffling the words of one-word references) has rows 0 and is never flagged.

    With `columns` (the rows' other columns), `reward` is called as reward(s, c, r, columns) on the probed rows'.
    Rows a reward does not apply to (NaN) are left out of both means.
    """
    rng = np.random.default_rng(seed)
    out: dict[str, Any] = {}
    for name, perturb in PROBES.items():
        changed = [(i, s, r, p) for i, (s, r) in enumerate(zip(sources, references)) if (p := perturb(r, rng)) != r]
        rows = [i for i, *_ in changed]
        pairs = [(s, r, p) for _, s, r, p in changed]
        if not pairs:
            out[name] = {"rows": 0, "score": None, "reference": None, "flagged": False}
            continue
        src, ref, probed = (list(x) for x in zip(*pairs))
        if columns is None:
            probe_values, ref_values = reward(src, probed, ref), reward(src, ref, ref)
        else:
            cols = {k: [v[i] for i in rows] for k, v in columns.items()}
            probe_values, ref_values = reward(src, probed, ref, cols), reward(src, ref, ref, cols)
        probe_values, ref_values = np.asarray(probe_values, dtype=np.float64), np.asarray(ref_values, dtype=np.float64)
        applies = ~(np.isnan(probe_values) | np.isnan(ref_values))
        if not applies.any():
            out[name] = {"rows": 0, "score": None, "reference": None, "flagged": False}
            continue
        probe_score = float(np.mean(probe_values[applies]))
        ref_score = float(np.mean(ref_values[applies]))
        out[name] = {
            "rows": len(pairs),
            "score": round(probe_score, 4),
            "reference": round(ref_score, 4),
            "flagged": bool(probe_score >= ref_score - 1e-9),
        }
    return out


PROBED: dict[str, dict[str, Any]] = {}  # probe_rewards' results in this process, by a hash of their inputs


def probe_rewards(
    reward_cfg,
    sources: Sequence[str],
    references: Sequence[str],
    seed: int = 0,
    device: str = "cpu",
    columns: Mapping[str, Sequence] | None = None,
) -> dict[str, Any]:
    """probe_reward for every configured component and for the total (`reward`) of a RewardConfig
    (or a plain {component: weight} mapping). `columns`: the rows' other columns, for a user's function.

    The probes score the reward, not a policy: every policy of a run validated on the same rows gets the same
    numbers, so they are computed once per process and inputs (PROBED) and copied after (SuperHF validates 50
    policies)."""
    if isinstance(reward_cfg, Mapping):
        reward_cfg = RewardConfig(components=dict(reward_cfg))
    cols = dict(columns or {})
    key = hashlib.sha256(
        json.dumps(
            [reward_cfg.model_dump(mode="json"), list(sources), list(references), seed, device, sorted(cols)],
            default=str,
        ).encode()
    ).hexdigest()
    for values in cols.values():
        key = hashlib.sha256((key + json.dumps(list(values), default=str)).encode()).hexdigest()
    if key not in PROBED:
        if len(PROBED) >= 8:
            PROBED.clear()
        PROBED[key] = _probe_rewards(reward_cfg, sources, references, seed, device, cols)
    return copy.deepcopy(PROBED[key])


def _probe_rewards(
    reward_cfg: RewardConfig,
    sources: Sequence[str],
    references: Sequence[str],
    seed: int,
    device: str,
    cols: dict[str, Sequence],
) -> dict[str, Any]:
    def scorer(name: str) -> Reward:
        return component(name, reward_cfg, device)

    probes = {name: probe_reward(scorer(name), sources, references, seed, cols) for name in reward_cfg.components}
    probes["reward"] = probe_reward(
        lambda s, c, r, k: score_config(reward_cfg, s, c, r, device, k)["reward"], sources, references, seed, cols
    )
    return probes


def probe_flags(probes: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Plain-words lines for the flagged probes, e.g. "reward `chrf` scores `repeated` references 1.000 >= 1.000"."""
    return [
        f"reward `{reward}` scores {probe.replace('_', ' ')} references {p['score']:.3f}, at or above the untouched "
        f"references' {p['reference']:.3f} ({p['rows']} rows): a policy can raise it without getting better"
        for reward, by_probe in probes.items()
        for probe, p in by_probe.items()
        if p["flagged"]
    ]


# ---------------------------------------------------------------------------------------------------------------
# The alarm: reward up, held-out reference metric down


def alarm(previous: Mapping[str, float] | None, current: Mapping[str, float]) -> dict[str, Any]:
    """Compare a policy's validation metrics with the previous policy's (`reward` in [0, 1], `chrf` in points).

    Fires when the mean reward rose while chrF to the references fell: the policy pleases the reward and drifts
    from what the references want.

    >>> alarm({"reward": 0.90, "chrf": 95.0}, {"reward": 0.93, "chrf": 94.0})["fired"]
    True
    """
    if previous is None:
        return {"previous": None, "reward_delta": None, "chrf_delta": None, "fired": False}
    reward_delta = round(float(current["reward"]) - float(previous["reward"]), 4)
    chrf_delta = round(float(current["chrf"]) - float(previous["chrf"]), 2)
    return {"reward_delta": reward_delta, "chrf_delta": chrf_delta, "fired": bool(reward_delta > 0 and chrf_delta < 0)}


# ---------------------------------------------------------------------------------------------------------------
# Does the policy read its input?

COLLAPSE_FRACTION = 0.5  # most outputs are one string...
COLLAPSE_MARGIN = 0.25  # ...and that is not what the references do (a 2-label task may have 60% one label)
MIN_INPUT_SENSITIVITY = 0.05  # shuffled sources cost < 5% more NLL: the input hardly matters to the policy


def input_use(
    outputs: Sequence[str], references: Sequence[str], nll: float, nll_shuffled_sources: float
) -> dict[str, Any]:
    """Signs that a policy ignores its input, from its greedy validation outputs and two NLLs of the references:
    with their own sources (`nll`) and with the sources shuffled among the rows (`nll_shuffled_sources`).

    A policy that learned the targets' marginal distribution only (an encoder-decoder whose decoder ignores the
    encoder) writes the same string for every input and loses nothing when the sources are shuffled.

    >>> input_use(["K AE T"] * 9 + ["D AO G"], ["K AE T", "D AO G"] * 5, 0.960, 0.974)["ignores_input"]
    True
    >>> input_use(["eins", "zwei"], ["eins", "zwei"], 0.1, 3.2)["ignores_input"]
    False
    """
    top, n = Counter(outputs).most_common(1)[0] if outputs else ("", 0)
    top_fraction = n / max(1, len(outputs))
    ref_fraction = Counter(references).most_common(1)[0][1] / max(1, len(references)) if references else 0.0
    sensitivity = (nll_shuffled_sources - nll) / nll_shuffled_sources if nll_shuffled_sources > 0 else 0.0
    collapsed = top_fraction >= COLLAPSE_FRACTION and top_fraction >= ref_fraction + COLLAPSE_MARGIN
    return {
        "top_output": top,
        "top_output_fraction": round(top_fraction, 4),
        "top_reference_fraction": round(ref_fraction, 4),
        "nll": round(nll, 4),
        "nll_shuffled_sources": round(nll_shuffled_sources, 4),
        "input_sensitivity": round(sensitivity, 4),
        "ignores_input": bool(collapsed or sensitivity < MIN_INPUT_SENSITIVITY),
    }


def policy_monitors(
    outputs: Sequence[str],
    base_outputs: Sequence[str],
    sources: Sequence[str],
    references: Sequence[str],
    components,
    valid: Mapping[str, float],
    previous: tuple[str, Mapping[str, float]] | None,
    seed: int = 0,
    nlls: tuple[float, float] | None = None,
    device: str = "cpu",
    columns: Mapping[str, Sequence] | None = None,
) -> dict[str, Any]:
    """Every monitor of one policy, as stored under `monitors` in its metrics.json. `nlls`: the references' NLL
    with their own sources and with shuffled sources (the `input` monitor)."""
    probes = probe_rewards(components, sources, references, seed, device, columns)
    fired = alarm(previous[1] if previous else None, valid)
    fired["previous"] = previous[0] if previous else None
    out = {
        "drift_chrf": drift_chrf(outputs, base_outputs),
        "drift_meteor": drift_meteor(outputs, base_outputs),
        "length_ratio": length_ratio(outputs, references),
        "probes": probes,
        "probe_flags": probe_flags(probes),
        "alarm": fired,
    }
    if nlls is not None:
        out["input"] = input_use(outputs, references, *nlls)
    return out
