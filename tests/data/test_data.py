import pandas as pd
import pytest

from rest.data.splits import load_split
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
    with pytest.raises(
        RestError, match=r"data.train \(.*bad.parquet\): no `source` column \(columns: input, reference\)"
    ):
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
    pd.DataFrame({"source_id": ["a", "a"], "source": ["1", "2"], "reference": ["eins", "zwei"]}).to_parquet(
        tmp_path / "d.parquet"
    )
    with pytest.raises(RestError, match="'a' appears more than once"):
        load_split(str(tmp_path / "d.parquet"), "data.train")


def test_a_malformed_jsonl_line_is_named_by_its_number(tmp_path):
    from rest.data.splits import load_split
    from rest.errors import RestError

    path = tmp_path / "train.jsonl"
    path.write_text('{"source": "1", "reference": "eins"}\n\n{"source": "2", "reference": "zwei"\n{"source": "3"}\n')
    with pytest.raises(RestError, match=r"train.jsonl line 3: not valid JSON \(Expecting ',' delimiter at column 36\)"):
        load_split(str(path), "data.train")
    path.write_text('{"source": "1", "reference": "eins"}\n["2", "zwei"]\n')
    with pytest.raises(RestError, match=r"line 2: a JSONL row is an object"):
        load_split(str(path), "data.train")


