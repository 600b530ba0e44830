"""A pretrained reward model by path (rest/rewards/pretrained.py), on tiny random sequence classifiers of two real
architectures built here: a BERT-style one (the pair [CLS] a [SEP] b [SEP]) and a Llama-style one with a chat
template (prompt as the user turn, completion as the assistant turn)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from rest.config import RewardConfig
from rest.errors import RestError
from rest.rewards.components import score_config
from rest.rewards.kinds import lineage
from tests.helpers import CHAT_TEMPLATE, build_reward_checkpoint

pytestmark = pytest.mark.integration  # real (tiny) checkpoints built and loaded: seconds each

SOURCES = ["12", "5", "6947"]
COMPLETIONS = ["zwölf", "fünf", "sechstausend"]


def _rm(path, logits_mb: int | None = None, **spec) -> np.ndarray:
    rc = RewardConfig(models={"rm": {"model": str(path), **spec}}, components={"rm": 1.0})
    return score_config(rc, SOURCES, COMPLETIONS, [None] * 3, logits_mb=logits_mb)["reward_rm"]


def _logits(path, texts=None, pairs=None) -> np.ndarray:
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path).eval()
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
        model.config.pad_token_id = tok.pad_token_id
    with torch.no_grad():
        if texts is not None:  # one at a time: no padding to get wrong
            return np.array(
                [model(**tok(t, add_special_tokens=False, return_tensors="pt")).logits[0, 0] for t in texts]
            )
        return np.array([model(**tok(s, c, return_tensors="pt")).logits[0, 0] for s, c in pairs])


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("rms")
    return {
        "bert": build_reward_checkpoint("bert", root / "bert"),
        "llama-chat": build_reward_checkpoint("llama", root / "llama-chat", CHAT_TEMPLATE),
        "llama": build_reward_checkpoint("llama", root / "llama"),  # the same weights, no template
    }


def test_a_bert_style_model_scores_the_pair_through_the_declared_map(checkpoints):
    path = checkpoints["bert"]
    x = _logits(path, pairs=list(zip(SOURCES, COMPLETIONS)))
    assert _rm(path, scale=3.0, shift=0.5, batch_size=2) == pytest.approx(1 / (1 + np.exp(-(3 * x + 0.5))), abs=1e-5)
    affine = _rm(path, output="affine", scale=50.0, shift=0.5)
    assert affine == pytest.approx(np.clip(50 * x + 0.5, 0, 1), abs=1e-4)
    # within a run's logits budget: a pass of one pair at 1 MiB (max_tokens 1024 x its widest activation), the same
    assert _rm(path, logits_mb=1, scale=50.0, shift=0.5, output="affine") == pytest.approx(affine, abs=1e-5)


def test_a_chat_model_reads_its_own_template(checkpoints):
    path = checkpoints["llama-chat"]
    tok = AutoTokenizer.from_pretrained(path)
    texts = [
        tok.apply_chat_template([{"role": "user", "content": s}, {"role": "assistant", "content": c}], tokenize=False)
        for s, c in zip(SOURCES, COMPLETIONS)
    ]
    assert texts[0] == "<s>user\n12</s>\n<s>assistant\nzwölf</s>\n"
    x = _logits(path, texts=texts)
    got = _rm(path, scale=100.0, batch_size=3)  # padded in one batch: the score is still the last real token's
    assert got == pytest.approx(1 / (1 + np.exp(-100 * x)), abs=1e-4)
    plain = _rm(checkpoints["llama"], scale=100.0)
    assert not np.allclose(got, plain, atol=1e-3)  # the same weights without the template read other tokens


def test_a_model_with_other_than_one_output_is_refused(tmp_path):
    path = build_reward_checkpoint("bert", tmp_path / "two")
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2, ignore_mismatched_sizes=True)
    model.save_pretrained(path)
    with pytest.raises(RestError, match=r"reward.models.rm.model: .* has 2 outputs; a reward model has one"):
        _rm(path)
    with pytest.raises(RestError, match=r"reward.models.rm.model: .*missing is neither a checkpoint directory"):
        _rm(tmp_path / "missing")


def test_new_weights_in_the_same_directory_are_a_new_identity_and_a_new_scorer(tmp_path, checkpoints):
    path = build_reward_checkpoint("bert", tmp_path / "rm")
    rc = RewardConfig(models={"rm": {"model": str(path)}}, components={"rm": 1.0})
    [before] = lineage(rc).key["reward_models"]
    first = _rm(path, scale=100.0)
    model = AutoModelForSequenceClassification.from_pretrained(path)
    with torch.no_grad():
        model.classifier.bias += 0.01  # retrained, in place
    model.save_pretrained(path)
    [after] = lineage(rc).key["reward_models"]
    assert before["model"] == after["model"] == str(path) and before["sha256"] != after["sha256"]
    assert not np.allclose(_rm(path, scale=100.0), first)
