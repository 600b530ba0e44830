"""A sandbox for running untrusted code (the `code` reward's completions): Linux namespaces with unshare(1).

    result = run_sandboxed({"main.py": program}, ["main.py"], limits, stdin=b"")

Each call gets a fresh temporary directory (its only writable place besides private, size-capped tmpfs on /tmp,
/var/tmp and /dev/shm) and a process in new namespaces: network (no interface but a down loopback: no connection
leaves), PID (when its first process ends, the kernel ends every other; nothing outlives the call), mount (the root
file system read-only, /root and $HOME hidden). It runs as a user of its own (a numeric uid with no files) when rest
runs as root, as the user otherwise (in a user namespace), with limits on CPU seconds, address space, processes,
file size and open files, and a wall-clock kill. The interpreter is this one's base installation, bound read-only at
/mnt/python (no site-packages: the standard library only).

Why unshare and not bubblewrap: unshare is util-linux, on every Linux machine rest runs on, and as root (or with
unprivileged user namespaces) it does what bubblewrap would; bubblewrap is one more system package to install.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from rest.errors import RestError

# As root, each sandbox runs as a user of its own (no name, no files): RLIMIT_NPROC counts a user's processes
# system-wide, so a fork bomb in one sandbox must not starve another that runs at the same time.
FIRST_UID = 200_000
_SLOTS = threading.Semaphore(16)
_FREE = list(range(16))
_FREE_LOCK = threading.Lock()


def _uid_slot() -> int:
    _SLOTS.acquire()
    with _FREE_LOCK:
        return _FREE.pop()


def _release(slot: int) -> None:
    with _FREE_LOCK:
        _FREE.append(slot)
    _SLOTS.release()


# Run as the namespace's root: private mounts, then the command as its own uid (or as the user) under its limits.
_SETUP = r"""
set -e
work="$1"; prefix="$2"; shift 2
mount -t tmpfs -o size=1m,mode=755 tmpfs /mnt
mkdir /mnt/python /mnt/work
mount --bind "$prefix" /mnt/python
mount -o remount,bind,ro /mnt/python
mount --bind "$work" /mnt/work
mount -o remount,bind,ro /
for d in /tmp /var/tmp /dev/shm; do mount -t tmpfs -o size=16m,mode=1777 tmpfs "$d" 2>/dev/null || true; done
mount -t tmpfs -o size=1m tmpfs /root 2>/dev/null || true
home="$REST_SANDBOX_HOME"
if [ -n "$home" ] && [ -d "$home" ]; then mount -t tmpfs -o size=1m tmpfs "$home"; fi
cd /mnt/work
exec "$@"
"""


@dataclass(frozen=True)
class Limits:
    wall_s: float = 10.0  # the whole call, then every process of it is killed
    cpu_s: int = 5  # CPU seconds per process
    memory_mb: int = 512  # address space per process
    processes: int = 32  # processes of the sandbox's user
    file_size_mb: int = 10  # the largest file a process may write
    open_files: int = 64


@dataclass(frozen=True)
class Result:
    returncode: int | None  # None: killed at the wall-clock limit
    stdout: bytes
    stderr: bytes

    @property
    def timed_out(self) -> bool:
        return self.returncode is None


def _base_python() -> tuple[Path, Path]:
    """(the installation prefix, the interpreter relative to it) of this Python, outside any venv."""
    prefix = Path(sys.base_prefix).resolve()
    exe = Path(os.path.realpath(sys.executable))
    try:
        return prefix, exe.relative_to(prefix)
    except ValueError:
        return prefix, Path("bin") / f"python{sys.version_info.major}.{sys.version_info.minor}"


def check_sandbox() -> None:
    """RestError unless unshare can make the namespaces here (root, or unprivileged user namespaces)."""
    if sys.platform != "linux" or shutil.which("unshare") is None:
        raise RestError(
            "the `code` reward runs completions in a sandbox made with unshare(1) (util-linux), on Linux: "
            "install util-linux, or choose another reward"
        )
    proc = subprocess.run(_unshare_argv() + ["true"], capture_output=True, timeout=30)
    if proc.returncode != 0:
        raise RestError(
            "the `code` reward's sandbox cannot make Linux namespaces here "
            f"({proc.stderr.decode(errors='replace').strip()[-200:]}): run as root, or enable unprivileged user "
            "namespaces (sysctl kernel.unprivileged_userns_clone=1)"
        )


def _unshare_argv() -> list[str]:
    argv = ["unshare", "--net", "--pid", "--fork", "--mount", "--mount-proc", "--kill-child", "--ipc", "--uts"]
    if os.geteuid() != 0:
        argv[1:1] = ["--user", "--map-root-user"]
    return argv


def _limits_argv(limits: Limits) -> list[str]:
    mb = 1 << 20
    return [
        "prlimit",
        f"--cpu={limits.cpu_s}",
        f"--as={limits.memory_mb * mb}",
        f"--nproc={limits.processes}",
        f"--fsize={limits.file_size_mb * mb}",
        f"--nofile={limits.open_files}",
        "--core=0",
        "--",
    ]


def run_sandboxed(files: dict[str, str], argv: list[str], limits: Limits, stdin: bytes = b"") -> Result:
    """Write `files` into a fresh directory and run `python -I *argv` there in the sandbox; the directory is
    removed after, whatever the code did."""
    work = Path(tempfile.mkdtemp(prefix="rest-sandbox-"))
    slot = _uid_slot()
    try:
        for name, text in files.items():
            (work / name).write_text(text)
        prefix, interpreter = _base_python()
        as_user: list[str] = []
        if os.geteuid() == 0:
            uid = FIRST_UID + (os.getpid() % 4096) * 16 + slot  # per process and slot: no two sandboxes share one
            os.chown(work, uid, uid)
            as_user = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--"]
        command = [
            *_unshare_argv(),
            "sh",
            "-c",
            _SETUP,
            "sandbox",
            str(work),
            str(prefix),
            *as_user,
            *_limits_argv(limits),
            str(Path("/mnt/python") / interpreter),
            "-I",
            *argv,
        ]
        env = {
            "PATH": "/usr/bin:/bin",
            "LD_LIBRARY_PATH": "/mnt/python/lib",
            "HOME": "/mnt/work",
            "LANG": "C.UTF-8",
            "PYTHONHASHSEED": "0",
            "REST_SANDBOX_HOME": os.environ.get("HOME", "") if os.geteuid() != 0 else "",
        }
        proc = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            start_new_session=True,
        )
        try:
            out, err = proc.communicate(stdin, timeout=limits.wall_s)
            return Result(proc.returncode, out, err)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # unshare and, by --kill-child, the namespace's first process
            out, err = proc.communicate()
            return Result(None, out, err)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    finally:
        _release(slot)
        shutil.rmtree(work, ignore_errors=True)
