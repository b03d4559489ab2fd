"""How far each attribute word moves the token states a U-Net reads, per text encoder.

For each text encoder of a workspace (clip-tiny, clip-small after `make run`): captions of
one object that differ in one attribute only (its position, colour, shape or size), and
the relative difference of the two captions' token states over their tokens,
||a - b|| / mean(||a||, ||b||), averaged over every pair of values of that attribute and
a few base objects. The U-Net must learn an attribute from that difference; a tower that
moves its states little for a word gives it a weaker signal. Compare encoders on one
attribute (the same captions), not attributes with each other: a word late in the caption
changes fewer states.

    .venv/bin/python bench/attribute_gaps.py --home marble-home [--encoders clip-tiny,clip-small]
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from models.clip import TextConditioner, make_tokenizer  # noqa: E402
from tasks.store.loaders import load_clip  # noqa: E402
from tasks.store.workspace import Workspace  # noqa: E402

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--home", type=Path, required=True)
    parser.add_argument("--encoders", default="clip-tiny,clip-small")
    parser.add_argument("--out", type=Path, default=Path("bench/results/attribute_gaps.json"))
    args = parser.parse_args()
    workspace = Workspace(args.home)
    results = {}
    with torch.no_grad():
        for name in args.encoders.split(","):
            clip_model, clip_cfg = load_clip(workspace, name)
            results[name] = gaps(TextConditioner(clip_model), make_tokenizer(clip_cfg))
            print(name, results[name], flush=True)
    args.out.write_text(json.dumps({"home": str(args.home), "gaps": results}, indent=1) + "\n")


if __name__ == "__main__":
    main()
