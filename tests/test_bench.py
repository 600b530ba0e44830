"""`make bench` is not a test (no timing is asserted anywhere), but its script must run: every section, tiny sizes."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import REPO


@pytest.mark.integration
def test_bench_script_runs_every_section_and_writes_its_tables(tmp_path):
    out = tmp_path / "benchmarks.md"
    proc = subprocess.run(
        [sys.executable, "bench/speed.py", "--quick", "--out", str(out), "--work", str(tmp_path / "work")],
        cwd=REPO, capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    text = out.read_text()
    for heading in ("## Grow", "## Improve", "## Scoring", "## Memory", "## `make run`"):
        assert heading in text
    # each comparison has its row, with a number in it
    for row in ("transformers generate, 1 source per call", "one teacher-forced forward pass", "transformers Trainer",
                "TRL SFTTrainer", "batches grouped by length (group_by_length: true)", "sacrebleu sentence chrF",
                "REST_SCORE_PROCESSES=1", "Prefect (rest run minus"):
        line = next(line for line in text.splitlines() if row in line)
        assert any(ch.isdigit() for ch in line.split("|")[-2]), line
    assert "all rows distinct" in text
    assert "the in-process run and rest run name the same best policy: True" in proc.stdout
