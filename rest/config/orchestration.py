"""The `orchestration` and `tracking` sections: how Prefect runs Grow's shards, and comet-ml."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from rest.config.base import Section


class DaskConfig(Section):
    """Where Grow shards run with `orchestration.task_runner: dask`."""

    address: str | None = Field(
        None, description="scheduler of an existing cluster (tcp://host:8786); null: a LocalCluster"
    )
    n_workers: int = Field(2, ge=1, description="LocalCluster worker processes (one thread each)")


class OrchestrationConfig(Section):
    """How Prefect runs Grow's shard tasks. Dask needs a real Prefect server (PREFECT_API_URL, `make server`):
    in ephemeral mode every Dask worker would start a temporary server of its own."""

    task_runner: Literal["threads", "dask"] = Field(
        "threads", description="threads: grow.workers at once in this process"
    )
    dask: DaskConfig = DaskConfig()


class TrackingConfig(Section):
    """comet-ml experiment tracking: one experiment per run, written from the run's artifacts when it finishes.

    offline (default): an archive under RUN/comet/ (upload it later with `comet upload RUN/comet/*.zip`); no
    network attempt at all. online: needs COMET_API_KEY in the environment. off: nothing.
    """

    comet: Literal["off", "offline", "online"] = Field(
        "offline", description="off | offline (RUN/comet/*.zip) | online"
    )

    @field_validator("comet", mode="before")
    @classmethod
    def _yaml_off(cls, v: Any) -> Any:
        # YAML 1.1 (PyYAML) reads a bare `off` (and `no`, `false`) as False: `comet: off` means "off".
        if v is False:
            return "off"
        if v is True:
            raise ValueError("`on` is not a mode: say offline (an archive under the run directory) or online")
        return v

    project: str = Field("rest", description="comet project name")
    workspace: str | None = Field(None, description="comet workspace (online); null: your default workspace")
