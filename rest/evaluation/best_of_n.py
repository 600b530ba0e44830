"""Best-of-N at inference: sample K outputs per source, keep the one a reward likes best.

    rest generate --run runs/numbers --data data/numbers/valid.parquet --best-of-n 8 --reward learned \
        --reward-model runs/rm-numbers --out runs/numbers/valid-best-of-8.parquet
    rest eval --run runs/numbers --data data/numbers/valid.parquet --best-of-n 8 \
        --reward learned --reward-model runs/rm-numbers

The output Parquet has one row per source: source_id, source, reference (null when the input has none), output
(the chosen candidate), reward (its reward), chosen_index, and all K candidates with their rewards
(`candidates`, `candidate_rewards`: lists in sample order). Ties go to the lowest sample index.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from rest.artifacts.manifests import write_atomic
from rest.errors import RestError
from rest.grow.base import Engine
from rest.rewards.scorer import Scorer

SCHEMA = pa.schema(
    [
        ("source_id", pa.string()),
        ("source", pa.string()),
        ("reference", pa.string()),
        ("output", pa.string()),
        ("reward", pa.float64()),
        ("chosen_index", pa.int32()),
        ("candidates", pa.list_(pa.string())),
        ("candidate_rewards", pa.list_(pa.float64())),
    ]
)


def best_of_n(
    engine: Engine, df: pd.DataFrame, cfg, k: int, reward: Scorer, seed: int, temperature: float | None = None
) -> pd.DataFrame:
    """Sample k candidates per row of df (Grow's engine and sampling settings), score them with `reward`, keep the
    best."""
    if k < 1:
        raise RestError(f"--best-of-n must be >= 1, got {k}")
    sources = df["source"].tolist()
    out = engine.sample(
        sources,
        num_samples=k,
        temperature=cfg.grow.temperature if temperature is None else temperature,
        top_p=cfg.grow.top_p,
        top_k=cfg.grow.top_k,
        max_new_tokens=cfg.eval.max_new_tokens,
        seed=seed,
    )
    refs = df["reference"].tolist()
    repeated = [s for s in sources for _ in range(k)], out.completions, [r for r in refs for _ in range(k)]
    scores = np.asarray(reward(*repeated, None, cfg.logits_mb))  # a reward model's passes within the run's budget
    cands = np.array(out.completions, dtype=object).reshape(len(df), k)
    scores = scores.reshape(len(df), k)
    chosen = scores.argmax(axis=1)  # the first maximum: the lowest sample index wins a tie
    rows = np.arange(len(df))
    return pd.DataFrame(
        {
            "source_id": df["source_id"].tolist(),
            "source": sources,
            "reference": refs,
            "output": cands[rows, chosen].tolist(),
            "reward": scores[rows, chosen].astype(float).tolist(),
            "chosen_index": chosen.astype("int32").tolist(),
            "candidates": [list(c) for c in cands],
            "candidate_rewards": [list(map(float, s)) for s in scores],
        }
    )


def write_best_of_n(path: Path, table: pd.DataFrame) -> None:
    """Write the table atomically: a kill leaves the old file or none, never a half-written one."""
    path = Path(path)
    if path.suffix != ".parquet":
        raise RestError(f"--out {path}: give a .parquet file name")
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pandas(table, schema=SCHEMA, preserve_index=False), buf, compression="zstd")
    write_atomic(path, buf.getvalue())
