"""Datasets: every split is a table of `source_id`, `source`, `reference` (and whatever other columns the file
has, kept as they are), read from a file or the hub.

    df = load_split("data/numbers/train.parquet", key="data.train")
    df = data_split(cfg.data, "valid")            # the config's path and its data.columns mapping

A split is named in the config by a path (`.parquet`, a directory of Parquet files, `.jsonl`/`.json`, `.csv`) or
by a `datasets` hub id (`name`, `name:split` or `name:config:split`, which needs the network unless cached).
`data.columns` maps our names (source, reference, source_id, messages) to the file's. A `messages` column (a
conversation) becomes the source as the conversation's JSON text (rest.data.conversations), its last assistant
turn the reference. Problems are `RestError`s that name the config key, the file, the column or row, and the fix.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from rest.artifacts.shards import BASE_COLUMNS, TAIL_COLUMNS
from rest.data.conversations import as_source, split_messages
from rest.errors import RestError

log = logging.getLogger("rest")

LOCAL_SUFFIXES = (".parquet", ".jsonl", ".json", ".csv")


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
                # dtype=False (documented: no dtype inference, text stays text), narrower in pandas' stubs
                return pd.read_json(path, dtype=False)  # ty: ignore[invalid-argument-type]
            except ValueError as exc:
                raise RestError(f"{key}: {path} is not valid JSON: {exc}") from None
        if path.suffix == ".csv":
            try:  # text as text: "007" stays "007"; an empty cell is missing
                return pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
            except (ValueError, pd.errors.ParserError) as exc:
                raise RestError(f"{key}: {path} is not readable CSV: {_brief(exc)}") from None
        raise RestError(f"{key}: {path} is a {path.suffix or 'suffix-less'} file; use .parquet, .jsonl, .json or .csv")
    if path.suffix in LOCAL_SUFFIXES or spec.startswith((".", "/")) or "\\" in spec:
        raise RestError(f"{key}: {spec} does not exist; fix the path (relative paths start at the current directory)")
    # Not a local path: a `datasets` hub id, `name`, `name:split` or `name:config:split`.
    import datasets

    name, config, split = hub_parts(spec)
    try:
        df = datasets.load_dataset(name, config, split=split).to_pandas()
        assert isinstance(df, pd.DataFrame)  # to_pandas() without batch_size: one frame, not an iterator
        return df
    except Exception as exc:  # the hub raises many types; all mean "could not load this id"
        raise RestError(f"{key}: {spec} is neither a local file nor a loadable dataset id ({exc})") from None


def hub_parts(spec: str) -> tuple[str, str | None, str]:
    """(name, config or None, split) of a hub id: `name`, `name:split` or `name:config:split`; the split may be a
    `datasets` slice (train[:500], train[90%:]) in the three-part form."""
    parts = spec.split(":", 2)
    if len(parts) == 3:
        return parts[0], parts[1] or None, parts[2] or "train"
    return parts[0], None, parts[1] if len(parts) == 2 and parts[1] else "train"


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


def _mapped(df: pd.DataFrame, columns: dict[str, str], where: str) -> pd.DataFrame:
    """The file's columns renamed to ours as data.columns says; a mapped column the file lacks is named."""
    for ours, theirs in columns.items():
        if theirs not in df.columns:
            raise RestError(
                f"{where}: data.columns maps {ours} to `{theirs}`, which the file lacks (its columns: "
                f"{', '.join(map(str, df.columns))}); fix the name in data.columns"
            )
    renamed = {theirs: ours for ours, theirs in columns.items() if theirs != ours}
    clash = [ours for theirs, ours in renamed.items() if ours in df.columns and ours not in renamed]
    if clash:
        raise RestError(
            f"{where}: data.columns maps {clash[0]} to `{columns[clash[0]]}`, but the file also has a `{clash[0]}` "
            f"column; map {clash[0]} to that one, or rename it in the file"
        )
    out = df.rename(columns=renamed)
    for ours, theirs in columns.items():  # one file column mapped to two of ours (source_id and source): a copy
        if ours not in out.columns:
            out[ours] = df[theirs]
    return out


