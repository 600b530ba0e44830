"""Reward-hacking monitors, with worked values."""

from __future__ import annotations

import numpy as np
import pytest

from rest.evaluation.monitors import (
    alarm,
    drift_chrf,
    drift_meteor,
    length_ratio,
    meteor,
    meteor_within,
    policy_monitors,
    probe_flags,
    probe_reward,
    probe_rewards,
)


def prefers_repetition(sources, completions, references):
    """A deliberately gameable reward: length relative to twice the reference, capped at 1.

    The reference itself scores 0.5; the reference repeated twice ("eins eins": 9 chars >= 2 x 4) scores 1.0.
    """
    return np.array([min(1.0, len(c) / (2 * len(r))) for c, r in zip(completions, references)])


REFS = ["einhundert zwei", "sieben", "dreitausend und vier"]


def test_a_reward_that_prefers_repeated_text_is_flagged():
    probes = probe_reward(prefers_repetition, ["102", "7", "3004"], REFS)
    assert probes["repeated"]["flagged"]
    assert probes["repeated"]["score"] == 1.0 and probes["repeated"]["reference"] == 0.5
    # shuffling keeps the length, so this reward cannot tell a shuffled reference from the real one either
    assert {p for p, v in probes.items() if v["flagged"]} == {"repeated", "words_shuffled", "chars_shuffled"}
    lines = probe_flags({"long": probes})
    assert "reward `long` scores repeated references 1.000, at or above the untouched references' 0.500" in lines[0]


def test_chrf_and_exact_match_flag_no_probe():
    probes = probe_rewards({"chrf": 1.0, "exact_match": 1.0}, ["102", "7", "3004"], REFS)
    assert set(probes) == {"chrf", "exact_match", "reward"}
    assert probe_flags(probes) == []
    assert probes["chrf"]["repeated"]["reference"] == 1.0
    assert 0 < probes["chrf"]["repeated"]["score"] < 1.0  # repetition costs chrF precision
    assert probes["exact_match"]["chars_shuffled"]["score"] == 0.0


def test_a_probe_that_changes_nothing_is_not_applicable():
    # shuffling the words of one-word references changes none of them: no rows, never flagged
    probes = probe_reward(lambda s, c, r: np.ones(len(c)), ["7", "8"], ["sieben", "acht"])
    assert probes["words_shuffled"] == {"rows": 0, "score": None, "reference": None, "flagged": False}
    assert probes["empty"]["flagged"]  # a constant reward cannot tell empty output from the reference


def test_alarm_fires_when_reward_rises_and_reference_chrf_falls():
    assert alarm({"reward": 0.90, "chrf": 95.0}, {"reward": 0.93, "chrf": 94.0}) == {
        "reward_delta": 0.03,
        "chrf_delta": -1.0,
        "fired": True,
    }
    assert not alarm({"reward": 0.90, "chrf": 95.0}, {"reward": 0.93, "chrf": 96.0})["fired"]  # both rose: progress
    assert not alarm({"reward": 0.90, "chrf": 95.0}, {"reward": 0.88, "chrf": 94.0})["fired"]  # both fell: just worse
    assert not alarm(None, {"reward": 0.9, "chrf": 95.0})["fired"]


def test_meteor_similarity_of_identical_and_disjoint_completions():
    # identical strings of n words: 1 - 0.5 / n^3 (one chunk); one word: 0.5; nothing shared: 0
    assert meteor("HH AH L OW", "HH AH L OW") == pytest.approx(1 - 0.5 / 4**3)
    assert meteor("zwei", "zwei") == pytest.approx(0.5)
    assert meteor("K AE T", "D AO G") == 0.0
    assert meteor("sieben tausend", "Sieben Tausend") == pytest.approx(1 - 0.5 / 8)  # lower-cased
    # 2 of 3 words matched in one chunk each way: P = R = 2/3, Fmean = 2/3, penalty 0.5 (1/2)^3 = 0.0625
    assert meteor("a b c", "a b d") == pytest.approx(2 / 3 * (1 - 0.0625))
    assert meteor_within(["D AO G"] * 4) == pytest.approx(1 - 0.5 / 27)  # collapsed onto one string
    assert meteor_within(["K AE T", "D AO G", "F IH SH"]) == 0.0
    assert meteor_within(["K AE T"]) is None
    assert drift_meteor(["K AE T", "D AO G"], ["K AE T", "F IH SH"]) == pytest.approx((1 - 0.5 / 27) / 2, abs=1e-4)


