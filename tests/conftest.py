"""Test isolation: Prefect state, HF caches and run directories all live under pytest's temp dirs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

import rest.environment  # noqa: F401  (first: the environment is set before any test module imports torch)

# Under pytest-xdist (`make test`: TEST_WORKERS processes) the cores are shared out: each worker, and every process
# it starts, gets cores / workers intra-op threads. Two workers of 2 threads each on 2 cores spin-wait on each other
# (measured: twice the CPU time, the suite slower than one process).
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    _share = max(1, len(os.sched_getaffinity(0)) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    os.environ.setdefault("OMP_NUM_THREADS", str(_share))
    os.environ.setdefault("MKL_NUM_THREADS", str(_share))

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


@pytest.fixture(autouse=True, scope="module")
def _cold_caches():
    # Each test file starts and ends with empty process caches (rest/caches.py): no engine, policy or scorer made
    # by one file is found by the next one the same worker runs.
    from rest import caches

    caches.clear()
    yield
    caches.clear()


@pytest.fixture(autouse=True)
def _in_repo(monkeypatch):
    # Configs name data by paths relative to the repository root, as `make` runs them.
    monkeypatch.chdir(REPO)


CONFIG = "configs/smoke.yaml"

# `make test` hands whole files to two worker processes (pytest-xdist --dist loadfile) in collection order: the
# longest files go first, so neither worker is left running a long file alone at the end. The order is derived from
# tests/durations.json, each file's seconds in the last full run that recorded them (`make test-durations`); a file
# not listed there follows, the more integration tests it has the earlier.
DURATIONS = REPO / "tests" / "durations.json"


def pytest_collection_modifyitems(items):
    seconds = json.loads(DURATIONS.read_text()) if DURATIONS.is_file() else {}
    integration = Counter(item.path.name for item in items if item.get_closest_marker("integration"))
    # stable: a file's tests keep their order
    items.sort(key=lambda item: (-seconds.get(item.path.name, 0.0), -integration[item.path.name]))


_FILE_SECONDS: Counter = Counter()


def pytest_runtest_logreport(report):
    _FILE_SECONDS[Path(report.location[0]).name] += report.duration  # setup, call and teardown


def pytest_sessionfinish(session, exitstatus):
    if os.environ.get("REST_RECORD_DURATIONS") and not os.environ.get("PYTEST_XDIST_WORKER") and _FILE_SECONDS:
        ranked = dict(
            sorted(((k, round(v, 1)) for k, v in _FILE_SECONDS.items() if k.startswith("test_")), key=lambda kv: -kv[1])
        )
        DURATIONS.write_text(json.dumps(ranked, indent=1) + "\n")


def rest(*args: str, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    """The real CLI in a subprocess, as a user runs it."""
    proc = subprocess.run(
        [sys.executable, "-m", "rest.cli", *args],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, **(env or {})},
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"rest {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr[-4000:]}")
    return proc


NETGUARD = REPO / "tests" / "netguard"  # its sitecustomize.py refuses and logs every non-loopback connection


def netguard_env(log: Path) -> dict[str, str]:
    return {"PYTHONPATH": str(NETGUARD), "REST_NETGUARD_LOG": str(log)}


def _build_clean_run(run: Path) -> None:
    proc = rest("run", "--config", CONFIG, "--run", str(run), env=netguard_env(run.with_suffix(".netguard.log")))
    (run / "stdout.txt").write_text(proc.stdout)


@pytest.fixture(scope="session")
def clean_run(tmp_path_factory) -> Path:
    """configs/smoke.yaml run once, uninterrupted, in ephemeral mode with the threads runner, comet offline (the
    default), with the network guard on: `RUN.netguard.log` lists every non-loopback attempt of every process.

    Under pytest-xdist the run is made once for all workers (under a file lock, in the directory their temp dirs
    share) and each worker gets a copy of its own: a test may run commands on it. The copy's stdout.txt names the
    copy's directory, as the run's own output would."""
    run = tmp_path_factory.mktemp("runs") / "smoke"
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        _build_clean_run(run)
        return run
    import shutil

    from filelock import FileLock

    shared = tmp_path_factory.getbasetemp().parent / "clean-run" / "smoke"
    with FileLock(str(shared.parent) + ".lock"):
        if not (shared / "stdout.txt").is_file():
            shutil.rmtree(shared.parent, ignore_errors=True)
            shared.parent.mkdir(parents=True)
            _build_clean_run(shared)
    shutil.copytree(shared, run, ignore=shutil.ignore_patterns(".lock"))
    if shared.with_suffix(".netguard.log").exists():
        shutil.copy(shared.with_suffix(".netguard.log"), run.with_suffix(".netguard.log"))
    (run / "stdout.txt").write_text((shared / "stdout.txt").read_text().replace(str(shared), str(run)))
    return run
