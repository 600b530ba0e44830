"""Grow shards: the Parquet schema (docs/design.md) and how a shard is written (atomically) and read back.

df = pandas.read_parquet("runs/numbers/grow-1")        # every shard of Grow step 1, one row per sample
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from rest.artifacts.manifests import write_atomic

BASE_COLUMNS = [
    ("source_id", pa.string()),
    ("source", pa.string()),
    ("reference", pa.string()),
    ("sample_index", pa.int32()),
    ("completion", pa.string()),
    ("num_tokens", pa.int32()),
    ("logprob", pa.float64()),
    ("reward", pa.float64()),
]
TAIL_COLUMNS = [("policy", pa.string()), ("grow_step", pa.int32())]


def shard_schema(
    reward_names: list[str], token_columns: Sequence[str] = (), extra: pa.Schema | None = None
) -> pa.Schema:
    """The shard columns; one `reward_<name>` float64 column per reward component, after `reward` (null where a
    component does not apply to the row), then the per-token scores of a component that has them
    (`reward_tokens_<name>`, a list of float32 per row), then the Grow sources' other columns (`extra`) as they are."""
    return pa.schema(
        BASE_COLUMNS
        + [(f"reward_{n}", pa.float64()) for n in reward_names]
        + [(c, pa.list_(pa.float32())) for c in token_columns]
        + TAIL_COLUMNS
        + (list(extra) if extra is not None else [])
    )


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.parquet"


def write_shard(
    path: Path,
    columns: dict[str, list],
    reward_names: list[str],
    token_columns: Sequence[str] = (),
    extra: pa.Schema | None = None,
) -> None:
    """Write one shard in the schema, so that it appears whole or not at all (temp file + rename). A reward that
    does not apply to a row (NaN) is stored as null."""
    for name in reward_names:
        values = columns[f"reward_{name}"]
        if any(v != v for v in values):  # NaN
            columns = {**columns, f"reward_{name}": [None if v != v else v for v in values]}
    table = pa.table(columns, schema=shard_schema(reward_names, token_columns, extra))
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    write_atomic(path, buf.getvalue())


def read_grow(grow_dir: Path, columns: list[str] | None = None, min_reward: float | None = None) -> pd.DataFrame:
    """The rows of a Grow step, in shard order: all columns or only `columns`, all rows or only those with
    reward >= `min_reward`. The filter is applied while reading (pyarrow), so memory follows what is kept."""
    filters = None if min_reward is None else [("reward", ">=", min_reward)]
    return pd.read_parquet(grow_dir, columns=columns, filters=filters)


def shard_paths(grow_dir: Path) -> list[Path]:
    """The shard files of a Grow step, in order."""
    return sorted(Path(grow_dir).glob("shard-*.parquet"))


def grow_columns(grow_dir: Path) -> list[str]:
    """The column names of a Grow step's shards (its first shard's schema; every shard has the same)."""
    paths = shard_paths(grow_dir)
    return pq.read_schema(paths[0]).names if paths else []
