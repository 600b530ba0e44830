"""The training objectives every trainer shares (BC, Improve, the BC control, evaluation's teacher-forced NLL): the
batches they read and negative log-likelihood with its weightings, as pure functions with worked values and as the
`NLL` objective of the one training loop (rest/training/loop.py).

    loss, stats = NLL()(policy, Batch(sources, targets, weights), cfg.model, reference)

A `Batch` is rows (source, target, optional per-row weight, optional per-token scores: improve.token_weights); a
`PairBatch` is pairs of one source's samples (chosen, rejected) with labelled rows beside them (the preference
losses of rest/improve/objectives.py). An objective takes (policy, batch, model config, reference policy or None)
and returns the scalar loss to minimise and the numbers to log (`stats`: floats; `kl` is averaged into
metrics.json's train.kl_last). `needs_reference` says whether it reads a frozen reference policy; one that declares
`dropout = False` trains with dropout off.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from rest.config import ModelConfig
from rest.models.policy import (
    Policy,
    encode_pairs,
    eval_autocast,
    pair_positions,
    rows_per_pass,
    target_counts,
    target_logits,
)
from rest.training.batches import Batch, token_weights


class Objective(Protocol):
    """`totals`, when given, are `objective.totals(...)` of the whole optimiser step's batch, of which `batch` is a
    micro-batch: the loss is then normalised by them (not by the micro-batch's own), so that the micro-batches'
    losses, and their gradients, add up to the whole batch's. Additive `stats` add up likewise.

    `policy` is a Policy or a reward model, `batch` whatever the objective reads (Batch, PairBatch, SourceBatch):
    each objective types its own."""

    @property
    def needs_reference(self) -> bool: ...

    def totals(self, policy: Any, batch: Any, model_cfg: Any, /) -> dict[str, float]: ...

    def __call__(
        self,
        policy: Any,
        batch: Any,
        model_cfg: Any,
        reference: Any = None,
        totals: dict[str, float] | None = None,
        /,
    ) -> tuple[torch.Tensor, dict[str, float]]: ...


# ---------------------------------------------------------------------------------------------------------------
# Pure functions of logits and labels, with worked values


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


def weighted_sequence_nll(
    logits: torch.Tensor, labels: torch.Tensor, weights: Sequence[np.ndarray]
) -> tuple[torch.Tensor, torch.Tensor]:
    """sequence_nll with a weight per target token (row i's weights in the order of its target tokens): per
    sequence, sum_t w_t NLL_t and sum_t w_t. Weights of 1 give sequence_nll's numbers."""
    per_token = torch.nn.functional.cross_entropy(
        logits.float().transpose(1, 2), labels, ignore_index=-100, reduction="none"
    )
    w = torch.zeros_like(per_token)
    w[labels != -100] = torch.from_numpy(np.concatenate(list(weights))).to(w.device)  # row-major: row by row, in order
    return (per_token * w).sum(dim=1), w.sum(dim=1)


def first_divergence(counts: Sequence[int], token_scores: Sequence[Sequence[float] | None]) -> list[int | None]:
    """Per row, the index of its first target token scored below 0 (where the reward model's correction departs
    from it: the token it would rewrite), or None: no scores (a labelled row), none below 0 (kept whole), or scores
    that do not line up with its `counts[i]` tokens (token_weights' fallback: no token to single out).

    Scores [1, 1, -1, -1] over 4 tokens: 2; [1, 1] over 2: None; [1, -1] over 3 tokens: None.
    """
    out: list[int | None] = []
    for count, scores in zip(counts, token_scores):
        below = [] if scores is None or len(scores) != count else np.flatnonzero(np.asarray(scores) < 0)
        out.append(int(below[0]) if len(below) else None)
    return out


def unlikelihood_sums(logits: torch.Tensor, labels: torch.Tensor, positions: Sequence[int | None]) -> torch.Tensor:
    """Per row, -log(1 - p(y_d | y_<d)) at its d-th target token, d = positions[i] (None: 0): token-level
    unlikelihood (Welleck et al., 2019) of the token where a sample went wrong. Shape [B].

    p = 0.5 gives log 2 = 0.6931; p near 0 gives near 0; p near 1 grows without bound (clamped at 1 - 1e-6).
    """
    mask = labels != -100
    want = torch.tensor([-1 if d is None else d for d in positions], device=labels.device)
    hit = mask & ((mask.cumsum(dim=1) - 1) == want[:, None])  # at most one position per row
    out = torch.zeros(labels.shape[0], device=logits.device)
    if bool(hit.any()):
        logp = torch.log_softmax(logits[hit].float(), dim=-1).gather(-1, labels[hit][:, None]).squeeze(-1)
        out[hit.any(dim=1)] = -torch.log1p(-logp.exp().clamp(max=1 - 1e-6))
    return out


REDUCTIONS = ("token_mean", "sequence_mean", "sum")


def nll_denominator(counts: torch.Tensor, loss: str, weights: torch.Tensor | None = None) -> torch.Tensor:
    """What reduce_nll divides by: the (weighted) target tokens for token_mean, the weights' sum otherwise."""
    w = torch.ones_like(counts, dtype=torch.float32) if weights is None else weights.to(counts.device, torch.float32)
    return (w * counts).sum() if loss == "token_mean" else w.sum()


def reduce_nll(
    sums: torch.Tensor,
    counts: torch.Tensor,
    loss: str,
    weights: torch.Tensor | None = None,
    denominator: float | None = None,
) -> torch.Tensor:
    """The batch loss from per-sequence summed NLLs `sums` over `counts` target tokens, optionally weighted.

    Two sequences, NLLs [a] and [b, c, d] (sums s1 = a, s2 = b + c + d; counts 1 and 3), weights w1, w2 (all 1
    without weights):
        token_mean     (w1 s1 + w2 s2) / (w1 * 1 + w2 * 3)   every target token counts the same (the default)
        sequence_mean  (w1 s1 / 1 + w2 s2 / 3) / (w1 + w2)   each sequence's mean log-likelihood, then the mean:
                                                              the length-invariant form of direct alignment
        sum            (w1 s1 + w2 s2) / (w1 + w2)            summed log-likelihood per sequence, mean over the batch

    `denominator` replaces the batch's own (nll_denominator) when the rows are a micro-batch of a larger step.
    """
    if loss not in REDUCTIONS:
        raise ValueError(f"unknown loss {loss!r}; known: {', '.join(REDUCTIONS)}")
    w = torch.ones_like(sums) if weights is None else weights.to(sums)
    den = nll_denominator(counts, loss, weights) if denominator is None else torch.tensor(denominator)
    num = (w * sums / counts.float().clamp_min(1e-9)).sum() if loss == "sequence_mean" else (w * sums).sum()
    return num / den.to(sums).clamp_min(1e-9)


def token_kl(
    logits: torch.Tensor, ref_logits: torch.Tensor, labels: torch.Tensor, tokens: float | None = None
) -> torch.Tensor:
    """Mean over target tokens of KL(policy || reference) between the two next-token distributions (over `tokens`
    target tokens when the rows are a micro-batch of a larger step).

    KL(p || q) = sum_v p(v) (log p(v) - log q(v)) >= 0, and 0 when the policy is the reference (SuperHF's prior,
    here against policy-0 on the same batch).
    """
    logp = torch.log_softmax(logits.float(), dim=-1)
    logq = torch.log_softmax(ref_logits.float(), dim=-1)
    kl = (logp.exp() * (logp - logq)).sum(dim=-1)  # [B, T]
    mask = labels != -100
    return (kl * mask).sum() / (mask.sum().clamp_min(1) if tokens is None else max(tokens, 1.0))


# ---------------------------------------------------------------------------------------------------------------
# The NLL objective


@dataclass(frozen=True)
class NLL:
    """Negative log-likelihood of the targets (`reduction`: see reduce_nll), weighted per row when the batch has
    weights and per token when it has token scores (token_weights: a token counts as its weight everywhere,
    denominators included), plus `kl_beta` x token_kl against the reference policy on the same batch (SuperHF's KL
    prior), plus `unlikelihood` x the mean over the batch's rows of unlikelihood_sums at each scored row's first
    divergence (first_divergence; improve.unlikelihood)."""

    reduction: str = "token_mean"
    kl_beta: float = 0.0
    unlikelihood: float = 0.0

    @property
    def needs_reference(self) -> bool:
        return self.kl_beta > 0

    def totals(self, policy: Policy, batch: Batch, model_cfg: ModelConfig) -> dict[str, float]:
        """The whole batch's denominators: its NLL's (nll_denominator, over token-weighted counts when the batch
        has token scores) and its target tokens (the KL's)."""
        tokens = target_counts(policy, list(batch.targets), model_cfg)
        counts = torch.tensor(tokens, dtype=torch.float32)
        if batch.token_scores is not None:
            counts = torch.tensor([float(w.sum()) for w in token_weights(tokens, batch.token_scores)])
        weights = None if batch.weights is None else torch.tensor(batch.weights, dtype=torch.float32)
        return {
            "nll": float(nll_denominator(counts, self.reduction, weights)),
            "tokens": float(sum(tokens)),
            "rows": float(len(batch)),
        }

    def __call__(
        self,
        policy: Policy,
        batch: Batch,
        model_cfg: ModelConfig,
        reference: Policy | None = None,
        totals: dict[str, float] | None = None,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        if self.needs_reference and reference is None:
            raise ValueError("kl_beta > 0 needs the reference policy")
        encoded = encode_pairs(policy, list(batch.sources), list(batch.targets), model_cfg)
        logits, labels = target_logits(policy, encoded)
        if self.reduction == "token_mean" and batch.weights is None and batch.token_scores is None and totals is None:
            loss = token_nll(logits, labels)  # the same numbers as BC: default runs stay bit-identical
        else:
            weights = None if batch.weights is None else torch.tensor(batch.weights, dtype=torch.float32)
            if batch.token_scores is None:
                per_sequence = sequence_nll(logits, labels)
            else:
                counts = (labels != -100).sum(dim=1).tolist()  # the unlikelihood below reads them too
                per_sequence = weighted_sequence_nll(logits, labels, token_weights(counts, batch.token_scores))
            loss = reduce_nll(*per_sequence, self.reduction, weights, None if totals is None else totals["nll"])
        stats: dict[str, float] = {}
        if self.unlikelihood > 0 and batch.token_scores is not None:
            ul = unlikelihood_sums(logits, labels, first_divergence(counts, batch.token_scores)).sum()
            ul = ul / (len(batch) if totals is None else max(totals["rows"], 1.0))
            stats["unlikelihood"] = ul.item()
            loss = loss + self.unlikelihood * ul
        if self.kl_beta > 0:
            assert reference is not None  # needs_reference: checked above
            with torch.no_grad():
                ref_logits, _ = target_logits(reference, encoded)
            kl = token_kl(logits, ref_logits, labels, None if totals is None else totals["tokens"])
            stats["kl"] = kl.item()
            loss = loss + self.kl_beta * kl
        return loss, stats


@torch.no_grad()
def target_nll(
    policy: Policy,
    sources: list[str],
    targets: list[str],
    model_cfg: ModelConfig,
    batch_size: int = 250,
    logits_mb: int | None = None,
) -> float:
    """Token-mean NLL of `targets` given `sources` under the policy (teacher forcing, eval mode: no dropout), at
    most `batch_size` rows a pass, and fewer when their logits would take more than `logits_mb` MiB; on a GPU in
    `model.dtype` (eval_autocast), as a published policy is evaluated."""
    policy.model.eval()
    total, count = 0.0, 0
    k = 0
    held = policy.token_cache
    if held is None:  # each row tokenized once, for its pass's size and for the pass (as training does)
        policy.token_cache = {}
    try:
        while k < len(sources):
            src, tgt = sources[k : k + batch_size], targets[k : k + batch_size]
            n = rows_per_pass(policy, pair_positions(policy, src, tgt, model_cfg), logits_mb)
            batch = encode_pairs(policy, src[:n], tgt[:n], model_cfg)
            with eval_autocast(policy, model_cfg.dtype):
                sums, counts = sequence_nll(*target_logits(policy, batch))
            total += float(sums.sum())
            count += int(counts.sum())
            k += n
    finally:
        policy.token_cache = held
    return total / max(1, count)
