"""LoRA (peft) in BC and Improve: only the adapter trains, the published policy is a plain model, and the KL prior's
reference can be the adapter switched off."""

from __future__ import annotations

import copy
import json

import pandas as pd
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

from rest.config import ImproveConfig, LoraConfig
from rest.models.policy import Policy, encode_pairs, forward_logits
from rest.training.batches import Batch
from rest.training.loop import BaseWeights, train, with_lora
from rest.training.objectives import NLL
from tests.conftest import CONFIG, rest
from tests.helpers import SOURCES, TARGETS, tiny_policy

LORA = LoraConfig(r=4, alpha=8.0, dropout=0.0)


@pytest.mark.parametrize("model_type", ["bart", "llama"])
def test_lora_trains_the_adapter_only_and_publishes_a_plain_model(tmp_path, model_type):
    policy, cfg = tiny_policy(tmp_path, model_type)
    start = copy.deepcopy(policy.model.state_dict())
    stats = train(
        policy, [Batch(SOURCES, TARGETS)] * 40, ImproveConfig(steps=40, lr=2e-2, warmup_steps=0, lora=LORA), cfg, seed=0
    )
    # It learns, slowly: rank-4 adapters on the one layer of a random model (full fine-tuning: 3.9 -> 0.6 here).
    assert stats["loss_last"] < 0.96 * stats["loss_first"]
    assert type(policy.model).__name__.endswith(("ConditionalGeneration", "CausalLM"))  # no peft wrapper left
    after = policy.model.state_dict()
    assert set(after) == set(start)  # the same tensors: the adapter is merged, not kept
    changed = [k for k in start if not torch.equal(start[k], after[k])]
    # LoRA adapts linear layers only: embeddings and layer norms are untouched, some projection moved.
    assert changed and all("proj" in k or "fc" in k or "mlp" in k for k in changed), changed
    assert not any("norm" in k or "embed" in k for k in changed)
    policy.save(tmp_path / "published")
    assert not (tmp_path / "published" / "adapter_config.json").exists()
    auto = AutoModelForSeq2SeqLM if model_type == "bart" else AutoModelForCausalLM
    loaded = auto.from_pretrained(tmp_path / "published").eval()
    policy.model.eval()
    batch = encode_pairs(policy, SOURCES, TARGETS, cfg)
    with torch.no_grad():
        torch.testing.assert_close(
            forward_logits(Policy(loaded, policy.tokenizer), batch), forward_logits(policy, batch)
        )


def test_the_adapter_switched_off_is_the_start_policy(tmp_path):
    policy, cfg = tiny_policy(tmp_path, "bart")
    original = copy.deepcopy(policy)
    original.model.eval()
    peft = with_lora(policy.model, LORA)
    with torch.no_grad():  # an adapter that has learned something (a fresh one is the identity: B = 0)
        for name, p in peft.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    batch = encode_pairs(policy, SOURCES, TARGETS, cfg)
    peft.train()
    with torch.no_grad():
        base = forward_logits(Policy(BaseWeights(peft), policy.tokenizer), batch)
        adapted = forward_logits(Policy(peft.eval(), policy.tokenizer), batch)
        torch.testing.assert_close(base, forward_logits(original, batch))
    assert (adapted - base).abs().max() > 1e-3
    assert list(BaseWeights(peft).parameters()) == []  # freezing "the reference" cannot freeze the adapter


def test_kl_prior_against_the_adapter_switched_off(tmp_path):
    policy, cfg = tiny_policy(tmp_path, "bart")
    start = copy.deepcopy(policy.model.state_dict())
    stats = train(
        policy,
        [Batch(SOURCES, TARGETS)] * 10,
        ImproveConfig(steps=10, lr=2e-2, warmup_steps=0, lora=LORA),
        cfg,
        seed=0,
        objective=NLL(kl_beta=0.5),
        reference=policy,
    )
    assert stats["kl_last"] > 0  # the policy moved away from where it started, and the prior saw it
    assert any(not torch.equal(start[k], v) for k, v in policy.model.state_dict().items())
    with pytest.raises(ValueError, match="only with LoRA"):
        train(
            policy,
            [Batch(SOURCES, TARGETS)],
            ImproveConfig(steps=1),
            cfg,
            seed=0,
            objective=NLL(kl_beta=0.5),
            reference=policy,
        )


@pytest.mark.integration
def test_a_run_with_lora_bf16_and_micro_batches_end_to_end(tmp_path):
    """Improve with LoRA from policy-0 (ReST-EM) with the KL prior read through the switched-off adapter, bf16
    autocast and micro-batches: the published policies are plain models that `Auto*` loads."""
    run = tmp_path / "lora"
    rest(
        "run",
        "--config",
        CONFIG,
        "--run",
        str(run),
        "device=cpu",
        "improve.init=policy-0",
        "improve.kl_beta=0.1",
        "improve.lora={r: 4, alpha: 8}",
        "improve.precision=bf16",
        "improve.micro_batch_size=5",
        "bc.micro_batch_size=16",
        "improve.lr=5e-3",
    )
    policy0 = AutoModelForSeq2SeqLM.from_pretrained(run / "policy-0").state_dict()
    for name in ("improve-1-1", "improve-1-2"):
        assert not (run / name / "adapter_config.json").exists()
        weights = AutoModelForSeq2SeqLM.from_pretrained(run / name).state_dict()
        assert any(not torch.equal(policy0[k], weights[k]) for k in policy0)
        metrics = json.loads((run / name / "metrics.json").read_text())
        assert metrics["train"]["kl_last"] > 0
    config = json.loads((run / "improve-1-1" / "_manifest.json").read_text())["config"]
    assert config["improve"]["lora"]["r"] == 4 and "micro_batch_size" not in config["improve"]
    assert len(pd.read_parquet(run / "grow-1")) == 320


def test_the_adapter_starts_the_same_whatever_the_process_drew_before(tmp_path):
    """peft draws the adapter's initial weights from torch's global generator: training seeds it first, so a
    resumed run (a new process) trains the adapter an uninterrupted one trained (whose earlier stages drew from it)."""
    from rest.config import PolicyOptimFields
    from rest.models.policy import load_policy
    from rest.training.batches import Batch
    from rest.training.loop import train

    built, cfg = tiny_policy(tmp_path, "llama")
    built.save(tmp_path / "base")
    optim = PolicyOptimFields(steps=2, batch_size=2, lr=1e-2, warmup_steps=0, lora={"r": 4})
    batches = [Batch(["12", "5"], ["zwölf", "fünf"])] * 2
    trained = []
    for draws in (0, 1000):
        torch.rand(draws)  # what other stages of the process took from the global generator
        policy = load_policy(tmp_path / "base")
        train(policy, batches, optim, cfg, seed=3)
        trained.append(policy.model.state_dict())
    assert all(torch.equal(trained[0][k], trained[1][k]) for k in trained[0])
