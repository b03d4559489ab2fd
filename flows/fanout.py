"""Fan-out of independent tasks (the filter's shards, the sweep's grid points).

    fan_out(task, calls, params, name) -> [task(*args) for args in calls]

`sequential` runs each call as a task run in the flow's own process, one after another.
`dask` runs them as one subflow on Prefect's Dask task runner: a `LocalCluster` of worker
processes on 127.0.0.1 (one thread each, no dashboard), or an existing scheduler at
`dask_address`. Local workers report their task runs to the flow's own Prefect API (also the
temporary one of an in-process run), not each to a server of its own. Workers of an external
cluster must see the same workspace path and have PREFECT_API_URL set by whoever runs them.
"""

from __future__ import annotations

from collections.abc import Sequence

from prefect import Task, flow
from prefect.client.orchestration import get_client

from flows.params import FanOutParams


def current_api_url() -> str:
    """The Prefect API this flow reports to (the temporary server's, in-process)."""
    with get_client(sync_client=True) as client:
        return str(client.api_url)


def dask_runner(params: FanOutParams):
    from prefect_dask import DaskTaskRunner

    if params.dask_address is not None:
        return DaskTaskRunner(address=params.dask_address)
    return DaskTaskRunner(
        cluster_class="distributed.LocalCluster",
        cluster_kwargs={
            "n_workers": params.dask_workers,
            "threads_per_worker": 1,
            "processes": True,
            "host": "127.0.0.1",
            "dashboard_address": None,
            "env": {"PREFECT_API_URL": current_api_url()},
        },
    )


def fan_out(task: Task, calls: Sequence[tuple], params: FanOutParams, name: str) -> list:
    """task(*args) for every args in calls, results in the order of calls; on Dask as the
    subflow `name`, so the UI shows the fanned-out runs together."""
    if params.task_runner == "sequential" or not calls:
        return [task(*args) for args in calls]

    @flow(name=name, task_runner=dask_runner(params), log_prints=True)
    def fanned_out() -> list:
        futures = [task.submit(*args) for args in calls]
        return [future.result() for future in futures]

    return fanned_out()
