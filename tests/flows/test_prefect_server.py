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
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
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
    proc = rest(
        "run",
        "--config",
        CONFIG,
        "--run",
        str(tmp_path / "r"),
        "orchestration.task_runner=dask",
        check=False,
        env={"PREFECT_API_URL": ""},
    )
    assert proc.returncode == 2
    assert "needs a real Prefect server" in proc.stderr
    assert not (tmp_path / "r").exists()


def test_grow_on_a_two_process_dask_cluster_matches_threads(server, clean_run, tmp_path):
    run = tmp_path / "dask"
    rest(
        "run",
        "--config",
        CONFIG,
        "--run",
        str(run),
        "orchestration.task_runner=dask",
        "orchestration.dask.n_workers=2",
        env={"PREFECT_API_URL": server["url"]},
    )
    manifest = json.loads((run / "grow-1" / "_manifest.json").read_text())
    pids = {s["pid"] for s in manifest["shards"]}
    assert len(pids) == 2, f"shards were written by {pids}"  # two worker processes, neither of them this one
    key = ["source_id", "sample_index"]
    dask_rows = pd.read_parquet(run / "grow-1").sort_values(key).reset_index(drop=True)
    thread_rows = pd.read_parquet(clean_run / "grow-1").sort_values(key).reset_index(drop=True)
    pd.testing.assert_frame_equal(dask_rows, thread_rows)
    assert manifest["id"] == json.loads((clean_run / "grow-1" / "_manifest.json").read_text())["id"]


def test_the_readme_prefect_section_verbatim(tmp_path):
    """make server / worker / deploy, `prefect deployment run 'rest/smoke' --watch`, artifacts, make stop."""
    repo = Path(__file__).resolve().parents[2]
    state = tmp_path / "state"
    # HOME: `make server` writes PREFECT_API_URL into the default profile, which must be this test's, not yours.
    env = {**os.environ, "HOME": str(tmp_path), "PREFECT_PORT": str(_free_port()), "STATE": str(state)}
    env.pop("PREFECT_API_URL", None)
    env.pop("PREFECT_HOME", None)

    def make(target):
        proc = subprocess.run(["make", "-s", target], cwd=repo, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, f"make {target}:\n{proc.stdout}\n{proc.stderr}"
        return proc

    run = tmp_path / "smoke"
    try:
        make("server")
        # The UI is served by the server and calls the API the server tells it: on this (non-default) port.
        with urllib.request.urlopen(f"http://127.0.0.1:{env['PREFECT_PORT']}/ui-settings", timeout=30) as r:
            ui = json.loads(r.read())
        assert ui["api_url"] == f"http://127.0.0.1:{env['PREFECT_PORT']}/api", ui
        make("worker")
        make("deploy")
        # a new shell: no PREFECT_* in the environment, only the default profile that `make server` wrote
        shell = {k: v for k, v in env.items() if not k.startswith("PREFECT_")}
        proc = subprocess.run(
            [
                PREFECT,
                "deployment",
                "run",
                "rest/smoke",
                "--param",
                f"run={run}",
                "--watch",
                "--watch-interval",
                "1",
                "--watch-timeout",
                "300",
            ],
            env=shell,
            capture_output=True,
            text=True,
            timeout=400,
        )
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        record = json.loads((run / "run.json").read_text())
        assert [a["name"] for a in record["artifacts"]] == ["policy-0", "grow-1", "improve-1-1", "improve-1-2"]
        assert "grow-1" in rest("inspect", str(run)).stdout
        url = f"http://127.0.0.1:{env['PREFECT_PORT']}/api"
        listed = subprocess.run(
            [PREFECT, "artifact", "ls"], env=shell, capture_output=True, text=True, timeout=60
        ).stdout
        assert "rest-smoke-grow-1" in listed and "rest-smoke-report" in listed
        keys = _artifact_keys(url)
        assert {"rest-smoke-grow-1", "rest-smoke-improve-1-1", "rest-smoke-improve-1-2", "rest-smoke-report"} <= keys
        # Typed overrides: the server refuses a value the parameter schema rules out, before a flow run exists.
        bad = tmp_path / "bad"
        proc = subprocess.run(
            [
                PREFECT,
                "deployment",
                "run",
                "rest/smoke",
                "--param",
                f"run={bad}",
                "--param",
                'overrides={"grow": {"num_samples": 0}}',
            ],
            env=shell,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode != 0
        assert "overrides.grow.num_samples" in proc.stdout + proc.stderr
        assert not bad.exists()
    finally:
        pids = [int(p.read_text()) for p in state.glob("*.pid")]
        make("stop")
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)  # nothing left behind
    assert not list(state.glob("*.pid"))


def _artifact_keys(url: str) -> set[str]:
    code = (
        "import asyncio\n"
        "from prefect.client.orchestration import get_client\n"
        "async def main():\n"
        "    async with get_client() as c:\n"
        "        print('\\n'.join(a.key for a in await c.read_artifacts() if a.key))\n"
        "asyncio.run(main())\n"
    )
    env = {**os.environ, "PREFECT_API_URL": url}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60, check=True
    ).stdout
    return set(out.split())
