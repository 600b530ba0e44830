"""What `make setup-gpu` checks before it installs anything: one line per problem, exit 2 if there is one.

    python3 bench/gpu_setup.py .venv .venv-vllm

The CUDA builds it installs are PyPI's torch 2.13.0 and vllm 0.32.0: CUDA 13 builds, which need an NVIDIA driver
of version 580 or newer and Python 3.11 or newer, and take 12-17 GB of disk with their CUDA libraries (both venvs,
pip's cache aside). Standard library only: it runs on whatever `python3` the machine has, to say that it is too old.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

MIN_DRIVER = 580  # CUDA 13.0's minimum Linux driver
MIN_PYTHON = (3, 11)
NEED_GB = 20  # 12-17 GB installed, and room to unpack the wheels


def problems(python: tuple[int, int], driver: str | None, free_gb: float, where: str) -> list[str]:
    """One line per thing that would make the install fail or the GPU unusable, each with its fix.

    >>> problems((3, 11), "580.65.06", 40.0, ".")
    []
    >>> [line.split(":")[0] for line in problems((3, 10), "550.54.15", 8.0, ".")]
    ['Python', 'NVIDIA driver', 'disk']
    """
    out = []
    if python < MIN_PYTHON:
        out.append(
            f"Python: {python[0]}.{python[1]}, but torch 2.13 and vllm 0.32 need >= 3.11: run `make setup-gpu "
            "PYTHON=python3.11` (and remove the venvs made with the old one)"
        )
    if driver is None:
        out.append(
            "NVIDIA driver: nvidia-smi not found or it sees no GPU; setup-gpu installs CUDA builds, which need a "
            f"driver >= {MIN_DRIVER} and a GPU (on a CPU machine, `make setup` is the install)"
        )
    elif int(driver.split(".")[0]) < MIN_DRIVER:
        out.append(
            f"NVIDIA driver: {driver}, but PyPI's torch 2.13.0 and vllm 0.32.0 are CUDA 13 builds, which need "
            f">= {MIN_DRIVER}: update the driver (or install CUDA 12 builds of both by hand)"
        )
    if free_gb < NEED_GB:
        out.append(
            f"disk: {free_gb:.1f} GB free in {where}, but the CUDA builds of torch and vllm take 12-17 GB: free "
            f"{NEED_GB} GB there"
        )
    return out


def venv_python(venv: Path) -> tuple[int, int] | None:
    """The Python version an existing venv was made with (its pyvenv.cfg), None if there is none."""
    cfg = venv / "pyvenv.cfg"
    if not cfg.is_file():
        return None
    found = re.search(r"^version(?:_info)?\s*=\s*(\d+)\.(\d+)", cfg.read_text(), re.MULTILINE)
    return (int(found.group(1)), int(found.group(2))) if found else None


def driver_version() -> str | None:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=60,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = out.stdout.split()
    return lines[0] if out.returncode == 0 and lines else None


def main(argv: list[str]) -> int:
    versions = [sys.version_info[:2]] + [v for v in (venv_python(Path(p)) for p in argv) if v is not None]
    lines = problems(min(versions), driver_version(), shutil.disk_usage(".").free / 1e9, str(Path.cwd()))
    for line in lines:
        print(f"setup-gpu: {line}", file=sys.stderr)
    return 2 if lines else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
