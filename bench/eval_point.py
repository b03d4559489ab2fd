"""What one evaluation point of `make run` costs: `make run`'s grid (clip-tiny, clip-small x
unet-xs, unet-s) and its sweep (N = 100 held-out prompts, guidance 1 and 4, DDIM 25, 50
bootstrap replicates, the standard FID weights), with training cut to 3 steps a stage: a
point's cost is its models' sizes and the sweep's settings, not how well they were trained.

    python bench/eval_point.py                       # about 6 minutes on 2 cores
    PYTHONPATH=/path/to/old/checkout python bench/eval_point.py --label before

Each point's seconds are read from the sweep's log ("evaluate <point>: ..., S s": sampling,
the FID Inception and judge features, every distance and the bootstrap; not the Parquet and
MLflow writes). Run it at two commits one after the other on the same idle machine to
compare them. Adds the run under `--label` to bench/results/eval_point.json (or --out).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
POINT = re.compile(r"evaluate (\S+@[\d.]+): fid .*, (\d+) s$")


def run(code: Path, home: Path) -> tuple[dict[str, int], float]:
    """`marble run` of the checkout `code` with tiny training and make run's sweep: seconds
    per point, and the wall seconds of the whole run."""
    argv = [
        sys.executable, "-m", "flows.cli", "--home", str(home), "run", "--n", "500",
        "--autoencoder-steps", "3", "--image-tower-steps", "3", "--clip-steps", "3",
        "--diffusion-steps", "3",
    ]  # fmt: skip
    t0 = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, check=False, cwd=code)
    wall = time.perf_counter() - t0
    out = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise SystemExit(f"marble run failed ({proc.returncode}):\n{out[-3000:]}")
    return {m[1]: int(m[2]) for m in map(POINT.search, out.splitlines()) if m}, wall


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=RESULTS / "eval_point.json")
    parser.add_argument("--label", default="latest", help="the key of this run in --out")
    args = parser.parse_args()
    import flows  # the checkout on PYTHONPATH, if one is given, else this one

    code = Path(flows.__file__).resolve().parent.parent
    commit = subprocess.run(
        ["git", "-C", str(code), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    with tempfile.TemporaryDirectory(prefix="eval-point-") as tmp:
        points, wall = run(code, Path(tmp) / "home")
    if len(points) != 8:
        raise SystemExit(f"expected 8 evaluated points, the log has {len(points)}: {points}")
    result = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "code": str(code),
        "commit": commit,
        "points_s": points,
        "median_s": statistics.median(points.values()),
        "run_s": round(wall),
    }
    runs = json.loads(args.out.read_text()) if args.out.exists() else {}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(runs | {args.label: result}, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
