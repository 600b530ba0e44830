"""`make bench` is not a test (no timing is asserted anywhere), but its script must run: every section, tiny sizes."""

from __future__ import annotations

import json
import os
import shutil
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


def test_the_torch_only_gpu_check_runs_at_a_tiny_size_and_keeps_the_page(tmp_path):
    """bench/gpu_torch.py --tiny (what `make bench-gpu-torch` runs on a GPU machine with its own torch): every
    section on the CPU, written between its markers, the rest of the page kept; the peak table tells an H100's
    SXM, PCIe and NVL parts apart."""
    out = tmp_path / "benchmarks.md"
    out.write_text("# Benchmarks\n\nthe CPU bench\n\n<!-- bench-gpu-torch -->\nold\n<!-- /bench-gpu-torch -->\n")
    proc = subprocess.run(
        [sys.executable, "bench/gpu_torch.py", "--tiny", "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    text = out.read_text()
    assert text.startswith("# Benchmarks\n\nthe CPU bench") and "\nold\n" not in text
    section = text.split("<!-- bench-gpu-torch -->")[1].split("<!-- /bench-gpu-torch -->")[0]
    for row in ("| every row in one pass", "| logits_mb 1024 |", "| last position only", "| full fine-tuning |"):
        line = next(line for line in section.splitlines() if line.startswith(row))
        assert float(line.split("|")[2].replace(",", "")) > 0, line
    sys.path.insert(0, str(REPO / "bench"))
    try:
        import gpu_torch
    finally:
        sys.path.remove(str(REPO / "bench"))
    peaks = [gpu_torch.peak_bf16(f"NVIDIA {n}") for n in ("H100 80GB HBM3", "H100 PCIe", "H100 NVL", "H200", "A10")]
    assert peaks == [989e12, 756e12, 835e12, 989e12, None]


def test_setup_gpu_says_what_is_missing_in_one_line_each_before_installing(tmp_path):
    """`make setup-gpu`'s checks: an old Python (the interpreter or a venv made with one), an NVIDIA driver older
    than CUDA 13's 580 or none, too little disk; each one line with its fix, exit 2. Here, no driver."""
    sys.path.insert(0, str(REPO / "bench"))
    try:
        import gpu_setup
    finally:
        sys.path.remove(str(REPO / "bench"))
    assert gpu_setup.problems((3, 12), "580.95.05", 25.0, "/x") == []
    lines = gpu_setup.problems((3, 10), "570.124.06", 9.5, "/x")
    assert lines[0].startswith("Python: 3.10, but torch 2.13 and vllm 0.32 need >= 3.11")
    assert lines[1].startswith("NVIDIA driver: 570.124.06, but") and ">= 580" in lines[1]
    assert lines[2].startswith("disk: 9.5 GB free in /x")
    assert "not found" in gpu_setup.problems((3, 11), None, 30.0, "/x")[0]
    (tmp_path / "pyvenv.cfg").write_text("home = /usr/bin\nversion = 3.10.12\n")
    assert gpu_setup.venv_python(tmp_path) == (3, 10) and gpu_setup.venv_python(tmp_path / "none") is None
    if shutil.which("nvidia-smi") is None:
        proc = subprocess.run(
            [sys.executable, str(REPO / "bench/gpu_setup.py"), str(tmp_path)], capture_output=True, text=True
        )
        assert proc.returncode == 2
        said = proc.stderr.splitlines()
        assert said[0].startswith("setup-gpu: Python: 3.10") and said[1].startswith("setup-gpu: NVIDIA driver")
