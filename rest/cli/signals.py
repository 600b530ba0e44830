"""Stopping: Ctrl-C (SIGINT to the process group) or SIGTERM (a scheduler, `kill`) ends the command within seconds,
with one line, the run lock free and no process of ours left. Nothing is lost: artifacts appear whole or not at
all (manifest last), so the same command resumes.

    stopping = Stopping()          # main() makes one and installs it for SIGINT and SIGTERM
    stopping.install()
    try: ...
    except BaseException as exc: stopping.exit_if_stopped(exc); raise
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from typing import Any

# How long an interrupted command may take to tell the Prefect server that its flow run ended before it just exits.
GRACE_S = 10


def reap_children() -> None:
    """Stop every process this one started (the temporary Prefect server, Dask workers), then wait for them."""
    import psutil

    children = psutil.Process().children(recursive=True)
    for child in children:
        try:
            child.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(children, timeout=5)
    for child in alive:
        try:
            child.kill()
        except psutil.NoSuchProcess:
            pass


class Stopping:
    """The signal handler of one command: the first signal prints one line and unwinds the command (the flow reports
    its end to the server), exiting after GRACE_S at the latest; a second signal exits at once."""

    def __init__(self, grace_s: float = GRACE_S):
        self.grace_s = grace_s
        self.signum: int | None = None

    def install(self) -> None:
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, self.on_signal)

    def exit_now(self, signum: int | None = None) -> None:
        """Exit without waiting for worker threads (a shard mid-sample would hold the exit for minutes)."""
        try:
            reap_children()
        finally:
            sys.stderr.flush()
            os._exit(128 + (signum or self.signum or 0))

    def announce(self, signum: int) -> None:
        """The one line, once; Prefect's crash reports and tracebacks are silenced from here on."""
        if self.signum is not None:
            return
        self.signum = signum
        logging.disable(logging.CRITICAL)
        print(
            f"[rest] stopped by {signal.Signals(signum).name}: published artifacts and finished Grow shards are kept; "
            "run the same command again to resume",
            file=sys.stderr,
            flush=True,
        )
        timer = threading.Timer(self.grace_s, self.exit_now, (signum,))
        timer.daemon = True
        timer.start()

    def exit_if_stopped(self, exc: BaseException) -> None:
        """What main() does with any exception: a stop (ours, or Prefect's TerminationSignal behind `exc`) exits with
        128 + the signal, one line and no traceback; anything else returns, for the caller to raise."""
        signum = self.signum or signal_in(exc)
        if signum is not None:
            self.announce(signum)
            self.exit_now(signum)

    def on_signal(self, signum: int, frame: Any) -> None:
        if self.signum is not None:  # a second signal: now
            self.exit_now(signum)
        self.announce(signum)
        raise KeyboardInterrupt  # unwinds the flow (which reports its end to the server), then main() exits


def signal_in(exc: BaseException) -> int | None:
    """The signal behind `exc`, if a stop caused it. While a flow runs, Prefect swaps its own SIGTERM handler in for
    ours: it raises TerminationSignal, reports the crash to the server and only then re-sends the signal to our
    handler. When that report fails (SIGTERM to the whole group also stops the temporary server), the error that
    reaches main() is the server's, with the TerminationSignal in its context: still a stop, not a failure."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        signum = getattr(current, "signal", None)
        if type(current).__name__ == "TerminationSignal" and isinstance(signum, int):
            return signum  # prefect.exceptions.TerminationSignal (not imported: `rest inspect` runs without it)
        current = current.__cause__ or current.__context__
    return None