def test_drift_and_length_ratio():
    assert drift_chrf(["sieben", "acht"], ["sieben", "acht"]) == 100.0
    assert drift_chrf(["neun", "zwei"], ["sieben", "acht"]) < 30
    assert length_ratio(["ab", "abcd"], ["abc", "abc"]) == 1.0  # 3 chars on average against 3
    assert length_ratio(["abcabc"], ["abc"]) == 2.0


def test_policy_monitors_puts_it_together():
    m = policy_monitors(
        outputs=["sieben sieben", "acht"],
        base_outputs=["sieben", "acht"],
        sources=["7", "8"],
        references=["sieben", "acht"],
        components={"chrf": 1.0},
        valid={"reward": 0.95, "chrf": 90.0},
        previous=("policy-0", {"reward": 0.9, "chrf": 92.0}),
    )
    assert m["alarm"] == {"reward_delta": 0.05, "chrf_delta": -2.0, "fired": True, "previous": "policy-0"}
    assert m["length_ratio"] == pytest.approx(17 / 10, abs=1e-4)
    assert m["drift_chrf"] < 100
    assert m["probe_flags"] == []


def test_input_monitor_fires_on_a_policy_that_ignores_its_input(tmp_path):
    """Two tiny real models: one trained on the true pairs reads its input; one trained with the sources shuffled
    at every step learns only what the targets look like, and the monitor says so (from NLLs and outputs)."""
    import numpy as np

    from rest.config import PolicyOptimFields
    from rest.evaluation.monitors import input_use
    from rest.models.sampling import generate
    from rest.training.batches import Batch
    from rest.training.loop import train
    from rest.training.objectives import target_nll
    from tests.helpers import tiny_policy

    sources = ["1", "2", "3", "4", "5", "6"]
    targets = ["eins", "zwei", "drei", "vier", "fünf", "sechs"]
    optim = PolicyOptimFields(steps=300, batch_size=6, lr=3e-3, warmup_steps=5, weight_decay=0.0)
    rng = np.random.default_rng(0)
    verdicts = {}
    for name, shuffle in (("reads", False), ("ignores", True)):
        policy, cfg = tiny_policy(tmp_path, "bart")
        batches = [
            Batch([sources[j] for j in (rng.permutation(6) if shuffle else range(6))], targets)
            for _ in range(optim.steps)
        ]
        train(policy, batches, optim, cfg, seed=0)
        outputs = generate(policy, sources, cfg, greedy=True, max_new_tokens=12).completions
        shuffled = [sources[j] for j in (1, 2, 3, 4, 5, 0)]
        verdicts[name] = input_use(
            outputs, targets, target_nll(policy, sources, targets, cfg), target_nll(policy, shuffled, targets, cfg)
        )
    assert not verdicts["reads"]["ignores_input"] and verdicts["reads"]["input_sensitivity"] > 0.5, verdicts["reads"]
    assert verdicts["ignores"]["ignores_input"] and verdicts["ignores"]["input_sensitivity"] < 0.05, verdicts["ignores"]


def test_input_monitor_worked_values():
    from rest.evaluation.monitors import input_use

    m = input_use(["a", "a", "a", "b"], ["a", "b", "c", "d"], nll=1.0, nll_shuffled_sources=2.0)
    assert m["top_output"] == "a" and m["top_output_fraction"] == 0.75 and m["input_sensitivity"] == 0.5
    assert m["ignores_input"]  # 75% one output while the references' commonest is 25%
    two_labels = input_use(["pos"] * 6 + ["neg"] * 4, ["pos"] * 6 + ["neg"] * 4, nll=0.1, nll_shuffled_sources=0.7)
    assert not two_labels["ignores_input"]  # 60% one output is what the references do, and the input matters
