"""Flow `ingest`: a URL list -> data/raw/ (img2dataset Parquet shards with pair_id)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from flows.params import IngestParams
from flows.spec_fields import to_spec
from tasks.ingest.download import IngestConfig, ingest
from tasks.ingest.url_list import UrlListError
from tasks.store.objectstore import download_file, is_s3
from tasks.store.workspace import Workspace


def _retry_unless_bad_input(task, task_run, state) -> bool:
    """Retry network trouble, never a bad URL list (it would fail the same way again)."""
    try:
        state.result()
    except UrlListError:
        return False
    except Exception:
        return True
    return True


@task(
    name="download-pairs",
    retries=2,
    retry_delay_seconds=[2, 10],
    retry_condition_fn=_retry_unless_bad_input,
    cache_policy=NO_CACHE,
)
def download_pairs(cfg: IngestConfig, workspace: Workspace) -> dict:
    return asdict(ingest(cfg, workspace))


@task(name="fetch-url-list", cache_policy=NO_CACHE)
def fetch_url_list(url: str, workspace: Workspace) -> str:
    """An s3:// URL list copied into the workspace (cache/url-lists/); its local path."""
    return str(download_file(url, workspace.cache / "url-lists"))


def local_url_list(params: IngestParams, workspace: Workspace) -> IngestParams:
    """The parameters with an s3:// URL list replaced by its local copy."""
    if not is_s3(params.url_list):
        return params
    return params.model_copy(update={"url_list": fetch_url_list(params.url_list, workspace)})


def ingest_config(params: IngestParams) -> IngestConfig:
    allowed = tuple(params.allow_host)
    return to_spec(params, IngestConfig, url_list=Path(params.url_list), allowed_hosts=allowed)


@flow(name="ingest", log_prints=True)
def ingest_flow(params: IngestParams, home: str | None = None) -> dict:
    """Download the pairs of a URL list (a file, or s3://BUCKET/KEY) into the workspace;
    returns the ingest manifest."""
    workspace = Workspace.from_env(home)
    return download_pairs(ingest_config(local_url_list(params, workspace)), workspace)
