"""Evaluation: greedy decoding on a split; corpus chrF and BLEU (sacrebleu), exact match, mean reward.

    metrics, outputs = evaluate(engine, df, cfg)      # engine: rest.grow.engines (engine_for / engine_on)
    metrics == {"exact_match": 88.4, "chrf": 97.1, "bleu": 88.4, "reward": 0.971, "completion_tokens": 11.2, "n": 500}

exact_match, chrf and bleu are on sacrebleu's 0-100 scale ("points"); reward is the configured reward's mean, in
[0, 1] like the Grow shards.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from rest.config import ModelConfig, RunConfig
from rest.data.splits import row_columns
from rest.grow.base import Engine
from rest.improve.objectives import sequence_nll
from rest.models.policy import Policy, encode_pairs, forward_logits
from rest.rewards.components import score_config
from rest.rewards.metrics import corpus_metrics


def evaluate(engine: Engine, df: pd.DataFrame, cfg: RunConfig) -> tuple[dict[str, float], pd.DataFrame]:
    """Greedy outputs for every row of `df` (columns source, reference) and their metrics."""
    sources = df["source"].tolist()
    references = df["reference"].tolist()
    out = engine.greedy(sources, max_new_tokens=cfg.eval.max_new_tokens)
    columns = row_columns(df)  # for a user's reward function
    rewards = score_config(cfg.reward, sources, out.completions, references, engine.device, columns)["reward"]
    metrics = corpus_metrics(out.completions, references)
    metrics["reward"] = round(float(np.mean(rewards)), 4)
    metrics["completion_tokens"] = round(float(np.mean(out.num_tokens)), 2)
    metrics["n"] = len(df)
    outputs = df.assign(output=out.completions, reward=rewards)
    return metrics, outputs


@torch.no_grad()
def target_nll(
    policy: Policy, sources: list[str], targets: list[str], model_cfg: ModelConfig, batch_size: int = 250
) -> float:
    """Token-mean NLL of `targets` given `sources` under the policy (teacher forcing, eval mode: no dropout)."""
    policy.model.eval()
    total, count = 0.0, 0
    for k in range(0, len(sources), batch_size):
        batch = encode_pairs(policy, sources[k : k + batch_size], targets[k : k + batch_size], model_cfg)
        sums, counts = sequence_nll(forward_logits(policy, batch), batch["labels"])
        total += float(sums.sum())
        count += int(counts.sum())
    return total / max(1, count)
