"""Against a real Prefect server (started here on a free loopback port, stopped at the end): Dask scale-out."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import CONFIG, rest

pytestmark = pytest.mark.integration
PREFECT = str(Path(sys.executable).parent / "prefect")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    port = _free_port()
    home = tmp_path_factory.mktemp("server-home")
    log = open(home / "server.log", "w")
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)
    proc = subprocess.Popen(
        [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port), "--analytics-off"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}/api"
    deadline = time.time() + 120
    while True:
        try:
            urllib.request.urlopen(f"{url}/health", timeout=2)
            break
        except OSError:
            assert proc.poll() is None, (home / "server.log").read_text()
            assert time.time() < deadline, "the Prefect server did not answer in 120 s"
            time.sleep(0.5)
    yield {"url": url, "home": home}
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_dask_refuses_ephemeral_mode(tmp_path):
    proc = rest("run", "--config", CONFIG, "--run", str(tmp_path / "r"), "orchestration.task_runner=dask", check=False,
                env={"PREFECT_API_URL": ""})
    assert proc.returncode == 2
    assert "needs a real Prefect server" in proc.stderr
    assert not (tmp_path / "r").exists()


def test_grow_on_a_two_process_dask_cluster_matches_threads(server, clean_run, tmp_path):
    run = tmp_path / "dask"
    rest("run", "--config", CONFIG, "--run", str(run), "orchestration.task_runner=dask", "orchestration.dask.n_workers=2",
         env={"PREFECT_API_URL": server["url"]})
    manifest = json.loads((run / "grow-1" / "_manifest.json").read_text())
    pids = {s["pid"] for s in manifest["shards"]}
    assert len(pids) == 2, f"shards were written by {pids}"  # two worker processes, neither of them this one
    key = ["source_id", "sample_index"]
    dask_rows = pd.read_parquet(run / "grow-1").sort_values(key).reset_index(drop=True)
    thread_rows = pd.read_parquet(clean_run / "grow-1").sort_values(key).reset_index(drop=True)
    pd.testing.assert_frame_equal(dask_rows, thread_rows)
    assert manifest["id"] == json.loads((clean_run / "grow-1" / "_manifest.json").read_text())["id"]
