"""Improve's losses: each `improve.loss` is an objective of the training loop (rest/training/objectives.py has the
shared NLL; the preference losses are here) and the data it learns from (rest/improve/batches.py).

    loss = IMPROVE_LOSSES[cfg.improve.loss]
    data = loss.data.build(run, grow_name, grow_summary, tau, cfg.improve, train_df, rng)   # batches + selection
    stats = train(policy, data.batches, cfg.improve, cfg.model, seed=1, objective=loss.objective(cfg.improve))

Adding a loss: its objective (a class with `needs_reference`, `totals` and `__call__`; in training/objectives.py if
BC or a reward model could use it too), its entry in IMPROVE_LOSSES naming the data it learns from (`ROWS`, `PAIRS`,
or a new `ImproveData` in batches.py for a new shape, e.g. groups of N for a GRPO-like loss), and its name in the
Literal of `improve.loss` (with its own config fields there, if it has any).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from rest.config import ImproveConfig, ModelConfig
from rest.improve.batches import PAIRS, ROWS, ImproveData
from rest.models.policy import Policy, encode_pairs, target_counts, target_logits
from rest.training.batches import PairBatch
from rest.training.objectives import NLL, REDUCTIONS, Objective, sequence_nll

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
class Preference:
    """A preference loss on pairs of one source's samples (preference_losses: dpo or ipo, summed or averaged log
    likelihoods) against a frozen reference policy, plus `nll_weight` x the token-mean NLL of the labelled rows of
    the batch. The policy trains with dropout off (as TRL's DPO trainer): with it on, the policy's ratio to the
    reference is not 0 at the start and the loss chases dropout noise."""

    kind: str = "dpo"
    beta: float = 0.1
    average_log_prob: bool = True
    nll_weight: float = 1.0
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
            sums, counts = sequence_nll(*target_logits(policy, encoded))
            with torch.no_grad():
                ref_sums, _ = sequence_nll(*target_logits(reference, encoded))
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
            sums, _ = sequence_nll(*target_logits(policy, encoded))
            nll = sums.sum() / max(totals["tokens"], 1.0)
            stats["nll"] = nll.item()
            loss = loss + self.nll_weight * nll
        return loss, stats


# ---------------------------------------------------------------------------------------------------------------
# improve.loss


@dataclass(frozen=True)
class ImproveLoss:
    """An `improve.loss`: `objective(improve config)` builds its objective, `data` is what it learns from, and
    `reference(improve config)` names the policy its reference is ("policy-0", or "grower": the policy that sampled
    the Grow step) when the objective reads one."""

    objective: Callable[[Any], Objective]
    data: ImproveData
    reference: Callable[[ImproveConfig], str] = lambda ic: "policy-0"


IMPROVE_LOSSES: dict[str, ImproveLoss] = {
    **{
        name: ImproveLoss(
            lambda ic, name=name: NLL(name, getattr(ic, "kl_beta", 0.0), getattr(ic, "unlikelihood", 0.0)), ROWS
        )
        for name in REDUCTIONS
    },
    **{
        name: ImproveLoss(
            lambda ic, name=name: Preference(
                name, ic.preference.beta, ic.preference.average_log_prob, ic.preference.nll_weight
            ),
            PAIRS,
            lambda ic: ic.preference.reference,
        )
        for name in PREFERENCE_LOSSES
    },
}


def objective_for(ic: ImproveConfig) -> Objective:
    """The objective of an `improve` config section (improve.loss names it)."""
    if ic.loss not in IMPROVE_LOSSES:
        raise ValueError(f"unknown loss {ic.loss!r}; known: {', '.join(IMPROVE_LOSSES)}")
    return IMPROVE_LOSSES[ic.loss].objective(ic)
