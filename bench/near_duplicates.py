"""Where to put the near-duplicate line: thumbnail PSNR (tasks/store/content.py) of copies of
the built-in images (JPEG re-encodes, resized by a pixel and back) against other pictures,
and what the grouping does to the built-in data at the chosen threshold.

    .venv/bin/python bench/near_duplicates.py [--n 5000] [--every 10] [--out bench/results/near_duplicates.json]

Copies are made of every `--every`-th image; "other pictures" are every pair of distinct
images of the data set. Prints a table and writes the figures as JSON.
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import subprocess
import time
from pathlib import Path

import numpy as np
from PIL import Image

from tasks.shapes.render import ShapesSpec, build_table, render_scene
from tasks.store.content import NEAR_PSNR_DB, fingerprint, near_pairs, plan_content, psnr_db


def _jpeg(rgb: np.ndarray, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=quality)
    return np.array(Image.open(buf).convert("RGB"))


def _resized(rgb: np.ndarray, side: int) -> np.ndarray:
    h = rgb.shape[0]
    image = Image.fromarray(rgb).resize((side, side), Image.BICUBIC)
    return np.array(image.resize((h, h), Image.LANCZOS))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--every", type=int, default=10)
    ap.add_argument("--out", default="bench/results/near_duplicates.json")
    args = ap.parse_args()
    table = build_table(ShapesSpec(n=args.n))
    images = [render_scene(s, 32, 0, i) for i, s in enumerate(table.scenes)]
    t0 = time.perf_counter()
    fp = fingerprint(images)
    fingerprint_s = time.perf_counter() - t0
    idx = list(range(0, args.n, args.every))
    copies = {f"jpeg q{q}": lambda x, q=q: _jpeg(x, q) for q in (95, 90, 85, 80, 75)}
    copies |= {f"resized to {s} and back": lambda x, s=s: _resized(x, s) for s in (31, 33, 64)}
    rows = {}
    for name, make in copies.items():
        psnr = psnr_db(fp.thumbs[idx], fingerprint(make(images[i]) for i in idx).thumbs)
        rows[name] = {
            "min_db": round(float(psnr.min()), 1),
            "caught": float((psnr >= NEAR_PSNR_DB).mean()),
        }
    t0 = time.perf_counter()
    plan = plan_content([str(i) for i in range(args.n)], table.captions, fp)
    plan_s = time.perf_counter() - t0
    near = near_pairs(fp)
    same_scene = [table.scenes[i] == table.scenes[j] for i, j in near if i != j]
    sizes: dict[str, int] = {}
    for g in plan.group:
        sizes[g] = sizes.get(g, 0) + 1
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    result = {
        "date": time.strftime("%Y-%m-%d"), "machine": platform.processor() or platform.machine(),
        "commit": commit.stdout.strip(), "n": args.n, "threshold_db": NEAR_PSNR_DB,
        "copies": rows, "near_pairs_of_distinct_images": len(near),
        "of_which_same_scene": round(float(np.mean(same_scene)), 3) if same_scene else None,
        "groups": plan.counts(), "largest_group": max(sizes.values()),
        "val_share": round(plan.split.count("val") / args.n, 4),
        "fingerprint_s": round(fingerprint_s, 2), "plan_s": round(plan_s, 2),
    }  # fmt: skip
    for name, row in rows.items():
        print(f"{name:24s} min {row['min_db']:5.1f} dB, caught {row['caught']:.1%}")
    print(json.dumps({k: v for k, v in result.items() if k != "copies"}))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
