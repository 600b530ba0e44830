"""A temporary Prefect server for one command when no server is configured, owned by that command.

    with temporary_server():      # PREFECT_API_URL points at it inside; stopped (and reaped) on the way out
        rest_flow("runs/numbers")

Prefect's own ephemeral mode starts the same server (uvicorn on a free loopback port, the SQLite database under
PREFECT_HOME) as a plain child process. In the terminal's process group, Ctrl-C or a scheduler's SIGTERM to the
group kills it first, and the flow engine then retries the dead API for ~300 s while holding the run lock. Here
the server runs in its own session (signals to our group do not reach it) and dies with us (PR_SET_PDEATHSIG,
even on kill -9), so an interrupted command can report its end to a live server and leaves no process behind.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import prefect
from prefect.events.worker import EventsWorker
from prefect.logging.handlers import APILogWorker
from prefect.settings import PREFECT_API_URL, temporary_settings

from rest.environment import die_with_parent
from rest.errors import RestError

STARTUP_TIMEOUT_S = 90  # ~5 s when the machine is idle; far longer under load (a busy CI runner)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch() -> tuple[subprocess.Popen, str]:
    """Start the server and return at once (it answers seconds later: `wait_until_up`). Returns (process, API URL)."""
    port = _free_port()
    env = {**os.environ, "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1"}
    env.pop("PREFECT_API_URL", None)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "--app-dir",
            str(Path(prefect.__file__).parent.parent),
            "--factory",
            "prefect.server.api.server:create_app",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "error",
            "--lifespan",
            "on",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        preexec_fn=die_with_parent,
    )
    return proc, f"http://127.0.0.1:{port}/api"


def wait_until_up(proc: subprocess.Popen, url: str) -> None:
    """Return once the server answers; stop it and raise if it ends or does not answer in STARTUP_TIMEOUT_S."""
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while True:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            stop(proc)
            raise RuntimeError(
                f"the temporary Prefect server did not answer within {STARTUP_TIMEOUT_S} s"
                + (f" (exit code {proc.returncode})" if proc.returncode is not None else "")
                + "; start one with `make server` and run again"
            )
        time.sleep(0.1)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def check_task_runner(task_runner: str) -> None:
    """Dask needs a real server: PREFECT_API_URL from the environment or the active profile (`make server` sets it)."""
    if task_runner == "dask" and not PREFECT_API_URL.value():
        raise RestError(
            "orchestration.task_runner=dask needs a real Prefect server: run `make server` (it sets PREFECT_API_URL "
            "in your Prefect profile) or set PREFECT_API_URL; in ephemeral mode every Dask worker would start a "
            "temporary server of its own (~45 s each)"
        )


def configured() -> bool:
    """A server is configured: PREFECT_API_URL in the environment or the active profile (`make server` sets it)."""
    return bool(PREFECT_API_URL.value())


class Server:
    """The server of a `temporary_server` block: `ready()` returns once it answers (at once for a configured one)."""

    def __init__(self, proc: subprocess.Popen | None, url: str | None):
        self.proc, self.url = proc, url
        self.up = proc is None

    def ready(self) -> None:
        if not self.up and self.proc is not None and self.url is not None:
            wait_until_up(self.proc, self.url)
            self.up = True


@contextlib.contextmanager
def temporary_server(wait: bool = True):
    """Inside: PREFECT_API_URL names a server (the configured one, or a temporary one started here). `wait=False`:
    enter at once, the server still starting (~4 s; ~11 s when PREFECT_HOME has no database yet), and call
    `ready()` on what it yields before the first flow: `rest run` imports torch and checks its inputs meanwhile."""
    if configured():
        yield Server(None, None)
        return
    proc, url = launch()
    server = Server(proc, url)
    os.environ["PREFECT_API_URL"] = url  # for processes started inside (Dask workers)
    try:
        if wait:
            server.ready()
        with temporary_settings(updates={PREFECT_API_URL: url}):
            yield server
    finally:
        if server.up:
            # Send the log lines and events still queued for the server before it goes (else: "Error logging to API").
            for worker in (APILogWorker, EventsWorker):
                with contextlib.suppress(Exception):
                    worker.drain_all(timeout=5)
        os.environ.pop("PREFECT_API_URL", None)
        stop(proc)
