"""How far each attribute word moves the token states a U-Net reads, per text encoder.

For each text encoder of a workspace (clip-tiny, clip-small after `make run`): captions of
one object that differ in one attribute only (its position, colour, shape or size), and
the relative difference of the two captions' token states over their tokens,
||a - b|| / mean(||a||, ||b||), averaged over every pair of values of that attribute and
a few base objects. The U-Net must learn an attribute from that difference; a tower that
moves its states little for a word gives it a weaker signal. Compare encoders on one
attribute (the same captions), not attributes with each other: a word late in the caption
changes fewer states.

With `--seeds` (and `--steps`) each encoder's text tower is also trained again by its LiT
recipe against the workspace's image tower, at each seed, in a scratch workspace (the
workspace is only read): how much of a gap is the tower's draw.

    .venv/bin/python bench/attribute_gaps.py --home marble-home [--encoders clip-tiny,clip-small]
        [--seeds 1,2] [--steps 150]
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from models.clip import TextConditioner, make_tokenizer  # noqa: E402
from tasks.store.loaders import load_clip  # noqa: E402
from tasks.store.workspace import Workspace  # noqa: E402
from tasks.train.clip import ClipTrainSpec, image_tower_spec, train_clip  # noqa: E402
from tasks.train.diffusion import DiffusionTrainSpec  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from diffusion_steps import scratch_workspace  # noqa: E402

VALUES = {
    "position": ["at the top", "at the bottom", "in the centre", "on the left", "on the right"],
    "colour": ["red", "blue", "green", "yellow", "purple"],
    "shape": ["circle", "square", "triangle"],
    "size": ["small", "large"],
}
BASES = [  # (size, colour, shape, position, background)
    ("small", "red", "circle", "at the top", "gray"),
    ("large", "blue", "square", "on the left", "black"),
    ("small", "green", "triangle", "in the centre", "white"),
]


def caption(size: str, colour: str, shape: str, position: str, background: str) -> str:
    return f"a {size} {colour} {shape} {position}, {background} background"


def relative_gap(text: TextConditioner, tokenizer, a: str, b: str) -> float:
    context, mask = text(tokenizer([a, b]))
    if mask[0].sum() != mask[1].sum():
        raise ValueError(f"captions of different token lengths: {a!r}, {b!r}")
    x, y = context[0, mask[0]], context[1, mask[1]]
    return float((x - y).norm() / (0.5 * (x.norm() + y.norm())))


def gaps(text: TextConditioner, tokenizer) -> dict[str, float]:
    out = {}
    for attribute, values in VALUES.items():
        slot = ("size", "colour", "shape", "position").index(attribute)
        found = []
        for base in BASES:
            variants = [caption(*base[:slot], value, *base[slot + 1 :]) for value in values]
            found += [
                relative_gap(text, tokenizer, a, b) for a, b in itertools.combinations(variants, 2)
            ]
        out[attribute] = round(sum(found) / len(found), 4)
    return out


def encoder_gaps(workspace: Workspace, name: str) -> dict[str, float]:
    clip_model, clip_cfg = load_clip(workspace, name)
    with torch.no_grad():
        return gaps(TextConditioner(clip_model), make_tokenizer(clip_cfg))


def retrained_gaps(source: Workspace, name: str, seed: int, steps: int) -> dict[str, float]:
    """The gaps of `name`'s text tower trained again by its LiT recipe at `seed`."""
    with tempfile.TemporaryDirectory() as tmp:
        spec = DiffusionTrainSpec(text_encoder=name)
        scratch = scratch_workspace(source, Path(tmp) / "home", spec, "lit")
        base = ClipTrainSpec(preset=name, image_tower=image_tower_spec().name)
        train = dataclasses.replace(base.train, steps=steps, seed=seed)
        train_clip(dataclasses.replace(base, train=train), scratch, log=lambda *_: None)
        return encoder_gaps(scratch, name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--home", type=Path, required=True)
    parser.add_argument("--encoders", default="clip-tiny,clip-small")
    parser.add_argument("--seeds", default="", help="LiT towers to train again, e.g. 1,2")
    parser.add_argument("--steps", type=int, default=150, help="their steps (make run's: 150)")
    parser.add_argument("--out", type=Path, default=Path("bench/results/attribute_gaps.json"))
    args = parser.parse_args()
    os.environ.setdefault("MARBLE_TRACKING", "off")  # the retrained towers are not models
    workspace = Workspace(args.home)
    results = {}
    for name in args.encoders.split(","):
        results[name] = encoder_gaps(workspace, name)
        print(name, results[name], flush=True)
        for seed in [int(s) for s in args.seeds.split(",") if s]:
            key = f"{name} LiT seed {seed}, {args.steps} steps"
            results[key] = retrained_gaps(workspace, name, seed, args.steps)
            print(key, results[key], flush=True)
    args.out.write_text(json.dumps({"home": str(args.home), "gaps": results}, indent=1) + "\n")


if __name__ == "__main__":
    main()
