"""Does the filter pay? clip-tiny x unet-xs at `make run`'s recipe trained on the filter's kept
pairs and on every pair (`--data-variants kept,all`), K training seeds each, evaluated at N
samples per point at guidance 4 with the standard FID weights; the data axis's verdict on
each metric, with the per-replicate differences and the effect the run could detect.

One `marble run` on the bench's own workspace, so stage skipping lets it stop and go on: the
data, filter, autoencoder, image tower and text encoders are shared by both variants; a
model trained before is skipped; a point evaluated before is skipped.

    python bench/data_axis.py --home bench-home/data_axis      # about 45 min on 2 cores

Writes bench/results/data_axis.json: the training sets (size, digest, and on the built-in
truth the share of right captions, precision, and of right-caption pairs held, recall),
each metric's verdict (difference kept - all, interval, variance components, detectable
effect), the per-replicate differences, the floors and the summary's lines.
`--report-only` draws the verdicts again from the rows already there.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from tasks.evaluate.report import by_grid_point, summary_lines
from tasks.evaluate.spec import VERDICT_METRICS
from tasks.store.pairs import describe_training_set
from tasks.store.tracking import code_version
from tasks.store.workspace import Workspace

sys.path.insert(0, str(Path(__file__).resolve().parent))
from replicates import bench_arguments, latest_rows  # noqa: E402  (the bench scripts share their readers)

RESULTS = Path(__file__).resolve().parent / "results"
VARIANTS = ("kept", "all")
GRID_POINT = "clip-tiny_unet-xs_kl-f4"  # its `all` twin: GRID_POINT + "_all"
KEYS = ("metric", "change", "ci_low", "ci_high", "k", "n", "var_between", "var_within",
        "var_shared", "resolved", "better", "detectable", "detectable_at_least")  # fmt: skip


def run(home: Path, k: int, n: int) -> float:
    """`marble run` of the two-variant grid; the seconds it took."""
    argv = [
        sys.executable, "-m", "flows.cli", "--home", str(home), "run",
        "--text-encoders", "clip-tiny", "--unets", "unet-xs",
        "--data-variants", ",".join(VARIANTS), "--replicates", str(k),
        "--num-samples", str(n), "--guidance-scales", "4", "--bootstrap", "100",
    ]  # fmt: skip
    t0 = time.perf_counter()
    subprocess.run(argv, check=True)
    return time.perf_counter() - t0


def main() -> None:
    args = bench_arguments("data_axis", "training seeds per variant")
    out = RESULTS / "data_axis.json"
    seconds = (
        json.loads(out.read_text())["run_s"] if args.report_only else run(args.home, args.k, args.n)
    )
    workspace = Workspace.from_env(args.home)
    rows = latest_rows(workspace, args.n)
    lines, found = summary_lines(rows)
    verdicts = [{k: v[k] for k in KEYS if k in v} for v in found["verdicts"]
                if v["axis"] == "data_variant"]  # fmt: skip
    points = by_grid_point(rows)
    kept, every = points[GRID_POINT][4.0], points[f"{GRID_POINT}_all"][4.0]
    differences = {  # per training seed: kept - all
        m: {r: kept[m][r]["value"] - every[m][r]["value"] for r in sorted(set(kept[m]) & set(every[m]))}
        for m in VERDICT_METRICS if m in kept and m in every
    }  # fmt: skip
    result = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "commit": code_version(),
        "grid": "clip-tiny x unet-xs, make run's recipe, data variants kept and all",
        "k": args.k,
        "n": args.n,
        "guidance": 4.0,
        "run_s": round(seconds),
        "training_sets": {v: describe_training_set(workspace, v) for v in VARIANTS},
        "verdicts": verdicts,
        "per_replicate_differences": differences,
        "floors": found["floors"],
        "lines": lines,
    }
    RESULTS.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
