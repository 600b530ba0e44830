import pandas as pd
import pytest

from rest.data import load_split
from rest.errors import RestError


def test_reads_parquet_and_jsonl(tmp_path):
    df = pd.DataFrame({"source": ["1", "2"], "reference": ["eins", "zwei"]})
    df.to_json(tmp_path / "d.jsonl", orient="records", lines=True)
    got = load_split(str(tmp_path / "d.jsonl"), "data.train")
    assert got.columns.tolist() == ["source_id", "source", "reference"]
    assert got.source_id.tolist() == ["d-000000", "d-000001"]  # made from row numbers when absent
    shipped = load_split("data/numbers/train.parquet", "data.train")
    assert len(shipped) == 200 and shipped.source_id.is_unique


def test_missing_source_column_names_file_and_fix(tmp_path):
    pd.DataFrame({"input": ["1"], "reference": ["eins"]}).to_parquet(tmp_path / "bad.parquet")
    with pytest.raises(RestError, match=r"data.train \(.*bad.parquet\): no `source` column \(columns: input, reference\)"):
        load_split(str(tmp_path / "bad.parquet"), "data.train")


def test_missing_reference_column_unless_allowed(tmp_path):
    pd.DataFrame({"source": ["1"]}).to_parquet(tmp_path / "pool.parquet")
    with pytest.raises(RestError, match="no `reference` column"):
        load_split(str(tmp_path / "pool.parquet"), "data.valid")
    assert load_split(str(tmp_path / "pool.parquet"), "data.pool", need_reference=False).reference.isna().all()


def test_empty_sources_name_the_row(tmp_path):
    pd.DataFrame({"source": ["1", " ", None], "reference": ["eins", "x", "y"]}).to_parquet(tmp_path / "e.parquet")
    with pytest.raises(RestError, match=r"`source` is empty in 2 rows \(first: row 1\)"):
        load_split(str(tmp_path / "e.parquet"), "data.train")


def test_path_that_does_not_exist():
    with pytest.raises(RestError, match="data.valid: data/nope.parquet does not exist"):
        load_split("data/nope.parquet", "data.valid")


def test_duplicate_ids(tmp_path):
    pd.DataFrame({"source_id": ["a", "a"], "source": ["1", "2"], "reference": ["eins", "zwei"]}).to_parquet(tmp_path / "d.parquet")
    with pytest.raises(RestError, match="'a' appears more than once"):
        load_split(str(tmp_path / "d.parquet"), "data.train")


def test_a_malformed_jsonl_line_is_named_by_its_number(tmp_path):
    from rest.data import load_split
    from rest.errors import RestError

    path = tmp_path / "train.jsonl"
    path.write_text('{"source": "1", "reference": "eins"}\n\n{"source": "2", "reference": "zwei"\n{"source": "3"}\n')
    with pytest.raises(RestError, match=r"train.jsonl line 3: not valid JSON \(Expecting ',' delimiter at column 36\)"):
        load_split(str(path), "data.train")
    path.write_text('{"source": "1", "reference": "eins"}\n["2", "zwei"]\n')
    with pytest.raises(RestError, match=r"line 2: a JSONL row is an object"):
        load_split(str(path), "data.train")
