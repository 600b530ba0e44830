"""Datasets: every split is a table of `source_id`, `source`, `reference` (and whatever other columns the file
has, kept as they are), read from a file or the hub.

    df = load_split("data/numbers/train.parquet", key="data.train")

A split is named in the config by a path (`.parquet`, a directory of Parquet files, `.jsonl`/`.json`) or by a
`datasets` hub id (`name` or `name:split`, which needs the network unless cached). Problems are `RestError`s that
name the config key, the file, the column or row, and the fix.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from rest.errors import RestError

LOCAL_SUFFIXES = (".parquet", ".jsonl", ".json")


def _read(spec: str, key: str) -> pd.DataFrame:
    path = Path(spec)
    if path.exists():
        if path.is_dir():
            return _read_parquet_dir(path, key)
        if path.suffix == ".parquet":
            return _read_parquet(path, key)
        if path.suffix == ".jsonl":
            return _read_jsonl(path, key)
        if path.suffix == ".json":
            try:
                return pd.read_json(path, dtype=False)
            except ValueError as exc:
                raise RestError(f"{key}: {path} is not valid JSON: {exc}") from None
        raise RestError(f"{key}: {path} is a {path.suffix or 'suffix-less'} file; use .parquet, .jsonl or .json")
    if path.suffix in LOCAL_SUFFIXES or spec.startswith((".", "/")) or "\\" in spec:
        raise RestError(f"{key}: {spec} does not exist; fix the path (relative paths start at the current directory)")
    # Not a local path: a `datasets` hub id, optionally `name:split`.
    import datasets

    name, _, split = spec.partition(":")
    try:
        return datasets.load_dataset(name, split=split or "train").to_pandas()
    except Exception as exc:  # the hub raises many types; all mean "could not load this id"
        raise RestError(f"{key}: {spec} is neither a local file nor a loadable dataset id ({exc})") from None


def _read_parquet(path: Path, key: str) -> pd.DataFrame:
    """A Parquet file; one cut short (an interrupted copy, a full disk) or not Parquet at all is named."""
    try:
        return pd.read_parquet(path)
    except (pa.ArrowException, OSError) as exc:
        raise RestError(
            f"{key}: {path} is not a readable Parquet file ({_brief(exc)}); it may be cut short (an interrupted "
            "copy or a full disk): copy or write it again"
        ) from None


def _read_parquet_dir(path: Path, key: str) -> pd.DataFrame:
    """A directory of Parquet files (what pandas and Spark write), read as one table; anything else is named."""
    # pandas skips names that start with `_` or `.` (bookkeeping such as _SUCCESS, .crc files): so does this check.
    files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith(("_", ".")))
    parquet = [p for p in files if p.suffix == ".parquet"]
    others = [p.name for p in files if p.suffix != ".parquet"]
    if not parquet or others:
        what = (
            (
                f"holds {len(others)} file(s) that are not .parquet ({', '.join(others[:3])}"
                f"{', ...' if len(others) > 3 else ''})"
            )
            if others
            else "holds no .parquet file"
        )
        raise RestError(
            f"{key}: {path} is a directory that {what}; a directory split is .parquet files only: give one "
            ".parquet, .jsonl or .json file, or convert the files to Parquet"
        )
    for file in parquet:  # name the damaged file, not only the directory
        try:
            pq.read_metadata(file)
        except (pa.ArrowException, OSError) as exc:
            raise RestError(
                f"{key}: {file} is not a readable Parquet file ({_brief(exc)}); it may be cut short (an "
                "interrupted copy or a full disk): copy or write it again"
            ) from None
    return _read_parquet(path, key)


def _brief(exc: Exception, limit: int = 200) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _read_jsonl(path: Path, key: str) -> pd.DataFrame:
    """One JSON object per line (blank lines skipped); a bad line is named by its number, as an editor shows it."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line.rstrip("\r\n"))
            except json.JSONDecodeError as exc:
                raise RestError(
                    f"{key}: {path} line {number}: not valid JSON ({exc.msg} at column {exc.colno}); fix or drop that "
                    "line"
                ) from None
            if not isinstance(row, dict):
                raise RestError(
                    f"{key}: {path} line {number}: a JSONL row is an object such as "
                    f'{{"source": ..., "reference": ...}}, got {type(row).__name__}'
                )
            rows.append(row)
    return pd.DataFrame(rows)


