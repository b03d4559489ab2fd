"""Which CLIP recipe gives a text tower that tells the built-in shapes apart, per CPU second?

The diffusion models condition on a CLIP text tower's token states; on the built-in data a
tower that cannot tell "circle" from "square" caps what any U-Net can draw. This script
trains CLIP recipes on a workspace's kept pairs and reports, at a few step counts:

- seconds per step (the machine must be otherwise idle),
- `shape_zero_shot`: single-object val images classified among their caption with each of
  the three shape words; the image and text towers together must see the shape,
- `shape_cos`: mean pooled cosine between two captions that differ only in the shape word
  (1.0: the tower cannot tell them apart),
- `token_gap_shape` / `token_gap_colour`: mean L2 distance of the token states the U-Net
  reads, between captions that differ in the shape / in the colour word.

Recipes: `full-p4` (both towers, ViT patch 4: the presets), `full-p8` (patch 8), and
`lit-p4` / `lit-p8`: the text tower alone, trained against the locked image tower of the
matching `full` run at its last step (LiT, Zhai et al. 2022), with image features computed
once.

    python bench/text_tower.py --home marble-home --steps 300,600,1200
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import time
from pathlib import Path

import torch

from eval.attributes import COLOURS, SHAPES, parse_caption
from models.clip import CLIP_PRESETS, build_clip, clip_loss, encode_text_tokens, make_tokenizer
from tasks.store.images import to_float
from tasks.store.pairs import load_split_pairs
from tasks.store.workspace import Workspace
from tasks.train.clip import image_features, lock_image_tower

SHAPE_WORDS = SHAPES
SHAPE_RE = r"\b(" + "|".join(SHAPES) + r")\b"
_COLOURS = list(COLOURS)
COLOUR_SWAP = {c: _COLOURS[(k + 1) % len(_COLOURS)] for k, c in enumerate(_COLOURS)}


def single_object(caption: str) -> str | None:
    """The shape of a one-object caption, else None."""
    objects = parse_caption(caption).objects
    return objects[0].shape if len(objects) == 1 else None


@torch.no_grad()
def probe(model, tokenizer, images, captions) -> dict:
    model.eval()
    idx = [k for k, c in enumerate(captions) if single_object(c)]
    shape = [single_object(captions[k]) for k in idx]
    variants = [[re.sub(SHAPE_RE, s, captions[k]) for s in SHAPE_WORDS] for k in idx]
    image_f = model.encode_image(to_float(images[idx]), normalize=True)  # (N, E)
    text_f = model.encode_text(tokenizer(sum(variants, [])), normalize=True)
    text_f = text_f.view(len(idx), len(SHAPE_WORDS), -1)  # (N, 3, E)
    pred = torch.einsum("ne,nse->ns", image_f, text_f).argmax(1)
    truth = torch.tensor([SHAPE_WORDS.index(s) for s in shape])
    cos = torch.einsum("nse,nte->nst", text_f, text_f)  # (N, 3, 3)
    off = ~torch.eye(len(SHAPE_WORDS), dtype=torch.bool)
    base = [captions[k] for k in idx[:200]]
    colour = [re.sub(r"\b(" + "|".join(COLOUR_SWAP) + r")\b", lambda m: COLOUR_SWAP[m[1]], c)
              for c in base]  # fmt: skip
    other_shape = [v[(SHAPE_WORDS.index(s) + 1) % 3] for v, s in zip(variants, shape, strict=True)][
        :200
    ]

    def token_gap(a: list[str], b: list[str]) -> float:
        ha, mask = encode_text_tokens(model, tokenizer(a))
        hb, _ = encode_text_tokens(model, tokenizer(b))
        return float(((ha - hb).norm(dim=-1) * mask).sum(1).mean())

    model.train()
    return {
        "shape_zero_shot": float((pred == truth).float().mean()),
        "shape_cos": float(cos[:, off].mean()),
        "token_gap_shape": token_gap(base, other_shape),
        "token_gap_colour": token_gap(base, colour),
    }


def run(recipe: str, steps: list[int], data, preset: str, locked=None, seed=0, log=print):
    """Train one recipe to max(steps), probing at each of `steps`; returns (rows, model)."""
    images, captions = data["train"][0], data["train"][1]
    val_images, val_captions = data["val"][0], data["val"][1]
    patch = 8 if recipe.endswith("p8") else 4
    cfg = dataclasses.replace(CLIP_PRESETS[preset], patch_size=patch, image_size=images.shape[1])
    tokenizer = make_tokenizer(cfg)
    tokens = tokenizer(captions)
    torch.manual_seed(seed)
    model = build_clip(cfg)
    if locked is not None:  # LiT: the locked tower's image features, computed once
        lock_image_tower(model, locked)
        features = image_features(model, images, "cpu")
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.1)
    warmup = 50
    g = torch.Generator().manual_seed(seed)
    rows, t_train = [], 0.0
    for step in range(1, max(steps) + 1):
        t0 = time.perf_counter()
        lr = 1e-3 * min(1.0, step / warmup)
        for group in opt.param_groups:
            group["lr"] = lr
        idx = torch.randperm(len(images), generator=g)[:128]
        if locked is None:
            image_f, text_f, scale = model(to_float(images[idx]), tokens[idx])[:3]
        else:
            image_f = features[idx]
            text_f = model.encode_text(tokens[idx], normalize=True)
            scale = model.logit_scale.exp()
        loss = clip_loss(image_f, text_f, scale)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        t_train += time.perf_counter() - t0
        if step in steps:
            row = {"recipe": recipe, "preset": preset, "step": step,
                   "s_per_step": t_train / step, "loss": loss.item()}  # fmt: skip
            row |= probe(model, tokenizer, val_images, val_captions)
            log(json.dumps(row))
            rows.append(row)
    return rows, model


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--home", default="marble-home")
    ap.add_argument("--steps", default="300,600,1200")
    ap.add_argument("--recipes", default="full-p8,lit-p8,full-p4,lit-p4")
    ap.add_argument("--presets", default="clip-tiny")
    ap.add_argument("--out", default="bench/results/text_tower.json")
    args = ap.parse_args()
    torch.set_num_threads(2)
    ws = Workspace.from_env(args.home)
    data = load_split_pairs(ws.pairs, ws.raw)
    steps = [int(s) for s in args.steps.split(",")]
    rows, towers = [], {}
    for preset in args.presets.split(","):
        for recipe in args.recipes.split(","):
            patch = recipe.split("-")[1]
            locked = towers.get(patch) if recipe.startswith("lit") else None
            if recipe.startswith("lit") and locked is None:
                raise SystemExit(f"{recipe} needs full-{patch} first in --recipes")
            out, model = run(recipe, steps, data, preset, locked)
            rows += out
            if recipe.startswith("full"):
                towers[patch] = model
    Path(args.out).write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
