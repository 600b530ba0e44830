"""The config of `rest reward train --config FILE`: what a learned reward model learns from, and how."""

from __future__ import annotations

from typing import Literal

from pydantic import (
    Field,
)

from rest.config.base import DEVICE_PATTERN, Section
from rest.config.training import OptimFields

# ---------------------------------------------------------------------------------------------------------------
# Reward models: `rest reward train --config FILE`


class RMDataConfig(Section):
    """What the reward model learns from: Grow shards (or any Parquet with the same columns)."""

    shards: list[str] = Field(
        default_factory=lambda: ["runs/numbers/grow-1"],
        description="Grow step directories or Parquet files with source_id, source, completion and score_column",
    )
    score_column: str = Field(
        "reward_chrf",
        description="the target: regression learns it, bradley_terry ranks each source's completions by it "
        "(higher is better; e.g. reward_chrf, or a column of human ranks/ratings)",
    )
    valid_fraction: float = Field(
        0.1, gt=0, lt=1, description="fraction of sources (by a hash of source_id) held out for pairwise accuracy"
    )
    min_gap: float = Field(
        0.0, ge=0, description="bradley_terry trains on pairs whose two scores differ by more than this"
    )
    clear_gap: float = Field(
        0.1,
        ge=0,
        description="accuracy is also reported on the held-out pairs whose scores differ by at least this "
        "(a difference a labeller would see; 0.1 = 10 chrF points)",
    )
    negatives: int = Field(
        0,
        ge=0,
        description="per training source, add this many completions of other sources (of the same source length "
        "where there are enough), scored by score_column's metric against the source's reference: more, and "
        "contrasting, examples of what the score means. Needs a reference column and score_column reward_<metric>",
    )


class RMModelConfig(Section):
    """The reward model: a transformers sequence-classification model with one output, on (source, completion)."""

    pretrained: str | None = Field(
        None, description="from_pretrained path or hub id (AutoModelForSequenceClassification, num_labels=1)"
    )
    architecture: str = Field(
        "configs/models/reward-bert.json",
        description="transformers config JSON (needs model_type) for a model trained from scratch, with a BPE "
        "tokenizer trained on the shards' sources and completions",
    )
    vocab_size: int = Field(128, ge=16, description="BPE vocabulary of the tokenizer trained from scratch")
    max_tokens: int = Field(64, ge=4, description="source + completion are truncated to this many tokens")


class RMTrainConfig(OptimFields):
    """Optimiser settings; a step is one batch of whole sources (every completion of each)."""

    steps: int = Field(1500, ge=1)
    batch_size: int = Field(32, ge=1, description="sources per step; all their distinct completions go in the batch")
    lr: float = Field(1e-3, gt=0)
    warmup_steps: int = Field(50, ge=0)
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32", description="fp32; bf16 or fp16: the forward and backward pass under autocast (weights stay float32)"
    )
    micro_batch_size: int | None = Field(
        None,
        ge=1,
        description="rows per forward/backward pass, in whole sources; the pieces' gradients add up to the step's. "
        "null: the whole batch at once",
    )
    gradient_checkpointing: bool = Field(False, description="recompute activations in the backward pass: less memory")


class RewardModelConfig(Section):
    """A learned reward: regression on a score column, or Bradley-Terry on each source's ranked completions.

    Bradley-Terry puts all K-choose-2 pairs of one source in the same batch (InstructGPT: shuffled pairs make each
    completion appear in K-1 separate updates and overfit); the loss of a source is the mean over its pairs of
    -log sigmoid(r(better) - r(worse)), and the batch loss the mean over sources.
    """

    seed: int = Field(0, description="init, the tokenizer's data order and batch order")
    device: str = Field(
        "auto", pattern=DEVICE_PATTERN, description="where the reward model trains: auto, cpu, cuda, cuda:N, mps"
    )
    out: str = Field("runs/rm-numbers", description="the artifact directory to write (a manifest marks it done)")
    objective: Literal["regression", "bradley_terry", "classification", "seq2seq"] = Field(
        "regression",
        description="regression: mean squared error to score_column (the model's output is the reward, clipped to "
        "[0, 1]); bradley_terry: pairwise ranking loss (the reward is sigmoid(output)); classification: binary "
        "cross-entropy on a 0/1 score_column (the output is sigmoid(output) = P(1): a rule model of reward.rules, "
        "1 meaning the rule is broken); seq2seq: a model (encoder-decoder or decoder-only) learns to rewrite each "
        "(source, "
        "completion) as the source's best-scored completion, and the reward is the share of the completion's tokens "
        "before its correction departs from it (per-token scores in reward_tokens_<component>)",
    )
    data: RMDataConfig = RMDataConfig()
    model: RMModelConfig = RMModelConfig()
    train: RMTrainConfig = RMTrainConfig()
