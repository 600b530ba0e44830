"""The ReST DAG as Prefect flows.

    rest_flow("runs/numbers")     # policy-0, then G x (Grow step, Improve steps), then finish: tasks of one flow
    finish_flow("runs/numbers")   # test of the best policy, RUN/report/index.html, the comet-ml experiment
    grow_flow("runs/numbers")     # one more Grow step: one task per shard, on the configured task runner
    improve_flow("runs/numbers")  # the Improve steps of the latest Grow step

prefect.yaml deploys them as rest/numbers, rest/smoke, grow/numbers and improve/numbers.

Tasks hand each other run directories, step numbers and artifact names, never models or DataFrames: Prefect's
cache cannot hash those and does not look at output files. Idempotence comes from the manifests in rest/,
so every task here has caching off and simply returns at once when its artifact is already published.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.exceptions import TerminationSignal
from prefect.task_runners import ThreadPoolTaskRunner

from rest import stages
from rest.artifacts.lock import run_lock
from rest.artifacts.manifests import CONFIG_FILE
from rest.artifacts.run import Run
from rest.config import ConfigOverrides, load_config
from rest.errors import OS_ERROR_FIXES, RestError
from rest.evaluation.names import sampled_keys, selected_by
from rest.flows.temporary_server import check_task_runner
from rest.reporting.report import write_report
from rest.reporting.tracking import log_run


def _stopped(exc: BaseException | None) -> bool:
    """Whether `exc` is, or arose while handling, a stop (SIGTERM's TerminationSignal, Ctrl-C's KeyboardInterrupt)."""
    seen = 0
    while exc is not None and seen < 20:
        if isinstance(exc, (TerminationSignal, KeyboardInterrupt)):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


class _UserErrorsWithoutTraceback(logging.Filter):
    """A task or flow that fails on bad input (a RestError, a full disk) is logged in one line: the traceback
    says nothing the message does not, and `rest` prints the message with the fix at the end. So is one that a
    stop ended: a SIGTERM that lands while Prefect is creating a task run makes its crash handler raise ValueError
    ("Task run is not set") over the TerminationSignal, and `rest` says in one line that it stopped."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, RestError) or (isinstance(exc, OSError) and exc.errno in OS_ERROR_FIXES) or _stopped(exc):
            record.exc_info, record.exc_text = None, None
        return True


for _name in ("prefect.task_runs", "prefect.flow_runs"):
    logging.getLogger(_name).addFilter(_UserErrorsWithoutTraceback())


@task(name="policy-0", cache_policy=NO_CACHE)
def policy0_task(run_dir: str) -> str:
    return stages.make_policy0(Path(run_dir))


@task(name="plan-grow", cache_policy=NO_CACHE)
def plan_grow_task(run_dir: str, g: int) -> list[int]:
    return stages.plan_grow(Path(run_dir), g)


# A shard is pure computation from files on disk: a retry is safe, and covers a worker that died mid-shard.
@task(name="grow-shard", cache_policy=NO_CACHE, retries=1, task_run_name="grow-{g}-shard-{index}")
def grow_shard_task(run_dir: str, g: int, index: int) -> dict:
    return stages.grow_shard(Path(run_dir), g, index)


@task(name="finish-grow", cache_policy=NO_CACHE)
def finish_grow_task(run_dir: str, g: int) -> str:
    return stages.finish_grow(Path(run_dir), g)


@task(name="improve", cache_policy=NO_CACHE, task_run_name="improve-{g}-{i}")
def improve_task(run_dir: str, g: int, i: int) -> str:
    return stages.improve(Path(run_dir), g, i)


@task(name="control", cache_policy=NO_CACHE)
def control_task(run_dir: str) -> str | None:
    return stages.make_control(Path(run_dir))


@task(name="finish-run", cache_policy=NO_CACHE)
def finish_run_task(run_dir: str) -> dict:
    return stages.finish_run(Path(run_dir))


@task(name="report", cache_policy=NO_CACHE)
def report_task(run_dir: str) -> str:
    return str(write_report(Path(run_dir)))


# comet online talks to the network: a retry covers a blip; offline it is a local file and does not fail that way.
@task(name="track", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=10)
def track_task(run_dir: str, report: str) -> str | None:
    archive = log_run(Path(run_dir), Path(report))
    return str(archive) if archive else None


# ---------------------------------------------------------------------------------------------------------------
# Prefect artifacts: what the UI shows of every generation. Keys are stable per run and stage, so the UI keeps
# the history of, say, grow-1 of runs/numbers across reruns.


