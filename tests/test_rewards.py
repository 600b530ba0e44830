import numpy as np
import pytest
from sacrebleu import sentence_chrf, sentence_ter

from rest.rewards import bleu, check_reward_names, chrf, exact_match, score, ter


def test_chrf_is_sacrebleu_sentence_chrf_over_100():
    hyps, refs = ["dreitausend", "zweihundert", ""], ["dreitausendeins", "zweihundert", "eins"]
    got = chrf([""] * 3, hyps, refs)
    want = [sentence_chrf(h, [r]).score / 100 for h, r in zip(hyps, refs)]
    assert got == pytest.approx(want)
    assert got[1] == 1.0 and got[2] == 0.0
    assert 0.0 < got[0] < 1.0


def test_ter_is_inverted_and_floored():
    # "a b" vs reference "a c": one substitution in 2 reference words -> TER 50 -> reward 0.5.
    assert ter(["x"], ["a b"], ["a c"])[0] == pytest.approx(0.5)
    assert sentence_ter("a b", ["a c"]).score == pytest.approx(50.0)
    # 5 insertions against a 1-word reference: TER 500 -> 1 - 5 = -4 -> floored at 0.
    assert ter(["x"], ["a b c d e f"], ["a"])[0] == 0.0
    assert ter(["x"], ["a c"], ["a c"])[0] == 1.0


def test_exact_match_strips_outer_whitespace_only():
    assert exact_match([], [" eins ", "ein s", "Eins"], ["eins", "eins", "eins"]).tolist() == [1.0, 0.0, 0.0]


def test_bleu_in_unit_range():
    v = bleu([""], ["the cat sat on the mat"], ["the cat sat on the mat"])
    assert v[0] == pytest.approx(1.0)


def test_weighted_mean_of_components():
    # chrF 1.0 (identical) weight 3, exact match 0 ("einz" != "eins")... use a pair where both are known:
    out = score({"chrf": 3.0, "exact_match": 1.0}, ["1", "1"], ["eins", "zwei"], ["eins", "eins"])
    assert out["reward_exact_match"].tolist() == [1.0, 0.0]
    want = 0.75 * out["reward_chrf"] + 0.25 * out["reward_exact_match"]
    assert out["reward"] == pytest.approx(want)
    assert out["reward"][0] == pytest.approx(1.0)
    assert set(out) == {"reward", "reward_chrf", "reward_exact_match"}


def test_unknown_reward_suggests_the_close_name():
    with pytest.raises(ValueError, match="did you mean `chrf`"):
        check_reward_names(["chrff"])


def test_reference_free_sources_are_refused_by_reference_rewards():
    from rest.errors import RestError

    with pytest.raises(RestError, match="needs|compares with the reference"):
        chrf(["1"], ["eins"], [None])
    assert np.all(chrf(["1"], ["eins"], ["eins"]) == 1.0)
