"""Training objectives: what a BC or Improve step minimises, as objects built from the config.

    objective = objective_for(cfg.improve)             # improve.loss, improve.kl_beta
    loss, stats = objective(policy, Batch(sources, targets, weights), cfg.model, reference)

A `Batch` is what selection hands the objective: rows (source, target, optional per-row weight, optional per-token
scores: improve.token_weights). An objective
takes (policy, batch, model config, reference policy or None) and returns the scalar loss to minimise and the
numbers to log (`stats`: floats; `kl` is averaged into metrics.json's train.kl_last). `needs_reference` says
whether it reads the frozen reference policy (policy-0): the step then loads it once.

Adding an objective: a class with `needs_reference` and `__call__` here, an entry in OBJECTIVES, and the name in
the Literal of `improve.loss` in rest/config/schema.py (with its own config fields there, if it has any). An objective
that learns from pairs (`Preference`: DPO, IPO) declares `data = "pairs"` and is handed a `PairBatch` of pairs of
one source's samples (chosen, rejected) and labelled rows instead: stages.improve mines them
(improve.selection.preference_pairs). An objective that declares `dropout = False` trains with dropout off.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from rest.config import ModelConfig
from rest.models.policy import Policy, encode_pairs, forward_logits, target_counts


@dataclass(frozen=True)
class Batch:
    """One optimiser step's rows: sources, the targets to learn, per-row loss weights (None: all 1), and per-row
    token scores in [-1, 1] that weight each target token (token_weights; None: all 1, also for one row)."""

    sources: list[str]
    targets: list[str]
    weights: list[float] | None = None
    token_scores: list[Sequence[float] | None] | None = None

    def __len__(self) -> int:
        return len(self.sources)

    def _rows(self, a: int, b: int) -> Batch:
        return Batch(
            self.sources[a:b],
            self.targets[a:b],
            None if self.weights is None else self.weights[a:b],
            None if self.token_scores is None else self.token_scores[a:b],
        )

    def split(self, size: int) -> list[Batch]:
        """Consecutive parts of at most `size` rows (micro-batches of one optimiser step)."""
        return [self._rows(a, a + size) for a in range(0, len(self), size)]

    def share(self, rank: int, world: int) -> Batch:
        """Rank `rank`'s contiguous share of `world` (sizes differ by at most one row; with an even split, the
        shares are the micro-batches of one process with micro_batch_size = len / world)."""
        return self._rows(len(self) * rank // world, len(self) * (rank + 1) // world)


def _cuts(n: int, parts: int) -> list[tuple[int, int]]:
    """`parts` contiguous ranges covering range(n), sizes differing by at most one."""
    return [(n * j // parts, n * (j + 1) // parts) for j in range(parts)]


@dataclass(frozen=True)
class PairBatch:
    """One optimiser step of a preference loss: pairs (source, chosen, rejected) of one source's samples, and
    labelled rows (nll_sources, nll_targets) learnt with NLL beside them. Pieces (micro-batches, a rank's share)
    are contiguous parts of the pairs followed by the labelled rows."""

    sources: list[str]
    chosen: list[str]
    rejected: list[str]
    nll_sources: list[str]
    nll_targets: list[str]

    def __len__(self) -> int:
        return len(self.sources) + len(self.nll_sources)

    def _piece(self, j: int, parts: int) -> PairBatch:
        """Piece j of `parts` of the pairs followed by the labelled rows (none is empty while parts <= len)."""
        a, b = _cuts(len(self), parts)[j]
        n = len(self.sources)
        c, d = max(a - n, 0), max(b - n, 0)
        a, b = min(a, n), min(b, n)
        return PairBatch(
            self.sources[a:b], self.chosen[a:b], self.rejected[a:b], self.nll_sources[c:d], self.nll_targets[c:d]
        )

    def split(self, size: int) -> list[PairBatch]:
        """About len / size pieces (a pair counts as one row: its two sequences share the source)."""
        parts = -(-len(self) // size)
        return [self._piece(j, parts) for j in range(parts)]

    def share(self, rank: int, world: int) -> PairBatch:
        return self._piece(rank, world)


class Objective(Protocol):
    """`totals`, when given, are `objective.totals(...)` of the whole optimiser step's batch, of which `batch` is a
    micro-batch: the loss is then normalised by them (not by the micro-batch's own), so that the micro-batches'
    losses, and their gradients, add up to the whole batch's. Additive `stats` add up likewise."""

    needs_reference: bool
    data: str  # what its batches hold: "rows" (Batch) or "pairs" (PairBatch)

    def totals(self, policy: Policy, batch: Batch, model_cfg: ModelConfig) -> dict[str, float]: ...

    def __call__(
        self,
        policy: Policy,
        batch: Batch,
        model_cfg: ModelConfig,
        reference: Policy | None,
        totals: dict[str, float] | None = None,
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


def token_weights(counts: Sequence[int], token_scores: Sequence[Sequence[float] | None]) -> list[np.ndarray]:
    """Per row, a weight for each of its `counts[i]` target tokens from its token scores (a seq2seq reward model's
    +1 before its correction departs from the completion, -1 from there on): (score + 1) / 2, so the tokens the
    reward model would keep count fully and those it would rewrite not at all.

    A row without scores (a labelled row of data.train) weighs 1 per token. A row whose scores do not line up with
    its tokens (another tokenizer than the reward model's, a target cut at max_target_tokens) weighs the mean of
    its weights on every token, i.e. its scalar reward.

    Scores [1, 1, -1] over 3 tokens: [1, 1, 0]; the same over 4 tokens: [2/3] * 4; None over 2 tokens: [1, 1].
    """
    out = []
    for count, scores in zip(counts, token_scores):
        if scores is None:
            out.append(np.ones(count, dtype=np.float32))
            continue
        w = np.clip((np.asarray(scores, dtype=np.float32) + 1) / 2, 0, 1)
        out.append(w if len(w) == count else np.full(count, w.mean() if len(w) else 1.0, dtype=np.float32))
    return out


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


PREFERENCE_LOSSES = ("dpo", "ipo")


def preference_losses(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    chosen_tokens: torch.Tensor,
    rejected_tokens: torch.Tensor,
    beta: float,
    kind: str = "dpo",
    average_log_prob: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per pair: the loss, and h, the policy's log-likelihood ratio margin over the reference's.

    Inputs are per-sequence summed log-likelihoods (log pi(y|x), log pi_ref(y|x)) and token counts. With
    average_log_prob each sequence's ratio log pi - log pi_ref is divided by its tokens (the length-invariant form),
    else summed (DPO as published):
        h = ratio(chosen) - ratio(rejected)
        dpo: -log sigmoid(beta h)          (Rafailov et al.)
        ipo: (h - 1 / (2 beta))^2          (Azar et al.: a fixed target gap instead of an unbounded push)

    Worked: chosen of 2 tokens, log pi = -2, log pi_ref = -4 (ratio +2); rejected of 4 tokens, log pi = -8,
    log pi_ref = -6 (ratio -2). Summed: h = 4; averaged: h = 2/2 - (-2/4) = 1.5. beta 0.5: dpo summed
    -log sigmoid(2) = 0.1269, averaged -log sigmoid(0.75) = 0.3864; ipo (target 1) summed 9, averaged 0.25.
    """
    if kind not in PREFERENCE_LOSSES:
        raise ValueError(f"unknown preference loss {kind!r}; known: {', '.join(PREFERENCE_LOSSES)}")
    ratio_c, ratio_r = policy_chosen - ref_chosen, policy_rejected - ref_rejected
    if average_log_prob:
        ratio_c = ratio_c / chosen_tokens.clamp_min(1)
        ratio_r = ratio_r / rejected_tokens.clamp_min(1)
    h = ratio_c - ratio_r
    if kind == "dpo":
        return -torch.nn.functional.logsigmoid(beta * h), h
    return (h - 1.0 / (2.0 * beta)) ** 2, h


# ---------------------------------------------------------------------------------------------------------------
# Objectives


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
    data = "rows"

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
        logits = forward_logits(policy, encoded)
        labels = encoded["labels"]
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
            with torch.no_grad():
                ref_logits = forward_logits(reference, encoded)  # type: ignore[arg-type]
            kl = token_kl(logits, ref_logits, labels, None if totals is None else totals["tokens"])
            stats["kl"] = kl.item()
            loss = loss + self.kl_beta * kl
        return loss, stats


@dataclass(frozen=True)
class Preference:
    """A preference loss on pairs of one source's samples (preference_losses: dpo or ipo, summed or averaged log
    likelihoods) against a frozen reference policy, plus `nll_weight` x the token-mean NLL of the labelled rows of
    the batch. The policy trains with dropout off (as TRL's DPO trainer): with it on, the policy's ratio to the
    reference is not 0 at the start and the loss chases dropout noise."""

    kind: str = "dpo"
    beta: float = 0.1
    average_log_prob: bool = True
    nll_weight: float = 1.0
    data = "pairs"
    dropout = False
    needs_reference = True

    def totals(self, policy: Policy, batch: PairBatch, model_cfg: ModelConfig) -> dict[str, float]:
        counts = target_counts(policy, list(batch.nll_targets), model_cfg)
        return {"pairs": float(len(batch.sources)), "tokens": float(sum(counts))}

    def __call__(
        self,
        policy: Policy,
        batch: PairBatch,
        model_cfg: ModelConfig,
        reference: Policy | None = None,
        totals: dict[str, float] | None = None,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        if reference is None:
            raise ValueError("a preference loss needs the reference policy")
        totals = totals or self.totals(policy, batch, model_cfg)
        loss = torch.zeros((), device=policy.model.device)
        stats: dict[str, float] = {}
        n = len(batch.sources)
        if n:
            # chosen and rejected in one forward pass (TRL's concatenated forward): one padding, one call
            encoded = encode_pairs(
                policy, list(batch.sources) * 2, list(batch.chosen) + list(batch.rejected), model_cfg
            )
            sums, counts = sequence_nll(forward_logits(policy, encoded), encoded["labels"])
            with torch.no_grad():
                ref_sums, _ = sequence_nll(forward_logits(reference, encoded), encoded["labels"])
            losses, h = preference_losses(
                -sums[:n],
                -sums[n:],
                -ref_sums[:n],
                -ref_sums[n:],
                counts[:n].float(),
                counts[n:].float(),
                self.beta,
                self.kind,
                self.average_log_prob,
            )
            loss = losses.sum() / max(totals["pairs"], 1.0)
            stats["pref_loss"] = loss.item()
            stats["pref_accuracy"] = float((h > 0).sum()) / max(totals["pairs"], 1.0)
            stats["pref_margin"] = float(h.detach().sum()) / max(totals["pairs"], 1.0)
        if batch.nll_sources and self.nll_weight > 0:
            encoded = encode_pairs(policy, list(batch.nll_sources), list(batch.nll_targets), model_cfg)
            sums, _ = sequence_nll(forward_logits(policy, encoded), encoded["labels"])
            nll = sums.sum() / max(totals["tokens"], 1.0)
            stats["nll"] = nll.item()
            loss = loss + self.nll_weight * nll
        return loss, stats


# improve.loss -> the objective built from a BC or Improve config section (fields it does not have read as off).
OBJECTIVES: dict[str, Callable[[Any], Objective]] = {
    **{
        name: (lambda cfg, name=name: NLL(name, getattr(cfg, "kl_beta", 0.0), getattr(cfg, "unlikelihood", 0.0)))
        for name in REDUCTIONS
    },
    **{
        name: (
            lambda cfg, name=name: Preference(
                name, cfg.preference.beta, cfg.preference.average_log_prob, cfg.preference.nll_weight
            )
        )
        for name in PREFERENCE_LOSSES
    },
}


def objective_for(cfg: Any) -> Objective:
    """The objective of a `bc` or `improve` config section: `loss` names it (BC: token_mean)."""
    name = getattr(cfg, "loss", "token_mean")
    if name not in OBJECTIVES:
        raise ValueError(f"unknown loss {name!r}; known: {', '.join(OBJECTIVES)}")
    return OBJECTIVES[name](cfg)
