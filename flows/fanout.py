"""Fan-out of independent tasks (the filter's shards, a wave of trainings, the sweep's grid
points).

    fan_out(task, calls, params, name) -> [task(*args) for args in calls]
    run_jobs([(task, args), ...], params, name) -> [task(*args) for task, args in jobs]
    with shared_cluster(params) as params: ...  # one local cluster for several fan-outs

`sequential` runs each call as a task run in the flow's own process, one after another.
`dask` runs them as one subflow on Prefect's Dask task runner: a `LocalCluster` of worker
processes on 127.0.0.1 (one thread each, no dashboard), or an existing scheduler at
`dask_address`. Local workers report their task runs to the flow's own Prefect API (also the
temporary one of an in-process run), not each to a server of its own. Workers of an external
cluster must see the same workspace path and have PREFECT_API_URL set by whoever runs them.
`shared_cluster` starts the local cluster once for a whole flow (the pipeline's filter,
trainings and sweep), so its workers import torch once rather than at every fan-out.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from typing import Literal

from prefect import Task, flow
from prefect.client.orchestration import get_client
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class FanOutParams(BaseModel):
    """Where the filter's shards, each wave of trainings and the sweep's grid points run:
    one after another in the flow's process, or fanned out over Dask workers (Prefect's
    Dask task runner)."""

    model_config = ConfigDict(extra="forbid")

    task_runner: Literal["sequential", "dask"] = Field(
        "sequential",
        description="sequential: in this process; dask: a local cluster of worker processes "
        "on 127.0.0.1, or the scheduler at dask_address",
    )
    dask_address: str | None = Field(
        None,
        description="an existing Dask scheduler (tcp://HOST:PORT or tls://HOST:PORT); its "
        "workers need this workspace's path and PREFECT_API_URL; empty: a local cluster",
    )
    dask_workers: int = Field(
        2, ge=1, le=256, description="worker processes of the local cluster (one thread each)"
    )

    @field_validator("dask_address")
    @classmethod
    def _scheduler_address(cls, value: str | None) -> str | None:
        if value is None:
            return None
        from urllib.parse import urlsplit

        parts = urlsplit(value)
        try:
            port = parts.port
        except ValueError:
            port = None
        if parts.scheme not in ("tcp", "tls") or not parts.hostname or port is None:
            raise ValueError(
                f"not a Dask scheduler address: {value!r} (tcp://HOST:PORT or tls://HOST:PORT)"
            )
        if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
            raise ValueError(f"a Dask scheduler address is tcp://HOST:PORT only, got {value!r}")
        return value

    @model_validator(mode="after")
    def _address_needs_dask(self) -> FanOutParams:
        if self.dask_address is not None and self.task_runner != "dask":
            raise ValueError("dask_address is used by task_runner 'dask' only; set both")
        return self


def current_api_url() -> str:
    """The Prefect API this flow reports to (the temporary server's, in-process)."""
    with get_client(sync_client=True) as client:
        return str(client.api_url)


# The environment Dask's nanny gives a worker before starting it: one OpenMP / BLAS thread.
# Dask's own default also sets MALLOC_TRIM_THRESHOLD_=65536, with which glibc hands freed
# memory straight back to the kernel; torch's CPU tensors are then mapped and faulted in
# anew at every step, which made two one-thread U-Net trainings side by side step at 230
# instead of 410 img/s each here (docs/performance.md#make-run). Workers keep glibc's default.
WORKER_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}


@contextlib.contextmanager
def environ_kept() -> Iterator[None]:
    """This process's environment as it was on entry, again on exit. A LocalCluster's
    nannies run in the process that starts them and write the workers' settings into its
    environment to pass them on; its later children (torchrun, img2dataset, the next
    cluster) should not inherit them."""
    environ = dict(os.environ)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(environ)


@contextlib.contextmanager
def shared_cluster(params: FanOutParams) -> Iterator[FanOutParams]:
    """Inside a flow: `params` pointing at a local cluster that lives until the block ends,
    when they ask for a local Dask cluster: `dask_workers` processes on 127.0.0.1, one
    thread each (WORKER_ENV), reporting to this flow's Prefect API. Otherwise `params` as
    they are."""
    if params.task_runner != "dask" or params.dask_address is not None:
        yield params
        return
    import dask
    from distributed import LocalCluster

    with environ_kept(), dask.config.set({"distributed.nanny.pre-spawn-environ": WORKER_ENV}):
        cluster = LocalCluster(
            n_workers=params.dask_workers,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
            env={"PREFECT_API_URL": current_api_url()},
        )
    with cluster:
        yield params.model_copy(update={"dask_address": cluster.scheduler_address})


def run_jobs(jobs: Sequence[tuple[Task, tuple]], params: FanOutParams, name: str) -> list:
    """task(*args) for every (task, args) in jobs, results in the order of jobs: in this
    process one after another, or on Dask as the subflow `name`, so the UI shows the
    fanned-out runs together."""
    if params.task_runner == "sequential" or not jobs:
        return [task(*args) for task, args in jobs]
    from prefect_dask import DaskTaskRunner

    with shared_cluster(params) as params:

        @flow(name=name, task_runner=DaskTaskRunner(address=params.dask_address), log_prints=True)
        def fanned_out() -> list:
            futures = [task.submit(*args) for task, args in jobs]
            return [future.result() for future in futures]

        return fanned_out()


def fan_out(task: Task, calls: Sequence[tuple], params: FanOutParams, name: str) -> list:
    """task(*args) for every args in calls (see run_jobs)."""
    return run_jobs([(task, args) for args in calls], params, name)
