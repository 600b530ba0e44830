"""How a training step is computed: micro-batches (gradient accumulation), bf16 autocast, gradient checkpointing,
and where models go (`device`). All on this CPU; the same code paths run on a GPU."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from rest.config import ImproveConfig, ModelConfig, config_from_dict
from rest.errors import RestError
from rest.models.policy import (
    build_policy,
    encode_pairs,
    forward_logits,
    load_policy,
    resolve_device,
)
from rest.training.batches import Batch
from rest.training.loop import train
from rest.training.objectives import NLL
from tests.helpers import SOURCES, TARGETS, tiny_policy


def _grads(policy, objective, batch, cfg, reference, micro):
    policy.model.eval()  # no dropout: both ways see the same function
    policy.model.zero_grad(set_to_none=True)
    if micro is None:
        loss, stats = objective(policy, batch, cfg, reference)
        loss.backward()
        total, kl = loss.item(), stats.get("kl")
    else:
        totals = objective.totals(policy, batch, cfg)
        total, kl = 0.0, 0.0 if objective.kl_beta else None
        for part in batch.split(micro):
            loss, stats = objective(policy, part, cfg, reference, totals)
            loss.backward()
            total += loss.item()
            if kl is not None:
                kl += stats["kl"]
    return total, kl, [p.grad.clone() for p in policy.model.parameters() if p.grad is not None]


@pytest.mark.parametrize("model_type", ["bart", "llama"])
@pytest.mark.parametrize(
    "objective", [NLL(), NLL("sequence_mean"), NLL("sum", kl_beta=0.5)], ids=["token_mean", "sequence_mean", "sum+kl"]
)
def test_micro_batches_add_up_to_the_whole_batch(tmp_path, model_type, objective):
    policy, cfg = tiny_policy(tmp_path, model_type)
    reference = copy.deepcopy(policy)
    reference.model.eval()
    with torch.no_grad():  # move the policy off its reference, so the KL term has a gradient
        for p in policy.model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    weights = [1.0, 0.5, 0.9, 1.0, 0.2, 1.0, 0.7, 0.3]
    batch = Batch(SOURCES, TARGETS, weights if objective.reduction != "token_mean" else None)
    whole = _grads(policy, objective, batch, cfg, reference, None)
    for micro in (3, 1):  # uneven parts, and one row at a time
        parts = _grads(policy, objective, batch, cfg, reference, micro)
        assert parts[0] == pytest.approx(whole[0], rel=1e-5)
        if objective.kl_beta:
            assert parts[1] == pytest.approx(whole[1], rel=1e-5) and whole[1] > 0
        for g_parts, g_whole in zip(parts[2], whole[2]):
            torch.testing.assert_close(g_parts, g_whole, rtol=1e-4, atol=1e-6)
    # A micro-batch normalised by its own totals would not add up: the test above can fail.
    alone = _grads(policy, objective, batch.split(3)[0], cfg, reference, None)
    assert alone[0] != pytest.approx(parts[0], rel=1e-3) or objective.reduction == "sum"


def _bart_without_dropout(tmp_path):
    arch = {
        "model_type": "bart",
        "d_model": 32,
        "encoder_layers": 1,
        "decoder_layers": 1,
        "encoder_attention_heads": 2,
        "decoder_attention_heads": 2,
        "encoder_ffn_dim": 64,
        "decoder_ffn_dim": 64,
        "max_position_embeddings": 64,
        "dropout": 0.0,
        "attention_dropout": 0.0,
        "activation_dropout": 0.0,
    }
    path = tmp_path / "bart-no-dropout.json"
    path.write_text(json.dumps(arch))
    cfg = ModelConfig(architecture=str(path), vocab_size=48)
    return build_policy(cfg, SOURCES + TARGETS, seed=0), cfg


def test_training_with_micro_batches_follows_the_same_losses(tmp_path):
    policy, cfg = _bart_without_dropout(tmp_path)  # dropout would draw other masks for other batch shapes
    batches = [Batch(SOURCES, TARGETS)] * 4
    runs = {}
    for micro in (None, 2):
        p = copy.deepcopy(policy)
        seen = []
        train(
            p,
            batches,
            ImproveConfig(steps=4, lr=1e-2, warmup_steps=0, micro_batch_size=micro),
            cfg,
            seed=0,
            on_progress=lambda step, loss: seen.append(loss),  # noqa: B023 (used in this iteration)
        )
        runs[micro] = seen
    assert runs[2] == pytest.approx(runs[None], rel=1e-4)
    assert runs[None][-1] < runs[None][0]  # it learned


def test_bf16_autocast_trains_on_this_cpu_and_keeps_float32_weights(tmp_path):
    policy, cfg = tiny_policy(tmp_path, "bart")
    batches = [Batch(SOURCES, TARGETS)] * 30
    seen = []
    stats = train(
        policy,
        batches,
        ImproveConfig(steps=30, lr=1e-2, warmup_steps=0, precision="bf16"),
        cfg,
        seed=0,
        on_progress=lambda step, loss: seen.append(loss),
    )
    assert all(p.dtype == torch.float32 for p in policy.model.parameters())
    assert stats["loss_last"] < 0.5 * stats["loss_first"]
    # The forward pass really runs in bfloat16 under that autocast: its logits are rounded to bfloat16's 8 bits.
    policy.model.eval()
    batch = encode_pairs(policy, SOURCES, TARGETS, cfg)
    with torch.no_grad():
        exact = forward_logits(policy, batch)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            rounded = forward_logits(policy, batch)
    assert 1e-3 < (exact - rounded).abs().max().item() < 0.5


def test_fp16_and_bf16_on_half_weights_are_refused_with_the_fix(tmp_path):
    policy, cfg = tiny_policy(tmp_path, "bart")
    batches = [Batch(SOURCES, TARGETS)]
    with pytest.raises(RestError, match="fp16 trains on a GPU"):
        train(policy, batches, ImproveConfig(steps=1, precision="fp16"), cfg, seed=0)
    policy.model.to(torch.bfloat16)
    with pytest.raises(RestError, match="load the policy in float32"):
        train(policy, batches, ImproveConfig(steps=1, precision="bf16"), cfg, seed=0)


def test_gradient_checkpointing_gives_the_same_step_and_is_off_after(tmp_path):
    policy, cfg = tiny_policy(tmp_path, "llama")
    for module in policy.model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    runs = {}
    for checkpointing in (False, True):
        p = copy.deepcopy(policy)
        seen, during = [], []

        def progress(step, loss, p=p, seen=seen, during=during):
            seen.append(loss)
            during.append(p.model.is_activation_checkpointing)

        train(
            p,
            [Batch(SOURCES, TARGETS)] * 3,
            ImproveConfig(steps=3, lr=1e-2, warmup_steps=0, gradient_checkpointing=checkpointing),
            cfg,
            seed=0,
            on_progress=progress,
        )
        runs[checkpointing] = seen
        assert during == [checkpointing] * 3
        assert not p.model.is_activation_checkpointing
    assert runs[True] == pytest.approx(runs[False], rel=1e-5)


def test_policies_load_in_the_dtype_asked_for(tmp_path):
    policy, cfg = tiny_policy(tmp_path, "llama")
    policy.save(tmp_path / "p")
    assert next(load_policy(tmp_path / "p", dtype="bfloat16").model.parameters()).dtype == torch.bfloat16
    assert next(load_policy(tmp_path / "p").model.parameters()).dtype == torch.float32


def test_devices_resolve_and_a_missing_gpu_is_a_clear_error():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(RestError, match="device: cuda:1, but torch .* sees no GPU"):
            resolve_device("cuda:1")
    with pytest.raises(RestError, match="run.yaml: config key `device`"):
        config_from_dict({"device": "gpu"}, "run.yaml")
