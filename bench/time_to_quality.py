"""Benchmark: attribute accuracy of guided samples against minutes of diffusion training,
latent space (kl-f4 autoencoder) and pixel space (identity autoencoder) side by side.

    .venv/bin/python bench/time_to_quality.py [--minutes 3 | --steps 800] [--seeds 0,1,2]
        [--spaces kl-f4,identity] [--evals 6] [--n 5000] [--tag NAME]

Builds a workspace of rendered captioned shapes (no HTTP; by default without wrong
captions, i.e. as a perfect filter would leave them) and trains the autoencoder of each
space once. Then, for each seed, a clip-tiny (1,200 steps; its own initialisation and data
order) and one U-Net per space, for `--steps` or a step count sized to `--minutes` of
training on this machine. At evenly spaced steps it samples one image per prompt (DDIM 25
steps, guidance 4) for `--prompts` fresh scenes and scores them with the pixel attribute
detector. The training clock excludes evaluation time.

Writes bench/results/time_to_quality[_TAG].{json,png} and a sample grid per space and seed.
With `--steps` the scores do not depend on the machine's speed (CPU training is
deterministic), so two recipes can be compared at equal steps even on a busy machine; the
minutes are then only as good as the machine was idle. Otherwise run it on an idle
machine: two busy cores halve every figure.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import tasks  # noqa: E402,F401
from eval.detector import attribute_scores  # noqa: E402
from models.diffusion import TIMESTEP_SAMPLINGS  # noqa: E402
from tasks.shapes.render import FaultRates, ShapesSpec, sample_scene, write_as_raw_shard  # noqa: E402
from tasks.store.images import save_grid, to_uint8  # noqa: E402
from tasks.store.workspace import Workspace  # noqa: E402
from tasks.train.autoencoder import AutoencoderTrainSpec, train_autoencoder  # noqa: E402
from tasks.train.clip import ClipTrainSpec, train_clip  # noqa: E402
from tasks.train.diffusion import DiffusionTrainSpec, train_diffusion  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def prompts(n: int, seed: int = 99) -> list[str]:
    """Fresh scenes (a seed the training data never used), one caption each."""
    return [sample_scene(seed, i, 0.25)[0].caption(i % 3) for i in range(n)]


def measure_speed(
    spec: DiffusionTrainSpec, workspace, short: int = 10, seconds: float = 20
) -> float:
    """Training steps per second of this spec on this machine, from two throwaway runs: the
    difference of a `short` one and one about `seconds` longer, so first-step costs
    (allocator and kernel warm-up, large on a GPU) cancel, and the longer one spans enough
    steps to average out step-to-step variation."""

    def wall(steps: int) -> float:
        train = dataclasses.replace(spec.train, steps=steps, ckpt_every=10**9)
        probe = dataclasses.replace(spec, train=train)
        seconds_taken = train_diffusion(probe, workspace, log=lambda *_: None)["wall_s"]
        shutil.rmtree(workspace.checkpoint("diffusion", probe.name))
        return seconds_taken

    first = wall(short)
    extra = min(200, max(30, round(seconds * short / first)))
    return extra / max(wall(short + extra) - first, 1e-9)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--minutes", type=float, default=3.0, help="training minutes per model")
    parser.add_argument(
        "--steps", type=int, default=0, help="diffusion steps per model (0: sized to --minutes)"
    )
    parser.add_argument("--evals", type=int, default=6, help="evaluation points per model")
    parser.add_argument("--prompts", type=int, default=200)
    parser.add_argument("--n", type=int, default=5000, help="training pairs")
    parser.add_argument("--unet", default="unet-xs")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--lr", type=float, default=DiffusionTrainSpec().train.lr)
    parser.add_argument("--ae-steps", type=int, default=1500)
    # a text tower that tells "circle" from "square" (docs/training.md, time to quality)
    parser.add_argument("--clip-steps", type=int, default=1200)
    parser.add_argument("--spaces", default="kl-f4,identity")
    parser.add_argument(
        "--seeds",
        default="0",
        help="comma-separated seeds; each trains its own text tower and diffusion model "
        "(the autoencoder is trained once)",
    )
    parser.add_argument(
        "--timestep-sampling",
        default=DiffusionTrainSpec.timestep_sampling,
        choices=TIMESTEP_SAMPLINGS,
    )
    parser.add_argument("--tag", default="", help="suffix of the result files' names")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for json, plot, grids")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    spaces = args.spaces.split(",")
    suffix = f"_{args.tag}" if args.tag else ""
    torch.set_num_threads(torch.get_num_threads())
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    machine = (
        torch.cuda.get_device_name()
        if torch.cuda.is_available()
        else f"CPU, {torch.get_num_threads()} threads"
    )
    eval_prompts = prompts(args.prompts)
    runs: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        workspace = Workspace(Path(tmp) / "home")
        workspace.raw.mkdir(parents=True)
        spec = ShapesSpec(n=args.n, wrong_caption_fraction=0.0, faults=FaultRates.uniform(0))
        write_as_raw_shard(spec, workspace.raw / "00000.parquet")
        autoencoders = {}
        for space in spaces:
            t0 = time.perf_counter()
            ae_spec = AutoencoderTrainSpec(preset=space)
            ae_train = dataclasses.replace(ae_spec.train, steps=args.ae_steps)
            ae = train_autoencoder(dataclasses.replace(ae_spec, train=ae_train), workspace)
            autoencoders[space] = {
                "autoencoder_s": time.perf_counter() - t0,
                **{k: v for k, v in ae.items() if k.startswith("val_")},
            }
        for seed in seeds:
            # the text tower of this seed: its own initialisation and data order
            t0 = time.perf_counter()
            clip = ClipTrainSpec(replicate=seed)
            clip_train = dataclasses.replace(clip.train, steps=args.clip_steps, seed=seed)
            clip_summary = train_clip(dataclasses.replace(clip, train=clip_train), workspace)
            clip_s = time.perf_counter() - t0
            for space in spaces:
                points = train_and_score(args, workspace, space, clip.name, seed, eval_prompts)
                runs.append(
                    {
                        "space": space,
                        "seed": seed,
                        "points": points,
                        "setup": {
                            **autoencoders[space],
                            "clip_s": clip_s,
                            "clip_val": {
                                k: v for k, v in clip_summary.items() if k.startswith("val_")
                            },
                        },
                    }
                )

    (out / f"time_to_quality{suffix}.json").write_text(
        json.dumps(
            {"args": {**vars(args), "out": str(out)}, "machine": machine, "runs": runs},
            indent=2,
        )
    )
    plot(runs, args, machine, out / f"time_to_quality{suffix}.png")
    for run in runs:
        last = run["points"][-1]
        print(
            f"{run['space']} seed {run['seed']}: step {last['step']}, "
            f"{last['train_min']:.2f} min, all correct {last['all_correct']:.3f}"
        )


def train_and_score(args, workspace, space: str, text_encoder: str, seed: int, eval_prompts):
    """One diffusion training of the built-in recipe (with this run's overrides), scored
    at `args.evals` evenly spaced steps; returns the curve."""
    defaults = dataclasses.replace(
        DiffusionTrainSpec().train,
        batch_size=args.batch,
        lr=args.lr,
        seed=seed,
        ckpt_every=10**9,
    )
    base = DiffusionTrainSpec(
        text_encoder=text_encoder,
        unet=args.unet,
        autoencoder=space,
        timestep_sampling=args.timestep_sampling,
        train=dataclasses.replace(defaults, steps=10),
    )
    steps = args.steps or max(args.evals, int(measure_speed(base, workspace) * args.minutes * 60))
    every = max(1, steps // args.evals)
    clock = {"eval_s": 0.0, "start": time.perf_counter()}
    points: list[dict] = []
    tag = f"{space}_seed{seed}"

    def validate_fn(pipe, step):
        t_eval = time.perf_counter()
        images = []
        for i in range(0, len(eval_prompts), 100):
            batch = eval_prompts[i : i + 100]
            images.append(to_uint8(pipe.generate(batch, list(range(i, i + len(batch))))))
        images = np.concatenate(images)
        scores = attribute_scores(images, eval_prompts)
        train_min = (t_eval - clock["start"] - clock["eval_s"]) / 60
        points.append({"step": step, "images": step * args.batch, "train_min": train_min, **scores})
        print(
            f"{tag} step {step}: {train_min:.2f} min, all-correct {scores['all_correct']:.3f}",
            flush=True,
        )
        save_grid(images[:32], args.out / f"samples_{tag}.png", ncol=8)
        clock["eval_s"] += time.perf_counter() - t_eval
        return {f"attr_{k}": v for k, v in scores.items()}

    spec = dataclasses.replace(
        base, train=dataclasses.replace(defaults, steps=steps, val_every=every)
    )
    train_diffusion(spec, workspace, validate_fn=validate_fn)
    return points


def plot(runs: list[dict], args, machine: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for run in runs:
        pts = run["points"]
        space = run["space"]
        label = "latent (kl-f4, 8x8x4)" if space != "identity" else "pixel (identity, 32x32x3)"
        ax.plot(
            [p["train_min"] for p in pts],
            [100 * p["all_correct"] for p in pts],
            "o-",
            label=f"{label}, seed {run['seed']}",
        )
    ax.axhline(80, color="gray", ls="--", lw=0.8)
    ax.set_xlabel(f"diffusion training, minutes ({machine})")
    ax.set_ylabel("all attributes correct, %")
    ax.set_title(f"{args.unet}, {args.prompts} prompts, DDIM 25, guidance 4")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    main()
