"""The `marble` command line. Each subcommand calls a flow (or a task) with typed parameters.

Options, their defaults, choices and help come from the pydantic parameter models in
flows/params.py and flows/command_params.py (`add_model_options`, flows/options.py), so the
CLI and the Prefect UI form always agree, and a value out of bounds is refused by the same
model either way.

Every failure a user can cause or fix (bad input, a missing file or stage, a busy
workspace, a file that cannot be written) is one line on stderr, `marble: error: ...`, with
exit status 2; `--debug` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from pathlib import Path

from pydantic import ValidationError

from flows import prefect_logs
from flows.options import (
    OneLineErrorParser,
    add_model_options,
    build_model,
    error_message,
    with_parents,
)

# ---------------------------------------------------------------------------- commands


def _cmd_run(args: argparse.Namespace) -> int:
    from flows.params import (
        EvaluateParams,
        FanOutParams,
        PipelineParams,
        ShapesParams,
        TrainingParams,
    )
    from flows.pipeline import pipeline_flow
    from flows.timing import Stopwatch
    from tasks.store.tracking import ui_page

    evaluation = PipelineParams().evaluation
    changes = {name: getattr(args, name) for name in args.evaluation_fields}
    from tasks.store.objectstore import is_s3

    url_list = args.url_list
    if url_list is not None and not is_s3(url_list):
        url_list = str(Path(url_list).resolve())
    params = PipelineParams(
        home=args.home,
        url_list=url_list,
        shapes=build_model(ShapesParams, args, args.shapes_fields),
        training=build_model(TrainingParams, args, args.training_fields),
        evaluation=EvaluateParams(**(evaluation.model_dump() | changes)),
        fan_out=build_model(FanOutParams, args, args.fan_out_fields),
    )
    if url_list is not None and not is_s3(url_list):  # a bad list fails before Prefect starts
        from tasks.ingest.url_list import read_url_list

        read_url_list(Path(url_list), params.ingest.url_col, params.ingest.caption_col)
    with Stopwatch() as watch:
        summary = pipeline_flow(params)
    home, stages = summary["workspace"], summary["stages"]
    print(f"\nmarble run finished in {watch.seconds:.0f} s; workspace: {home}")
    for name, stage in stages.items():
        note = " (skipped)" if stage.get("skipped") else ""
        print(f"  {name:<40} {stage.get('stage_s', '?'):>7} s{note}")
    evaluation = stages["evaluate"]
    print("\n" + "\n".join(evaluation["lines"]))
    print(f"\nPareto plot:  {evaluation['plot']}")
    print(f"sample grids: MLflow run {evaluation['mlflow_run_id']} (experiment marble-evaluate)")
    print(f"MLflow UI:    .venv/bin/mlflow ui --backend-store-uri sqlite:///{home}/mlflow.db, then")
    print(f"              {ui_page('http://127.0.0.1:5000', evaluation['mlflow_run_id'])}")
    print(f"Prefect UI:   .venv/bin/marble --home {home} up")
    print(f'DuckDB:       .venv/bin/marble --home {home} query "SELECT * FROM evaluations LIMIT 5"')
    return 0


def _cmd_ingest(args: argparse.Namespace) -> int:
    from flows.ingest import ingest_config, ingest_flow
    from flows.params import IngestParams
    from tasks.ingest.url_list import read_url_list
    from tasks.store.objectstore import is_s3

    params = build_model(IngestParams, args, args.fields)
    ingest_config(params)  # bad settings and a bad list fail here, before Prefect starts
    if not is_s3(params.url_list):  # an S3 list is read once copied, in the flow
        params = params.model_copy(update={"url_list": str(Path(params.url_list).resolve())})
        read_url_list(Path(params.url_list), params.url_col, params.caption_col)
    manifest = ingest_flow(params, home=args.home)
    print(json.dumps({k: v for k, v in manifest.items() if k != "history"}, indent=2))
    return 0


def _cmd_shapes_serve(args: argparse.Namespace) -> int:
    from flows.params import ShapesParams
    from tasks.shapes.server import serve_shapes
    from tasks.store.workspace import Workspace

    params = build_model(ShapesParams, args, args.fields)
    spec = params.to_spec()
    workspace = Workspace.from_env(args.home)
    out = Path(args.out) if args.out else workspace.source
    # the workspace's own source is rewritten: not while a run serves it (one line if so)
    lock = workspace.lock("source") if out == workspace.source else contextlib.nullcontext()
    with lock, serve_shapes(spec, out, port=params.port) as source:
        print(f"serving {spec.n} captioned shapes at {source.base_url}")
        print(f"URL list:     {source.url_list}\nground truth: {source.truth}")
        print("Ctrl-C to stop.", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
    return 0


def _cmd_filter(args: argparse.Namespace) -> int:
    from flows.fanout import FanOutParams
    from flows.filter import filter_flow
    from flows.params import FilterParams

    params = build_model(FilterParams, args, args.fields)
    fan_out = build_model(FanOutParams, args, args.fan_out_fields)
    print(json.dumps(filter_flow(params, home=args.home, fan_out=fan_out), indent=2))
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from flows.evaluate import evaluate_flow
    from flows.fanout import FanOutParams
    from flows.params import EvaluateParams

    params = build_model(EvaluateParams, args, args.fields)
    fan_out = build_model(FanOutParams, args, args.fan_out_fields)
    summary = evaluate_flow(params, home=args.home, fan_out=fan_out)
    print(
        f"sweep {summary['sweep_id']}: rows in results/evaluations/, MLflow run {summary['mlflow_run_id']}"
    )
    return 0


def _cmd_query(args: argparse.Namespace) -> int:
    from flows.command_params import QueryParams
    from tasks.store.objectstore import parse_s3_url
    from tasks.store.query import format_result, run_query
    from tasks.store.workspace import Workspace

    params = build_model(QueryParams, args, args.fields)
    source = None if params.source is None else parse_s3_url(params.source)
    columns, rows = run_query(Workspace.from_env(args.home), params.sql, source)
    print(format_result(columns, rows, params.format))
    return 0


def _cmd_publish(args: argparse.Namespace) -> int:
    from flows.command_params import PublishParams
    from tasks.store.objectstore import parse_s3_url, publish
    from tasks.store.workspace import Workspace

    params = build_model(PublishParams, args, args.fields)
    summary = publish(Workspace.from_env(args.home), parse_s3_url(params.target))
    print(json.dumps(summary, indent=2))
    return 0


def _cmd_up(args: argparse.Namespace) -> int:
    import torch

    from flows.command_params import UpParams
    from tasks.runtime import services
    from tasks.store.tracking import ui_page
    from tasks.store.workspace import Workspace

    params = build_model(UpParams, args, args.fields)
    workspace = Workspace.from_env(args.home)
    try:
        found = services.up(
            workspace, params.prefect_port, params.mlflow_port, params.timezone,
            params.nightly_cron, gpus=torch.cuda.device_count(), database=params.database,
            artifacts=params.artifacts,
        )  # fmt: skip
    except services.ServicesError as e:
        raise ValueError(str(e)) from None
    print(f"Prefect UI:  {found.prefect_url}")
    for name, page in found.deployments.items():
        print(f"  {name:<36} {page}")
    print(f"MLflow UI:   {ui_page(found.mlflow_url)}")
    print(f"database:    {found.database}")
    print(f"artifacts:   {found.artifacts}")
    print(f"work pool:   {found.pool} (one process worker)")
    print(f"nightly:     evaluate-nightly at '{params.nightly_cron}' {params.timezone}")
    print(f"logs:        {workspace.root / 'logs'}")
    print(f"API for the prefect CLI: export PREFECT_API_URL={found.api_url}")
    print("stop with:   marble down")
    return 0


def _cmd_down(args: argparse.Namespace) -> int:
    from tasks.runtime import services
    from tasks.store.workspace import Workspace

    workspace = Workspace.from_env(args.home)
    try:
        stopped = services.down(workspace)
    except services.ServicesError as e:
        raise ValueError(str(e)) from None
    if not stopped:
        print(f"nothing to stop: marble up is not running for {workspace.root}")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    """One trainer, without Prefect: this is what `torchrun -m flows.cli train ...` runs."""
    import dataclasses

    from flows.command_params import TrainModelParams
    from tasks.filter.variants import write_variant
    from tasks.store.workspace import DEFAULT_VARIANT, Workspace
    from tasks.train.clip import replicate_name, replicate_seed
    from tasks.train.registry import TRAINERS

    params = build_model(TrainModelParams, args, args.fields)
    workspace = Workspace.from_env(args.home)
    r = params.replicate
    presets = {
        "autoencoder": {"preset": params.autoencoder},
        "clip": {"preset": params.text_encoder, "replicate": r},
        "diffusion": {
            "text_encoder": replicate_name(params.text_encoder, r),
            "unet": params.unet,
            "autoencoder": params.autoencoder,
            "replicate": r,
            "data_variant": params.data_variant,
        },
    }
    if params.kind == "diffusion" and params.data_variant != DEFAULT_VARIANT:
        write_variant(workspace, params.data_variant)  # its training set, or the current one
    trainer = TRAINERS[params.kind]
    spec = trainer.spec(**presets[params.kind])
    changes = {"device": params.device, "seed": replicate_seed(params.seed, r)}
    changes |= {k: getattr(params, k) for k in ("steps", "batch_size") if getattr(params, k)}
    spec = dataclasses.replace(spec, train=dataclasses.replace(spec.train, **changes))
    print(json.dumps(trainer.train(spec, workspace), indent=2, default=str))
    return 0


# ---------------------------------------------------------------------------- the parser


# the training fields `marble run` offers as options; the rest are the Prefect form's
RUN_TRAINING_OPTIONS = (
    "text_encoders", "unets", "autoencoders", "autoencoder_steps", "image_tower_steps",
    "clip_steps", "diffusion_steps", "diffusion_batch_size", "replicates", "first_replicate",
    "data_variants", "nproc_per_node",
)  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    from flows.command_params import PublishParams, QueryParams, TrainModelParams, UpParams
    from flows.params import (
        EvaluateParams,
        FanOutParams,
        FilterParams,
        IngestParams,
        PipelineParams,
        ShapesParams,
        TrainingParams,
    )

    common = argparse.ArgumentParser(add_help=False)  # before or after the command
    common.add_argument(
        "--home",
        default=argparse.SUPPRESS,
        help="workspace root (default: $MARBLE_HOME or ./marble-home)",
    )
    common.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks"
    )
    parser = OneLineErrorParser(prog="marble", description=__doc__.split("\n")[0], parents=[common])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser = with_parents(sub.add_parser, common)

    run = sub.add_parser(
        "run", help="the main job: the whole chain, on the built-in shapes data or a URL list"
    )
    add_model_options(run, PipelineParams, only=("url_list",))
    run.set_defaults(
        func=_cmd_run,
        shapes_fields=add_model_options(
            run, ShapesParams, only=("n", "image_size", "seed", "port")
        ),
        training_fields=add_model_options(
            run,
            TrainingParams,
            only=RUN_TRAINING_OPTIONS,
        ),
        evaluation_fields=add_model_options(
            run,
            EvaluateParams,
            only=("num_samples", "guidance_scales", "bootstrap", "target_effect"),
            defaults=PipelineParams().evaluation,
        ),
        fan_out_fields=add_model_options(run, FanOutParams),
    )

    ing = sub.add_parser("ingest", help="download a URL list (Parquet/CSV) into data/raw/")
    ing.set_defaults(
        func=_cmd_ingest, fields=add_model_options(ing, IngestParams, positional=("url_list",))
    )

    fil = sub.add_parser("filter", help="score raw pairs by CLIP similarity, keep those that fit")
    fil.set_defaults(
        func=_cmd_filter,
        fields=add_model_options(fil, FilterParams),
        fan_out_fields=add_model_options(fil, FanOutParams),
    )

    ev = sub.add_parser("evaluate", help="sweep trained models x guidance: FID, CLIP score, ...")
    ev.set_defaults(
        func=_cmd_evaluate,
        fields=add_model_options(ev, EvaluateParams),
        fan_out_fields=add_model_options(ev, FanOutParams),
    )

    qu = sub.add_parser("query", help="SQL over the workspace's tables and MLflow runs (DuckDB)")
    qu.set_defaults(func=_cmd_query, fields=add_model_options(qu, QueryParams, positional=("sql",)))

    pub = sub.add_parser("publish", help="upload the workspace's Parquet tables to s3://...")
    pub.set_defaults(
        func=_cmd_publish, fields=add_model_options(pub, PublishParams, positional=("target",))
    )

    tr = sub.add_parser("train", help="train one model directly (no Prefect; works under torchrun)")
    tr.set_defaults(
        func=_cmd_train, fields=add_model_options(tr, TrainModelParams, positional=("kind",))
    )

    up = sub.add_parser(
        "up", help="start Prefect server + UI, a worker and MLflow UI on 127.0.0.1; deploy"
    )
    up.set_defaults(func=_cmd_up, fields=add_model_options(up, UpParams))
    down = sub.add_parser("down", help="stop what `marble up` started")
    down.set_defaults(func=_cmd_down)

    shapes = sub.add_parser("shapes", help="the built-in captioned-shapes data source")
    shapes_sub = shapes.add_subparsers(dest="shapes_command", required=True, metavar="ACTION")
    shapes_sub.add_parser = with_parents(shapes_sub.add_parser, common)
    serve = shapes_sub.add_parser(
        "serve", help="serve the shapes on 127.0.0.1 and write the URL list"
    )
    serve.add_argument("--out", help="folder for urls.parquet and truth.parquet")
    serve.set_defaults(func=_cmd_shapes_serve, fields=add_model_options(serve, ShapesParams))
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    args.home = getattr(args, "home", None)  # given before or after the command, or not
    args.debug = getattr(args, "debug", False)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # torchrun manages its ranks; the services of `up` outlive it on purpose (`down` ends them)
    if args.command not in ("query", "up", "down") and "LOCAL_RANK" not in os.environ:
        from tasks.runtime.reaper import start_reaper

        start_reaper()  # whatever this run starts ends with it, even after kill -9
    if not args.debug:
        prefect_logs.drop_tracebacks()
    try:
        if args.command != "query":  # every other command writes into the workspace
            from tasks.store.workspace import Workspace

            Workspace.from_env(args.home).ensure_writable()
        return args.func(args)
    except (ValidationError, ValueError, OSError) as e:
        if args.debug:
            raise
        # a value out of a parameter model's bounds, a file or folder that cannot be read or
        # written, bad input, a missing stage, a busy workspace: the message says what to do
        message = error_message(e)
        prefect_logs.errors_only()  # Prefect's shutdown chatter after the error line
        print(f"marble: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
