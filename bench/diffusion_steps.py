"""How many diffusion steps does a grid model need to follow its prompts?

`make run`'s sweep only compares models that draw what they are asked if each U-Net trains
long enough. This script trains one grid model (the built-in recipe, `DiffusionTrainSpec`)
on a workspace's kept pairs, autoencoder and text encoder, and at evenly spaced steps
samples one image per prompt for fresh built-in scenes (DDIM 25, guidance 4) and reads them
back with the attribute detector. The training clock excludes that evaluation.

The workspace is only read: its pairs are linked and its two encoder checkpoints copied into
a temporary workspace, where the U-Net trains (MLflow off). The points are those of one run
of `--steps`: its learning rate has not decayed yet at the earlier ones.

With `--text-tower lit` or `whole` the text encoder is not copied but trained there first,
by its own recipe (`ClipTrainSpec`) for `--text-steps` at `--text-seed`: `lit` against the
workspace's locked `image-clip-tiny` image tower (as `make run` trains its text encoders),
`whole` both towers from scratch (as `make run` trains that image tower). That measures
what the draw of a text tower does to the U-Net trained on it.

    python bench/diffusion_steps.py --home marble-home --unet unet-xs --steps 900 --every 150
    python bench/diffusion_steps.py --home marble-home --steps 900 --every 900 \
        --text-tower whole --text-steps 1200 --text-seed 1
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from eval.detector import attribute_scores
from tasks.shapes.render import sample_scene
from tasks.store.images import to_uint8
from tasks.store.workspace import Workspace
from tasks.train.clip import ClipTrainSpec, image_tower_spec, train_clip
from tasks.train.diffusion import DiffusionTrainSpec, train_diffusion

RESULTS = Path(__file__).resolve().parent / "results"
PROMPT_SEED = 99  # fresh scenes: the built-in data uses seed 0, the sweep's held-out set another


def prompts(n: int) -> list[str]:
    return [sample_scene(PROMPT_SEED, i, 0.25)[0].caption(i % 3) for i in range(n)]


def scratch_workspace(
    source: Workspace, root: Path, spec: DiffusionTrainSpec, text_tower: str
) -> Workspace:
    """A workspace in `root` that sees `source`'s data and holds copies of the encoders (with
    `text_tower` lit: the image tower in place of the text encoder; whole: neither)."""
    scratch = Workspace(root)
    scratch.root.mkdir(parents=True)
    (scratch.root / "data").symlink_to(source.root.resolve() / "data")
    clip = {"copy": spec.text_encoder, "lit": image_tower_spec().name}.get(text_tower)
    copies = [("autoencoder", spec.autoencoder)] + ([("clip", clip)] if clip else [])
    for kind, name in copies:
        found = source.checkpoint(kind, name)
        if not (found / "config.json").exists():
            raise SystemExit(f"no {kind} checkpoint {found}: run `marble run` (or train) first")
        shutil.copytree(found, scratch.checkpoint(kind, name))
    return scratch


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--home", type=Path, required=True, help="a workspace after `make run`")
    parser.add_argument("--unet", default="unet-xs")
    parser.add_argument("--text-encoder", default="clip-tiny")
    parser.add_argument("--autoencoder", default="kl-f4")
    parser.add_argument("--steps", type=int, default=900)
    parser.add_argument("--every", type=int, default=150, help="steps between evaluations")
    parser.add_argument("--prompts", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0, help="seed of the diffusion training")
    parser.add_argument("--lr", type=float, help="peak learning rate (default: the recipe's)")
    parser.add_argument(
        "--text-tower", choices=("copy", "lit", "whole"), default="copy",
        help="copy: the workspace's text encoder; lit / whole: train one here first",
    )  # fmt: skip
    parser.add_argument("--text-steps", type=int, help="default: 150 (lit), 1200 (whole)")
    parser.add_argument("--text-seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.text_tower != "copy" and args.text_steps is None:
        args.text_steps = 150 if args.text_tower == "lit" else 1200  # make run's recipes
    os.environ["MARBLE_TRACKING"] = "off"
    recipe = DiffusionTrainSpec()
    spec = DiffusionTrainSpec(
        text_encoder=args.text_encoder, unet=args.unet, autoencoder=args.autoencoder,
        train=dataclasses.replace(
            recipe.train, steps=args.steps, val_every=args.every, seed=args.seed,
            ckpt_every=10**9, lr=recipe.train.lr if args.lr is None else args.lr,
        ),
    )  # fmt: skip
    eval_prompts = prompts(args.prompts)
    machine = (
        torch.cuda.get_device_name()
        if torch.cuda.is_available()
        else f"CPU, {torch.get_num_threads()} threads"
    )
    points: list[dict] = []
    clock = {"eval_s": 0.0, "start": 0.0}

    def validate_fn(pipe, step):
        t_eval = time.perf_counter()
        images = []
        for i in range(0, len(eval_prompts), 100):
            batch = eval_prompts[i : i + 100]  # seeds 0..N-1: the same noise at every point
            images.append(to_uint8(pipe.generate(batch, list(range(i, i + len(batch))))))
        images = np.concatenate(images)
        scores = attribute_scores(images, eval_prompts)
        train_s = t_eval - clock["start"] - clock["eval_s"]
        points.append({"step": step, "train_s": round(train_s, 1), **scores})
        print(f"step {step}: {train_s:.0f} s, all correct {scores['all_correct']:.3f}", flush=True)
        clock["eval_s"] += time.perf_counter() - t_eval
        return {}

    text_record = {}
    with tempfile.TemporaryDirectory() as tmp:
        workspace = scratch_workspace(
            Workspace(args.home), Path(tmp) / "home", spec, args.text_tower
        )
        if args.text_tower != "copy":
            text_record = train_text_tower(workspace, spec.text_encoder, args)
        clock["start"] = time.perf_counter()
        train_diffusion(spec, workspace, log=lambda *_: None, validate_fn=validate_fn)
    args.out.mkdir(parents=True, exist_ok=True)
    lr = "" if args.lr is None else f"_lr{args.lr:g}"
    tower = (
        "" if args.text_tower == "copy" else f"_{args.text_tower}{args.text_steps}s{args.text_seed}"
    )
    seed = f"_seed{args.seed}" if args.seed else ""
    path = args.out / f"diffusion_steps_{spec.name}{lr}{tower}{seed}.json"
    record = {"args": {**vars(args), "home": str(args.home), "out": str(args.out)}}
    record |= {"text_tower": text_record} if text_record else {}
    path.write_text(json.dumps(record | {"machine": machine, "points": points}, indent=2))
    print(f"wrote {path}")


def train_text_tower(workspace: Workspace, name: str, args) -> dict:
    """Train the text encoder `name` (a CLIP preset) in the scratch workspace by its recipe:
    LiT on the copied image tower, or both towers; returns its seconds and val retrieval
    figures."""
    lit = args.text_tower == "lit"
    base = ClipTrainSpec(preset=name, image_tower=image_tower_spec().name if lit else "")
    train = dataclasses.replace(base.train, steps=args.text_steps, seed=args.text_seed)
    t0 = time.perf_counter()
    summary = train_clip(dataclasses.replace(base, train=train), workspace, log=lambda *_: None)
    seconds = round(time.perf_counter() - t0, 1)
    print(f"text tower ({args.text_tower}, {args.text_steps} steps): {seconds} s", flush=True)
    return {"seconds": seconds, **{k: v for k, v in summary.items() if k.startswith("val_")}}


if __name__ == "__main__":
    main()