def test_a_parquet_file_cut_short_is_named(tmp_path):
    """Before: pyarrow's `Parquet magic bytes not found` traceback."""
    pd.DataFrame({"source": ["1", "2"] * 100, "reference": ["eins", "zwei"] * 100}).to_parquet(
        tmp_path / "whole.parquet"
    )
    data = (tmp_path / "whole.parquet").read_bytes()
    (tmp_path / "half.parquet").write_bytes(data[: len(data) // 2])
    with pytest.raises(
        RestError, match=r"data.train: .*half.parquet is not a readable Parquet file \(.*\); it may be cut short"
    ):
        load_split(str(tmp_path / "half.parquet"), "data.train")
    # in a directory of Parquet files, the damaged one is named
    (tmp_path / "parts").mkdir()
    (tmp_path / "parts" / "part-0.parquet").write_bytes(data)
    (tmp_path / "parts" / "part-1.parquet").write_bytes(data[: len(data) // 2])
    with pytest.raises(RestError, match=r"data.pool: .*parts/part-1.parquet is not a readable Parquet file"):
        load_split(str(tmp_path / "parts"), "data.pool")
    (tmp_path / "parts" / "part-1.parquet").unlink()
    (tmp_path / "parts" / "_SUCCESS").write_text("")  # bookkeeping that pandas skips: so do we
    assert len(load_split(str(tmp_path / "parts"), "data.pool")) == 200


def test_a_directory_of_csv_files_is_named_with_the_fix(tmp_path):
    """Before: a traceback from pandas reading CSV files as Parquet."""
    (tmp_path / "csvs").mkdir()
    for i in range(2):
        pd.DataFrame({"source": ["1"], "reference": ["eins"]}).to_csv(tmp_path / "csvs" / f"part-{i}.csv", index=False)
    with pytest.raises(
        RestError,
        match=r"data.train: .*csvs is a directory that holds 2 file\(s\) that are not .parquet "
        r"\(part-0.csv, part-1.csv\); a directory split is .parquet files only",
    ):
        load_split(str(tmp_path / "csvs"), "data.train")
    (tmp_path / "nothing").mkdir()
    with pytest.raises(RestError, match=r"nothing is a directory that holds no .parquet file"):
        load_split(str(tmp_path / "nothing"), "data.train")


def test_a_column_of_lists_or_dicts_is_a_type_error_not_its_repr(tmp_path):
    """Before: each list became its Python repr ("['1', '2']") and was trained on."""
    pd.DataFrame({"source": [["1", "2"], ["3"]], "reference": ["eins", "zwei"]}).to_parquet(tmp_path / "lists.parquet")
    with pytest.raises(
        RestError,
        match=r"`source` must be text, but 2 rows hold other values \(first: row 0, a list: \['1', '2'\]\); make each "
        r"value one string",
    ):
        load_split(str(tmp_path / "lists.parquet"), "data.train")
    path = tmp_path / "d.jsonl"
    path.write_text('{"source": "1", "reference": "eins"}\n{"source": "2", "reference": {"text": "zwei"}}\n')
    with pytest.raises(
        RestError, match=r"`reference` must be text, but 1 rows hold other values \(first: row 1, a dict"
    ):
        load_split(str(path), "data.train")
    path.write_text(
        '{"source": 12, "reference": 3.5}\n{"source": "2", "reference": "zwei"}\n'
    )  # numbers are text enough
    assert load_split(str(path), "data.train").source.tolist() == ["12", "2"]
    path.write_text('{"source": true, "reference": "ja"}\n')
    with pytest.raises(RestError, match=r"first: row 0, a bool: True"):
        load_split(str(path), "data.train")


def test_truncated_and_unknown_token_rows_are_said_before_training(tmp_path):
    """Before: sources over model.max_source_tokens were cut and unrepresentable characters became <unk>, silently."""
    from rest.config import load_config
    from rest.stages.preflight import text_fit_warnings

    train = pd.read_parquet("data/numbers/train.parquet")
    cfg = load_config("configs/smoke.yaml", [])
    splits = {
        "data.train": load_split("data/numbers/train.parquet", "data.train"),
        "data.valid": load_split("tests/fixtures/valid-small.parquet", "data.valid"),
    }
    assert text_fit_warnings(cfg, splits) == []  # the embedded data fits
    train.loc[3, "source"] = "1234 " * 1000
    train.loc[7, "reference"] = "zwei " * 200
    train.to_parquet(tmp_path / "train.parquet")
    valid = splits["data.valid"].copy()
    valid.loc[2, "source"] = "99 ☃ 中"
    splits = {"data.train": load_split(str(tmp_path / "train.parquet"), "data.train"), "data.valid": valid}
    lines = text_fit_warnings(cfg, splits)
    assert len(lines) == 3, lines
    assert lines[0].startswith(
        "1 of 240 sources are longer than model.max_source_tokens (32 tokens) and lose their end "
        "(first: data.train row 3, train-00003, 5001 tokens"
    )
    assert "raise model.max_source_tokens" in lines[0]
    assert lines[1].startswith(
        "1 of 200 training references are longer than model.max_target_tokens (48 tokens with EOS)"
    )
    assert "data.train row 7" in lines[1] and "model.max_target_tokens" in lines[1]
    assert lines[2].startswith("1 text holds characters the tokenizer cannot represent") and "'☃' '中'" in lines[2]
    assert "data.valid row 2" in lines[2]


def test_the_shipped_word_problems_have_worked_solutions_that_add_up():
    """data/arith: every line of a solution is true arithmetic, the last line gives the answer, the answer after
    #### is the `answer` column; the splits are disjoint."""
    import re

    seen = set()
    for split in ("train", "pool", "valid", "test"):
        df = pd.read_parquet(f"data/arith/{split}.parquet")
        assert not seen & set(df["source"]) and df["source"].is_unique
        seen |= set(df["source"])
        for row in df.itertuples():
            *lines, answer = row.reference.split(". ")
            assert answer == f"#### {row.answer}" and len(lines) == row.steps
            for line in lines:
                a, op, b, _, c = re.fullmatch(r"(\d+) ([+*-]) (\d+) (=) (\d+)\.?", line).groups()
                assert {"+": int(a) + int(b), "-": int(a) - int(b), "*": int(a) * int(b)}[op] == int(c), line
            assert int(re.findall(r"\d+", lines[-1])[-1]) == int(row.answer)
