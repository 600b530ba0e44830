"""Improve objectives and selections, with worked values."""

from __future__ import annotations

import copy
import math

import pandas as pd
import pytest
import torch

from rest.config import ImproveConfig
from rest.filtering import select
from rest.objectives import NLL, Batch, reduce_nll, sequence_nll, token_kl, token_nll
from rest.training import train
from tests.test_models_sampling import _tiny


def _batch():
    """Two sequences, vocabulary 2, uniform-ish logits chosen so each target token's NLL is known.

    Row 0 has 1 target token with p = 0.5 (NLL ln 2); row 1 has 3 target tokens with p = 0.5, e/(1+e), 1/(1+e)
    (NLLs ln 2, ln(1 + e^-1), ln(1 + e)), then padding (-100).
    """
    logits = torch.tensor([
        [[0.0, 0.0], [5.0, 1.0], [3.0, 3.0]],
        [[0.0, 0.0], [1.0, 0.0], [1.0, 0.0]],
    ])
    labels = torch.tensor([[0, -100, -100], [1, 0, 1]])
    a = math.log(2)
    b, c, d = math.log(2), math.log(1 + math.exp(-1)), math.log(1 + math.e)
    return logits, labels, a, (b, c, d)


def test_summed_token_mean_and_sequence_mean_nll():
    logits, labels, a, (b, c, d) = _batch()
    sums, counts = sequence_nll(logits, labels)
    assert sums.tolist() == pytest.approx([a, b + c + d])
    assert counts.tolist() == [1, 3]
    assert reduce_nll(sums, counts, "token_mean").item() == pytest.approx((a + b + c + d) / 4)
    assert reduce_nll(sums, counts, "token_mean").item() == pytest.approx(token_nll(logits, labels).item())
    assert reduce_nll(sums, counts, "sequence_mean").item() == pytest.approx((a + (b + c + d) / 3) / 2)
    assert reduce_nll(sums, counts, "sum").item() == pytest.approx((a + b + c + d) / 2)


def test_reward_weights():
    logits, labels, a, (b, c, d) = _batch()
    sums, counts = sequence_nll(logits, labels)
    w = torch.tensor([1.0, 0.5])
    assert reduce_nll(sums, counts, "token_mean", w).item() == pytest.approx((a + 0.5 * (b + c + d)) / (1 + 0.5 * 3))
    assert reduce_nll(sums, counts, "sequence_mean", w).item() == pytest.approx((a + 0.5 * (b + c + d) / 3) / 1.5)
    # a weight of 0 drops a sequence entirely
    assert reduce_nll(sums, counts, "sum", torch.tensor([0.0, 1.0])).item() == pytest.approx(b + c + d)


def test_kl_of_a_policy_against_itself_is_zero_and_positive_otherwise():
    logits, labels, *_ = _batch()
    assert token_kl(logits, logits.clone(), labels).item() == pytest.approx(0.0, abs=1e-7)
    # one target token, p = (0.5, 0.5) against q = softmax(1, 0): KL = 0.5 ln(0.5/q0) + 0.5 ln(0.5/q1)
    q0 = math.e / (1 + math.e)
    want = 0.5 * math.log(0.5 / q0) + 0.5 * math.log(0.5 / (1 - q0))
    one = torch.tensor([[[0.0, 0.0]]]), torch.tensor([[[1.0, 0.0]]]), torch.tensor([[0]])
    assert token_kl(*one).item() == pytest.approx(want)
    # padding positions do not count
    other = logits.clone()
    other[0, 1:] = torch.tensor([9.0, -9.0])
    assert token_kl(logits, other, labels).item() == pytest.approx(0.0, abs=1e-7)


def test_train_with_kl_prior_weights_and_sequence_mean_on_a_tiny_model(tmp_path):
    policy, cfg = _tiny(tmp_path, "bart")
    reference = copy.deepcopy(policy)
    batches = [Batch(["12", "5"], ["zwölf", "fünf"], [1.0, 0.5])] * 3
    stats = train(policy, batches, ImproveConfig(steps=3, lr=1e-2, warmup_steps=0), cfg, seed=0,
                  objective=NLL("sequence_mean", kl_beta=0.5), reference=reference)
    assert stats["steps"] == 3 and stats["kl_last"] > 0  # the policy moved away from its frozen copy
    assert all(not p.requires_grad for p in reference.model.parameters())
    with pytest.raises(ValueError, match="needs the reference"):
        train(policy, batches, ImproveConfig(), cfg, seed=0, objective=NLL(kl_beta=0.1))


def _one_source(rewards):
    return pd.DataFrame({"source_id": ["s"] * len(rewards), "sample_index": range(len(rewards)),
                         "completion": [f"c{i}" for i in range(len(rewards))], "reward": rewards})


def test_selections_worked_example():
    rows = _one_source([0.2, 0.5, 0.9, 0.9])  # the docstring of select
    assert select(rows, 0.3).reward.tolist() == [0.5, 0.9, 0.9]
    assert sorted(select(rows, 0.3, "percentile", percentile=0.75).reward.tolist()) == [0.9, 0.9]  # quantile 0.9
    top = select(rows, 0.3, "top_k", top_k=1)
    assert top.sample_index.tolist() == [2]  # the best, lowest sample index on ties
    assert sorted(select(rows, 0.0, max_per_source=2).sample_index.tolist()) == [2, 3]
    # percentile is per source: a hard source still contributes its best samples
    hard = pd.concat([rows, _one_source([0.1, 0.2, 0.3, 0.4]).assign(source_id="h")])
    kept = select(hard, 0.0, "percentile", percentile=0.75)
    assert kept[kept.source_id == "h"].reward.tolist() == [0.4]
