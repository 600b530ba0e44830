"""Improve objectives and selections, with worked values."""

from __future__ import annotations

import copy
import math

import pandas as pd
import pytest
import torch

from rest.config import ImproveConfig
from rest.improve.objectives import Preference, preference_losses
from rest.improve.selection import preference_pairs, select
from rest.models.policy import prompt_ids, target_counts
from rest.training.batches import Batch, PairBatch, token_weights
from rest.training.loop import train
from rest.training.objectives import (
    NLL,
    first_divergence,
    reduce_nll,
    sequence_nll,
    token_kl,
    token_nll,
    unlikelihood_sums,
    weighted_sequence_nll,
)
from tests.helpers import tiny_policy


def _batch():
    """Two sequences, vocabulary 2, uniform-ish logits chosen so each target token's NLL is known.

    Row 0 has 1 target token with p = 0.5 (NLL ln 2); row 1 has 3 target tokens with p = 0.5, e/(1+e), 1/(1+e)
    (NLLs ln 2, ln(1 + e^-1), ln(1 + e)), then padding (-100).
    """
    logits = torch.tensor(
        [
            [[0.0, 0.0], [5.0, 1.0], [3.0, 3.0]],
            [[0.0, 0.0], [1.0, 0.0], [1.0, 0.0]],
        ]
    )
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


def test_token_weights_from_token_scores_worked_values():
    """(score + 1) / 2 per token; a row without scores weighs 1; scores that do not line up with the tokens give
    every token their mean (the scalar reward)."""
    got = token_weights([3, 4, 2, 2], [[1, 1, -1], [1, 1, -1], None, [0.5, -0.5]])
    assert [w.tolist() for w in got] == [[1, 1, 0], pytest.approx([2 / 3] * 4), [1, 1], [0.75, 0.25]]
    logits, labels, a, (b, c, d) = _batch()
    sums, counts = weighted_sequence_nll(logits, labels, token_weights([1, 3], [None, [1, -1, 1]]))
    assert sums.tolist() == pytest.approx([a, b + d]) and counts.tolist() == [1, 2]  # row 1's 2nd token is out
    assert reduce_nll(sums, counts, "token_mean").item() == pytest.approx((a + b + d) / 3)
    assert reduce_nll(sums, counts, "sequence_mean").item() == pytest.approx((a + (b + d) / 2) / 2)
    ones = weighted_sequence_nll(logits, labels, token_weights([1, 3], [None, None]))
    assert [t.tolist() for t in ones] == [t.tolist() for t in sequence_nll(logits, labels)]


def test_token_weighted_nll_on_a_tiny_model_and_its_micro_batches(tmp_path):
    """A token scored -1 does not train: the loss equals the NLL of the other tokens only; pieces of the batch
    normalised by the whole batch's totals add up to the whole; with every score +1 it is the plain NLL."""
    policy, cfg = tiny_policy(tmp_path, "bart")
    policy.model.eval()
    sources, targets = ["12", "5", "7"], ["zwölf", "fünf", "sieben"]
    counts = target_counts(policy, targets, cfg)
    scores = [[1.0] * (counts[0] - 1) + [-1.0], [-1.0] * counts[1], None]
    objective = NLL("token_mean")
    whole, _ = objective(policy, Batch(sources, targets, None, scores), cfg)
    from rest.models.policy import encode_pairs, forward_logits

    encoded = encode_pairs(policy, sources, targets, cfg)
    per_token = torch.nn.functional.cross_entropy(
        forward_logits(policy, encoded).transpose(1, 2), encoded["labels"], ignore_index=-100, reduction="none"
    )
    kept = per_token[0, : counts[0] - 1].sum() + per_token[2, : counts[2]].sum()
    assert whole.item() == pytest.approx((kept / (counts[0] - 1 + counts[2])).item(), rel=1e-5)
    batch = Batch(sources, targets, [0.5, 1.0, 2.0], scores)
    totals = objective.totals(policy, batch, cfg)
    assert totals["nll"] == pytest.approx(0.5 * (counts[0] - 1) + 2.0 * counts[2])
    full, _ = objective(policy, batch, cfg, None, totals)
    assert sum(objective(policy, p, cfg, None, totals)[0].item() for p in batch.split(1)) == pytest.approx(
        full.item(), rel=1e-5
    )
    plain, _ = objective(policy, Batch(sources, targets), cfg)
    all_kept, _ = objective(policy, Batch(sources, targets, None, [[1.0] * n for n in counts]), cfg)
    assert all_kept.item() == pytest.approx(plain.item(), rel=1e-6)
    assert [p.token_scores for p in batch.split(2)] == [scores[:2], scores[2:]]
    assert batch.share(1, 3).token_scores == [scores[1]]


