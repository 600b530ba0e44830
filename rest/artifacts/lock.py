"""The run directory's lock: one writer at a time, released by the kernel when the holder dies."""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from rest.errors import RestError

_HELD: set[str] = set()  # run directories this process holds the lock of


@contextlib.contextmanager
def run_lock(run_dir: Path):
    """Hold an exclusive lock on a run directory while a command writes to it.

    Two `rest run` on one run directory would publish over each other. The lock is an flock on `RUN/.lock`:
    the kernel drops it when the holder dies, even by kill -9, so a crashed run never blocks the next one.
    """
    run_dir = Path(run_dir)
    key = str(run_dir.resolve())
    if key in _HELD:  # re-entrant: `rest run` holds it, then the flows it calls take it again
        yield
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / ".lock", "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            raise RestError(f"{run_dir} is in use by {holder}; wait for it to finish or stop it") from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {os.uname().nodename}\n")
        f.flush()
        _HELD.add(key)
        try:
            yield
        finally:
            _HELD.discard(key)
            fcntl.flock(f, fcntl.LOCK_UN)
