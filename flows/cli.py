"""The `marble` command line. Each subcommand calls a flow (or a task) with typed parameters."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def _cmd_run(args: argparse.Namespace) -> int:
    from flows.params import RunParams, ShapesParams, TrainingParams
    from flows.run import run_flow

    shapes = ShapesParams(n=args.n, image_size=args.image_size, seed=args.seed, port=args.port)
    training = TrainingParams(
        text_encoders=args.text_encoders.split(","),
        unets=args.unets.split(","),
        autoencoders=args.autoencoders.split(","),
        **{k: v for k, v in vars(args).items() if k.endswith("_steps") and v is not None},
    )
    t0 = time.perf_counter()
    summary = run_flow(RunParams(home=args.home, shapes=shapes, training=training))
    elapsed = time.perf_counter() - t0
    print(f"\nmarble run finished in {elapsed:.0f} s; workspace: {summary['workspace']}")
    for name, stage in summary["stages"].items():
        print(f"  {name:<10} {stage.get('stage_s', '?')} s")
    return 0


def _cmd_ingest(args: argparse.Namespace) -> int:
    from flows.ingest import ingest_flow
    from flows.params import IngestParams
    from tasks.url_list import read_url_list

    read_url_list(Path(args.url_list), args.url_col, args.caption_col)  # bad input: fail here
    params = IngestParams(
        url_list=str(Path(args.url_list).resolve()),
        url_col=args.url_col,
        caption_col=args.caption_col,
        image_size=args.image_size,
        processes=args.processes,
        threads=args.threads,
        allow_private=args.allow_private,
        distributor=args.distributor,
    )
    manifest = ingest_flow(params, home=args.home)
    print(json.dumps({k: v for k, v in manifest.items() if k != "history"}, indent=2))
    return 0


def _cmd_shapes_serve(args: argparse.Namespace) -> int:
    from tasks.shapes import FaultRates, ShapesSpec
    from tasks.shapes_server import serve_shapes
    from tasks.workspace import Workspace

    spec = ShapesSpec(
        n=args.n,
        image_size=args.image_size,
        seed=args.seed,
        faults=FaultRates(*(args.fault_rate,) * 5),
    )
    out = Path(args.out) if args.out else Workspace.from_env(args.home).source
    with serve_shapes(spec, out, port=args.port) as source:
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
    from flows.filter import filter_flow
    from flows.params import FilterParams

    params = FilterParams(
        model=args.model,
        keep=args.keep,
        threshold=args.threshold,
        top_fraction=args.top_fraction,
        filter_clip_epochs=args.filter_clip_epochs,
    )
    print(json.dumps(filter_flow(params, home=args.home), indent=2))
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    """One trainer, without Prefect: this is what `torchrun -m flows.cli train ...` runs."""
    from tasks.train_autoencoder import AutoencoderTrainSpec, train_autoencoder
    from tasks.train_clip import ClipTrainSpec, train_clip
    from tasks.train_diffusion import DiffusionTrainSpec, train_diffusion
    from tasks.workspace import Workspace

    workspace = Workspace.from_env(args.home)
    overrides = {k: v for k, v in (("steps", args.steps), ("batch_size", args.batch_size)) if v}
    overrides |= {"device": args.device, "seed": args.seed}
    if args.kind == "autoencoder":
        base = AutoencoderTrainSpec(preset=args.autoencoder)
        spec = AutoencoderTrainSpec(preset=args.autoencoder, train=_merge(base.train, overrides))
        summary = train_autoencoder(spec, workspace)
    elif args.kind == "clip":
        base = ClipTrainSpec(preset=args.text_encoder)
        summary = train_clip(
            ClipTrainSpec(preset=args.text_encoder, train=_merge(base.train, overrides)), workspace
        )
    else:
        base = DiffusionTrainSpec()
        spec = DiffusionTrainSpec(
            text_encoder=args.text_encoder, unet=args.unet, autoencoder=args.autoencoder,
            train=_merge(base.train, overrides),
        )  # fmt: skip
        summary = train_diffusion(spec, workspace)
    print(json.dumps(summary, indent=2, default=str))
    return 0


def _merge(cfg, overrides: dict):
    import dataclasses

    return dataclasses.replace(cfg, **overrides)


def build_parser() -> argparse.ArgumentParser:
    from flows.params import TrainingParams

    parser = argparse.ArgumentParser(prog="marble", description=__doc__)
    parser.add_argument("--home", help="workspace root (default: $MARBLE_HOME or ./marble-home)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="the main job: the whole chain on the built-in shapes data")
    run.add_argument("--n", type=int, default=5000, help="pairs in the built-in data (5000)")
    run.add_argument("--image-size", type=int, default=32)
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--port", type=int, default=8737, help="loopback port of the shapes server")
    grid = TrainingParams()  # the built-in grid's defaults live in one place
    for flag, default in (
        ("--text-encoders", grid.text_encoders),
        ("--unets", grid.unets),
        ("--autoencoders", grid.autoencoders),
    ):
        run.add_argument(flag, default=",".join(default), help="comma-separated")
    run.add_argument("--autoencoder-steps", type=int)
    run.add_argument("--clip-steps", type=int)
    run.add_argument("--diffusion-steps", type=int)
    run.set_defaults(func=_cmd_run)

    ing = sub.add_parser("ingest", help="download a URL list (Parquet/CSV) into data/raw/")
    ing.add_argument("url_list")
    ing.add_argument("--url-col", default="url")
    ing.add_argument("--caption-col", default="caption")
    ing.add_argument("--image-size", type=int, default=32)
    ing.add_argument("--processes", type=int, default=2)
    ing.add_argument("--threads", type=int, default=32)
    ing.add_argument(
        "--allow-private", action="store_true", help="fetch private/loopback addresses"
    )
    ing.add_argument(
        "--distributor", default="multiprocessing", choices=["multiprocessing", "pyspark", "ray"]
    )
    ing.set_defaults(func=_cmd_ingest)

    fil = sub.add_parser("filter", help="score raw pairs by CLIP similarity, keep those that fit")
    fil.add_argument(
        "--model", help="openclip:ARCH:TAG or marble:NAME (default: train a filter CLIP)"
    )
    fil.add_argument(
        "--keep", default="mixture", choices=["mixture", "otsu", "threshold", "top_fraction"]
    )
    fil.add_argument("--threshold", type=float, default=0.28)
    fil.add_argument("--top-fraction", type=float, default=0.3)
    fil.add_argument(
        "--filter-clip-epochs", type=float, default=8.0, help="when no --model: its training"
    )
    fil.set_defaults(func=_cmd_filter)

    tr = sub.add_parser("train", help="train one model directly (no Prefect; works under torchrun)")
    tr.add_argument("kind", choices=["autoencoder", "clip", "diffusion"])
    tr.add_argument("--autoencoder", default="kl-f4", help="autoencoder preset / checkpoint name")
    tr.add_argument("--text-encoder", default="clip-tiny", help="CLIP preset / checkpoint name")
    tr.add_argument("--unet", default="unet-xs", help="U-Net preset")
    tr.add_argument("--steps", type=int, help="optimizer steps (default: the trainer's)")
    tr.add_argument("--batch-size", type=int)
    tr.add_argument("--device", default="auto")
    tr.add_argument("--seed", type=int, default=0)
    tr.set_defaults(func=_cmd_train)

    shapes = sub.add_parser("shapes", help="the built-in captioned-shapes data source")
    shapes_sub = shapes.add_subparsers(dest="shapes_command", required=True, metavar="ACTION")
    serve = shapes_sub.add_parser(
        "serve", help="serve the shapes on 127.0.0.1 and write the URL list"
    )
    serve.add_argument("--n", type=int, default=5000)
    serve.add_argument("--image-size", type=int, default=32)
    serve.add_argument("--seed", type=int, default=0)
    serve.add_argument("--port", type=int, default=0, help="0: a free port")
    serve.add_argument("--fault-rate", type=float, default=0.005, help="per fault kind")
    serve.add_argument("--out", help="folder for urls.parquet and truth.parquet")
    serve.set_defaults(func=_cmd_shapes_serve)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ValueError as e:  # bad input: one clear line, no traceback
        print(f"marble: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
