"""Compare two `bench/time_to_quality.py --seeds ... --steps N` results, recipe against
recipe: the all-correct rate at every evaluated step, per seed, and the mean paired
difference (after - before) with a 95 % t-interval over the seeds. The same seed means the
same initialisation, data order and noise in both runs, so the spread of the paired
difference over seeds covers the training spread; the 200 prompts and their sampling seeds
are the same in both.

    .venv/bin/python bench/ttq_compare.py BEFORE.json AFTER.json [--out table.md]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path

from scipy import stats


def curves(path: Path) -> dict[tuple[str, int], dict[int, dict]]:
    """(space, seed) -> step -> point, from one result file."""
    runs = json.loads(path.read_text())["runs"]
    return {(r["space"], r["seed"]): {p["step"]: p for p in r["points"]} for r in runs}


def paired_interval(diffs: list[float], level: float = 0.95) -> tuple[float, float, float]:
    """Mean of the paired differences and its t-interval (n - 1 degrees of freedom)."""
    mean = statistics.fmean(diffs)
    if len(diffs) < 2:
        return mean, math.nan, math.nan
    half = stats.t.ppf(0.5 + level / 2, len(diffs) - 1) * statistics.stdev(diffs)
    half /= math.sqrt(len(diffs))
    return mean, mean - half, mean + half


def table(before: Path, after: Path) -> str:
    b, a = curves(before), curves(after)
    keys = sorted(set(b) & set(a))
    if not keys:
        raise SystemExit(f"{before} and {after} share no (space, seed) run")
    lines = []
    for space in sorted({k[0] for k in keys}):
        seeds = [k[1] for k in keys if k[0] == space]
        steps = sorted(set.intersection(*(set(b[(space, s)]) & set(a[(space, s)]) for s in seeds)))
        head = " | ".join(f"seed {s}" for s in seeds)
        lines += [
            f"{space}: all attributes correct, before → after (points)",
            "",
            f"| step | {head} | mean after − before, 95 % interval over seeds |",
            "| --- |" + " --- |" * (len(seeds) + 1),
        ]
        for step in steps:
            cells, diffs = [], []
            for s in seeds:
                x, y = b[(space, s)][step]["all_correct"], a[(space, s)][step]["all_correct"]
                cells.append(f"{100 * x:.1f} → {100 * y:.1f}")
                diffs.append(100 * (y - x))
            mean, lo, hi = paired_interval(diffs)
            verdict = "" if lo <= 0 <= hi or math.isnan(lo) else " (resolved)"
            lines.append(
                f"| {step} | "
                + " | ".join(cells)
                + f" | {mean:+.1f} [{lo:+.1f}, {hi:+.1f}]{verdict} |"
            )
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    parser.add_argument("--out", type=Path, help="also write the table here")
    args = parser.parse_args()
    text = table(args.before, args.after)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
