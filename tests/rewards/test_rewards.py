import numpy as np
import pytest
from sacrebleu import sentence_chrf, sentence_ter

from rest.config import check_reward_names
from rest.errors import RestError
from rest.rewards import parallel
from rest.rewards.components import score
from rest.rewards.metrics import bleu, chrf, exact_match, ter


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


def test_composite_reward_length_penalty_and_format_check():
    from rest.config import RewardConfig
    from rest.rewards.components import reward_names, score_config

    rc = RewardConfig(components={"exact_match": 1.0}, length_penalty=0.5, format_regex="[a-zäöüß]+")
    assert reward_names(rc) == ["exact_match", "length", "format"]
    out = score_config(rc, ["2", "2", "2"], ["zwei", "zweizwei", "zwei2"], ["zwei", "zwei", "zwei"])
    assert out["reward_exact_match"].tolist() == [1.0, 0.0, 0.0]
    assert out["reward_length"].tolist() == [0.0, 1.0, 0.25]  # |8 - 4| / 4 capped at 1; |5 - 4| / 4
    assert out["reward_format"].tolist() == [1.0, 1.0, 0.0]  # "zwei2" has a digit
    # 1 - 0.5 x 0 = 1; max(0, 0 - 0.5 x 1) = 0; format fails -> 0
    assert out["reward"].tolist() == [1.0, 0.0, 0.0]
    chrf_only = score_config(RewardConfig(components={"chrf": 1.0}, length_penalty=0.5), ["2"], ["zweizwei"], ["zwei"])
    assert chrf_only["reward"][0] == pytest.approx(max(0.0, chrf_only["reward_chrf"][0] - 0.5))


def test_sparrow_composite_with_rules_length_penalty_and_format():
    from rest.config import RewardConfig
    from rest.rewards.components import reward_names, score_config

    rc = RewardConfig(
        components={"exact_match": 2.0},
        length_penalty=0.5,
        format_regex="[a-zäöüß ]+",
        rules={
            "no_repeat": {"regex": r"\b(\w+) \1\b", "weight": 1.0},
            "no_tausend": {"regex": "tausend", "weight": 1.0},
        },
    )
    assert reward_names(rc) == ["exact_match", "rule_no_repeat", "rule_no_tausend", "length", "format"]
    out = score_config(rc, ["2", "2", "2000"], ["zwei", "zwei zwei", "zwei tausend"], ["zwei", "zwei", "zwei tausend"])
    assert out["reward_rule_no_repeat"].tolist() == [1.0, 0.0, 1.0]  # 1 - P(violation): "zwei zwei" breaks it
    assert out["reward_rule_no_tausend"].tolist() == [1.0, 1.0, 0.0]
    # weighted mean over components and rules (2 + 1 + 1), then - 0.5 x length deviation, clipped, x format
    assert out["reward"].tolist() == pytest.approx(
        [
            (2 * 1 + 1 + 1) / 4 - 0.5 * 0.0,
            max(0.0, (2 * 0 + 0 + 1) / 4 - 0.5 * 1.0),  # |9 - 4| / 4 capped at 1
            (2 * 1 + 1 + 0) / 4,
        ]
    )


def test_a_rule_is_a_regex_or_a_classifier_and_its_model_must_classify(tmp_path):
    from rest.config import load_config
    from rest.rewards.kinds import artifact_dependencies

    with pytest.raises(RestError, match="either a `regex` or a `model`"):
        load_config("configs/smoke.yaml", ["reward.rules={x: {weight: 1.0}}"])
    with pytest.raises(RestError, match="not a valid regular expression"):
        load_config("configs/smoke.yaml", ["reward.rules={x: {regex: '[a-z'}}"])
    with pytest.raises(RestError, match="reward.rules"):
        load_config("configs/smoke.yaml", ["reward.rules={Bad-Name: {regex: x}}"])
    cfg = load_config("configs/smoke.yaml", [f"reward.rules={{x: {{model: {tmp_path}}}}}"])
    with pytest.raises(
        RestError, match=r"reward.rules.x.model: .* is not a finished reward_model.*objective: classification"
    ):
        artifact_dependencies(cfg.reward)


