"""The sequence-to-sequence reward model: token scores of a hand-made divergence, its training pairs, and the
one-pass divergence against decoding the correction (a tiny model that has learned to copy part of its input)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from rest.config import RMModelConfig
from rest.errors import RestError
from rest.rewards.seq2seq_rm import (
    best_targets,
    build_seq2seq_reward_model,
    divergence_scores,
    token_reward,
)

EOS = 2
STEPS = 60


def test_token_scores_of_a_hand_made_divergence():
    # completion a b c EOS; the model would write a b x ...: two tokens kept, then the divergence and what follows
    scores = divergence_scores([5, 6, 7, EOS], [5, 6, 9, 4])
    assert scores.tolist() == [1, 1, -1, -1]
    assert token_reward(scores) == 0.5  # (mean 0 + 1) / 2 = 2 kept tokens of 4
    # the model would keep the completion whole: every token +1, reward 1
    assert token_reward(divergence_scores([5, 6, EOS], [5, 6, EOS])) == 1.0
    # the model would go on where the completion stops: only its EOS diverges -> 2 of 3
    kept = divergence_scores([5, 6, EOS], [5, 6, 7])
    assert kept.tolist() == [1, 1, -1] and token_reward(kept) == pytest.approx(2 / 3)
    # the first token already differs: every token -1, reward 0; a shorter correction diverges where it ends
    assert token_reward(divergence_scores([5, 6, EOS], [8, 6, EOS])) == 0.0
    assert divergence_scores([5, 6, 7, EOS], [5]).tolist() == [1, -1, -1, -1]


def test_training_pairs_correct_toward_each_sources_best():
    df = pd.DataFrame(
        {
            "source_id": ["a", "a", "a", "b", "b"],
            "completion": ["one", "won", "on", "two", "too"],
            "score": [1.0, 0.4, 0.4, 0.7, 0.7],
        }
    )
    out = best_targets(df)
    # a: "one" is best (identity), the two others correct toward it; b: a tie at the top, each is its own target
    assert out["target"].tolist() == ["one", "one", "one", "two", "too"]


def test_an_encoder_only_architecture_is_refused_with_the_fix():
    with pytest.raises(RestError, match="model.architecture: .*reward-bert.json is a bert model, an encoder; .*llama"):
        build_seq2seq_reward_model(RMModelConfig(architecture="configs/models/reward-bert.json"), ["a b"], 0)


TINY = {
    "mbart": {
        "model_type": "mbart",
        "d_model": 64,
        "encoder_layers": 1,
        "decoder_layers": 1,
        "encoder_attention_heads": 2,
        "decoder_attention_heads": 2,
        "encoder_ffn_dim": 128,
        "decoder_ffn_dim": 128,
        "max_position_embeddings": 64,
        "dropout": 0.0,
    },
    # decoder-only: the pair is its prompt, the correction follows it
    "llama": {
        "model_type": "llama",
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 2,
        "max_position_embeddings": 128,
    },
}


@pytest.mark.parametrize("kind", ["mbart", "llama"])
def test_one_pass_divergence_is_the_greedy_correction_s_divergence(tmp_path, kind):
    """Train a tiny model to copy the completion for 60 steps (it learns part of it), then compare, row by row,
    the one-pass token scores with those of the correction it decodes greedily."""
    arch = tmp_path / "tiny.json"
    arch.write_text(json.dumps(TINY[kind]))
    rng = np.random.default_rng(0)
    words = ["ab", "ba", "abc", "cab", "bca", "cc"]
    comps = [" ".join(rng.choice(words, size=rng.integers(1, 4))) for _ in range(64)]
    srcs = [str(i) for i in range(len(comps))]
    rm = build_seq2seq_reward_model(RMModelConfig(architecture=str(arch), vocab_size=24), srcs + comps, seed=0)
    torch.manual_seed(0)
    opt = torch.optim.AdamW(rm.model.parameters(), lr=1e-2)
    rm.model.train()
    for _step in range(STEPS):
        idx = rng.choice(len(comps), size=16, replace=False)
        loss = rm.nll([srcs[i] for i in idx], [comps[i] for i in idx], [comps[i] for i in idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    rewards, tokens = rm.score_tokens(srcs, comps)
    # a budget of 1 MiB: passes of a few rows (how many: max_tokens positions of the vocabulary's logits), the same
    # scores as one pass of all 64
    assert rm.rows_per_pass(1, 256) == (1 << 20) // (rm.max_tokens * (2 if kind == "llama" else 1) * 24 * 12) < 64
    chunked, chunked_tokens = rm.score_tokens(srcs, comps, logits_mb=1)
    assert chunked.tolist() == rewards.tolist()
    assert [t.tolist() for t in chunked_tokens] == [t.tolist() for t in tokens]
    generated = rm.correction_ids(srcs, comps)
    for comp, tok, gen in zip(comps, tokens, generated):
        target = rm.target_ids([comp])[0]
        assert tok.tolist() == divergence_scores(target, gen).tolist(), comp
    # and the cases are not all trivial: some kept whole, some cut part way
    assert (rewards == 1.0).any() and ((rewards > 0) & (rewards < 1)).any()
    # a completion it keeps whole is, as text, the correction it writes
    kept = [i for i, r in enumerate(rewards) if r == 1.0][:4]
    assert rm.correct([srcs[i] for i in kept], [comps[i] for i in kept]) == [comps[i] for i in kept]
