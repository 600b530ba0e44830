"""Evaluation: greedy decoding on a split; corpus chrF and BLEU (sacrebleu), exact match, mean reward.

    metrics, outputs = evaluate(engine, df, cfg)      # engine: rest.grow.engines (engine_for / engine_on)
    metrics == {"exact_match": 88.4, "chrf": 97.1, "bleu": 88.4, "reward": 0.971, "completion_tokens": 11.2, "n": 500}

exact_match, chrf and bleu are on sacrebleu's 0-100 scale ("points"); reward is the configured reward's mean, in
[0, 1] like the Grow shards.

With eval.samples = n (> 0), n outputs per source are also sampled (eval.temperature, eval.top_p; a seed of the
run's) and scored: a sample is correct when its reward is 1 (verified). `pass@k` (points) is the
unbiased estimator of Chen et al. (2021), 1 - C(n-c, k) / C(n, k) for a source with c correct of n, averaged
over sources; `maj@n` (points) is how often the answer most of the n samples give (final_answer: what follows
`####`, else the last number, else the whole output; ties: the answer seen first) is a correct one.
"""

from __future__ import annotations

import re
from collections import Counter

import numpy as np
import pandas as pd

from rest.config import RunConfig
from rest.data.splits import row_columns
from rest.grow.base import Engine
from rest.rewards.components import score_config
from rest.rewards.metrics import corpus_metrics


def evaluate(engine: Engine, df: pd.DataFrame, cfg: RunConfig, seed: int = 0) -> tuple[dict[str, float], pd.DataFrame]:
    """Greedy outputs for every row of `df` (columns source, reference) and their metrics; with eval.samples, the
    sampled metrics too (drawn with `seed`)."""
    sources = df["source"].tolist()
    references = df["reference"].tolist()
    out = engine.greedy(sources, max_new_tokens=cfg.eval.max_new_tokens)
    columns = row_columns(df)  # for a user's reward function
    rewards = score_config(cfg.reward, sources, out.completions, references, engine.device, columns, cfg.logits_mb)[
        "reward"
    ]
    metrics = corpus_metrics(out.completions, references)
    metrics["reward"] = round(float(np.mean(rewards)), 4)
    metrics["completion_tokens"] = round(float(np.mean(out.num_tokens)), 2)
    metrics["n"] = len(df)
    outputs = df.assign(output=out.completions, reward=rewards)
    if cfg.eval.samples:
        metrics.update(sampled_metrics(engine, df, cfg, seed))
    return metrics, outputs


def pass_at_k(n: int, c: int, k: int) -> float:
    """The chance that at least one of k samples drawn without replacement from n, c of them correct, is correct:
    1 - C(n-c, k) / C(n, k), as a numerically stable product (Chen et al. 2021)."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n} c={c} k={k}")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


_MARKED = re.compile(r"####\s*([^\n]+)")
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def final_answer(text: str) -> str:
    """The answer an output gives, for majority voting: what follows `####` (GSM8K's mark), else the last number
    (commas dropped, 3.0 -> 3), else the whole output; whitespace collapsed."""
    marked = _MARKED.search(text)
    if marked:
        answer = marked.group(1)
    else:
        numbers = _NUMBER.findall(text)
        answer = numbers[-1] if numbers else text
    answer = " ".join(answer.split()).rstrip(".")
    if _NUMBER.fullmatch(answer):
        answer = answer.replace(",", "")
        if "." in answer:
            answer = answer.rstrip("0").rstrip(".")
    return answer


def majority_correct(answers: list[str], correct: list[bool]) -> bool:
    """Whether the most common answer (ties: the one seen first) is correct, judged by its first sample."""
    counts = Counter(answers)
    best = max(counts.values())
    voted = next(a for a in answers if counts[a] == best)
    return correct[answers.index(voted)]


def sampled_metrics(engine: Engine, df: pd.DataFrame, cfg: RunConfig, seed: int) -> dict[str, float]:
    """pass@1, pass@k and maj@n of eval.samples sampled outputs per row of `df` (see the module's docstring)."""
    n = cfg.eval.samples
    sources = df["source"].tolist()
    out = engine.sample(
        sources,
        num_samples=n,
        temperature=cfg.eval.temperature,
        top_p=cfg.eval.top_p,
        top_k=0,
        max_new_tokens=cfg.eval.max_new_tokens,
        seed=seed,
    )

    def repeat(values: list) -> list:
        return [v for v in values for _ in range(n)]

    columns = {k: repeat(v) for k, v in row_columns(df).items()}
    rewards = score_config(
        cfg.reward,
        repeat(sources),
        out.completions,
        repeat(df["reference"].tolist()),
        engine.device,
        columns,
        cfg.logits_mb,
    )["reward"]
    correct = (np.asarray(rewards) >= 1.0 - 1e-9).reshape(len(df), n)
    counts = correct.sum(axis=1)
    metrics = {
        f"pass@{k}": round(100 * float(np.mean([pass_at_k(n, int(c), k) for c in counts])), 2) for k in cfg.eval.ks()
    }
    answers = np.asarray([final_answer(c) for c in out.completions], dtype=object).reshape(len(df), n)
    metrics[f"maj@{n}"] = round(
        100 * float(np.mean([majority_correct(list(a), list(c)) for a, c in zip(answers, correct)])), 2
    )
    metrics["sampled_reward"] = round(float(np.mean(rewards)), 4)
    return metrics


def selection_score(valid: dict, cfg: RunConfig) -> float:
    """What eval.select_by ranks policies by, from their validation metrics."""
    if cfg.eval.select_by == "pass@1":
        return valid["pass@1"]
    if cfg.eval.select_by == "maj":
        return valid[f"maj@{cfg.eval.samples}"]
    return valid["reward"]
