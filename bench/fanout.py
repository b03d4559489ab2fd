"""Benchmark: what fan-out on Dask costs on one machine. Filter scoring (pairs/s) and the
sweep's grid points (points/min), sequential against Prefect's Dask task runner with a
LocalCluster of N worker processes, on the same workspace.

    .venv/bin/python bench/fanout.py [--shards 4] [--pairs 1000] [--samples 32] [--workers 2]

Each stage is timed twice: the whole flow, and the fanned-out part alone (the score-shard /
evaluate-point tasks, which on Dask includes starting and stopping the cluster and loading
the models in each worker). Small from-scratch models (clip-tiny, unet-xs and unet-s, a few
steps) stand in for trained ones: speed does not depend on the weights. Prefect runs on one
temporary server for the whole benchmark. Run it on an otherwise idle machine; it prints a
JSON line at the end and writes it to bench/results/fanout.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import tasks  # noqa: E402,F401  (telemetry off before Prefect is imported)
from flows import fanout  # noqa: E402
from flows.fanout import FanOutParams  # noqa: E402
from flows.params import EvaluateParams, FilterParams  # noqa: E402
from tasks.shapes.render import FaultRates, ShapesSpec, write_as_raw_shard  # noqa: E402
from tasks.store.workspace import Workspace  # noqa: E402
from tasks.train.trainer import TrainConfig  # noqa: E402

FILTER_MODEL = "marble:clip-tiny"


def few_steps(steps: int) -> TrainConfig:
    return TrainConfig(steps=steps, batch_size=16, lr=1e-3, warmup_images=16, log_every=10)


def build_workspace(root: Path, shards: int, pairs: int) -> Workspace:
    """Raw shards of built-in pairs, a filter CLIP, kept pairs, an autoencoder and two
    diffusion models (untimed)."""
    from tasks.filter.score import FilterConfig, filter_pairs
    from tasks.train.autoencoder import AutoencoderTrainSpec, train_autoencoder
    from tasks.train.clip import ClipTrainSpec, train_clip
    from tasks.train.diffusion import DiffusionTrainSpec, train_diffusion

    workspace = Workspace(root)
    workspace.raw.mkdir(parents=True)
    for seed in range(shards):
        spec = ShapesSpec(n=pairs, seed=seed, faults=FaultRates.uniform(0))
        write_as_raw_shard(spec, workspace.raw / f"{seed:05d}.parquet")
    quiet = contextlib.redirect_stdout(open(os.devnull, "w"))  # noqa: SIM115
    with quiet, contextlib.redirect_stderr(sys.stdout):
        train_clip(ClipTrainSpec(train=few_steps(10)), workspace)
        cfg = FilterConfig(model=FILTER_MODEL, workers=0, keep="top_fraction", top_fraction=0.9)
        filter_pairs(cfg, workspace, log=lambda *_: None)
        train_autoencoder(AutoencoderTrainSpec(train=few_steps(10)), workspace)
        for unet in ("unet-xs", "unet-s"):
            spec = DiffusionTrainSpec(text_encoder="clip-tiny", unet=unet, train=few_steps(5))
            train_diffusion(spec, workspace)
    shutil.rmtree(workspace.scores)  # so that the timed filter scores again (same result)
    return workspace


class StageClock:
    """Wall time of every fan_out call (the fanned-out tasks, cluster start included)."""

    def __init__(self):
        self.seconds: list[float] = []
        self._fan_out = fanout.fan_out

    def __enter__(self):
        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return self._fan_out(*args, **kwargs)
            finally:
                self.seconds.append(time.perf_counter() - t0)

        fanout.fan_out = timed
        return self

    def __exit__(self, *exc):
        fanout.fan_out = self._fan_out


def timed_flow(run) -> tuple[float, float, object]:
    """(whole flow s, fanned-out part s, result) of run()."""
    with StageClock() as clock:
        t0 = time.perf_counter()
        result = run()
        total = time.perf_counter() - t0
    return total, sum(clock.seconds), result


def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}"


def commit() -> str:
    result = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    )
    return result.stdout.strip() or "unknown"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--pairs", type=int, default=1000, help="pairs per raw shard")
    parser.add_argument("--samples", type=int, default=32, help="images per sweep point")
    parser.add_argument("--workers", type=int, default=2, help="Dask worker processes")
    args = parser.parse_args()

    from prefect.testing.utilities import prefect_test_harness

    from flows.evaluate import evaluate_flow
    from flows.filter import filter_flow

    runners = {
        "sequential": FanOutParams(),
        "dask": FanOutParams(task_runner="dask", dask_workers=args.workers),
    }
    filter_params = FilterParams(model=FILTER_MODEL, keep="top_fraction", top_fraction=0.9)
    sweep_params = EvaluateParams(
        judge="marble:judge-clip-tiny", judge_steps=10, guidance_scales=[1.0, 3.0], num_samples=args.samples,
        prompt_set="val", bootstrap=20, batch_size=32, num_inference_steps=10,
    )  # fmt: skip
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp, prefect_test_harness(server_startup_timeout=120):
        base = build_workspace(Path(tmp) / "base", args.shards, args.pairs)
        for name, fan in runners.items():
            home = Path(tmp) / name
            shutil.copytree(base.root, home)
            total, stage, summary = timed_flow(
                lambda home=home, fan=fan: filter_flow(filter_params, str(home), fan)
            )
            scored = summary["scored"]
            points = 4  # 2 models x 2 guidance scales
            sweep_total, sweep_stage, _ = timed_flow(
                lambda home=home, fan=fan: evaluate_flow(sweep_params, str(home), fan)
            )
            results[name] = {
                "filter_pairs": scored,
                "filter_flow_s": round(total, 1),
                "filter_shards_s": round(stage, 1),
                "filter_pairs_per_s": round(scored / stage, 1),
                "sweep_points": points,
                "sweep_flow_s": round(sweep_total, 1),
                "sweep_points_s": round(sweep_stage, 1),
                "sweep_points_per_min": round(points / sweep_stage * 60, 2),
            }
    record = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine(),
        "commit": commit(),
        "shards": args.shards,
        "pairs_per_shard": args.pairs,
        "samples_per_point": args.samples,
        "dask_workers": args.workers,
        "results": results,
    }
    print(f"\nfan-out on {record['machine']} ({record['date']}, commit {record['commit']})")
    print(
        f"{'':12} {'filter pairs/s':>15} {'(stage s)':>10} {'sweep points/min':>17} {'(stage s)':>10}"
    )
    for name, r in results.items():
        print(
            f"{name:12} {r['filter_pairs_per_s']:>15} {r['filter_shards_s']:>10} "
            f"{r['sweep_points_per_min']:>17} {r['sweep_points_s']:>10}"
        )
    out = ROOT / "bench" / "results" / "fanout.json"
    out.write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps(record))


if __name__ == "__main__":
    main()
