"""Flow `filter`: CLIP similarity of every raw pair -> data/scores/ and data/pairs/."""

from __future__ import annotations

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from flows.params import FilterParams
from tasks.filter import FilterConfig, filter_pairs
from tasks.workspace import Workspace


@task(name="filter-pairs", cache_policy=NO_CACHE)
def filter_task(params: FilterParams, home: str | None) -> dict:
    return filter_pairs(FilterConfig(**params.model_dump()), Workspace.from_env(home))


@flow(name="filter", log_prints=True)
def filter_flow(params: FilterParams = FilterParams(), home: str | None = None) -> dict:
    """Score the raw pairs with a CLIP and keep those whose caption fits the image."""
    return filter_task(params, home)
