"""Evaluation: greedy decoding on a split; corpus chrF and BLEU (sacrebleu), exact match, mean reward.

    metrics, outputs = evaluate(policy, df, cfg)
    metrics == {"exact_match": 88.4, "chrf": 97.1, "bleu": 88.4, "reward": 0.971, "completion_tokens": 11.2, "n": 500}

exact_match, chrf and bleu are on sacrebleu's 0-100 scale ("points"); reward is the configured reward's mean, in
[0, 1] like the Grow shards.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sacrebleu.metrics import BLEU, CHRF

from rest.config import RunConfig
from rest.models import Policy
from rest.rewards import exact_match, score_config
from rest.sampling import generate


def corpus_metrics(hypotheses: list[str], references: list[str]) -> dict[str, float]:
    """Corpus chrF and BLEU, and exact match, in points (0-100)."""
    return {
        "exact_match": round(100.0 * float(exact_match([], hypotheses, references).mean()), 2),
        "chrf": round(CHRF().corpus_score(hypotheses, [references]).score, 2),
        "bleu": round(BLEU().corpus_score(hypotheses, [references]).score, 2),
    }


def evaluate(policy: Policy, df: pd.DataFrame, cfg: RunConfig) -> tuple[dict[str, float], pd.DataFrame]:
    """Greedy outputs for every row of `df` (columns source, reference) and their metrics."""
    sources = df["source"].tolist()
    references = df["reference"].tolist()
    out = generate(
        policy,
        sources,
        cfg.model,
        greedy=True,
        max_new_tokens=cfg.eval.max_new_tokens,
        batch_size=cfg.eval.batch_size,
    )
    rewards = score_config(cfg.reward, sources, out.completions, references)["reward"]
    metrics = corpus_metrics(out.completions, references)
    metrics["reward"] = round(float(np.mean(rewards)), 4)
    metrics["completion_tokens"] = round(float(np.mean(out.num_tokens)), 2)
    metrics["n"] = len(df)
    outputs = df.assign(output=out.completions, reward=rewards)
    return metrics, outputs