def artifact_key(run_dir: str, stage: str) -> str:
    """Prefect keys allow lowercase letters, digits and dashes only."""
    name = re.sub(r"[^a-z0-9]+", "-", Path(run_dir).resolve().name.lower()).strip("-") or "run"
    return f"rest-{name}-{stage}"


def publish_grow_artifact(run_dir: str, g: int) -> None:
    manifest = Run.open(run_dir).verified(f"grow-{g}")
    stats = manifest["stats"]
    rows = [{"metric": f"reward {q}", "value": v} for q, v in stats["reward_quantiles"].items()]
    rows.append({"metric": "reward mean", "value": stats["reward_mean"]})
    rows += [{"metric": f"kept at tau={t}", "value": f} for t, f in stats["kept_fraction"].items()]
    rows += [
        {"metric": "completion tokens (mean)", "value": stats["completion_tokens"]},
        {"metric": "samples/s", "value": stats["samples_per_s"]},
        {"metric": "samples", "value": stats["rows"]},
        {"metric": "sources", "value": stats["sources"]},
    ]
    create_table_artifact(
        key=artifact_key(run_dir, f"grow-{g}"),
        table=rows,
        description=f"Grow step {g} of {Path(run_dir).resolve()} (artifact id {manifest['id']}, policy "
        f"{manifest['policy']})",
    )


def publish_improve_artifact(run_dir: str, name: str) -> None:
    metrics = Run.open(run_dir).metrics(name)
    rows = [{"metric": f"valid {k}", "value": v} for k, v in (metrics["valid"] or {}).items()]  # None: eval.every
    rows += [{"metric": f"improve {k}", "value": v} for k, v in metrics.get("improve", {}).items()]
    rows += [{"metric": f"train {k}", "value": v} for k, v in metrics["train"].items()]
    create_table_artifact(
        key=artifact_key(run_dir, name), table=rows, description=f"{name} of {Path(run_dir).resolve()}"
    )


def publish_run_report(run_dir: str, summary: dict, report: str) -> None:
    root = Path(run_dir).resolve()
    lines = [
        f"# ReST run `{root.name}`",
        "",
        f"Run directory: [{root}](file://{root})",
        "",
        f"Report with plots and monitors: [{report}](file://{Path(report).resolve()})",
        "",
        f"Best policy by {selected_by(Run.open(root).config)}: **{summary['best_policy']}**",
        "",
    ]
    sampled = sampled_keys(next(iter(summary["valid"].values()), {}))
    lines.append("| policy | valid exact match | valid chrF | valid reward |" + "".join(f" {k} |" for k in sampled))
    lines.append("|---|---:|---:|---:|" + "---:|" * len(sampled))
    for name, v in summary["valid"].items():
        cells = "".join(f" {v.get(k)} |" for k in sampled)
        lines.append(f"| {name} | {v['exact_match']} | {v['chrf']} | {v['reward']} |{cells}")
    lines += ["", "| test | exact match | chrF | reward |", "|---|---:|---:|---:|"]
    for name, m in summary["test"].items():
        lines.append(f"| {name} | {m['exact_match']} | {m['chrf']} | {m['reward']} |")
    lines += ["", "Grow shards (read with `pandas.read_parquet(dir)`):", ""]
    for grow in sorted(root.glob("grow-*")):
        lines.append(f"- [{grow}](file://{grow}): " + ", ".join(p.name for p in sorted(grow.glob("shard-*.parquet"))))
    create_markdown_artifact(
        key=artifact_key(run_dir, "report"), markdown="\n".join(lines), description=f"ReST run {root}"
    )


def _with_runner(f, run_dir: str):
    """`f` with the task runner of the run's config: threads, or Dask (a LocalCluster or an existing cluster)."""
    cfg = Run.open(run_dir).config
    orch = cfg.orchestration
    if orch.task_runner == "threads":
        return f.with_options(task_runner=ThreadPoolTaskRunner(max_workers=cfg.grow.workers))
    check_task_runner(orch.task_runner)
    from prefect_dask import DaskTaskRunner

    if orch.dask.address:
        return f.with_options(task_runner=DaskTaskRunner(address=orch.dask.address))
    cluster = {"n_workers": orch.dask.n_workers, "threads_per_worker": 1, "processes": True, "dashboard_address": None}
    return f.with_options(task_runner=DaskTaskRunner(cluster_kwargs=cluster))


