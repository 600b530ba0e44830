"""The one definition of the process environment `rest` runs in: offline, quiet, and bit-exact on CPU.

Applied (with `setdefault`: a user's own value wins) when the `rest` package is imported, so every way into the
code gets it before torch, transformers, prefect or comet_ml read it: the CLI, the Prefect flows (also in a
worker or a Dask worker process, which import `rest` to unpickle a task), the tests and the benchmarks.
Commands that are not Python of ours (`prefect server start`, `prefect worker start` in the Makefile) run under
it with `python -m rest.environment COMMAND ...`.

Why each setting:
- `MKL_CBWR=AUTO`: torch's CPU wheel uses MKL, and on some CPUs (AMD EPYC, measured) MKL picks kernels by memory
  alignment, so the same model on the same input gives float results that differ in the last bits after a
  save/load round trip or in another process. Artifact ids are content hashes: without this, a Grow shard written
  by a Dask worker would get another id than the same shard written by the CLI. Conditional Numerical
  Reproducibility (CBWR) fixes the code path per CPU. It must be set before MKL initialises, i.e. before torch is
  imported: a script that imports torch before `rest` must set it itself.
- Prefect, Hugging Face, comet-ml and vLLM telemetry off: nothing reaches the network unless the user asked for it.
  comet-ml probes cloud metadata addresses and enables a remote error reporter on its own unless both COMET_*
  settings below are off.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from collections.abc import MutableMapping

DETERMINISM = {"MKL_CBWR": "AUTO"}

OFFLINE = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "COMET_AUTO_LOG_ENV_DETAILS": "false",
    "COMET_ERROR_TRACKING_ENABLE": "false",
    "COMET_DISABLE_AUTO_LOGGING": "1",
    "VLLM_NO_USAGE_STATS": "1",
}

QUIET = {"TOKENIZERS_PARALLELISM": "false", "TRANSFORMERS_VERBOSITY": "error"}

ENVIRONMENT = {**DETERMINISM, **OFFLINE, **QUIET}


def apply(environ: MutableMapping[str, str] | None = None) -> MutableMapping[str, str]:
    """Set every key of ENVIRONMENT that is not set yet in `environ` (default: os.environ). Returns `environ`."""
    env = os.environ if environ is None else environ
    for key, value in ENVIRONMENT.items():
        env.setdefault(key, value)
    return env


def die_with_parent() -> None:
    """In a child process, before exec (`preexec_fn`): SIGTERM when the parent dies, however it dies (Linux only;
    elsewhere a no-op). For the servers we start: none may outlive a killed `rest`. It fires when the *thread* that
    started the child ends, so only for children started by a thread that outlives them (the main thread, or one
    that waits for the child)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG = 1
    except OSError:
        pass


def main(argv: list[str]) -> None:
    """`python -m rest.environment COMMAND ARGS...`: run COMMAND under the environment (exec, same pid)."""
    if not argv:
        for key in ENVIRONMENT:
            print(f"{key}={os.environ.get(key, ENVIRONMENT[key])}")
        return
    apply()
    os.execvp(argv[0], argv)


if __name__ == "__main__":
    main(sys.argv[1:])
