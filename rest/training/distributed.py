"""BC and Improve on several processes (`bc.processes` / `improve.processes`): data parallel, under torchrun.

    stages.improve(run, g, i)        # improve.processes: 2 -> launch("improve", run, g, i, processes=2)
      torchrun --standalone --nproc-per-node 2 -m rest.stages.rank improve RUN g i
        every rank: stages.improve(run, g, i) -> the same batches, its own share of each -> train()
        rank 0 only: validation, monitors, publish

The Prefect task (or `rest improve`) still passes only the run directory and step: the launcher starts torchrun and
waits; a rank that fails (or is killed) makes torchrun stop the others and exit non-zero, and since only rank 0
publishes, and only after the last optimiser step, nothing is published (the artifact appears whole or not at all).

Each optimiser step's batch is cut into `processes` contiguous shares; a rank computes its share (in micro-batches
if `micro_batch_size` says so) normalised by the whole batch's totals (rest.improve.objectives), and one all-reduce
(sum) of the flattened gradients makes every rank's gradient the whole batch's: the same gradient as one process with
gradient accumulation, so the same clipping and the same update on every rank. Not DDP's wrapper: the objectives
call the model through `Policy` (DDP's module hides `config`), and with accumulation DDP also syncs once per step.
With `strategy: fsdp` the model is sharded instead (`shard`: torch's fully_shard, one unit per transformer block),
FSDP reduces the gradients itself, and `unshard` gathers the whole model on rank 0 at the end, to publish.
Backend: gloo on CPU, nccl on GPUs (rank r on cuda:LOCAL_RANK). torchrun, not `accelerate launch`: the latter
started one process on a CPU machine (measured).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from rest.environment import die_with_parent
from rest.errors import RestError
from rest.models.policy import resolve_device

log = logging.getLogger("rest")


def world() -> tuple[int, int]:
    """(rank, world size) of this process: (0, 1) outside a launch."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def launched() -> bool:
    """True inside a rank started by `launch` (the stage then trains its share instead of launching again)."""
    return world()[1] > 1


def on_gpu(device: str) -> bool:
    """Whether a `device` setting means a GPU here (auto with one, cuda, cuda:N)."""
    return resolve_device(device).type == "cuda"


def rank_device(device: str) -> str:
    """A rank's device: cuda:LOCAL_RANK when the run's device is a GPU, else as set."""
    if not launched():
        return device
    return f"cuda:{os.environ.get('LOCAL_RANK', '0')}" if on_gpu(device) else device


def launch(stage: str, run_dir: Path, *args: object, processes: int, key: str) -> None:
    """Run `stage` ("policy-0" or "improve") of run_dir on `processes` ranks under torchrun; returns when they are
    done, or raises RestError when one failed (its output is above, in this process's stderr)."""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={processes}",
        "-m",
        "rest.stages.rank",
        stage,
        str(run_dir),
        *map(str, args),
    ]
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
        raise RestError(
            f"{stage} of {run_dir}: the {processes}-process training ({key}) failed (torchrun exit code "
            f"{code}; the ranks' output is above); nothing was published: run the same command again"
        )


def shard(model: torch.nn.Module) -> None:
    """FSDP (torch's fully_shard), in place: each transformer block (the model's `_no_split_modules`) is a unit,
    the root holds the rest (embeddings, tied head). Every rank must start from the same weights (broadcast first)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(next(model.parameters()).device.type, (dist.get_world_size(),))
    blocks = set(getattr(model, "_no_split_modules", None) or [])
    units: list[str] = []  # the outermost matches only (mbart also lists the attention inside each layer)
    for name, module in model.named_modules():
        if type(module).__name__ in blocks and not any(name.startswith(u + ".") for u in units):
            units.append(name)
    for name in units:
        fully_shard(model.get_submodule(name), mesh=mesh)
    fully_shard(model, mesh=mesh)


def unshard(model: torch.nn.Module) -> torch.nn.Module | None:
    """The whole model again, on rank 0 (None on the others), gathered from the shards of every rank (a collective:
    every rank calls it): a plain transformers model of the same class and config that `save_pretrained` saves."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
    )
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if dist.get_rank() != 0:
        return None
    config: Any = model.config  # a transformers config (nn.Module's __getattr__ types it as Tensor | Module)
    auto = AutoModelForSeq2SeqLM if config.is_encoder_decoder else AutoModelForCausalLM
    plain = auto.from_config(config)
    missing, unexpected = plain.load_state_dict(full, strict=False)
    tied = set(getattr(plain, "all_tied_weights_keys", None) or getattr(plain, "_tied_weights_keys", None) or [])
    if unexpected or any(k not in tied for k in missing):
        raise RuntimeError(f"gathering the FSDP shards: missing {missing}, unexpected {unexpected}")
    plain.tie_weights()
    plain.generation_config = model.generation_config
    return plain.to(next(model.parameters()).device)


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
