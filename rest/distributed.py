"""BC and Improve on several processes (`bc.processes` / `improve.processes`): data parallel, under torchrun.

    stages.improve(run, g, i)        # improve.processes: 2 -> launch("improve", run, g, i, processes=2)
      torchrun --standalone --nproc-per-node 2 -m rest.distributed improve RUN g i
        every rank: stages.improve(run, g, i) -> the same batches, its own share of each -> train()
        rank 0 only: validation, monitors, publish

The Prefect task (or `rest improve`) still passes only the run directory and step: the launcher starts torchrun and
waits; a rank that fails (or is killed) makes torchrun stop the others and exit non-zero, and since only rank 0
publishes, and only after the last optimiser step, nothing is published (the artifact appears whole or not at all).

Each optimiser step's batch is cut into `processes` contiguous shares; a rank computes its share (in micro-batches
if `micro_batch_size` says so) normalised by the whole batch's totals (rest.objectives), and one all-reduce (sum) of
the flattened gradients makes every rank's gradient the whole batch's: the same gradient as one process with
gradient accumulation, so the same clipping and the same update on every rank. Not DDP's wrapper: the objectives
call the model through `Policy` (DDP's module hides `config`), and with accumulation DDP also syncs once per step.
Backend: gloo on CPU, nccl on GPUs (rank r on cuda:LOCAL_RANK). torchrun, not `accelerate launch`: the latter
started one process on a CPU machine (measured).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from rest.environment import die_with_parent
from rest.errors import RestError

log = logging.getLogger("rest")


def world() -> tuple[int, int]:
    """(rank, world size) of this process: (0, 1) outside a launch."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def launched() -> bool:
    """True inside a rank started by `launch` (the stage then trains its share instead of launching again)."""
    return world()[1] > 1


def rank_device(device: str) -> str:
    """A rank's device: cuda:LOCAL_RANK when the run's device is a GPU (auto with one, cuda, cuda:N), else as set."""
    if not launched():
        return device
    gpu = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    return f"cuda:{os.environ.get('LOCAL_RANK', '0')}" if gpu else device


def launch(stage: str, run_dir: Path, *args: object, processes: int, key: str) -> None:
    """Run `stage` ("policy-0" or "improve") of run_dir on `processes` ranks under torchrun; returns when they are
    done, or raises RestError when one failed (its output is above, in this process's stderr)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
           "-m", "rest.distributed", stage, str(run_dir), *map(str, args)]
    log.info(f"{stage}: training on {processes} processes ({key}: {processes}): {' '.join(cmd[1:])}")
    env = dict(os.environ)
    # torchrun would set 1 thread per rank (and print a banner saying so): share this machine's cores instead
    env.setdefault("OMP_NUM_THREADS", str(max(1, len(os.sched_getaffinity(0)) // processes)))
    proc = subprocess.Popen(cmd, preexec_fn=die_with_parent, env=env)
    try:
        code = proc.wait()
    finally:
        if proc.poll() is None:  # Ctrl-C or SIGTERM here: torchrun passes it to its ranks
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    if code != 0:
        raise RestError(f"{stage} of {run_dir}: the {processes}-process training ({key}) failed (torchrun exit code "
                        f"{code}; the ranks' output is above); nothing was published: run the same command again")


def broadcast_parameters(model: torch.nn.Module) -> None:
    """Every rank starts from rank 0's weights (as DDP does)."""
    for p in model.parameters():
        dist.broadcast(p.data, src=0)


def all_reduce_gradients(params: list[torch.nn.Parameter]) -> None:
    """Sum the ranks' gradients, in one collective over one flat buffer (a parameter without one counts as 0)."""
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    offset = 0
    for p, g in zip(params, grads):
        n = g.numel()
        p.grad = flat[offset : offset + n].view_as(g)
        offset += n


def all_reduce_sums(values: list[float], device: torch.device) -> list[float]:
    """Sums over the ranks of a list of floats (a step's loss and additive stats)."""
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def main(argv: list[str]) -> None:
    """A rank: `python -m rest.distributed policy-0 RUN` or `... improve RUN G I`, under torchrun."""
    from rest import stages  # the stages import this module

    from rest.run import Run

    stage, run_dir, *rest_args = argv
    device = Run.open(Path(run_dir)).config.device
    cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if cuda else "gloo")
    rank = dist.get_rank()
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING, format=f"[rank {rank}] %(message)s")
    try:
        if stage == "policy-0":
            stages.make_policy0(Path(run_dir))
        elif stage == "improve":
            stages.improve(Path(run_dir), int(rest_args[0]), int(rest_args[1]))
        else:
            raise SystemExit(f"unknown stage {stage!r}")
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1:])
