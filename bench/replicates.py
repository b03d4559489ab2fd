"""Does a sweep's verdict survive a retrain? Two text encoders x unet-xs at `make run`'s recipe,
each grid point trained K times, evaluated at N samples per point (guidance 4, the standard
FID weights), the verdict drawn from replicates {0, ..., K-1}, then again from K other
replicates: the two verdicts agree when both resolve the same sign or neither resolves.

Each half is one `marble run` on the bench's own workspace, so stage skipping lets the
script stop and go on across sessions: the data, filter, autoencoder and image tower are
made once; a replicate trained before is skipped; a point evaluated before is skipped.

    python bench/replicates.py --home bench-home/replicates      # about 90 min on 2 cores

Writes bench/results/replicates.json: per half, the variance components (between trainings,
within sampling and its part shared by every replicate), the verdict and the detectable
effect of each metric; the floors; whether the halves agree; and the verdicts from all 2K
replicates together. `--report-only` draws the
verdicts again from the rows already there (after a change to the estimator) and keeps the
recorded run times.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pyarrow.parquet as pq

from tasks.evaluate.report import summary_lines
from tasks.store.tracking import code_version
from tasks.store.workspace import Workspace

RESULTS = Path(__file__).resolve().parent / "results"
TEXT_ENCODERS = "clip-tiny,clip-small"


def run_half(home: Path, first: int, k: int, n: int) -> float:
    """`marble run` for replicates first .. first + k - 1; the seconds it took."""
    argv = [
        sys.executable, "-m", "flows.cli", "--home", str(home), "run",
        "--text-encoders", TEXT_ENCODERS, "--unets", "unet-xs",
        "--replicates", str(k), "--first-replicate", str(first),
        "--num-samples", str(n), "--guidance-scales", "4", "--bootstrap", "100",
    ]  # fmt: skip
    t0 = time.perf_counter()
    subprocess.run(argv, check=True)
    return time.perf_counter() - t0


def latest_rows(workspace: Workspace, n: int) -> list[dict]:
    """Every point row at N = n (the latest of each model, guidance and metric) and the
    latest floor rows at that N."""
    rows = [r for p in sorted(workspace.evaluations.glob("*.parquet"))
            for r in pq.read_table(p).to_pylist()]  # fmt: skip
    keep: dict[tuple, dict] = {}
    for row in sorted(rows, key=lambda r: r["timestamp"]):
        if row.get("n") == n and (row.get("guidance_scale") is not None or row["model"] == "floor"):
            keep[(row["model"], row.get("guidance_scale"), row["metric"])] = row
    return list(keep.values())


def half_report(rows: list[dict], replicates: range) -> dict:
    mine = [r for r in rows if r["model"] == "floor" or int(r.get("replicate") or 0) in replicates]
    lines, found = summary_lines(mine)
    return {
        "replicates": list(replicates),
        "verdicts": [
            {
                k: v[k]
                for k in (
                    "axis",
                    "metric",
                    "change",
                    "ci_low",
                    "ci_high",
                    "k",
                    "n",
                    "var_between",
                    "var_within",
                    "var_shared",
                    "resolved",
                    "better",
                    "detectable",
                )
                if k in v
            }  # fmt: skip
            for v in found["verdicts"]
        ],
        "floors": found["floors"],
        "lines": lines,
    }


def agree(a: dict, b: dict) -> dict[str, bool]:
    """Per metric: both resolved with the same sign, or both not resolved."""
    out = {}
    for va in a["verdicts"]:
        vb = next(
            v for v in b["verdicts"] if (v["axis"], v["metric"]) == (va["axis"], va["metric"])
        )
        same = (va["resolved"] == vb["resolved"]) and (
            not va["resolved"] or (va["change"] > 0) == (vb["change"] > 0)
        )
        out[f"{va['axis']}/{va['metric']}"] = same
    return out


def bench_arguments(name: str, k_help: str) -> argparse.Namespace:
    """The options of a replicate bench (this one, data_axis.py): its workspace, K, N, and
    --report-only (no runs: the verdicts again from the rows the workspace holds)."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--home", type=Path, default=Path(f"bench-home/{name}"))
    parser.add_argument("-k", type=int, default=3, help=k_help)
    parser.add_argument("-n", type=int, default=500, help="samples per point")
    parser.add_argument(
        "--report-only", action="store_true",
        help="no runs: the verdicts again from the rows the workspace holds (run_s kept)",
    )  # fmt: skip
    return parser.parse_args()


def main() -> None:
    args = bench_arguments("replicates", "replicates per half")
    if args.report_only:
        seconds = json.loads((RESULTS / "replicates.json").read_text())["run_s"]
    else:
        seconds = [run_half(args.home, 0, args.k, args.n),
                   run_half(args.home, args.k, args.k, args.n)]  # fmt: skip
    rows = latest_rows(Workspace.from_env(args.home), args.n)
    halves = [half_report(rows, range(0, args.k)), half_report(rows, range(args.k, 2 * args.k))]
    pooled = half_report(rows, range(0, 2 * args.k))  # every replicate: the narrowest verdict
    result = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "commit": code_version(),
        "grid": f"{TEXT_ENCODERS} x unet-xs, make run's recipe",
        "k": args.k,
        "n": args.n,
        "guidance": 4.0,
        "run_s": [round(s) for s in seconds],
        "halves": halves,
        "agree": agree(*halves),
        "pooled": pooled,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "replicates.json").write_text(json.dumps(result, indent=2) + "\n")
    for half in halves:
        print(f"replicates {half['replicates']}:")
        print("\n".join(half["lines"]))
    print("agree:", json.dumps(result["agree"]))
    print(f"all {2 * args.k} replicates:")
    print("\n".join(pooled["lines"]))


if __name__ == "__main__":
    main()
