"""`rest run|grow|improve`: the pipeline's flows, from the command line."""

from __future__ import annotations

import argparse
from pathlib import Path

from rest.artifacts.run import Run, check_run_path
from rest.cli.tables import print_summary


def config_for(args: argparse.Namespace):
    """`rest run` takes --config (or the run's own); the other commands work on an existing run."""
    from rest.artifacts.manifests import CONFIG_FILE
    from rest.config import load_config

    run_dir = Path(args.run)
    check_run_path(run_dir)  # before the config and the data are read
    stored = run_dir / CONFIG_FILE
    if args.command != "run":
        Run.open(run_dir)  # a RestError that says how to start a run when there is none
    path = args.config or (stored if stored.is_file() else None)
    return load_config(path, args.overrides)


def cmd_pipeline(args: argparse.Namespace) -> None:
    cfg = config_for(args)  # first: a config error is one line in a second, before Prefect and torch are imported
    run_dir = Path(args.run)

    from rest.flows.temporary_server import check_task_runner, temporary_server

    check_task_runner(cfg.orchestration.task_runner)  # before anything is written, and before a temporary server
    # The temporary server boots (4-11 s) while torch loads and every input is checked; bad input stops it unused.
    with temporary_server(wait=False) as server:
        from rest import stages
        from rest.artifacts.lock import run_lock

        if args.command != "run":
            Run.open(run_dir).check_published()  # they build on earlier steps: a damaged one is refused, not used
        stages.start_run(run_dir, cfg)  # every input checked first: bad input writes nothing
        with run_lock(run_dir):
            server.ready()
            _pipeline(args.command, run_dir)


def _pipeline(command: str, run_dir: Path) -> None:
    from rest.flows.pipeline import finish_flow, grow_flow, improve_flow, rest_flow

    if command == "run":
        rest_flow(str(run_dir))
        print_summary(run_dir)
    elif command == "grow":
        print(grow_flow(str(run_dir)))
    else:
        print("\n".join(improve_flow(str(run_dir))))
        finish_flow(str(run_dir))
        print_summary(run_dir)