def in_this_thread(cfg) -> bool:
    """Whether a Grow step's shards run one after another in the calling thread instead of on a task runner:
    with threads and grow.workers 1. Also the faster way: torch's OpenMP workers spin between parallel regions only
    for the thread that started them first (the main thread), so a small model's many small ops ran 2x slower on a
    task-runner thread (a numbers shard: 0.6 s in the main thread, 1.3 s on a pool thread; docs/design.md)."""
    return cfg.orchestration.task_runner == "threads" and cfg.grow.workers == 1


def grow_step(run: str, step: int) -> str:
    """Grow step `step` as tasks of the flow that calls it: the shards one by one in this thread, then the step."""
    for index in plan_grow_task(run, step):
        grow_shard_task(run, step, index)  # raises if the shard failed; the finished ones stay for the rerun
    name = finish_grow_task(run, step)
    publish_grow_artifact(run, step)
    return name


@flow(name="grow-step")
def grow_step_flow(run: str, step: int) -> str:
    """Grow step `step`: sample every shard (on the configured task runner), then publish the step."""
    todo = plan_grow_task(run, step)
    shards = grow_shard_task.map(run, step, todo)
    shards.result()  # raises if a shard failed; the finished ones stay on disk for the rerun
    name = finish_grow_task(run, step)
    publish_grow_artifact(run, step)
    return name


@flow(name="grow")
def grow_flow(run: str, step: int | None = None) -> str:
    """One more Grow step on an existing run (default: the next one)."""
    with run_lock(Path(run)):
        run_ = Run.open(run)
        g = step or run_.next_grow_step()
        if in_this_thread(run_.config):
            return grow_step(run, g)
        return _with_runner(grow_step_flow, run)(run, g)


def improve_steps(run: str, g: int) -> list[str]:
    """Every Improve step (one per threshold) after Grow step g, as tasks of the flow that calls it."""
    names = []
    for i in range(1, len(Run.open(run).config.improve.thresholds) + 1):
        names.append(improve_task(run, g, i))
        publish_improve_artifact(run, names[-1])
    return names


@flow(name="improve")
def improve_flow(run: str, step: int | None = None) -> list[str]:
    """Every Improve step (one per threshold) after Grow step `step` (default: the latest)."""
    with run_lock(Path(run)):
        return improve_steps(run, step or Run.open(run).latest_grow_step())


def finish(run: str) -> dict:
    """The BC control (eval.control), then name the best policy and test it (against the control), write the report
    page, log the run to comet-ml (tasks of the caller)."""
    control_task(run)
    summary = finish_run_task(run)
    report = report_task(run)
    summary["report"] = report
    summary["comet_archive"] = track_task(run, report)
    publish_run_report(run, summary, report)
    return summary


@flow(name="finish")
def finish_flow(run: str) -> dict:
    """Name the best policy and test it, write the report page, log the run to comet-ml."""
    return finish(run)


@flow(name="rest")
# ConfigOverrides is a pydantic model made at import time (config/loading.py) for Prefect's parameter form: a value
# a static checker cannot read as a type, but the annotation Prefect needs.
def rest_flow(
    run: str,
    config: str | None = None,
    overrides: ConfigOverrides | None = None,  # ty: ignore[invalid-type-form]
) -> dict:
    """ReST: policy-0 = BC(D); for g in 1..G: Grow, then Improve at each threshold; evaluate the best policy.

    `config` (a YAML file) and `overrides` (any config keys, typed: the UI shows them as a form) start or reopen
    the run directory, as `rest run --config FILE key=value` does. The server rejects values the schema rules
    out before a flow run exists; the rest fail the flow run before any task, with the message `rest` prints.
    """
    cfg = None
    if config is not None:
        cfg = load_config(config, updates=overrides)
    elif overrides is not None:  # on an existing run: only grow.steps may change (Run.create names the others)
        cfg = load_config(Path(run) / CONFIG_FILE, updates=overrides)
    if cfg is not None:
        stages.start_run(Path(run), cfg)  # what `rest run` calls too: every input checked, then the directory
    with run_lock(Path(run)):  # one writer per run directory, whether it came from `rest` or a deployment
        policy0_task(run)
        cfg = Run.open(run).config
        for g in range(1, cfg.grow.steps + 1):
            # An iteration's tasks belong to this flow: a subflow costs ~0.6 s of Prefect's own (its heartbeat
            # thread is joined on exit and sleeps in 1 s steps), which SuperHF's 50 iterations would pay 150 times.
            # Grow shards on Dask or on several threads keep their subflow, which carries the task runner.
            grow_step(run, g) if in_this_thread(cfg) else _with_runner(grow_step_flow, run)(run, g)
            improve_steps(run, g)
        return finish(run)
