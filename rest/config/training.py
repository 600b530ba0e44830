"""The optimiser settings BC and Improve share, LoRA, and the `bc` section (policy-0)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from rest.config.base import IN_KEY_WHEN_SET, IN_NO_KEY, Section, in_key_when_set_by


class OptimFields(Section):
    """Optimiser settings shared by BC and Improve (AdamW, linear warm-up then cosine decay to 10%)."""

    steps: int = Field(400, ge=0, description="optimiser steps; 0 skips training")
    batch_size: int = Field(32, ge=1, description="sequences per step")
    lr: float = Field(1e-3, gt=0, description="peak learning rate; ~1e-3 from scratch, ~1e-5..1e-4 for pretrained")
    warmup_steps: int = Field(20, ge=0, description="linear warm-up steps (unless warmup_fraction is set)")
    warmup_fraction: float | None = Field(
        None,
        ge=0,
        lt=1,
        description="warm-up as a fraction of `steps` (0.1: the first 10%); set, it replaces warmup_steps, so the "
        "warm-up follows when you change steps",
    )
    weight_decay: float = Field(0.01, ge=0)
    grad_clip: float = Field(1.0, gt=0, description="max global gradient norm")

    def warmup(self, total_steps: int) -> int:
        """Warm-up steps for a schedule of `total_steps`."""
        if self.warmup_fraction is not None:
            return round(self.warmup_fraction * total_steps)
        return self.warmup_steps


class LoraConfig(Section):
    """A LoRA adapter (peft) trained instead of the whole model; merged into the weights when the step ends, so a
    published policy stays a plain `save_pretrained` directory."""

    r: int = Field(8, ge=1, description="rank of each adapter")
    alpha: float = Field(16.0, gt=0, description="scaling: the adapter's update is multiplied by alpha / r")
    dropout: float = Field(0.05, ge=0, lt=1, description="dropout on the adapter's input")
    target_modules: list[str] | Literal["all-linear"] = Field(
        "all-linear",
        description="module names to adapt (e.g. [q_proj, v_proj]), or all-linear: every linear layer but the output "
        "head",
    )


# How a training step is computed, not what it computes (the same gradient up to float sums): a run may be resumed
# with them changed (a smaller micro-batch after running out of memory), so they are in no artifact's key.


class PolicyOptimFields(OptimFields):
    """What BC and Improve add to the optimiser settings: how their rows are batched, and how a step is computed."""

    @model_validator(mode="after")
    def _a_share_per_process(self) -> PolicyOptimFields:
        if self.processes > self.batch_size:
            raise ValueError(
                f"processes ({self.processes}) must be at most batch_size ({self.batch_size}): each "
                "process computes a share of every batch"
            )
        if self.strategy == "fsdp" and self.lora is not None:
            raise ValueError(
                "strategy: fsdp shards a full fine-tuning; with lora the frozen base fits one GPU: use "
                "strategy: ddp (or drop lora)"
            )
        return self

    precision: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32",
        description="fp32; bf16: the forward and backward pass under bfloat16 autocast (CPUs with AVX512-BF16 and "
        "GPUs from Ampere on); fp16: float16 autocast with a gradient scaler (older GPUs). Weights stay float32",
    )
    processes: int = Field(
        1,
        json_schema_extra=IN_NO_KEY,
        ge=1,
        description="data-parallel training processes (torchrun; one per GPU, or CPU processes with gloo): each "
        "computes its share of every batch, one all-reduce per step makes the gradient the whole batch's (the "
        "same step as one process with micro-batches); only the first validates and publishes "
        "(rest/training/distributed.py)",
    )
    strategy: Literal["ddp", "fsdp"] = Field(
        "ddp",
        json_schema_extra=IN_NO_KEY,
        description="with processes > 1: ddp, every process holds the whole model (the gradients are summed); "
        "fsdp, torch's fully_shard: weights, gradients and optimiser state sharded over the processes, for a model "
        "whose full fine-tuning does not fit one GPU (not with lora: a LoRA step's frozen base fits, use ddp)",
    )
    micro_batch_size: int | None = Field(
        None,
        json_schema_extra=IN_NO_KEY,
        ge=1,
        description="sequences per forward/backward pass; a step accumulates the gradients of batch_size / "
        "micro_batch_size of them, normalised over the whole batch (the same step as one pass, up to float sums). "
        "null: the whole batch at once. Lower it when a batch does not fit in memory",
    )
    gradient_checkpointing: bool = Field(
        False,
        json_schema_extra=IN_NO_KEY,
        description="recompute activations in the backward pass: less memory, ~30% more compute",
    )
    lora: LoraConfig | None = Field(
        None,
        description="train a LoRA adapter instead of every weight ({r, alpha, dropout, target_modules}); null: full "
        "fine-tuning. With kl_beta > 0 and policy-0 as the start, the reference is the adapter switched off: no "
        "second model in memory",
    )
    group_by_length: bool = Field(
        False,
        description="batches of rows of similar length (source + target characters; transformers' group_by_length): "
        "less padding, so more examples/s, but a higher held-out loss after as many steps; false: batches as drawn",
    )


class BCConfig(PolicyOptimFields):
    """policy-0: behaviour cloning (token-level NLL) on `data.train`. The defaults (a pre-LN model, lr 1e-3, warm-up
    over the first 10% of `steps`) are the from-scratch recipe; docs/results.md has what they were chosen on."""

    warmup_fraction: float | None = Field(
        0.1,
        ge=0,
        lt=1,
        description="warm-up as a fraction of `steps` (the first 10% by default), so the warm-up follows when you "
        "change steps; null uses warmup_steps instead",
    )
    valid_every: int | None = Field(
        None,
        ge=1,
        json_schema_extra=IN_KEY_WHEN_SET,
        description="early stopping: validate every this-many steps and stop when `patience` validations in a row "
        "did not raise the validation score (eval.select_by); policy-0 is the best checkpoint, and `steps` is "
        "the most BC may take. null: train all `steps`",
    )
    patience: int = Field(
        2,
        ge=1,
        description="early stopping: validations without a better score before BC stops",
        json_schema_extra=in_key_when_set_by("valid_every"),
    )

    @model_validator(mode="after")
    def _early_stopping_in_one_process(self) -> BCConfig:
        if self.valid_every is not None and self.processes > 1:
            raise ValueError("bc.valid_every (early stopping) validates in one process: set bc.processes to 1")
        return self
