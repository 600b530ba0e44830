"""BC and Improve on two processes (torchrun, gloo on this CPU), DDP and FSDP: the same optimiser steps as one
process with gradient accumulation, only rank 0 publishes, and a rank that dies leaves no artifact and no process."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
from transformers import AutoModelForSeq2SeqLM

from rest import stages
from rest.artifacts.run import Run
from rest.config import load_config

# Dropout off: with it, each rank draws its own masks, so the curves would differ by the noise of dropout only.
BASE = [
    "bc.steps=30",
    "bc.batch_size=16",
    "grow.shard_size=20",
    "improve.steps=6",
    "improve.batch_size=16",
    "improve.thresholds=[0.3]",
]


def _no_dropout(tmp_path: Path) -> str:
    arch = json.loads(Path("configs/models/mbart-2.6m.json").read_text())
    arch.update({k: 0.0 for k in arch if "dropout" in k})
    (tmp_path / "arch.json").write_text(json.dumps(arch))
    return f"model.architecture={tmp_path / 'arch.json'}"


def _losses(run: Path, name: str) -> list[float]:
    return json.loads((run / name / "_manifest.json").read_text())["timing"]["losses"]


@pytest.mark.integration
def test_two_processes_take_the_steps_of_one_with_accumulation(tmp_path):
    arch = _no_dropout(tmp_path)
    # one process, micro-batches of 8 (gradient accumulation 2): BC, a Grow step, an Improve step
    one = tmp_path / "one"
    stages.start_run(
        one, load_config("configs/smoke.yaml", [arch, *BASE, "bc.micro_batch_size=8", "improve.micro_batch_size=8"])
    )
    stages.make_policy0(one)
    for index in stages.plan_grow(one, 1):
        stages.grow_shard(one, 1, index)
    stages.finish_grow(one, 1)
    stages.improve(one, 1, 1)
    # two processes: the same policy-0 and Grow step (copied: processes is in no artifact's key), Improve again
    two = tmp_path / "two"
    shutil.copytree(one, two)
    shutil.rmtree(two / "improve-1-1")
    stages.start_run(two, load_config("configs/smoke.yaml", [arch, *BASE, "improve.processes=2"]))
    stages.improve(two, 1, 1)
    a, b = _losses(one, "improve-1-1"), _losses(two, "improve-1-1")
    assert len(a) == len(b) == 6
    assert max(abs(x - y) for x, y in zip(a, b)) < 1e-5, (a, b)  # measured: 1.2e-7
    wa = AutoModelForSeq2SeqLM.from_pretrained(one / "improve-1-1").state_dict()
    wb = AutoModelForSeq2SeqLM.from_pretrained(two / "improve-1-1").state_dict()
    assert max(float((wa[k] - wb[k]).abs().max()) for k in wa) < 1e-5
    assert any(not torch.equal(wa[k], wb[k]) for k in wa) or a == b  # two real computations, not a copy
    # FSDP (weights, gradients and optimiser state sharded over the 2 processes): the same steps again, and the
    # published policy is the whole model, gathered from the shards (a plain checkpoint)
    fsdp = tmp_path / "fsdp"
    shutil.copytree(one, fsdp)
    shutil.rmtree(fsdp / "improve-1-1")
    stages.start_run(
        fsdp, load_config("configs/smoke.yaml", [arch, *BASE, "improve.processes=2", "improve.strategy=fsdp"])
    )
    stages.improve(fsdp, 1, 1)
    c = _losses(fsdp, "improve-1-1")
    assert max(abs(x - y) for x, y in zip(a, c)) < 1e-5, (a, c)  # measured: 0.0
    wc = AutoModelForSeq2SeqLM.from_pretrained(fsdp / "improve-1-1").state_dict()
    assert wc.keys() == wa.keys() and max(float((wa[k] - wc[k]).abs().max()) for k in wa) < 1e-5  # measured: 2.1e-6
    # BC on two processes from scratch: the same loss curve as one process with accumulation
    bc = tmp_path / "bc"
    stages.start_run(bc, load_config("configs/smoke.yaml", [arch, *BASE, "bc.processes=2"]))
    stages.make_policy0(bc)
    a, b = _losses(one, "policy-0"), _losses(bc, "policy-0")
    assert len(a) == len(b) == 30 and max(abs(x - y) for x, y in zip(a, b)) < 1e-4, (a, b)
    assert Run.open(bc).artifact_id("policy-0")  # published (by rank 0) and verified


def _rank_processes(rank: int) -> list[psutil.Process]:
    found = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if "rest.stages.rank" in " ".join(p.info["cmdline"] or []) and p.environ().get("RANK") == str(rank):
                found.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return found


@pytest.mark.integration
def test_a_rank_that_dies_leaves_no_artifact_and_no_process(tmp_path):
    run = tmp_path / "run"
    stages.start_run(run, load_config("configs/smoke.yaml", [*BASE, "improve.steps=400"]))
    stages.make_policy0(run)
    for index in stages.plan_grow(run, 1):
        stages.grow_shard(run, 1, index)
    stages.finish_grow(run, 1)
    proc = subprocess.Popen(
        [sys.executable, "-m", "rest.cli", "improve", "--run", str(run), "improve.processes=2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not (victims := _rank_processes(1)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert victims, "rank 1 never started"
    time.sleep(8)  # into its training steps (400 of them: ~20 s)
    victims[0].kill()
    out, err = proc.communicate(timeout=180)
    assert proc.returncode != 0
    assert "improve.processes" in err and "nothing was published" in err, err[-3000:]
    assert not (run / "improve-1-1" / "_manifest.json").exists()
    time.sleep(1)
    assert not _rank_processes(0) and not _rank_processes(1)


def test_processes_must_each_have_a_share_of_the_batch():
    with pytest.raises(Exception, match=r"processes \(4\) must be at most batch_size \(2\)"):
        load_config("configs/smoke.yaml", ["improve.processes=4", "improve.batch_size=2"])


def test_fsdp_is_refused_with_lora():
    with pytest.raises(Exception, match="strategy: fsdp shards a full fine-tuning"):
        load_config("configs/smoke.yaml", ["improve.processes=2", "improve.strategy=fsdp", "improve.lora={r: 4}"])