def _from_messages(df: pd.DataFrame, where: str) -> pd.DataFrame:
    """`messages` (conversations) as the source (the prompt turns' JSON) and, from a last assistant turn, the
    reference unless the file maps one."""
    sources, replies = [], []
    for row, value in enumerate(df["messages"]):
        got = split_messages(value)
        if isinstance(got, str):
            raise RestError(
                f"{where}: `messages` row {row} is {got}; each value is a list of {{role, content}} turns "
                "(system, user, assistant)"
            )
        sources.append(as_source(got[0]))
        replies.append(got[1])
    out = df.drop(columns=["messages"]).assign(source=sources)
    if "reference" not in out.columns and any(r is not None for r in replies):
        out["reference"] = replies
    return out


def load_split(spec: str, key: str, need_reference: bool = True, columns: dict[str, str] | None = None) -> pd.DataFrame:
    """Read one split and check it: `source` present and non-empty, `reference` present when needed. `columns`:
    data.columns for this split (ours -> the file's)."""
    df = _read(spec, key)
    where = f"{key} ({spec})"
    if columns:
        df = _mapped(df, columns, where)
    if "source" not in df.columns and "messages" in df.columns:
        df = _from_messages(df, where)
    if "source" not in df.columns:
        raise RestError(
            f"{where}: no `source` column (columns: {', '.join(map(str, df.columns))}); name the input column in "
            "data.columns (data.columns: {source: <column>}, or {messages: <column>} for conversations)"
        )
    if len(df) == 0:
        raise RestError(f"{where}: has no rows")
    if "reference" not in df.columns:
        if need_reference:
            raise RestError(
                f"{where}: no `reference` column (columns: {', '.join(map(str, df.columns))}); "
                "this split needs the wanted output: name its column in data.columns ({reference: <column>})"
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


def data_split(data_cfg, split: str, need_reference: bool = True) -> pd.DataFrame:
    """Split `split` (train, pool, valid, test) of the config's data section, with its column mapping."""
    return load_split(getattr(data_cfg, split), f"data.{split}", need_reference, data_cfg.columns_for(split))


def grow_sources(data_cfg, need_reference: bool) -> pd.DataFrame:
    """The sources Grow samples for, as named by `data.grow_on`."""
    parts = []
    if data_cfg.grow_on in ("train", "train+pool"):
        parts.append(data_split(data_cfg, "train"))
    if data_cfg.grow_on in ("pool", "train+pool"):
        parts.append(data_split(data_cfg, "pool", need_reference=need_reference))
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


SHARD_COLUMNS = {name for name, _ in BASE_COLUMNS + TAIL_COLUMNS}


def grow_extras(sources: pd.DataFrame) -> tuple[pd.DataFrame, pa.Schema]:
    """The sources' other columns that the shards keep, and their Arrow types (the same in every shard). A column
    whose name a shard already uses is left out, with one warning that says how to keep it."""
    extra = extra_columns(sources)
    clash = [c for c in extra if c in SHARD_COLUMNS or c.startswith("reward")]
    if clash:
        log.warning(
            f"the Grow sources' column(s) {', '.join(clash)} have names the shards use; they are left out of the "
            "shards and of reward functions' columns: rename them in the data to keep them"
        )
        sources = sources.drop(columns=clash)
        extra = [c for c in extra if c not in clash]
    try:
        schema = pa.Schema.from_pandas(sources[extra], preserve_index=False) if extra else pa.schema([])
    except (pa.ArrowException, ValueError) as exc:
        raise RestError(
            f"data: a column of the Grow sources cannot be stored in Parquet ({exc}); give each of "
            f"{', '.join(extra)} one type (text, numbers, or lists of one type)"
        ) from None
    return sources, schema.remove_metadata()
