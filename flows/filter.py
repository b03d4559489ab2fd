"""Flow `filter`: CLIP similarity of every raw pair -> data/scores/ and data/pairs/.

With no filter model named, the flow first trains the filter CLIP on the raw pairs (its own
task, so the DAG shows it), then scores with it: one `score-shard` task per raw shard, in
turn or fanned out over Dask workers (`fan_out`), then keeps and writes.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from flows import fanout
from flows.fanout import FanOutParams
from flows.params import FilterParams
from flows.train import TASKS, on_device
from tasks.filter.score import FilterConfig, filter_pairs, score_shard
from tasks.store.workspace import Workspace
from tasks.train.clip import filter_clip_spec


@task(name="score-shard", cache_policy=NO_CACHE, task_run_name="score-{shard.name}")
def score_shard_task(cfg: FilterConfig, shard: Path, workspace: Workspace) -> dict[str, float]:
    return score_shard(cfg, shard, workspace)


@task(name="filter-pairs", cache_policy=NO_CACHE)
def filter_task(cfg: FilterConfig, workspace: Workspace, fan: FanOutParams) -> dict:
    def score_shards(shards: list[Path]) -> list[dict[str, float]]:
        calls = [(cfg, shard, workspace) for shard in shards]
        return fanout.fan_out(score_shard_task, calls, fan, "filter-shards")

    return filter_pairs(cfg, workspace, score_shards=score_shards)


def run_filter(
    params: FilterParams, workspace: Workspace, fan: FanOutParams = FanOutParams()
) -> dict:
    """Train the filter CLIP when no model is named, then score and keep (inside a flow)."""
    model = params.model
    if model is None:
        spec = filter_clip_spec(workspace, params.filter_clip_epochs, params.filter_clip_steps)
        print(f"filter: no filter model given, training {spec.name} ({spec.train.steps} steps)")
        on_device(TASKS["clip"], spec.train.device)(spec, workspace)
        model = f"marble:{spec.name}"
    return filter_task(params.to_config(model), workspace, fan)


@flow(name="filter", log_prints=True)
def filter_flow(
    params: FilterParams = FilterParams(),
    home: str | None = None,
    fan_out: FanOutParams = FanOutParams(),
) -> dict:
    """Score the raw pairs with a CLIP and keep those whose caption fits the image."""
    return run_filter(params, Workspace.from_env(home), fan_out)
