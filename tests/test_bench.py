"""`make bench` is not a test (no timing is asserted anywhere), but its script must run: every section, tiny sizes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO


@pytest.mark.integration
def test_bench_script_runs_every_section_and_writes_its_tables(tmp_path):
    out = tmp_path / "benchmarks.md"
    proc = subprocess.run(
        [sys.executable, "bench/speed.py", "--quick", "--out", str(out), "--work", str(tmp_path / "work")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    text = out.read_text()
    for heading in ("## Grow", "## Iterations", "## Improve", "## Scoring", "## Memory", "## `make run`"):
        assert heading in text
    # each comparison has its row, with a number in it
    for row in (
        "transformers generate, 1 source per call",
        "one teacher-forced forward pass",
        "transformers Trainer",
        "TRL SFTTrainer",
        "batches grouped by length (group_by_length: true)",
        "sacrebleu sentence chrF",
        "REST_SCORE_PROCESSES=1",
        "Prefect (rest run minus",
        "eval.valid_rows: 128",
    ):
        line = next(line for line in text.splitlines() if row in line)
        assert any(ch.isdigit() for ch in line.split("|")[-2]), line
    assert "all rows distinct" in text
    assert "the in-process run and rest run name the same best policy: True" in proc.stdout


def test_the_methods_tables_are_made_from_the_ledger(tmp_path, monkeypatch):
    """bench/methods.py keeps what each run showed in bench/methods.jsonl: the tables come from it, every seed's exact
    match side by side, means of the rest, each seed's wall time unless its run shared the machine."""
    monkeypatch.syspath_prepend(str(REPO / "bench"))
    import methods

    monkeypatch.setattr(methods, "LEDGER", tmp_path / "methods.jsonl")
    row = {
        "task": "g2p",
        "method": "rest",
        "best": "improve-2-1",
        "em": 40.0,
        "chrf": 60.0,
        "bleu": 58.0,
        "tokens": 6.2,
        "p0_tokens": 6.0,
        "length_ratio": 1.0,
        "drift_chrf": 70.0,
        "drift_meteor": 0.8,
        "within": 0.7,
        "seconds": 100.0,
    }
    lines = [dict(row, seed=0), dict(row, seed=1, em=42.0, chrf=62.0, best="improve-2-2", seconds=300.0, loaded=True)]
    methods.LEDGER.write_text("".join(json.dumps(r) + "\n" for r in lines))
    text = methods.table("g2p")
    rest_row = next(line for line in text.splitlines() if line.startswith("| rest |"))
    cells = [c.strip() for c in rest_row.strip("|").split("|")]
    assert cells[1:5] == ["0, 1", "40.0 / 42.0", "61.0", "58.0"]
    assert cells[9] == "100 / shared s" and cells[10] == "improve-2-1 / improve-2-2"  # seed 1 shared the machine
    assert "| bc-control | not run yet |" in text


@pytest.mark.integration
def test_the_gpu_bench_runs_at_a_tiny_size_and_keeps_its_section(tmp_path):
    """bench/gpu.py --tiny: every section on the CPU (the vLLM engine's rows with $REST_VLLM_PYTHON), its table
    written between its markers, the page's other text kept; `make bench` keeps that section when it rewrites."""
    out = tmp_path / "benchmarks.md"
    out.write_text(
        "# Benchmarks\n\nthe CPU bench's tables\n\n<!-- bench-gpu -->\nan old GPU table\n<!-- /bench-gpu -->\n"
    )
    proc = subprocess.run(
        [sys.executable, "bench/gpu.py", "--tiny", "--out", str(out), "--work", str(tmp_path / "work")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    text = out.read_text()
    assert text.startswith("# Benchmarks\n\nthe CPU bench's tables") and text.count("<!-- bench-gpu -->") == 1
    assert "an old GPU table" not in text
    section = text.split("<!-- bench-gpu -->")[1].split("<!-- /bench-gpu -->")[0]
    engines = ("torch", "vllm") if os.environ.get("REST_VLLM_PYTHON") else ("torch",)
    for engine in engines:
        for n in (8, 32):
            line = next(line for line in section.splitlines() if line.startswith(f"| {engine} | {n} |"))
            assert float(line.split("|")[3].replace(",", "")) > 0, line
    for row in ("| full fine-tuning |", "| LoRA r=16", "| policy-0 (BC + validation) |", "| grow-2 |"):
        assert row in section, row
