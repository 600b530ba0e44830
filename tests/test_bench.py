"""`make bench` is not a test (no timing is asserted anywhere), but its script must run: every section, tiny sizes."""

from __future__ import annotations

import json
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
    for heading in ("## Grow", "## Improve", "## Scoring", "## Memory", "## `make run`"):
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
