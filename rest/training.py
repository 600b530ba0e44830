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

    Two sequences of 1 and 3 target tokens with per-token NLLs [a] and [b, c] give (a + b + c) / 4.
    """
    return torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100)


def lr_factor(step: int, warmup: int, total: int) -> float:
    """Linear warm-up to 1, then cosine decay to 0.1 at `total`."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def train(
    policy: Policy,
    batches: Sequence[tuple[list[str], list[str]]],
    optim: OptimFields,
    model_cfg: ModelConfig,
    seed: int,
    on_progress: Callable[[int, float], None] | None = None,
) -> dict[str, float]:
    """Fine-tune `policy` in place on the given (sources, targets) batches, one optimiser step each."""
    torch.manual_seed(seed)  # dropout masks
    model = policy.model
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=optim.lr, weight_decay=optim.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, optim.warmup_steps, len(batches)))
    losses: list[float] = []
    examples = 0
    started = time.perf_counter()
    for step, (sources, targets) in enumerate(batches):
        batch = encode_pairs(policy, list(sources), list(targets), model_cfg)
        loss = token_nll(forward_logits(policy, batch), batch["labels"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), optim.grad_clip)
        opt.step()
        sched.step()
        losses.append(loss.item())
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
        "seconds": round(seconds, 2),
        "examples_per_s": round(examples / seconds, 1) if seconds > 0 else 0.0,
    }
