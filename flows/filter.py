"""Flow `filter`: CLIP similarity of every raw pair -> data/scores/ and data/pairs/.

With no filter model named, the flow first trains the filter CLIP on the raw pairs (its own
task, so the DAG shows it), then scores with it.
"""

from __future__ import annotations

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from flows.params import FilterParams
from flows.train import clip_task, on_device
from tasks.filter import FilterConfig, filter_pairs
from tasks.train_clip import filter_clip_spec
from tasks.workspace import Workspace


@task(name="filter-pairs", cache_policy=NO_CACHE)
def filter_task(cfg: FilterConfig, workspace: Workspace) -> dict:
    return filter_pairs(cfg, workspace)


def run_filter(params: FilterParams, workspace: Workspace) -> dict:
    """Train the filter CLIP when no model is named, then score and keep (inside a flow)."""
    model = params.model
    if model is None:
        spec = filter_clip_spec(workspace, params.filter_clip_epochs, params.filter_clip_steps)
        print(f"filter: no filter model given, training {spec.name} ({spec.train.steps} steps)")
        on_device(clip_task, spec.train.device)(spec, workspace)
        model = f"marble:{spec.name}"
    return filter_task(params.to_config(model), workspace)


@flow(name="filter", log_prints=True)
def filter_flow(params: FilterParams = FilterParams(), home: str | None = None) -> dict:
    """Score the raw pairs with a CLIP and keep those whose caption fits the image."""
    return run_filter(params, Workspace.from_env(home))
