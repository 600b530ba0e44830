"""The ReST DAG as Prefect flows.

    rest_flow("runs/numbers")     # policy-0, then G x (grow_flow, improve_flow), then the final evaluation
    grow_flow("runs/numbers")     # one more Grow step: one task per shard
    improve_flow("runs/numbers")  # the Improve steps of the latest Grow step

Tasks hand each other run directories, step numbers and artifact names, never models or DataFrames: Prefect's
cache cannot hash those and does not look at output files. Idempotence comes from the manifests in rest/,
so every task here has caching off and simply returns at once when its artifact is already published.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import ThreadPoolTaskRunner

from prefect.settings import PREFECT_API_URL

from rest import stages
from rest.errors import RestError


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


@task(name="finish-run", cache_policy=NO_CACHE)
def finish_run_task(run_dir: str) -> dict:
    return stages.finish_run(Path(run_dir))


def _with_runner(f, run_dir: str):
    """`f` with the task runner of the run's config: threads, or Dask (a LocalCluster or an existing cluster)."""
    cfg = stages.run_config(Path(run_dir))
    orch = cfg.orchestration
    if orch.task_runner == "threads":
        return f.with_options(task_runner=ThreadPoolTaskRunner(max_workers=cfg.grow.workers))
    if not PREFECT_API_URL.value():
        raise RestError(
            "orchestration.task_runner=dask needs a real Prefect server: run `make server` and set PREFECT_API_URL "
            "(in ephemeral mode every Dask worker starts a temporary server of its own, ~45 s each)"
        )
    from prefect_dask import DaskTaskRunner

    if orch.dask.address:
        return f.with_options(task_runner=DaskTaskRunner(address=orch.dask.address))
    cluster = {"n_workers": orch.dask.n_workers, "threads_per_worker": 1, "processes": True, "dashboard_address": None}
    return f.with_options(task_runner=DaskTaskRunner(cluster_kwargs=cluster))


@flow(name="grow")
def grow_flow(run_dir: str, step: int | None = None) -> str:
    """Grow step `step` (default: the next one): sample every shard, then publish the step."""
    g = step or stages.next_grow_step(Path(run_dir))
    todo = plan_grow_task(run_dir, g)
    shards = grow_shard_task.map(run_dir, g, todo)
    shards.result()  # raises if a shard failed; the finished ones stay on disk for the rerun
    return finish_grow_task(run_dir, g)


@flow(name="improve")
def improve_flow(run_dir: str, step: int | None = None) -> list[str]:
    """Every Improve step (one per threshold) after Grow step `step` (default: the latest)."""
    g = step or stages.latest_grow_step(Path(run_dir))
    thresholds = stages.run_config(Path(run_dir)).improve.thresholds
    return [improve_task(run_dir, g, i) for i in range(1, len(thresholds) + 1)]


@flow(name="rest")
def rest_flow(run_dir: str) -> dict:
    """ReST: policy-0 = BC(D); for g in 1..G: Grow, then Improve at each threshold; evaluate the best policy."""
    policy0_task(run_dir)
    for g in range(1, stages.run_config(Path(run_dir)).grow.steps + 1):
        _with_runner(grow_flow, run_dir)(run_dir, g)
        improve_flow(run_dir, g)
    return finish_run_task(run_dir)
