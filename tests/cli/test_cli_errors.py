"""Bad input: exit code 2, one line naming the file / column / config key and the fix, and nothing written."""

import re
import subprocess
import sys

import pandas as pd
import pytest


def rest(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "rest.cli", *args], capture_output=True, text=True, timeout=120, cwd=cwd
    )


@pytest.fixture
def bad_files(tmp_path):
    pd.DataFrame({"text": ["1"], "reference": ["eins"]}).to_parquet(tmp_path / "nosource.parquet")
    pd.DataFrame({"source": ["1", ""], "reference": ["eins", "x"]}).to_parquet(tmp_path / "empty.parquet")
    pd.DataFrame({"source": ["1"]}).to_parquet(tmp_path / "noref.parquet")
    pd.DataFrame({"source": [["1", "2"]], "reference": ["eins"]}).to_parquet(tmp_path / "lists.parquet")
    whole = pd.read_parquet("data/numbers/train.parquet")
    whole.to_parquet(tmp_path / "whole.parquet")
    data = (tmp_path / "whole.parquet").read_bytes()
    (tmp_path / "half.parquet").write_bytes(data[: len(data) // 2])
    (tmp_path / "csvs").mkdir()
    whole.to_csv(tmp_path / "csvs" / "part-0.csv", index=False)
    return tmp_path


@pytest.mark.parametrize(
    "override, message",
    [
        (
            "data.train={d}/nosource.parquet",
            r"data.train \(.*nosource.parquet\): no `source` column .*data.columns: {source: <column>}",
        ),
        ("data.valid={d}/noref.parquet", r"data.valid \(.*noref.parquet\): no `reference` column"),
        ("data.pool={d}/empty.parquet", r"data.pool \(.*empty.parquet\): `source` is empty in 1 rows \(first: row 1\)"),
        ("data.test={d}/missing.parquet", r"data.test: .*missing.parquet does not exist"),
        ("data.train={d}/half.parquet", r"data.train: .*half.parquet is not a readable Parquet file .*cut short"),
        (
            "data.train={d}/csvs",
            r"data.train: .*csvs is a directory that holds 1 file\(s\) that are not .parquet \(part-0.csv\)",
        ),
        (
            "data.pool={d}/lists.parquet",
            r"data.pool \(.*lists.parquet\): `source` must be text, .*a list: \['1', '2'\]",
        ),
        ("improve.thresholds=[1.0,0.9]", r"improve.thresholds`: thresholds must rise strictly"),
        ("grow.num_sampels=4", r"unknown config key `grow.num_sampels`; did you mean `grow.num_samples`"),
        ("improve.token_weights=chrf", r"improve.token_weights: chrf has no per-token scores .*objective: seq2seq"),
        (
            "improve.lora={{target_modules: [q_proj, query]}}",  # braces doubled: the override goes through str.format
            r"improve.lora.target_modules: this model has no module `query`; its module names end in: .*q_proj",
        ),
        pytest.param(
            "device=cuda:7",
            r"device: cuda:7, but torch .* (sees no GPU|sees \d+ GPU)",
            marks=pytest.mark.skipif(__import__("torch").cuda.device_count() > 7, reason="a machine with 8 GPUs"),
        ),
    ],
)
def test_bad_input_exits_2_and_leaves_nothing(bad_files, tmp_path, override, message):
    run = tmp_path / "run"
    proc = rest("run", "--config", "configs/smoke.yaml", "--run", str(run), override.format(d=bad_files))
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("error: ")
    assert "Traceback" not in proc.stderr
    import re

    assert re.search(message, proc.stderr), proc.stderr
    assert not run.exists()


def test_run_needs_a_run_directory_for_grow(tmp_path):
    proc = rest("grow", "--run", str(tmp_path / "nothing"))
    assert proc.returncode == 2
    assert "is not a run directory" in proc.stderr and "rest run --config" in proc.stderr


def test_rest_model_import_refuses_what_it_cannot_convert_in_one_line(tmp_path):
    """A GGUF file of an architecture transformers cannot de-quantize, a file that is not GGUF, a missing file: one
    line each, exit 2, nothing written."""
    import gguf

    writer = gguf.GGUFWriter(str(tmp_path / "rwkv.gguf"), "rwkv6")  # general.architecture = rwkv6
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    (tmp_path / "text.gguf").write_text("not a model")
    for name, said in (
        ("rwkv.gguf", r"its architecture 'rwkv6' is not one transformers can de-quantize \(.*llama.*\)"),
        ("text.gguf", r"text.gguf: not a GGUF file"),
        ("missing.gguf", r"missing.gguf: no such file"),
    ):
        proc = rest("model", "import", str(tmp_path / name), str(tmp_path / "out"))
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and re.search(said, lines[0]), proc.stderr
        assert not (tmp_path / "out").exists()
