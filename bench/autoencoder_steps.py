"""How many autoencoder steps, at which batch size, before its reconstructions keep a scene?

A diffusion model can draw no better than its autoencoder reconstructs: a reconstruction that
turns a square into a circle caps every U-Net trained on those latents. This script trains
the autoencoder recipe (`AutoencoderTrainSpec`, changed only by the options) on a workspace's
kept pairs and, every `--every` steps, reads back the EMA model's reconstructions of the val
pairs and the first 300 training pairs with the attribute detector (the share with every
attribute right) and measures the val pairs' PSNR. The training clock excludes that check.

The workspace is only read: its data is linked into a temporary workspace, where the
autoencoder trains (MLflow off). The points are those of one run of `--steps`: its learning
rate has not decayed yet at the earlier ones.

    python bench/autoencoder_steps.py --home marble-home --batch 32 --steps 2400 --every 400
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import tempfile
import time
from pathlib import Path

import torch

from eval.detector import attribute_scores
from eval.reconstruction import psnr
from models.autoencoder import AE_PRESETS
from tasks.store.images import to_float, to_uint8
from tasks.store.pairs import load_split_pairs
from tasks.store.workspace import Workspace
from tasks.train.autoencoder import AutoencoderTrainSpec, train_autoencoder

RESULTS = Path(__file__).resolve().parent / "results"
TRAIN_CHECKED = 300  # training pairs read back beside the val split (the U-Net trains on them)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--home", type=Path, required=True, help="a workspace after the filter")
    recipe = AutoencoderTrainSpec()
    trained = [name for name, cfg in AE_PRESETS.items() if not cfg.identity]
    parser.add_argument("--preset", default=recipe.preset, choices=trained)
    parser.add_argument("--steps", type=int, default=recipe.train.steps)
    parser.add_argument("--batch", type=int, default=recipe.train.batch_size)
    parser.add_argument("--lr", type=float, default=recipe.train.lr)
    parser.add_argument("--every", type=int, default=400, help="steps between checks")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    os.environ["MARBLE_TRACKING"] = "off"
    spec = dataclasses.replace(
        recipe, preset=args.preset,
        train=dataclasses.replace(
            recipe.train, steps=args.steps, batch_size=args.batch, lr=args.lr,
            val_every=args.every, seed=args.seed, ckpt_every=10**9,
        ),
    )  # fmt: skip
    source = Workspace(args.home)
    data = load_split_pairs(source.pairs, source.raw)
    x = to_float(torch.cat([data["val"][0], data["train"][0][:TRAIN_CHECKED]]))
    captions = list(data["val"][1]) + list(data["train"][1][:TRAIN_CHECKED])
    n_val = len(data["val"][1])
    points: list[dict] = []
    clock = {"start": 0.0, "check_s": 0.0}

    def check(ema, step):
        started = time.perf_counter()
        with torch.no_grad():
            recon = torch.cat(
                [ema.decode(ema.encode(x[i : i + 256]).mode()) for i in range(0, len(x), 256)]
            )
        read = to_uint8(recon)
        both = attribute_scores(read, captions)
        val = attribute_scores(read[:n_val], captions[:n_val])
        train_s = started - clock["start"] - clock["check_s"]
        points.append({
            "step": step, "train_s": round(train_s, 1), **both,
            "val_all_correct": val["all_correct"], "val_psnr": psnr(recon[:n_val], x[:n_val]),
        })  # fmt: skip
        clock["check_s"] += time.perf_counter() - started
        return {"recon_all_correct": both["all_correct"]}

    with tempfile.TemporaryDirectory() as tmp:
        scratch = Workspace(Path(tmp) / "home")
        scratch.root.mkdir(parents=True)
        (scratch.root / "data").symlink_to(source.root.resolve() / "data")
        clock["start"] = time.perf_counter()
        train_autoencoder(spec, scratch, log=lambda *_: None, validate_fn=check)
    for point in points:
        print(f"step {point['step']}: {point['train_s']:.0f} s, val PSNR {point['val_psnr']:.2f} "
              f"dB, reconstructions all correct {point['all_correct']:.3f}")  # fmt: skip
    machine = f"CPU, {torch.get_num_threads()} threads"
    args.out.mkdir(parents=True, exist_ok=True)
    name = f"autoencoder_steps_{spec.name}_b{args.batch}_lr{args.lr:g}_s{args.steps}.json"
    path = args.out / name
    record = {"args": {**vars(args), "home": str(args.home), "out": str(args.out)}}
    path.write_text(json.dumps(record | {"machine": machine, "points": points}, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
