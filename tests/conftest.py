"""Test isolation: Prefect state, HF caches and run directories all live under pytest's temp dirs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import rest.environment  # noqa: F401  (first: the environment is set before any test module imports torch)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True, scope="session")
def _isolated_env(tmp_path_factory):
    # prefect_test_harness / the ephemeral server share PREFECT_HOME's result storage: keep ours apart.
    home = tmp_path_factory.mktemp("prefect-home")
    env = {
        "PREFECT_HOME": str(home),
        "HF_HUB_OFFLINE": "1",  # tests never download; the rest of the environment is rest/environment.py's
    }
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(autouse=True)
def _in_repo(monkeypatch):
    # Configs name data by paths relative to the repository root, as `make` runs them.
    monkeypatch.chdir(REPO)


CONFIG = "configs/smoke.yaml"


def rest(*args: str, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    """The real CLI in a subprocess, as a user runs it."""
    proc = subprocess.run(
        [sys.executable, "-m", "rest.cli", *args], capture_output=True, text=True, timeout=600, env={**os.environ, **(env or {})}
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"rest {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr[-4000:]}")
    return proc


NETGUARD = REPO / "tests" / "netguard"  # its sitecustomize.py refuses and logs every non-loopback connection


def netguard_env(log: Path) -> dict[str, str]:
    return {"PYTHONPATH": str(NETGUARD), "REST_NETGUARD_LOG": str(log)}


@pytest.fixture(scope="session")
def clean_run(tmp_path_factory) -> Path:
    """configs/smoke.yaml run once, uninterrupted, in ephemeral mode with the threads runner, comet offline (the
    default), with the network guard on: `RUN.netguard.log` lists every non-loopback attempt of every process."""
    run = tmp_path_factory.mktemp("runs") / "smoke"
    proc = rest("run", "--config", CONFIG, "--run", str(run), env=netguard_env(run.with_suffix(".netguard.log")))
    (run / "stdout.txt").write_text(proc.stdout)
    return run
