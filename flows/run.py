"""Flow `run`: the main job on the built-in captioned shapes, start to end.

Serves the shapes on 127.0.0.1, then runs every stage: ingest -> filter (training its CLIP)
-> train (autoencoder, CLIP encoders, diffusion grid) -> evaluate (a small sweep).
"""

from __future__ import annotations

import time
from dataclasses import asdict

from prefect import flow

from flows.evaluate import run_evaluation
from flows.filter import run_filter
from flows.ingest import download_pairs
from flows.params import RunParams
from flows.train import run_training
from tasks.ingest import IngestConfig
from tasks.shapes_server import serve_shapes
from tasks.workspace import Workspace


@flow(name="run", log_prints=True)
def run_flow(params: RunParams = RunParams()) -> dict:
    """The whole chain on the built-in data; returns each stage's summary and wall time."""
    workspace = Workspace.from_env(params.home)
    spec = params.shapes.to_spec()
    stages: dict[str, dict] = {}
    with serve_shapes(spec, workspace.source, port=params.shapes.port) as source:
        host = source.base_url.removeprefix("http://")
        print(f"serving {spec.n} captioned shapes at {source.base_url}")
        cfg = IngestConfig(
            url_list=source.url_list, image_size=spec.image_size, allowed_hosts=(host,)
        )
        t0 = time.perf_counter()
        manifest = download_pairs(cfg, workspace)
        stages["ingest"] = {**manifest, "stage_s": round(time.perf_counter() - t0, 1)}
    print(
        f"ingest: {manifest['total_status_counts']} in {manifest['raw_dir']} "
        f"({manifest['attempted']} fetched this run at {manifest['pairs_per_s']} pairs/s)"
    )
    t0 = time.perf_counter()
    kept = run_filter(params.filter, workspace)
    stages["filter"] = {**kept, "stage_s": round(time.perf_counter() - t0, 1)}
    dropped = kept.get("wrong_dropped_recall", "-")
    print(
        f"filter: kept {kept['kept']} of {kept['scored']} pairs ({dropped} of wrong captions dropped)"
    )
    t0 = time.perf_counter()
    trained = run_training(params.training, workspace)
    stages.update(trained)
    print(f"training: {len(trained)} models in {time.perf_counter() - t0:.0f} s")
    t0 = time.perf_counter()
    evaluated = run_evaluation(params.evaluation, workspace)
    stages["evaluate"] = {
        k: evaluated[k] for k in ("sweep_id", "mlflow_run_id", "lines", "best")
    } | {"plot": str(evaluated["plot"]), "stage_s": round(time.perf_counter() - t0, 1)}
    return {"workspace": str(workspace.root), "stages": stages, "spec": asdict(spec)}