def test_a_bad_format_regex_names_the_key():
    from rest.config import load_config

    with pytest.raises(RestError, match=r"reward.format_regex.*not a valid regular expression"):
        load_config("configs/smoke.yaml", ["reward.format_regex='[a-z'"])
    with pytest.raises(RestError, match=r"the value `\[a-z` is not valid YAML .*'reward.format_regex=\"\[a-z\"'"):
        load_config("configs/smoke.yaml", ["reward.format_regex=[a-z"])


def test_repeated_rows_are_scored_once_and_get_the_same_scores():
    """score() scores each distinct (source, completion, reference) once; every row still gets its own numbers,
    in its own place, as if each were scored alone."""
    sources = ["1", "1", "2", "1", "2", "2"]
    completions = ["eins", "eins", "zwo", "ein", "zwei", "zwo"]
    references = ["eins", "eins", "zwei", "eins", "zwei", "zwei"]
    got = score({"chrf": 3.0, "exact_match": 1.0}, sources, completions, references)
    alone = [
        score({"chrf": 3.0, "exact_match": 1.0}, [s], [c], [r]) for s, c, r in zip(sources, completions, references)
    ]
    for name in ("reward", "reward_chrf", "reward_exact_match"):
        assert got[name].tolist() == [a[name][0] for a in alone]
    assert got["reward_exact_match"].tolist() == [1, 1, 0, 0, 1, 0]


def test_large_calls_are_scored_in_other_processes_with_the_same_numbers(monkeypatch):
    monkeypatch.setattr(parallel, "PARALLEL_MIN_CHARS", 1000)
    monkeypatch.setenv("REST_SCORE_PROCESSES", "2")
    rng = np.random.default_rng(0)
    words = ["eins", "zwei", "drei", "vier", "fünf", "sechs", "sieben", "acht"]
    comps = [" ".join(rng.choice(words, 3)) for _ in range(400)]
    refs = [" ".join(rng.choice(words, 3)) for _ in range(400)]
    started = []
    real_popen = parallel.subprocess.Popen
    monkeypatch.setattr(parallel.subprocess, "Popen", lambda *a, **k: started.append(a) or real_popen(*a, **k))
    scored = score({"chrf": 1.0, "bleu": 1.0}, [""] * 400, comps, refs)
    assert len(started) == 2  # one helper per metric call (this process scores the other half)
    assert np.array_equal(scored["reward_chrf"], [sentence_chrf(c, [r]).score / 100 for c, r in zip(comps, refs)])
    monkeypatch.setenv("REST_SCORE_PROCESSES", "1")  # off: no helper, the same numbers
    assert np.array_equal(score({"chrf": 1.0, "bleu": 1.0}, [""] * 400, comps, refs)["reward"], scored["reward"])
    monkeypatch.setenv("REST_SCORE_PROCESSES", "2")
    score({"chrf": 1.0}, [""] * 5, comps[:5], refs[:5])  # small calls stay here whatever the setting
    assert len(started) == 2
    # An error in a helper comes back as itself: a reference-based metric on rows without references.
    with pytest.raises(RestError, match="compares with the reference"):
        parallel.in_parallel("chrf")([], comps, refs[:200] + [None] * 200)


def test_a_bad_process_count_names_the_variable(monkeypatch):
    monkeypatch.setenv("REST_SCORE_PROCESSES", "two")
    with pytest.raises(RestError, match="REST_SCORE_PROCESSES"):
        parallel.scoring_processes()


def test_a_helper_that_dies_is_reported_with_its_last_words_and_leaves_no_process(monkeypatch):
    monkeypatch.setattr(parallel, "PARALLEL_MIN_CHARS", 10)
    monkeypatch.setenv("REST_SCORE_PROCESSES", "2")
    monkeypatch.setattr(parallel, "_WORKER", "import sys; sys.stdin.buffer.read(); sys.exit('helper gave up')")
    started = []
    real_popen = parallel.subprocess.Popen
    monkeypatch.setattr(
        parallel.subprocess, "Popen", lambda *a, **k: started.append(real_popen(*a, **k)) or started[-1]
    )
    with pytest.raises(RuntimeError, match="exit code 1: helper gave up"):
        parallel.in_parallel("chrf")([], ["eins zwei"] * 20, ["eins drei"] * 20)
    assert len(started) == 1 and started[0].poll() is not None
