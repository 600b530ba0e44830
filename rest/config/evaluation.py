"""The `eval` section: greedy and sampled evaluation, validation, the best policy's choice, the BC control."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from rest.config.base import IN_KEY_WHEN_SET, IN_NO_KEY, Section


class EvalConfig(Section):
    """Evaluation: greedy decoding; corpus chrF and BLEU (sacrebleu), exact match, mean reward. With `samples: k`
    also k sampled outputs per source: pass@1 and an unbiased pass@k (Chen et al. 2021; a sample is correct when its
    reward is 1: verified) and maj@k (the majority final answer's correctness)."""

    batch_size: int = Field(250, ge=1, description="sources decoded together")
    max_new_tokens: int = Field(48, ge=1)
    samples: int = Field(
        0, ge=0, description="sampled outputs per source for pass@k and maj@k, beside greedy; 0: greedy only"
    )
    temperature: float = Field(1.0, gt=0, description="the sampled evaluation's temperature (not Grow's)")
    top_p: float = Field(1.0, gt=0, le=1, description="the sampled evaluation's nucleus mass (not Grow's)")
    pass_at: list[int] | None = Field(
        None, description="the k of pass@k, each at most `samples`; null: 1 and `samples`"
    )
    select_by: Literal["reward", "pass@1", "maj"] = Field(
        "reward",
        description="the best policy: the highest validation reward of greedy outputs (reward), sampled pass@1, or "
        "maj@k (maj and pass@1 need samples >= 1)",
    )

    @model_validator(mode="after")
    def _sampled(self) -> EvalConfig:
        if self.select_by != "reward" and self.samples == 0:
            raise ValueError(f"eval.select_by: {self.select_by} needs sampled evaluation: set eval.samples (e.g. 8)")
        if self.pass_at is not None and any(not 1 <= k <= max(self.samples, 1) for k in self.pass_at):
            raise ValueError(
                f"eval.pass_at: each k must be from 1 to eval.samples ({self.samples}), got {self.pass_at}"
            )
        return self

    def ks(self) -> list[int]:
        """The k of pass@k reported."""
        if self.samples == 0:
            return []
        return sorted(set(self.pass_at if self.pass_at is not None else [1, self.samples]))

    control: bool = Field(
        False,
        description="also train the BC control: behaviour cloning alone for as many optimiser steps as the run's "
        "policies took in all, validated at each policy's step count; the end of the run compares ReST with it "
        "(a verdict on test, a monitor on validation). Costs about one BC run; changes no artifact of the run",
        json_schema_extra=IN_NO_KEY,
    )
    valid_rows: int | None = Field(
        None,
        ge=1,
        json_schema_extra=IN_KEY_WHEN_SET,
        description="validate every policy on the same seeded random this-many rows of data.valid (metrics, "
        "monitors, the best policy's choice); null: all of it. For many small iterations (SuperHF): 128 rows of "
        "g2p's 500 cut an iteration's validation from ~1 s to ~0.3 s (docs/benchmarks.md)",
    )
    every: int = Field(
        1,
        ge=1,
        description="validate (metrics, monitors) the Improve policies of every k-th Grow step and of the last one "
        "(grow.steps); the others are published without validation (valid: null in metrics.json) and never chosen "
        "as the best: for runs of many small iterations (SuperHF), where validation would cost more than the step",
    )