def test_unlikelihood_of_the_first_diverging_token_worked_values():
    """-log(1 - p) at each row's first token scored below 0: p = 0.5 gives ln 2, p = e/(1+e) gives ln(1 + e)."""
    assert first_divergence([4, 2, 3, 2], [[1, 1, -1, -1], [1, 1], [1, -1], None]) == [2, None, None, None]
    logits, labels, a, (b, c, d) = _batch()
    assert unlikelihood_sums(logits, labels, [0, 1]).tolist() == pytest.approx([math.log(2), d])
    assert unlikelihood_sums(logits, labels, [None, 2]).tolist() == pytest.approx([0.0, c])
    # targets that start later in the row (a decoder-only prompt before them): the d-th target token, not column d
    shifted = torch.tensor([[-100, 0, -100], [1, 0, 1]])
    assert unlikelihood_sums(logits, shifted, [0, None]).tolist() == pytest.approx([math.log(1 + math.exp(4)), 0.0])


def test_unlikelihood_in_the_nll_on_a_tiny_model_and_its_micro_batches(tmp_path):
    """The loss is the token-weighted NLL plus alpha x the mean over rows of -log(1 - p) at each first divergence;
    pieces normalised by the whole batch's totals add up to the whole; training with it lowers the probability of
    the diverging token (here an EOS where the reward model would go on) far more than the token weights alone."""
    policy, cfg = tiny_policy(tmp_path, "bart")
    sources, targets = ["12", "5", "7"], ["zwölf", "fünf", "sieben"]
    counts = target_counts(policy, targets, cfg)
    scores = [[1.0] * (counts[0] - 1) + [-1.0], [1.0] * counts[1], None]  # row 0: its EOS is where it went wrong
    batch = Batch(sources, targets, None, scores)
    policy.model.eval()
    weighted, _ = NLL("token_mean")(policy, batch, cfg)
    loss, stats = NLL("token_mean", unlikelihood=0.5)(policy, batch, cfg)
    from rest.models.policy import encode_pairs, forward_logits

    encoded = encode_pairs(policy, sources, targets, cfg)
    logits = forward_logits(policy, encoded)
    eos = torch.log_softmax(logits[0, counts[0] - 1], dim=-1)[policy.tokenizer.eos_token_id].exp()
    assert stats["unlikelihood"] == pytest.approx(-math.log(1 - eos.item()) / 3, rel=1e-4)
    assert loss.item() == pytest.approx(weighted.item() + 0.5 * stats["unlikelihood"], rel=1e-5)
    objective = NLL("token_mean", unlikelihood=0.5)
    totals = objective.totals(policy, batch, cfg)
    parts = [objective(policy, p, cfg, None, totals) for p in batch.split(1)]
    assert sum(p[0].item() for p in parts) == pytest.approx(loss.item(), rel=1e-5)
    assert sum(p[1].get("unlikelihood", 0.0) for p in parts) == pytest.approx(stats["unlikelihood"], rel=1e-5)

    def p_eos_after(alpha):
        trained = copy.deepcopy(policy)
        train(
            trained,
            [batch] * 30,
            ImproveConfig(lr=1e-2, steps=30, thresholds=[0.5], token_weights="learned", unlikelihood=alpha),
            cfg,
            seed=0,
            objective=NLL("token_mean", unlikelihood=alpha),
        )
        trained.model.eval()
        with torch.no_grad():
            out = forward_logits(trained, encode_pairs(trained, sources, targets, cfg))
        return torch.softmax(out[0, counts[0] - 1], dim=-1)[policy.tokenizer.eos_token_id].item()

    assert p_eos_after(1.0) < 0.5 * p_eos_after(0.0)  # 0.002 against 0.049 when written


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
    policy, cfg = tiny_policy(tmp_path, "bart")
    reference = copy.deepcopy(policy)
    batches = [Batch(["12", "5"], ["zwölf", "fünf"], [1.0, 0.5])] * 3
    stats = train(
        policy,
        batches,
        ImproveConfig(steps=3, lr=1e-2, warmup_steps=0),
        cfg,
        seed=0,
        objective=NLL("sequence_mean", kl_beta=0.5),
        reference=reference,
    )
    assert stats["steps"] == 3 and stats["kl_last"] > 0  # the policy moved away from its frozen copy
    assert all(not p.requires_grad for p in reference.model.parameters())
    with pytest.raises(ValueError, match="needs the reference"):
        train(policy, batches, ImproveConfig(), cfg, seed=0, objective=NLL(kl_beta=0.1))


