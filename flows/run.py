"""Flow `run`: the main job on the built-in captioned shapes, start to end.

Serves the shapes on 127.0.0.1, then runs each stage that exists so far:
ingest -> filter -> train (autoencoder, CLIP encoders, diffusion grid) -> (evaluate: later).
"""

from __future__ import annotations

import time
from dataclasses import asdict

from prefect import flow

from flows.filter import filter_task
from flows.ingest import download_pairs
from flows.params import RunParams
from flows.train import run_training
from tasks.ingest import IngestConfig
from tasks.shapes import FaultRates, ShapesSpec
from tasks.shapes_server import serve_shapes
from tasks.workspace import Workspace


def shapes_spec(params: RunParams) -> ShapesSpec:
    s = params.shapes
    return ShapesSpec(
        n=s.n,
        image_size=s.image_size,
        seed=s.seed,
        wrong_caption_fraction=s.wrong_caption_fraction,
        two_object_fraction=s.two_object_fraction,
        faults=FaultRates(*(s.fault_rate,) * 5),
    )


@flow(name="run", log_prints=True)
def run_flow(params: RunParams = RunParams()) -> dict:
    """The whole chain on the built-in data; returns each stage's summary and wall time."""
    workspace = Workspace.from_env(params.home)
    stages: dict[str, dict] = {}
    with serve_shapes(shapes_spec(params), workspace.source, port=params.shapes.port) as source:
        host = source.base_url.removeprefix("http://")
        print(f"serving {params.shapes.n} captioned shapes at {source.base_url}")
        cfg = IngestConfig(
            url_list=source.url_list, image_size=params.shapes.image_size, allowed_hosts=(host,)
        )
        t0 = time.perf_counter()
        manifest = download_pairs(cfg, str(workspace.root))
        stages["ingest"] = {**manifest, "stage_s": round(time.perf_counter() - t0, 1)}
    print(
        f"ingest: {manifest['total_status_counts']} in {manifest['raw_dir']} "
        f"({manifest['attempted']} fetched this run at {manifest['pairs_per_s']} pairs/s)"
    )
    t0 = time.perf_counter()
    kept = filter_task(params.filter, str(workspace.root))
    stages["filter"] = {**kept, "stage_s": round(time.perf_counter() - t0, 1)}
    print(
        f"filter: kept {kept['kept']} of {kept['scored']} pairs ({kept.get('wrong_dropped_recall', '-')} of wrong captions dropped)"
    )
    t0 = time.perf_counter()
    trained = run_training(params.training, str(workspace.root))
    stages.update(trained)
    print(f"training: {len(trained)} models in {time.perf_counter() - t0:.0f} s")
    return {"workspace": str(workspace.root), "stages": stages, "spec": asdict(shapes_spec(params))}
