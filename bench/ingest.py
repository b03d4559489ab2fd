"""Benchmark: ingest pairs/s on loopback, marble's ingest vs bare img2dataset, same list.

    .venv/bin/python bench/ingest.py [--n 10000] [--processes 2] [--threads 32]

Both download the same built-in shapes URL list from one local server with the same
img2dataset settings; marble adds vetting, pair_id, incremental bookkeeping and the
atomic swap into data/raw. Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import tasks  # noqa: F401  (offline defaults)
from tasks.ingest.download import IngestConfig, ingest
from tasks.shapes.render import FaultRates, ShapesSpec
from tasks.shapes.server import serve_shapes
from tasks.store.workspace import Workspace


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--threads", type=int, default=32)
    args = parser.parse_args()

    import img2dataset

    spec = ShapesSpec(n=args.n, faults=FaultRates(0, 0, 0, 0, 0))
    results = {}
    with tempfile.TemporaryDirectory() as tmp, serve_shapes(spec, Path(tmp) / "src") as source:
        cfg = IngestConfig(
            url_list=source.url_list,
            processes=args.processes,
            threads=args.threads,
            allowed_hosts=(source.base_url.removeprefix("http://"),),
        )
        t0 = time.perf_counter()
        manifest = ingest(cfg, Workspace(Path(tmp) / "home"), log=lambda *_: None)
        marble_s = time.perf_counter() - t0
        results["marble"] = {"wall_s": marble_s, "pairs_per_s": args.n / marble_s}

        t0 = time.perf_counter()
        img2dataset.download(
            url_list=str(source.url_list),
            input_format="parquet",
            url_col="url",
            caption_col="caption",
            output_format="parquet",
            output_folder=str(Path(tmp) / "bare"),
            image_size=cfg.image_size,
            resize_mode=cfg.resize_mode,
            encode_format="png",
            encode_quality=9,
            processes_count=args.processes,
            thread_count=args.threads,
            number_sample_per_shard=cfg.shard_size,
            timeout=cfg.timeout_s,
            retries=cfg.retries,
            enable_wandb=False,
            extract_exif=False,
            disallowed_header_directives=[],
        )
        bare_s = time.perf_counter() - t0
        results["img2dataset"] = {"wall_s": bare_s, "pairs_per_s": args.n / bare_s}
    assert manifest.total_status_counts == {"success": args.n}, manifest.total_status_counts

    print(
        f"\n{args.n} pairs on loopback, {args.processes} processes x {args.threads} threads, "
        f"{platform.processor() or platform.machine()}"
    )
    for name, r in results.items():
        print(f"  {name:<12} {r['wall_s']:6.1f} s  {r['pairs_per_s']:7.0f} pairs/s")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
