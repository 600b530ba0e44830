"""A rank of a multi-process BC or Improve step: `python -m rest.stages.rank policy-0 RUN` or `... improve RUN G I`,
started by rest.training.distributed.launch under torchrun. It joins the process group (nccl on GPUs, gloo on CPU) and
runs the same stage function as one process would; rest/training/loop.py and rest/stages/ do the rest (its share, rank 0
publishes).
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from rest import stages
from rest.artifacts.run import Run
from rest.training.distributed import on_gpu


def main(argv: list[str]) -> None:
    stage, run_dir, *args = argv
    cuda = on_gpu(Run.open(Path(run_dir)).config.device)
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if cuda else "gloo")
    rank = dist.get_rank()
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING, format=f"[rank {rank}] %(message)s")
    try:
        if stage == "policy-0":
            stages.make_policy0(Path(run_dir))
        elif stage == "improve":
            stages.improve(Path(run_dir), int(args[0]), int(args[1]))
        else:
            raise SystemExit(f"unknown stage {stage!r}: policy-0 or improve")
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1:])
