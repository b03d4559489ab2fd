"""Fan-out of independent tasks (the filter's shards, a wave of trainings, the sweep's grid
points).

    fan_out(task, calls, params, name) -> [task(*args) for args in calls]
    run_jobs([(task, args), ...], params, name) -> [task(*args) for task, args in jobs]
    with shared_cluster(params, FAN_OUTS) as params: ...  # one local cluster for several fan-outs

Each fan-out has a name (`FAN_OUTS`). `sequential` runs its calls as task runs in the flow's
own process, one after another. `dask` runs the fan-outs named in `dask_fan_outs` as one
subflow each on Prefect's Dask task runner: a `LocalCluster` of worker processes on 127.0.0.1
(the machine's cores split between them, no dashboard), or an existing scheduler at
`dask_address`; the other fan-outs run in the flow's process. A fan-out of one call runs in
the flow's process when the cluster would be marble's own: a worker has fewer threads than
the process. Local workers report their task runs to the flow's own Prefect API (also the
temporary one of an in-process run), not each to a server of its own. Workers of an external
cluster must see the same workspace path and have PREFECT_API_URL set by whoever runs them.
`shared_cluster` starts the local cluster once for a flow's fan-outs when two or more of them
use it, so its workers import torch once; one fan-out alone starts its own when it comes.

On a 2-core CPU the fan-out that pays is the diffusion grid's (`--task-runner dask
--dask-fan-outs train-diffusion-grid`): two one-thread U-Net trainings side by side get
through more images a second than one on two threads, while the other waves pair a short
training with a long one. Its models are other draws than the sequential run's, since one
thread sums in another order than two (docs/performance.md#make-run).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from typing import Literal, get_args

from prefect import Task, flow
from prefect.client.orchestration import get_client
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    field_validator,
    model_validator,
)

FanOut = Literal[
    "filter-shards", "train-encoders", "train-text-towers", "train-diffusion-grid", "sweep-points"
]
FAN_OUTS: tuple[str, ...] = get_args(FanOut)


class FanOutParams(BaseModel):
    """Where the filter's shards, each wave of trainings and the sweep's grid points run:
    one after another in the flow's process, or fanned out over Dask workers (Prefect's
    Dask task runner)."""

    model_config = ConfigDict(extra="forbid")

    task_runner: Literal["sequential", "dask"] = Field(
        "sequential",
        description="sequential: every fan-out in this process; dask: those in dask_fan_outs "
        "on a local cluster of worker processes on 127.0.0.1, or the scheduler at dask_address",
    )
    dask_fan_outs: list[FanOut] = Field(
        list(FAN_OUTS),
        min_length=1,
        description="the fan-outs that task_runner dask runs on Dask, the others in this "
        "process (train-diffusion-grid alone: the one that pays on a 2-core CPU)",
    )
    dask_address: str | None = Field(
        None,
        description="an existing Dask scheduler (tcp://HOST:PORT or tls://HOST:PORT); its "
        "workers need this workspace's path and PREFECT_API_URL; empty: a local cluster",
    )
    dask_workers: int = Field(
        2,
        ge=1,
        le=256,
        description="worker processes of the local cluster (the machine's cores split "
        "between them)",
    )
    _local: bool = PrivateAttr(False)  # dask_address is marble's own cluster (shared_cluster)

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

    def on_dask(self, name: str, jobs: int) -> bool:
        """Whether the fan-out `name` of `jobs` calls runs on Dask."""
        if name not in FAN_OUTS:
            raise ValueError(f"unknown fan-out {name!r}; the fan-outs are {list(FAN_OUTS)}")
        if self.task_runner != "dask" or name not in self.dask_fan_outs or jobs == 0:
            return False
        return jobs > 1 or (self.dask_address is not None and not self._local)


def current_api_url() -> str:
    """The Prefect API this flow reports to (the temporary server's, in-process)."""
    with get_client(sync_client=True) as client:
        return str(client.api_url)


def worker_threads(workers: int) -> int:
    """OpenMP / BLAS threads of each of `workers` local workers: the cores this process may
    use, split between them (one each on a 2-core machine with two workers)."""
    return max(1, len(os.sched_getaffinity(0)) // workers)


def worker_env(workers: int) -> dict[str, str]:
    """The environment Dask's nanny gives a worker before starting it: its share of threads.
    It replaces Dask's own, whose MALLOC_TRIM_THRESHOLD_=65536 has glibc hand freed memory
    straight back to the kernel; torch's CPU tensors are then mapped and faulted in anew at
    every step, which made two one-thread U-Net trainings side by side step at 230 instead
    of 410 img/s each here (docs/performance.md#make-run). Workers inherit this process's
    malloc settings instead (`tasks.settings.MALLOC_DEFAULTS`)."""
    threads = str(worker_threads(workers))
    return {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "OPENBLAS_NUM_THREADS": threads}


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
def shared_cluster(
    params: FanOutParams, fan_outs: Sequence[str] = FAN_OUTS
) -> Iterator[FanOutParams]:
    """Inside a flow whose fan-outs are `fan_outs`: `params` pointing at a local cluster that
    lives until the block ends, when they ask for a local Dask cluster for two or more of
    them: `dask_workers` processes on 127.0.0.1 (`worker_env`), one task at a time each,
    reporting to this flow's Prefect API. Otherwise `params` as they are (a fan-out that
    runs on Dask alone starts its cluster when it comes)."""
    shared = [name for name in fan_outs if name in params.dask_fan_outs]
    if params.task_runner != "dask" or params.dask_address is not None or len(shared) < 2:
        yield params
        return
    with _local_cluster(params) as params:
        yield params


@contextlib.contextmanager
def _local_cluster(params: FanOutParams) -> Iterator[FanOutParams]:
    """`params` pointing at a new local cluster of `dask_workers` processes, until the block
    ends."""
    import dask
    from distributed import LocalCluster

    environ = worker_env(params.dask_workers)
    with environ_kept(), dask.config.set({"distributed.nanny.pre-spawn-environ": environ}):
        cluster = LocalCluster(
            n_workers=params.dask_workers,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
            env={"PREFECT_API_URL": current_api_url()},
        )
    with cluster:
        local = params.model_copy(update={"dask_address": cluster.scheduler_address})
        local._local = True
        yield local


def run_jobs(jobs: Sequence[tuple[Task, tuple]], params: FanOutParams, name: str) -> list:
    """task(*args) for every (task, args) in jobs, results in the order of jobs: in this
    process one after another, or on Dask as the subflow `name` (`FanOutParams.on_dask`),
    so the UI shows the fanned-out runs together."""
    if not params.on_dask(name, len(jobs)):
        return [task(*args) for task, args in jobs]
    from prefect_dask import DaskTaskRunner

    if params.dask_address is None:  # no shared cluster: this fan-out's own
        cluster = _local_cluster(params)
    else:
        cluster = contextlib.nullcontext(params)
    with cluster as params:

        @flow(name=name, task_runner=DaskTaskRunner(address=params.dask_address), log_prints=True)
        def fanned_out() -> list:
            futures = [task.submit(*args) for task, args in jobs]
            return [future.result() for future in futures]

        return fanned_out()


def fan_out(task: Task, calls: Sequence[tuple], params: FanOutParams, name: str) -> list:
    """task(*args) for every args in calls (see run_jobs)."""
    return run_jobs([(task, args) for args in calls], params, name)