def load_split(spec: str, key: str, need_reference: bool = True) -> pd.DataFrame:
    """Read one split and check it: `source` present and non-empty, `reference` present when needed."""
    df = _read(spec, key)
    where = f"{key} ({spec})"
    if "source" not in df.columns:
        raise RestError(
            f"{where}: no `source` column (columns: {', '.join(map(str, df.columns))}); rename the input column to "
            "`source`"
        )
    if len(df) == 0:
        raise RestError(f"{where}: has no rows")
    if "reference" not in df.columns:
        if need_reference:
            raise RestError(
                f"{where}: no `reference` column (columns: {', '.join(map(str, df.columns))}); "
                "this split needs the wanted output in `reference`"
            )
        df = df.assign(reference=None)
    blank = df["source"].isna() | (df["source"].astype(str).str.strip() == "")
    if blank.any():
        row = int(blank.to_numpy().nonzero()[0][0])
        raise RestError(f"{where}: `source` is empty in {int(blank.sum())} rows (first: row {row}); drop or fill them")
    if need_reference:
        missing = df["reference"].isna()
        if missing.any():
            row = int(missing.to_numpy().nonzero()[0][0])
            raise RestError(f"{where}: `reference` is missing in {int(missing.sum())} rows (first: row {row})")
    _check_text(df, "source", where)
    _check_text(df, "reference", where)
    if "source_id" not in df.columns:
        # Row numbers are stable as long as the file is: good enough to join shards back to their source.
        df = df.assign(source_id=[f"{Path(spec).stem}-{i:06d}" for i in range(len(df))])
    ids = df["source_id"].astype(str)
    if ids.duplicated().any():
        raise RestError(
            f"{where}: `source_id` {ids[ids.duplicated()].iloc[0]!r} appears more than once; ids must be unique"
        )
    out = pd.DataFrame(
        {
            "source_id": ids,
            "source": df["source"].astype(str),
            "reference": df["reference"].map(lambda r: None if pd.isna(r) else str(r)),
        }
    )
    # Every other column is kept as it is: a reward function of the user's reads them, and Grow's shards keep them.
    extra = [str(c) for c in df.columns if c not in ("source_id", "source", "reference")]
    for column in extra:
        out[column] = df[column]
    return out.reset_index(drop=True)


def as_python(values: pd.Series) -> list:
    """A column as Python values, a missing one (NaN, NA, NaT) as None: what a user's reward function is given."""
    return values.astype(object).where(values.notna(), None).tolist()


def row_columns(df: pd.DataFrame) -> dict[str, list]:
    """Every column but source and reference (source_id and the extra ones), as Python values."""
    return {c: as_python(df[c]) for c in df.columns if c not in ("source", "reference")}


def extra_columns(df: pd.DataFrame) -> list[str]:
    """The columns of a split beyond source_id, source and reference (what load_split keeps of the file)."""
    return [c for c in df.columns if c not in ("source_id", "source", "reference")]


def _is_text(value: object) -> bool:
    if isinstance(value, str) or value is None or value is pd.NA:
        return True
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def _check_text(df: pd.DataFrame, column: str, where: str) -> None:
    """Each value of a text column is a string (or a number, written as text; missing values are checked apart):
    a list, a dict or bytes would be turned into its Python repr and trained on without a word."""
    bad = ~df[column].map(_is_text)
    if bad.any():
        row = int(bad.to_numpy().nonzero()[0][0])
        value = df[column].iloc[row]
        value = value.item() if isinstance(value, np.generic) else value
        shown = repr(value.tolist() if isinstance(value, np.ndarray) else value)
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        kind = "list" if isinstance(value, (list, tuple, np.ndarray)) else type(value).__name__
        raise RestError(
            f"{where}: `{column}` must be text, but {int(bad.sum())} rows hold other values (first: row {row}, a "
            f"{kind}: {shown}); make each value one string (join a list, pick the field of a dict)"
        )


def grow_sources(data_cfg, need_reference: bool) -> pd.DataFrame:
    """The sources Grow samples for, as named by `data.grow_on`."""
    parts = []
    if data_cfg.grow_on in ("train", "train+pool"):
        parts.append(load_split(data_cfg.train, "data.train"))
    if data_cfg.grow_on in ("pool", "train+pool"):
        parts.append(load_split(data_cfg.pool, "data.pool", need_reference=need_reference))
    df = pd.concat(parts, ignore_index=True)
    if df["source_id"].duplicated().any():
        raise RestError(f"data.grow_on={data_cfg.grow_on}: train and pool share source_id values; make them unique")
    return df


def superbatch(df: pd.DataFrame, step: int, size: int, seed: int) -> pd.DataFrame:
    """The sources of Grow step `step` (from 1) when each step samples a fresh `size` of them (SuperHF's
    superbatches): positions (step-1)*size ... step*size of a walk through seeded permutations of the rows, one
    per pass (epoch); a step that spans two passes skips the rows it already has, so a step never repeats a source.

    With 10 rows and size 4: steps 1 and 2 take 8 distinct rows of pass 0, step 3 its last 2 and 2 of pass 1.
    """
    n = len(df)
    if size > n:
        raise RestError(
            f"grow.sources_per_step ({size}) is more than the {n} Grow sources: lower it, or set it to null"
        )
    taken: list[int] = []
    seen: set[int] = set()
    position = (step - 1) * size
    while len(taken) < size:
        epoch, offset = divmod(position, n)
        for j in np.random.default_rng([seed, epoch]).permutation(n)[offset:].tolist():
            if len(taken) == size:
                break
            if j not in seen:
                seen.add(j)
                taken.append(j)
        position = (epoch + 1) * n
    return df.iloc[taken].reset_index(drop=True)
