"""The `improve` section: the thresholds, the loss and what it learns from (the preference losses' pairs too)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from rest.config.base import Section
from rest.config.training import PolicyOptimFields


class PreferenceConfig(Section):
    """How a preference loss (`improve.loss: dpo | ipo`) learns from a Grow step: pairs (chosen, rejected) of one
    source's samples, the chosen one clearing the step's tau. rest/improve/objectives.py has the losses with worked
    values."""

    pairs: Literal["best_worst", "margin"] = Field(
        "best_worst",
        description="best_worst: one pair per source, its best distinct sample against its worst; margin: every pair "
        "of its distinct samples whose reward gap is at least `margin`",
    )
    margin: float = Field(
        0.1, ge=0, le=1, description="the least reward gap of a pair (best_worst too); a gap of 0 is never a pair"
    )
    beta: float = Field(
        0.1,
        gt=0,
        description="how far the policy may move from the reference: DPO's inverse temperature on the log-likelihood "
        "ratios; IPO's target gap is 1 / (2 beta)",
    )
    average_log_prob: bool = Field(
        True,
        description="true: each sequence's log-likelihood ratio divided by its tokens inside the loss (the "
        "length-invariant form: a longer completion is not preferred for its length); false: summed, as DPO",
    )
    reference: Literal["grower", "policy-0"] = Field(
        "grower",
        description="the reference policy of the ratios: the policy that sampled the Grow step (iterative "
        "DPO), or policy-0 every time",
    )
    nll_weight: float = Field(
        1.0,
        ge=0,
        description="weight of the token-mean NLL of the labelled rows mixed into every batch (improve.train_mix of "
        "it; PPO-ptx's mixing): keeps the policy on the task while the pairs move it",
    )


class ImproveConfig(PolicyOptimFields):
    """Improve: fine-tune on the Grow samples whose reward clears tau, one step per threshold."""

    thresholds: list[float] = Field(
        default_factory=lambda: [0.9, 1.0],
        description="tau per Improve step, on the normalised reward; strictly rising, in [0, 1]",
    )
    train_mix: float = Field(
        0.25, ge=0, lt=1, description="fraction of every batch drawn from data.train (the rest: kept samples)"
    )
    init: Literal["previous", "policy-0"] = Field(
        "previous", description="fine-tune from the previous policy (ReST) or from policy-0 each time (ReST-EM)"
    )
    steps: int = Field(300, ge=0)
    lr: float = Field(5e-4, gt=0)
    loss: Literal["token_mean", "sequence_mean", "sum", "dpo", "ipo"] = Field(
        "token_mean",
        description="token_mean: NLL over every target token of the batch; sequence_mean: each sequence's mean "
        "NLL, then the batch mean (length-invariant); sum: each sequence's summed NLL, then the batch mean; dpo, "
        "ipo: a preference loss on pairs of the Grow step's samples (`improve.preference`), plus NLL on the "
        "labelled rows mixed in",
    )
    preference: PreferenceConfig = Field(
        default_factory=lambda: PreferenceConfig(), description="the pairs, beta and reference of loss: dpo | ipo"
    )
    kl_beta: float = Field(
        0.0,
        ge=0,
        description="weight of a KL(policy || policy-0) penalty on the batch's target tokens (SuperHF's prior); 0 "
        "turns it off",
    )
    reward_weighted: bool = Field(
        False, description="weight each kept sample's loss by its reward (labelled pairs weigh 1)"
    )
    token_weights: str | None = Field(
        None,
        description="a reward component whose per-token scores (reward_tokens_<component>, written by a seq2seq "
        "reward model) weight each kept sample's target tokens in the NLL by (score + 1) / 2: the tokens before the "
        "reward model's correction departs from the sample count fully, those after it not at all (labelled rows "
        "weigh 1); null: every token weighs 1",
    )
    unlikelihood: float = Field(
        0.0,
        ge=0,
        description="with token_weights: + this x the batch's mean over rows of -log(1 - p) of each kept sample's "
        "first token the reward model would rewrite (its first token score below 0; token-level unlikelihood): "
        "pushes down where a sample went wrong, an EOS too early included; 0: off",
    )
    selection: Literal["threshold", "percentile", "top_k"] = Field(
        "threshold",
        description="threshold: every sample with reward >= tau; percentile: also at or above its source's "
        "improve.percentile reward quantile; top_k: also among its source's improve.top_k best",
    )
    percentile: float = Field(
        0.75, ge=0, le=1, description="selection=percentile: the per-source reward quantile to clear"
    )
    top_k: int = Field(1, ge=1, description="selection=top_k: distinct completions kept per source")
    max_per_source: int | None = Field(
        None, ge=1, description="cap on kept samples per source, best reward first (ReST-EM caps at 10); null: no cap"
    )

    @model_validator(mode="after")
    def _preference_options(self) -> ImproveConfig:
        if self.unlikelihood > 0 and self.token_weights is None:
            raise ValueError(
                "improve.unlikelihood needs per-token scores to find the token to push down: set "
                "improve.token_weights to a component scored by a seq2seq reward model (e.g. learned)"
            )
        if self.loss in ("dpo", "ipo"):
            if self.kl_beta > 0:
                raise ValueError(
                    f"loss: {self.loss} keeps the policy near its reference already (preference.beta): set kl_beta: 0"
                )
            if (
                self.reward_weighted
                or self.selection != "threshold"
                or self.max_per_source is not None
                or self.token_weights
            ):
                raise ValueError(
                    f"loss: {self.loss} learns from pairs (improve.preference.pairs, margin): "
                    "reward_weighted, selection, max_per_source and token_weights are for the NLL losses; "
                    "leave them unset"
                )
        return self

    @field_validator("thresholds")
    @classmethod
    def _rising(cls, v: list[float]) -> list[float]:
        if not v:
            raise ValueError("needs at least one threshold, e.g. [0.9, 1.0]")
        for tau in v:
            if not 0.0 <= tau <= 1.0:
                raise ValueError(f"every threshold must be in [0, 1] (rewards are normalised): got {v}")
        for a, b in zip(v, v[1:]):
            if not b > a:
                raise ValueError(f"thresholds must rise strictly from step to step: got {v}")
        return v
