"""Learned reward models: the Bradley-Terry loss and pairwise accuracy with worked values; then the real thing small:
`rest reward train` (regression, Bradley-Terry, classification, seq2seq) on the smoke run's Grow shards, Grow with
the seq2seq reward and two rules on sources without references, best-of-N `rest generate` and
`rest eval --best-of-n`."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from rest.config import RewardModelConfig
from rest.errors import RestError
from rest.improve.selection import select
from rest.rewards.reward_model import build_reward_model
from rest.rewards.reward_objectives import RM_OBJECTIVES, SourceBatch, bradley_terry_loss, pairs_of
from rest.rewards.reward_training import held_out, pairwise_accuracy
from rest.rewards.seq2seq_rm import divergence_scores
from rest.training.loop import train
from tests.conftest import CONFIG, rest


def test_bradley_terry_loss_of_one_pair_with_known_scores():
    rewards = torch.tensor([2.0, 0.0])
    one = (torch.tensor([0]), torch.tensor([1]))
    assert bradley_terry_loss(rewards, [one]).item() == pytest.approx(-math.log(1 / (1 + math.exp(-2.0))), abs=1e-6)
    assert bradley_terry_loss(rewards, [one]).item() == pytest.approx(0.126928, abs=1e-6)
    flipped = (torch.tensor([1]), torch.tensor([0]))  # the pair ranked the wrong way round costs more
    assert bradley_terry_loss(rewards, [flipped]).item() == pytest.approx(2.126928, abs=1e-6)


def test_bradley_terry_averages_pairs_within_a_source_then_sources():
    # source A: one pair (2 vs 0) -> 0.126928; source B: 3 completions all scored 0 -> 3 pairs of log 2 each.
    rewards = torch.tensor([2.0, 0.0, 0.0, 0.0, 0.0])
    b_better, b_worse = pairs_of(np.array([3.0, 2.0, 1.0]), 0.0)
    groups = [(torch.tensor([0]), torch.tensor([1])), (torch.as_tensor(b_better + 2), torch.as_tensor(b_worse + 2))]
    per_source = (0.126928 + math.log(2)) / 2  # not (0.126928 + 3 log 2) / 4: every source weighs the same
    assert bradley_terry_loss(rewards, groups).item() == pytest.approx(per_source, abs=1e-6)
    # and its gradient raises the better completion of each pair
    r = rewards.clone().requires_grad_(True)
    bradley_terry_loss(r, groups).backward()
    assert r.grad[0] < 0 < r.grad[1] and r.grad[2] < 0 < r.grad[4]


def test_pairs_and_pairwise_accuracy():
    better, worse = pairs_of(np.array([0.5, 1.0, 0.5, 0.9]), 0.0)
    assert sorted(zip(better.tolist(), worse.tolist())) == [(1, 0), (1, 2), (1, 3), (3, 0), (3, 2)]
    better, _ = pairs_of(np.array([0.5, 1.0, 0.5, 0.9]), 0.2)  # min_gap 0.2: 1.0 vs 0.9 is not a pair
    assert len(better) == 4
    df = pd.DataFrame({"source_id": ["a", "a", "a", "b", "b"], "score": [1.0, 0.5, 0.0, 0.2, 0.2]})
    # source a: 3 pairs; predicted orders 2 of them right and ties 1 (counts 1/2); source b: its scores tie, no pair
    acc, n = pairwise_accuracy(df, np.array([0.9, 0.1, 0.1, 5.0, -5.0]))
    assert (acc, n) == (pytest.approx(2.5 / 3), 3)
    assert pairwise_accuracy(df.iloc[3:], np.array([1.0, 0.0])) == (None, 0)


def test_held_out_split_is_by_source_id_and_stable():
    ids = pd.Series([f"pool-{i:05d}" for i in range(2000)])
    mask = held_out(ids, 0.1)
    assert 150 < mask.sum() < 250
    assert (held_out(ids[::-1].reset_index(drop=True), 0.1) == mask[::-1]).all()  # order does not matter


def test_learned_component_needs_a_model_and_an_existing_artifact(tmp_path):
    from rest.config import load_config
    from rest.stages.preflight import check_run_inputs as check_inputs

    with pytest.raises(RestError, match="reward.learned"):
        load_config(CONFIG, ["reward.components={learned: 1.0}"])
    cfg = load_config(CONFIG, ["reward.components={learned: 1.0}", f"reward.learned={tmp_path / 'nothing'}"])
    with pytest.raises(RestError, match="does not exist; train one with `rest reward train"):
        check_inputs(cfg)


@pytest.mark.integration
def test_reward_model_grow_without_references_and_best_of_n(clean_run, tmp_path):
    rm = tmp_path / "rm"
    args = [
        "reward",
        "train",
        "--config",
        "configs/reward-numbers.yaml",
        "--out",
        str(rm),
        f"data.shards=[{clean_run / 'grow-1'}]",
        f"model.pretrained={clean_run / 'policy-0'}",
        "train.steps=30",
        "train.warmup_steps=5",
        "data.valid_fraction=0.25",
    ]
    out = rest(*args).stdout
    assert "pairwise_accuracy" in out and str(rm) in out
    manifest = json.loads((rm / "_manifest.json").read_text())
    grow_id = json.loads((clean_run / "grow-1" / "_manifest.json").read_text())["id"]
    assert manifest["kind"] == "reward_model" and manifest["parents"] == [grow_id]
    assert {"config.json", "model.safetensors", "tokenizer.json", "reward.json", "metrics.json", "config.yaml"} <= set(
        manifest["files"]
    )
    metrics = json.loads((rm / "metrics.json").read_text())
    assert (
        metrics["valid"]["rows"] > 0 and metrics["train"]["pairs"] > 0 and metrics["loss_last"] < metrics["loss_first"]
    )
    assert not list(tmp_path.glob(".rm*"))  # no staging copy left behind
    assert "already trained" in rest(*args).stderr  # a rerun of the same config and shards does no work
    # the pairwise objective on the same shards: all pairs of a source in a batch, reward = sigmoid(output)
    bt = tmp_path / "rm-bt"
    rest(*args[:5], str(bt), *args[6:], "objective=bradley_terry", "train.steps=10")
    assert json.loads((bt / "reward.json").read_text())["output"] == "sigmoid"
    bt_metrics = json.loads((bt / "metrics.json").read_text())
    assert bt_metrics["objective"] == "bradley_terry" and bt_metrics["train"]["pairs"] > 0
    from rest.rewards.reward_model import load_reward_model

    sample = pd.read_parquet(clean_run / "grow-1").head(16)
    scores = load_reward_model(bt).score(sample["source"].tolist(), sample["completion"].tolist())
    assert ((scores > 0) & (scores < 1)).all()

    # A Sparrow rule model: a classifier of a 0/1 column (1 = the rule is broken: the output has no "und")
    labelled = tmp_path / "rule.parquet"
    shard = pd.read_parquet(clean_run / "grow-1")
    shard.assign(violation=(~shard["completion"].str.contains("und")).astype(float)).to_parquet(labelled)
    rule_rm = tmp_path / "rule-und"
    rest(
        *args[:5],
        str(rule_rm),
        f"data.shards=[{labelled}]",
        *args[7:],
        "objective=classification",
        "data.score_column=violation",
        "data.negatives=0",
        "train.steps=40",
    )
    rule_metrics = json.loads((rule_rm / "metrics.json").read_text())["valid"]
    assert (
        0 < rule_metrics["positive_fraction"] < 1
        and rule_metrics["accuracy"] > rule_metrics["positive_fraction"] - 0.05
    )
    bad = rest(
        *args[:5],
        str(tmp_path / "x"),
        f"data.shards=[{clean_run / 'grow-1'}]",
        *args[7:],
        "objective=classification",
        "data.negatives=0",
        check=False,
    )
    assert bad.returncode != 0 and "classification learns a 0/1 label" in bad.stderr

    # The sequence-to-sequence reward model (language feedback): rewrite (source, completion) as the source's best
    s2s = tmp_path / "rm-s2s"
    rest(
        *args[:3],
        "configs/reward-numbers-seq2seq.yaml",
        "--out",
        str(s2s),
        *args[6:],
        "train.steps=24",
        "train.batch_size=12",
        "data.negatives=2",
    )
    s2s_metrics = json.loads((s2s / "metrics.json").read_text())
    assert s2s_metrics["objective"] == "seq2seq" and s2s_metrics["loss_last"] < s2s_metrics["loss_first"]
    assert 0 <= s2s_metrics["valid"]["keeps_best"] <= 1 and s2s_metrics["valid"]["pairwise_accuracy"] is not None

    # Grow scores sources that have no reference with the seq2seq reward and two rules (Sparrow's composite)
    run = tmp_path / "learned"
    rest(
        "run",
        "--config",
        CONFIG,
        "--run",
        str(run),
        "reward.components={learned: 1.0}",
        f"reward.learned={s2s}",
        f"reward.rules={{und: {{model: {rule_rm}, weight: 0.5}}, short: {{regex: '^.{{0,3}}$', weight: 0.5}}}}",
        "data.pool=tests/fixtures/unlabelled-small.parquet",
        "improve.thresholds=[0.3, 0.6]",
        "improve.token_weights=learned",
    )
    rows = pd.read_parquet(run / "grow-1")
    assert len(rows) == 40 * 8 and rows["reference"].isna().all()
    assert {"reward", "reward_learned", "reward_rule_und", "reward_rule_short"} <= set(rows.columns)
    # the seq2seq reward: per token +1 until its greedy correction departs from the completion, EOS included
    assert pq.read_schema(next((run / "grow-1").glob("shard-*.parquet"))).field(
        "reward_tokens_learned"
    ).type == pa.list_(pa.float32())
    corrector = load_reward_model(s2s)
    targets = corrector.target_ids(rows["completion"].tolist())
    corrections = corrector.correction_ids(rows["source"].tolist(), rows["completion"].tolist())
    for row, target, correction in zip(rows.itertuples(), targets, corrections):
        tokens = np.asarray(row.reward_tokens_learned)
        assert tokens.tolist() == divergence_scores(target, correction).tolist()
        assert row.reward_learned == pytest.approx((tokens.mean() + 1) / 2)
    assert rows["reward_learned"].std() > 0
    p_broken = load_reward_model(rule_rm).score(rows["source"].tolist(), rows["completion"].tolist())
    np.testing.assert_allclose(rows["reward_rule_und"].to_numpy(), 1 - p_broken, atol=1e-5)
    assert (rows["reward_rule_short"] == (rows["completion"].str.len() > 3)).all()
    want = (rows["reward_learned"] + 0.5 * rows["reward_rule_und"] + 0.5 * rows["reward_rule_short"]) / 2
    np.testing.assert_allclose(rows["reward"].to_numpy(), want.to_numpy(), atol=1e-9)
    assert rows["reward"].between(0, 1).all() and rows["reward"].std() > 0
    grow = json.loads((run / "grow-1" / "_manifest.json").read_text())
    rule_id = json.loads((rule_rm / "_manifest.json").read_text())["id"]
    s2s_id = json.loads((s2s / "_manifest.json").read_text())["id"]
    assert grow["parents"][1:] == [s2s_id, rule_id]  # lineage: which models scored the step
    # Improve weighed each kept sample's tokens by its token scores: (score + 1) / 2, over the rows tau 0.3 keeps
    kept = select(rows, 0.3)
    learnt = json.loads((run / "improve-1-1" / "metrics.json").read_text())["improve"]
    share = np.concatenate([(np.asarray(t) + 1) / 2 for t in kept["reward_tokens_learned"]]).mean()
    assert learnt["kept_unique"] == len(kept) and learnt["token_weight_mean"] == pytest.approx(share, abs=1e-4)

    # best-of-N: one row per source, K candidates with their rewards, the chosen one is the best
    bon = tmp_path / "bon.parquet"
    rest(
        "generate",
        "--run",
        str(run),
        "--data",
        "tests/fixtures/unlabelled-small.parquet",
        "--best-of-n",
        "4",
        "--reward",
        "learned",
        "--out",
        str(bon),
    )
    table = pd.read_parquet(bon)
    assert len(table) == 40 and table["candidates"].map(len).eq(4).all()
    for row in table.itertuples():
        assert row.chosen_index == int(np.argmax(row.candidate_rewards))
        assert row.output == row.candidates[row.chosen_index] and row.reward == max(row.candidate_rewards)
    # a reference-based reward on sources without references is refused before any sampling
    proc = rest(
        "generate",
        "--run",
        str(run),
        "--data",
        "tests/fixtures/unlabelled-small.parquet",
        "--best-of-n",
        "4",
        "--reward",
        "chrf",
        "--out",
        str(tmp_path / "x.parquet"),
        check=False,
    )
    assert proc.returncode == 2 and "--reward learned" in proc.stderr and not (tmp_path / "x.parquet").exists()

    result = json.loads(
        rest(
            "eval",
            "--run",
            str(run),
            "--data",
            "tests/fixtures/valid-small.parquet",
            "--best-of-n",
            "4",
            "--reward",
            "chrf",
        ).stdout
    )
    assert result["best_of_n"] == 4 and result["n"] == 40 and "exact_match" in result["greedy"]
    # the best of 4 by chrF is at least as good by chrF as the mean candidate, and strictly when candidates differ
    assert result["chosen_reward"] > result["candidate_reward"] > 0


def _source_batches(steps: int) -> list[SourceBatch]:
    rng = np.random.default_rng(0)
    words = ["eins", "zwei", "drei", "vier", "fünf", "sechs"]
    out = []
    for _ in range(steps):
        sizes = [3, 1, 4, 2]  # whole sources of different sizes: micro-batches of 3 rows cut between them
        rows = sum(sizes)
        out.append(
            SourceBatch(
                [str(s) for s, n in enumerate(sizes) for _ in range(n)],
                [str(rng.choice(words)) for _ in range(rows)],
                rng.random(rows).round(2).tolist(),
                sizes,
            )
        )
    return out


@pytest.mark.parametrize("objective", ["regression", "bradley_terry"])
def test_reward_model_objectives_train_on_the_one_loop_and_micro_batches_add_up(objective, tmp_path):
    """The reward-model losses are objectives of training/loop.py: micro-batches of whole sources take the step's
    totals, so 3 steps in pieces of at most 3 rows give the losses of 3 steps in one piece (up to float sums).
    Dropout off: a piece draws its own dropout masks."""
    arch = json.loads(Path("configs/models/reward-bert.json").read_text()) | {"hidden_dropout_prob": 0.0}
    (tmp_path / "bert.json").write_text(json.dumps(arch))
    cfg = RewardModelConfig(
        objective=objective,
        model={"architecture": str(tmp_path / "bert.json")},
        train={"steps": 3, "lr": 1e-2, "warmup_steps": 0},
    )
    pieces = cfg.model_copy(update={"train": cfg.train.model_copy(update={"micro_batch_size": 3})})
    batches = _source_batches(3)
    assert [len(p) for p in batches[0].split(3)] == [3, 1, 4, 2]  # a source is never cut: 4 rows alone
    texts = [t for b in batches for t in b.sources + b.completions]
    losses = {}
    for name, c in (("whole", cfg), ("pieces", pieces)):
        rm = build_reward_model(c, texts)
        stats = train(rm, batches, c.train, None, seed=0, objective=RM_OBJECTIVES[objective](c))
        losses[name] = stats["losses"]
        # scoring within a 1 MiB budget: passes of max_tokens positions of its widest activation, the same scores
        pairs = batches[0].sources, batches[0].completions
        assert rm.rows_per_pass(1, 512) < len(pairs[0])
        np.testing.assert_allclose(rm.score(*pairs, logits_mb=1), rm.score(*pairs), rtol=1e-6)  # other padding
    assert losses["whole"][0] != losses["whole"][-1]  # it trains
    np.testing.assert_allclose(losses["pieces"], losses["whole"], rtol=1e-5)
