"""What a sweep found: the size-step summary (and the Pareto plot, evaluate/pareto.py).

Size steps: two models that differ only in one axis (text encoder, U-Net, or autoencoder
decoder), one preset apart. At matched guidance, the change in each metric from the smaller
to the larger is read off the paired bootstrap replicates (every point of a sweep uses the
same resamples of the same prompts and seeds), so its interval is the interval of the
difference itself. At matched CLIP score, each curve's FID is interpolated along guidance at
the CLIP scores both curves reach (no interval). The axis whose step lowers FID most wins
(or, where no step lowers it, the summary says so); each step's line says whether its
interval excludes zero.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from eval.bootstrap import centred_interval

AXES = {
    "text_encoder": ("clip-tiny", "clip-small", "clip-base"),
    "unet": ("unet-xs", "unet-s", "unet-m", "unet-l"),
    "autoencoder": ("kl-f4-dec-s", "kl-f4", "kl-f4-dec-l"),
}
DISTANCES = ("fid", "fd_clip")


def _is_point(row: dict) -> bool:
    """A generated (model, guidance) point, not a reference or reconstruction row."""
    return row.get("guidance_scale") is not None


def points_by_model(rows: list[dict]) -> dict[str, dict[float, dict[str, dict]]]:
    """model -> guidance -> metric -> row, for the generated points."""
    out: dict = defaultdict(lambda: defaultdict(dict))
    for row in rows:
        if _is_point(row):
            out[row["model"]][row["guidance_scale"]][row["metric"]] = row
    return out


def size_steps(rows: list[dict]) -> list[dict]:
    """Every pair of models one preset apart on one axis, equal on the others."""
    meta = {r["model"]: {a: r[a] for a in AXES} for r in rows if _is_point(r)}
    steps = []
    for small, a in meta.items():
        for large, b in meta.items():
            for axis, order in AXES.items():
                others = all(a[o] == b[o] for o in AXES if o != axis)
                if others and a[axis] in order and b[axis] in order:
                    if order.index(b[axis]) == order.index(a[axis]) + 1:
                        steps.append({"axis": axis, "small": small, "large": large,
                                      "from": a[axis], "to": b[axis]})  # fmt: skip
    return steps


def step_effects(rows: list[dict]) -> list[dict]:
    """Per size step and matched guidance: the change in each metric with its interval."""
    points = points_by_model(rows)
    effects = []
    for step in size_steps(rows):
        small, large = points[step["small"]], points[step["large"]]
        for guidance in sorted(set(small) & set(large)):
            for metric in (*DISTANCES, "clip_score"):
                a, b = small[guidance].get(metric), large[guidance].get(metric)
                if a is None or b is None:
                    continue
                diff = np.asarray(b["replicates"]) - np.asarray(a["replicates"])
                low, high = centred_interval(b["value"] - a["value"], diff)
                effects.append(step | {"guidance_scale": guidance, "metric": metric,
                                       "change": b["value"] - a["value"], "ci_low": low,
                                       "ci_high": high})  # fmt: skip
    return effects


def matched_clip_score(
    rows: list[dict], small: str, large: str, metric: str = "fid"
) -> float | None:
    """Mean change in `metric` from `small` to `large` where both curves reach the same CLIP
    scores (interpolated along guidance); None when the curves do not overlap."""
    points = points_by_model(rows)

    def curve(model):
        pts = sorted(
            (g[("clip_score")]["value"], g[metric]["value"]) for g in points[model].values()
        )
        return np.array([p[0] for p in pts]), np.array([p[1] for p in pts])

    (xa, ya), (xb, yb) = curve(small), curve(large)
    low, high = max(xa.min(), xb.min()), min(xa.max(), xb.max())
    if low >= high:
        return None
    grid = np.linspace(low, high, 9)
    return float(np.mean(np.interp(grid, xb, yb) - np.interp(grid, xa, ya)))


def summary_lines(rows: list[dict]) -> tuple[list[str], dict]:
    effects = step_effects(rows)
    lines, by_axis = [], {}
    for axis in AXES:
        fid = [e for e in effects if e["axis"] == axis and e["metric"] == "fid"]
        if not fid:
            continue
        mean = float(np.mean([e["change"] for e in fid]))
        significant = sum(e["ci_high"] < 0 or e["ci_low"] > 0 for e in fid)
        by_axis[axis] = mean
        lines.append(
            f"{axis} one size up: FID {mean:+.2f} on average over {len(fid)} matched-guidance "
            f"comparisons ({significant} with an interval that excludes 0)"
        )
        for e in fid:
            clip = next(
                c
                for c in effects
                if c["metric"] == "clip_score"
                and c["small"] == e["small"]
                and c["large"] == e["large"]
                and c["guidance_scale"] == e["guidance_scale"]
            )
            lines.append(
                f"  {e['from']} -> {e['to']} ({e['small']} -> {e['large']}), guidance "
                f"{e['guidance_scale']:g}: FID {e['change']:+.2f} [{e['ci_low']:+.2f}, "
                f"{e['ci_high']:+.2f}], CLIP score {clip['change']:+.2f} "
                f"[{clip['ci_low']:+.2f}, {clip['ci_high']:+.2f}]"
            )
        for small, large in dict.fromkeys((e["small"], e["large"]) for e in fid):
            matched = matched_clip_score(rows, small, large)
            reach = "curves do not overlap" if matched is None else f"FID {matched:+.2f}"
            lines.append(
                f"  {small} -> {large} at matched CLIP score: {reach} (interpolated, no interval)"
            )
    for r in rows:
        if r["metric"] == "rfid":
            psnr = next(p for p in rows if p["model"] == r["model"] and p["metric"] == "psnr")
            lines.append(
                f"{r['model']} reconstructions: rFID {r['value']:.2f} [{r['ci_low']:.2f}, "
                f"{r['ci_high']:.2f}], PSNR {psnr['value']:.1f} dB"
            )
    if by_axis:
        winner = min(by_axis, key=by_axis.get)
        if by_axis[winner] < 0:
            lines.append(f"largest FID reduction per size step: {winner} ({by_axis[winner]:+.2f})")
        else:
            lines.append(
                f"no size step lowered FID on average (smallest rise: {winner}, "
                f"{by_axis[winner]:+.2f})"
            )
    else:
        lines.append("no two models differ by one size step on one axis: no size effects")
    best = min(
        (r for r in rows if r["metric"] == "fid" and _is_point(r)),
        key=lambda r: r["value"],
        default=None,
    )
    if best is not None:
        lines.append(
            f"best FID: {best['model']} at guidance {best['guidance_scale']:g}: {best['value']:.2f} [{best['ci_low']:.2f}, {best['ci_high']:.2f}]"
        )
    return lines, {
        "effects": effects,
        "best": best
        and {k: best[k] for k in ("model", "guidance_scale", "value", "ci_low", "ci_high")},
    }
