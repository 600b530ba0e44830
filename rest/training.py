"""The training loop: token-level NLL on target tokens, AdamW, warm-up then cosine decay. BC and Improve share it.

    stats = train(policy, batches, cfg.improve, cfg.model, seed=1)   # batches: list of (sources, targets)
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence

import torch

from rest.config import ModelConfig, OptimFields
from rest.models import Policy, encode_pairs, forward_logits


def token_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean negative log-likelihood over the target tokens of the batch (labels -100 are ignored).

    Two sequences of 1 and 3 target tokens with per-token NLLs [a] and [b, c, d] give (a + b + c + d) / 4.
    """
    return torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100)


def sequence_nll(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sequence: the summed NLL of its target tokens, and how many there are. Shapes [B], [B]."""
    per_token = torch.nn.functional.cross_entropy(
        logits.float().transpose(1, 2), labels, ignore_index=-100, reduction="none"
    )  # [B, T], 0 where labels are -100
    mask = labels != -100
    return (per_token * mask).sum(dim=1), mask.sum(dim=1)


LOSSES = ("token_mean", "sequence_mean", "sum")


def reduce_nll(sums: torch.Tensor, counts: torch.Tensor, loss: str, weights: torch.Tensor | None = None) -> torch.Tensor:
    """The batch loss from per-sequence summed NLLs `sums` over `counts` target tokens, optionally weighted.

    Two sequences, NLLs [a] and [b, c, d] (sums s1 = a, s2 = b + c + d; counts 1 and 3), weights w1, w2 (all 1
    without weights):
        token_mean     (w1 s1 + w2 s2) / (w1 * 1 + w2 * 3)   every target token counts the same (the default)
        sequence_mean  (w1 s1 / 1 + w2 s2 / 3) / (w1 + w2)   each sequence's mean log-likelihood, then the mean:
                                                              the length-invariant form of direct alignment
        sum            (w1 s1 + w2 s2) / (w1 + w2)            summed log-likelihood per sequence, mean over the batch
    """
    w = torch.ones_like(sums) if weights is None else weights.to(sums)
    if loss == "token_mean":
        return (w * sums).sum() / (w * counts).sum().clamp_min(1e-9)
    if loss == "sequence_mean":
        return (w * sums / counts.clamp_min(1)).sum() / w.sum().clamp_min(1e-9)
    if loss == "sum":
        return (w * sums).sum() / w.sum().clamp_min(1e-9)
    raise ValueError(f"unknown loss {loss!r}; known: {', '.join(LOSSES)}")


def token_kl(logits: torch.Tensor, ref_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean over target tokens of KL(policy || reference) between the two next-token distributions.

    KL(p || q) = sum_v p(v) (log p(v) - log q(v)) >= 0, and 0 when the policy is the reference (SuperHF's prior,
    here against policy-0 on the same batch).
    """
    logp = torch.log_softmax(logits.float(), dim=-1)
    logq = torch.log_softmax(ref_logits.float(), dim=-1)
    kl = (logp.exp() * (logp - logq)).sum(dim=-1)  # [B, T]
    mask = labels != -100
    return (kl * mask).sum() / mask.sum().clamp_min(1)


def lr_factor(step: int, warmup: int, total: int) -> float:
    """Linear warm-up to 1, then cosine decay to 0.1 at `total`."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def train(
    policy: Policy,
    batches: Sequence[tuple[list[str], list[str]] | tuple[list[str], list[str], list[float]]],
    optim: OptimFields,
    model_cfg: ModelConfig,
    seed: int,
    on_progress: Callable[[int, float], None] | None = None,
    loss: str = "token_mean",
    kl_beta: float = 0.0,
    reference: Policy | None = None,
) -> dict[str, float]:
    """Fine-tune `policy` in place on the given batches, one optimiser step each.

    A batch is (sources, targets) or (sources, targets, weights): per-sequence loss weights (reward-weighted
    Improve). `loss` is one of LOSSES (see reduce_nll); `kl_beta` > 0 adds kl_beta x token_kl against
    `reference` (policy-0, frozen) on the same batch.
    """
    if kl_beta > 0 and reference is None:
        raise ValueError("kl_beta > 0 needs the reference policy")
    if reference is not None:
        reference.model.eval()
        for p in reference.model.parameters():
            p.requires_grad_(False)
    torch.manual_seed(seed)  # dropout masks
    model = policy.model
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=optim.lr, weight_decay=optim.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, optim.warmup_steps, len(batches)))
    losses: list[float] = []
    kls: list[float] = []
    examples = 0
    started = time.perf_counter()
    for step, (sources, targets, *rest) in enumerate(batches):
        weights = torch.tensor(rest[0], dtype=torch.float32) if rest and rest[0] is not None else None
        batch = encode_pairs(policy, list(sources), list(targets), model_cfg)
        logits = forward_logits(policy, batch)
        if loss == "token_mean" and weights is None:
            objective = token_nll(logits, batch["labels"])  # the same numbers as BC: default runs stay bit-identical
        else:
            objective = reduce_nll(*sequence_nll(logits, batch["labels"]), loss, weights)
        if kl_beta > 0:
            with torch.no_grad():
                ref_logits = forward_logits(reference, batch)
            kl = token_kl(logits, ref_logits, batch["labels"])
            kls.append(kl.item())
            objective = objective + kl_beta * kl
        opt.zero_grad(set_to_none=True)
        objective.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), optim.grad_clip)
        opt.step()
        sched.step()
        losses.append(objective.item())
        examples += len(sources)
        if on_progress is not None:
            on_progress(step + 1, losses[-1])
    model.eval()
    seconds = time.perf_counter() - started
    tail = losses[-max(1, len(losses) // 10) :]
    return {
        "steps": len(batches),
        "examples": examples,
        # None, not NaN, with no steps (bc.steps: 0 on a pretrained model): metrics.json stays valid JSON.
        "loss_first": losses[0] if losses else None,
        "loss_last": sum(tail) / len(tail) if tail else None,
        **({"kl_last": sum(kls[-len(tail):]) / len(tail)} if kls else {}),
        "seconds": round(seconds, 2),
        "examples_per_s": round(examples / seconds, 1) if seconds > 0 else 0.0,
    }