def _one_source(rewards):
    return pd.DataFrame(
        {
            "source_id": ["s"] * len(rewards),
            "sample_index": range(len(rewards)),
            "completion": [f"c{i}" for i in range(len(rewards))],
            "reward": rewards,
        }
    )


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


# ---------------------------------------------------------------------------------------------------------------
# Preference losses (DPO, IPO) on pairs of one source's samples


def test_dpo_and_ipo_on_a_hand_made_pair_averaged_and_summed():
    # the docstring of preference_losses: chosen 2 tokens, ratio +2; rejected 4 tokens, ratio -2; beta 0.5
    pair = [torch.tensor([v]) for v in (-2.0, -8.0, -4.0, -6.0, 2.0, 4.0)]
    loss, h = preference_losses(*pair, beta=0.5, kind="dpo", average_log_prob=False)
    assert h.item() == pytest.approx(4.0)
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-2.0)))  # -log sigmoid(0.5 * 4) = 0.1269
    loss, h = preference_losses(*pair, beta=0.5, kind="dpo", average_log_prob=True)
    assert h.item() == pytest.approx(2 / 2 + 2 / 4)  # 1.5: each ratio per token
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-0.75)))  # 0.3869
    assert preference_losses(*pair, beta=0.5, kind="ipo", average_log_prob=False)[0].item() == pytest.approx(9.0)
    assert preference_losses(*pair, beta=0.5, kind="ipo", average_log_prob=True)[0].item() == pytest.approx(0.25)
    # the length bias averaging removes: the same per-token ratios on a chosen twice as long double h when summed
    longer = [torch.tensor([v]) for v in (-4.0, -8.0, -8.0, -6.0, 4.0, 4.0)]
    assert preference_losses(*longer, beta=0.5, average_log_prob=False)[1].item() == pytest.approx(6.0)
    assert preference_losses(*longer, beta=0.5, average_log_prob=True)[1].item() == pytest.approx(1.5)
    # a policy equal to its reference: h = 0, DPO loss ln 2, IPO loss (1 / (2 beta))^2
    same = [torch.tensor([v]) for v in (-3.0, -5.0, -3.0, -5.0, 2.0, 4.0)]
    assert preference_losses(*same, beta=0.5)[0].item() == pytest.approx(math.log(2))
    assert preference_losses(*same, beta=0.25, kind="ipo")[0].item() == pytest.approx(4.0)


def test_preference_pairs_worked_example():
    rows = _one_source([0.9, 0.6, 0.2, 0.9]).assign(source="x")
    rows.loc[3, "completion"] = " c0 "  # the same completion as sample 0 once normalised: one distinct sample
    best_worst = preference_pairs(rows, tau=0.5, pairs="best_worst", margin=0.3)
    assert list(zip(best_worst.chosen, best_worst.rejected)) == [("c0", "c2")]
    margin = preference_pairs(rows, tau=0.5, pairs="margin", margin=0.3)
    assert list(zip(margin.chosen, margin.rejected)) == [("c0", "c1"), ("c0", "c2"), ("c1", "c2")]
    assert margin.chosen_reward.tolist() == [0.9, 0.9, 0.6]
    assert preference_pairs(rows, tau=0.95).empty  # no chosen clears tau
    assert preference_pairs(rows, tau=0.5, margin=0.8).empty  # the widest gap is 0.7
    assert preference_pairs(_one_source([0.7, 0.7]).assign(source="x"), tau=0.0, margin=0.0).empty  # a tie is no pair


