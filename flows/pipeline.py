"""Flow `pipeline`: the whole chain, start to end, as one Prefect DAG.

    ingest -> filter (its CLIP trained first when none is named) -> autoencoders ->
    CLIP encoders -> the diffusion grid -> evaluation sweep -> summary

With no URL list it serves the built-in captioned shapes on 127.0.0.1 and ingests them
(`make run`, `marble run`). Every stage is its own task; a stage whose inputs are unchanged
is skipped, and the summary says which were and why.
"""

from __future__ import annotations

from prefect import flow
from prefect.artifacts import create_table_artifact

from flows import fanout
from flows.artifacts import sweep_artifacts
from flows.evaluate import run_evaluation
from flows.filter import run_filter
from flows.ingest import download_pairs, ingest_config, local_url_list
from flows.params import IngestParams, PipelineParams
from flows.timing import Stopwatch, timed
from flows.train import run_training
from tasks.shapes.server import serve_shapes
from tasks.store.workspace import Workspace


def _ingest(params: PipelineParams, workspace: Workspace, download=download_pairs) -> dict:
    """The URL list's pairs, or the built-in data's, into data/raw (`download`: the task, or
    its plain function outside a flow)."""
    if params.url_list is not None:
        options = IngestParams(url_list=params.url_list, **params.ingest.model_dump())
        return download(ingest_config(local_url_list(options, workspace)), workspace)
    spec = params.shapes.to_spec()
    # One run serves and ingests the built-in data at a time: a second run waits, then binds
    # the same port, so its URLs (and pair_ids) are the first run's and nothing is fetched
    # twice. (Another program on the port still means new URLs: the content groups of
    # tasks/store/content.py then keep each picture's copies on one side of the split.)
    with (
        workspace.lock("source", wait=True),
        serve_shapes(spec, workspace.source, port=params.shapes.port) as source,
    ):
        print(f"serving {spec.n} captioned shapes at {source.base_url}")
        options = params.ingest.model_dump() | {"image_size": spec.image_size}
        options["allow_host"] = [*options["allow_host"], source.base_url.removeprefix("http://")]
        cfg = ingest_config(IngestParams(url_list=str(source.url_list), **options))
        return download(cfg, workspace)


@flow(name="pipeline", log_prints=True)
def pipeline_flow(params: PipelineParams = PipelineParams()) -> dict:
    """Ingest, filter, train the grid, evaluate it; returns each stage's summary and time."""
    workspace = Workspace.from_env(params.home)
    stages: dict[str, dict] = {}
    manifest = stages["ingest"] = timed(_ingest, params, workspace)
    print(
        f"ingest: {manifest['total_status_counts']} in {manifest['raw_dir']} "
        f"({manifest['attempted']} fetched by the run that wrote it)"
    )
    # one local Dask cluster for the flow's fan-outs, when two or more of them use it
    with fanout.shared_cluster(params.fan_out) as fan:
        kept = stages["filter"] = timed(run_filter, params.filter, workspace, fan)
        dropped = kept.get("wrong_dropped_recall", "-")
        print(
            f"filter: kept {kept['kept']} of {kept['scored']} pairs ({dropped} of wrong captions dropped)"
        )
        with Stopwatch() as watch:
            trained = run_training(params.training, workspace, fan)
        stages.update(trained)
        models = [name for name in trained if not name.startswith("data/")]
        print(f"training: {len(models)} models in {watch.seconds:.0f} s")
        evaluated = stages["evaluate"] = timed(run_evaluation, params.evaluation, workspace, fan)
    keep = ("sweep_id", "mlflow_run_id", "lines", "best", "stage_s")
    stages["evaluate"] = {k: stages["evaluate"].get(k) for k in keep} | {
        "plot": str(evaluated["plot"])
    }
    sweep_artifacts(evaluated, workspace)
    create_table_artifact(
        [{"stage": name, "seconds": s.get("stage_s"), "skipped": s.get("skipped", "")}
         for name, s in stages.items()],
        key="pipeline-stages", description="time per stage, and which were skipped (why)",
    )  # fmt: skip
    for name, stage in stages.items():
        if stage.get("skipped"):
            print(f"skipped {name}: {stage['skipped']}")
    return {"workspace": str(workspace.root), "stages": stages}
