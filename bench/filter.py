"""Benchmark: filter scoring pairs/s (Parquet read + PNG decode in DataLoader workers + CLIP)
against the CLIP forward pass alone on the same batch size, so input-boundness shows.

    .venv/bin/python bench/filter.py [--n 5000] [--batch 256] [--workers 2]

Uses a randomly initialised clip-tiny (speed does not depend on the weights). Run it on an
otherwise idle machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import tasks  # noqa: E402,F401
from eval.clip_embedder import ClipEmbedder  # noqa: E402
from models.clip import CLIP_PRESETS, build_clip, make_tokenizer  # noqa: E402
from tasks.filter.score import FilterConfig, score_raw_pairs  # noqa: E402
from tasks.shapes.render import FaultRates, ShapesSpec, write_as_raw_shard  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cfg = dataclasses.replace(CLIP_PRESETS["clip-tiny"], image_size=32)
    torch.manual_seed(0)
    model = build_clip(cfg).to(device).eval()
    scorer = ClipEmbedder(model, make_tokenizer(cfg))
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp)
        write_as_raw_shard(
            ShapesSpec(n=args.n, faults=FaultRates.uniform(0)), raw / "00000.parquet"
        )
        t0 = time.perf_counter()
        score_raw_pairs(
            scorer,
            raw,
            FilterConfig(model="marble:bench", batch_size=args.batch, workers=args.workers),
        )
        pipeline = args.n / (time.perf_counter() - t0)
    images = torch.rand(args.batch, 3, 32, 32) * 2 - 1
    captions = ["a large red circle on the left, gray background"] * args.batch
    scorer(images, captions)  # warm-up
    reps = max(1, args.n // args.batch)
    t0 = time.perf_counter()
    for _ in range(reps):
        scorer(images, captions)
    forward = reps * args.batch / (time.perf_counter() - t0)
    where = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"CPU, {torch.get_num_threads()} threads"
    )
    print(f"\nfilter scoring, clip-tiny, batch {args.batch}, {args.workers} workers, {where}")
    print(f"  whole pipeline  {pipeline:8.0f} pairs/s")
    print(
        f"  CLIP forward    {forward:8.0f} pairs/s  (pipeline at {100 * pipeline / forward:.0f} % of it)"
    )
    print(json.dumps({"device": where, "pipeline_pairs_s": pipeline, "forward_pairs_s": forward}))


if __name__ == "__main__":
    main()