def test_pair_batch_pieces_cover_every_row_and_none_is_empty():
    batch = PairBatch(["a", "b"], ["c1", "c2"], ["r1", "r2"], ["t1"], ["y1"])
    for size in (1, 2, 3):
        pieces = batch.split(size)
        assert all(len(p) for p in pieces) and len(pieces) == -(-3 // size)
        assert sum((p.sources for p in pieces), []) == batch.sources
        assert sum((p.nll_sources for p in pieces), []) == batch.nll_sources
    assert [len(batch.share(r, 3)) for r in range(3)] == [1, 1, 1]


def test_preference_training_on_a_tiny_model(tmp_path):
    """Dropout off: the first step's loss is exactly ln 2 (policy = reference); pieces normalised by the whole
    batch's totals add up to the whole batch's loss; training raises the chosen sample's likelihood ratio."""
    policy, cfg = tiny_policy(tmp_path, "bart")
    reference = copy.deepcopy(policy)
    batch = PairBatch(["12", "5"], ["zwölf", "fünf"], ["zwei", "fünfzehn"], ["7"], ["sieben"])
    objective = Preference("dpo", beta=0.5, average_log_prob=True, nll_weight=1.0)
    policy.model.eval(), reference.model.eval()  # as train() puts them for an objective with dropout = False
    whole, stats = objective(policy, batch, cfg, reference)
    totals = objective.totals(policy, batch, cfg)
    assert totals == {"pairs": 2.0, "tokens": float(target_counts(policy, ["sieben"], cfg)[0])}
    pieces = sum(objective(policy, p, cfg, reference, totals)[0].item() for p in batch.split(1))
    assert pieces == pytest.approx(whole.item(), rel=1e-5)
    assert stats["pref_loss"] == pytest.approx(math.log(2), abs=1e-6) and stats["pref_margin"] == pytest.approx(
        0, abs=1e-6
    )
    only_pairs = Preference("dpo", beta=0.5, nll_weight=0.0)
    out = train(
        policy,
        [batch] * 6,
        ImproveConfig(steps=6, lr=1e-2, warmup_steps=0),
        cfg,
        seed=0,
        objective=only_pairs,
        reference=reference,
    )
    assert out["losses"][0] == pytest.approx(math.log(2), abs=1e-6)  # dropout was off in training too
    assert out["pref_accuracy_last"] == 1.0 and out["pref_margin_last"] > 0 and out["losses"][-1] < math.log(2)
    with pytest.raises(ValueError, match="needs the reference"):
        only_pairs(policy, batch, cfg, None)


def test_target_logits_skip_the_prompts(tmp_path):
    """A decoder-only loss's lm_head runs from the first column that holds a target on, not over the prompts: the
    logits there are the full pass's, the labels cut alike, the NLL the same; an encoder-decoder's are whole."""
    from rest.models.policy import encode_pairs, forward_logits, target_logits
    from rest.training.objectives import sequence_nll

    policy, cfg = tiny_policy(tmp_path, "llama")
    policy.model.eval()
    sources, targets = ["6947", "12", "5"], ["sechstausend", "zwölf", "fünf"]
    encoded = encode_pairs(policy, sources, targets, cfg)
    with torch.no_grad():
        full = forward_logits(policy, encoded)
        logits, labels = target_logits(policy, encoded)
    first = full.shape[1] - logits.shape[1]
    shortest = min(len(p) for p in prompt_ids(policy, sources, cfg))
    assert first == shortest - 1 > 0  # the shortest prompt's last position predicts its first target token
    assert (encoded["labels"][:, :first] == -100).all()
    assert torch.equal(labels, encoded["labels"][:, first:])
    torch.testing.assert_close(logits, full[:, first:], rtol=1e-5, atol=1e-5)
    sums, counts = sequence_nll(logits, labels)
    full_sums, full_counts = sequence_nll(full, encoded["labels"])
    torch.testing.assert_close(sums, full_sums, rtol=1e-5, atol=1e-5)
    assert torch.equal(counts, full_counts)
    seq2seq, cfg2 = tiny_policy(tmp_path, "bart")
    encoded = encode_pairs(seq2seq, sources, targets, cfg2)
    assert target_logits(seq2seq, encoded)[0].shape == forward_logits(seq2seq, encoded).shape
