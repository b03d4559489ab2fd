"""What a sweep found: the floors, and a verdict per sweep axis that includes the spread
between trainings (eval/verdict.py), or says that it cannot.

Steps: two grid points that differ only in one axis (text encoder, U-Net, or autoencoder
decoder, one preset apart; or the training set, from every pair to the filter's kept
pairs). Each grid point may be trained K times (replicates,
named by their training seed); every replicate is evaluated on the same prompts and seeds
with the same bootstrap resamples. A step's difference is paired replicate by replicate
(seed s of the larger against seed s of the smaller) and resample by resample. An axis's
effect, per metric, is the mean of its steps' differences over the steps and guidance
scales the sweep has (a main effect), formed per replicate, so its interval, a t interval
over replicates, includes the spread between trainings. An axis is resolved only where that
interval excludes 0; with K = 1 the spread between trainings is unknown and the summary
names no winner. Beside each verdict: the effect this K and N could detect (80 % power),
and, for a target effect, the K it would need.

Floors: each distance measured between real images and real images at the sweep's N
(`floor` rows): the part of a value no model can remove.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict

import numpy as np

from eval.verdict import (
    Estimate,
    detectable_effect,
    paired_difference,
    replicate_estimate,
    replicates_needed,
    sampling_detectable_effect,
)
from tasks.evaluate.spec import VERDICT_METRICS
from tasks.store.content import NEAR_PSNR_DB
from tasks.store.pairs import PairsError, describe_training_set
from tasks.store.workspace import DEFAULT_VARIANT

AXES = {
    "text_encoder": ("clip-tiny", "clip-small", "clip-base"),
    "unet": ("unet-xs", "unet-s", "unet-m", "unet-l"),
    "autoencoder": ("kl-f4-dec-s", "kl-f4", "kl-f4-dec-l"),
    # the training set: a step is the filter's, from every pair to the kept ones
    "data_variant": ("all", DEFAULT_VARIANT),
}
# how the summary names an axis's step and its far end; the size axes: `_words`' default
STEP_WORDS = {
    "data_variant": {
        "head": "data_variant: the filter",
        "step": "the filter",
        "far": "the filtered",
    }
}


def _words(axis: str) -> dict[str, str]:
    size = {"head": f"{axis} one size up", "step": f"one size up on {axis}", "far": "the larger"}
    return STEP_WORDS.get(axis, size)


DISTANCES = ("fid", "fd_clip")
FLOOR_METRICS = ("fid", "fd_clip", "cmmd")
LOWER_IS_BETTER = ("fid", "fd_clip", "cmmd")


def is_point(row: dict) -> bool:
    """A generated (model, guidance) point, not a reference, floor or reconstruction row."""
    return row.get("guidance_scale") is not None


def grid_point(row: dict) -> str:
    """The grid point a row's model was trained for (its replicates share it)."""
    return row.get("grid_point") or row["model"]


def axis_value(row: dict, axis: str) -> str | None:
    """A row's value on a sweep axis (rows from before the data axis: the kept pairs)."""
    default = DEFAULT_VARIANT if axis == "data_variant" else None
    return row.get(axis) or default


def replicate(row: dict) -> int:
    """The training seed that names a row's replicate (0 for a sweep without replicates)."""
    return int(row.get("replicate") or 0)


def by_grid_point(rows: list[dict]) -> dict[str, dict[float, dict[str, dict[int, dict]]]]:
    """grid point -> guidance -> metric -> replicate -> row, for the generated points."""
    out: dict = defaultdict(lambda: defaultdict(lambda: defaultdict(dict)))
    for row in rows:
        if is_point(row):
            out[grid_point(row)][row["guidance_scale"]][row["metric"]][replicate(row)] = row
    return out


def size_steps(rows: list[dict]) -> list[dict]:
    """Every pair of grid points one preset apart on one axis, equal on the others."""
    meta = {grid_point(r): {a: axis_value(r, a) for a in AXES} for r in rows if is_point(r)}
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


def _values(by_replicate: dict[int, dict], seeds: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """(K,) values and (K, B) bootstrap replicates of one point's metric, seed by seed."""
    return (
        np.array([by_replicate[s]["value"] for s in seeds], dtype=np.float64),
        np.array([by_replicate[s]["replicates"] for s in seeds], dtype=np.float64),
    )


def step_effects(rows: list[dict]) -> list[dict]:
    """Per size step, matched guidance and metric: the paired difference larger - smaller
    over the replicates both points have, with its interval."""
    points = by_grid_point(rows)
    effects = []
    for step in size_steps(rows):
        small, large = points[step["small"]], points[step["large"]]
        for guidance in sorted(set(small) & set(large)):
            for metric in VERDICT_METRICS:
                a, b = small[guidance].get(metric), large[guidance].get(metric)
                seeds = sorted(set(a or ()) & set(b or ()))
                if not seeds:
                    continue
                est = paired_difference(*_values(a, seeds), *_values(b, seeds))
                effects.append(step | _fields(est) | {"guidance_scale": guidance,
                                                      "metric": metric})  # fmt: skip
    return effects


def training_spreads(rows: list[dict]) -> dict[str, float]:
    """The variance between trainings of every grid point's metric at each guidance, where
    the sweep has K >= 2 replicates of it: "<grid point>@<guidance>:<metric>" -> σ²_b."""
    spreads = {}
    for point, by_guidance in by_grid_point(rows).items():
        for guidance, metrics in by_guidance.items():
            for metric, by_replicate in metrics.items():
                if len(by_replicate) >= 2 and metric in VERDICT_METRICS:
                    seeds = sorted(by_replicate)
                    est = replicate_estimate(*_values(by_replicate, seeds))
                    spreads[f"{point}@{guidance:g}:{metric}"] = est.var_between
    return spreads


# what a verdict's figures are called in its row, the verdicts table and MLflow
FIGURES = ("change", "ci_low", "ci_high", "var_between", "var_within", "var_shared")


def _fields(est: Estimate) -> dict:
    figures = (est.mean, est.ci_low, est.ci_high, est.var_between, est.var_within, est.var_shared)
    return dict(zip(FIGURES, figures, strict=True)) | {"k": est.k, "resolved": est.resolved}


def verdict_table(sweep_id: str, found: dict) -> list[dict]:
    """The verdicts with their variance components (one row per axis and metric, kind
    "axis") and every step's paired difference (kind "step"), as stored with the sweep."""
    rows = []
    for kind, items in (("axis", found["verdicts"]), ("step", found["effects"])):
        for item in items:
            row = {k: v for k, v in item.items() if k not in ("cells", "steps", "seeds", "needs_k")}
            rows.append({"sweep_id": sweep_id, "kind": kind, **row}
                        | {"seeds": item.get("seeds"), "steps": str(item.get("steps", ""))})  # fmt: skip
    return rows


def axis_effect(rows: list[dict], axis: str, metric: str) -> tuple[Estimate, dict] | None:
    """The axis's main effect on `metric`: per replicate, the mean difference over every
    step of the axis and every guidance scale both ends share; None when it has no step."""
    points = by_grid_point(rows)
    cells = []  # (smaller's replicates, larger's replicates) per step and guidance
    for step in size_steps(rows):
        if step["axis"] != axis:
            continue
        small, large = points[step["small"]], points[step["large"]]
        for guidance in sorted(set(small) & set(large)):
            a, b = small[guidance].get(metric), large[guidance].get(metric)
            if a and b:
                cells.append((a, b))
    if not cells:
        return None
    seeds = sorted(set.intersection(*(set(a) & set(b) for a, b in cells)))
    if not seeds:
        return None
    diffs, boots = [], []
    for a, b in cells:
        (av, ab), (bv, bb) = _values(a, seeds), _values(b, seeds)
        diffs.append(bv - av)
        boots.append(bb - ab)
    est = replicate_estimate(np.mean(diffs, axis=0), np.mean(boots, axis=0))
    steps = {(s["from"], s["to"]) for s in size_steps(rows) if s["axis"] == axis}
    return est, {"cells": len(cells), "steps": sorted(steps), "seeds": seeds}


# ---------------------------------------------------------------------------- the summary


def _n(rows: list[dict]) -> int:
    return next((int(r["n"]) for r in rows if is_point(r)), 0)


def _better(metric: str, change: float) -> bool:
    return change < 0 if metric in LOWER_IS_BETTER else change > 0


def verdicts(rows: list[dict], target_effects: dict[str, float] | None = None) -> list[dict]:
    """One verdict per axis and metric: the effect with its interval, whether it is
    resolved, the effect this K and N could detect, and the K a target effect needs."""
    n = _n(rows)
    found = []
    for axis in AXES:
        for metric in VERDICT_METRICS:
            result = axis_effect(rows, axis, metric)
            if result is None:
                continue
            est, about = result
            row = {"axis": axis, "metric": metric, "n": n, **_fields(est), **about}
            if est.between_known:
                row["detectable"] = detectable_effect(
                    est.var_between, est.var_within, est.k, n, n, est.var_shared
                )
            else:
                row["detectable_at_least"] = sampling_detectable_effect(est.var_within)
            target = (target_effects or {}).get(metric)
            if target is not None and est.between_known:
                row["target_effect"] = target
                row["needs_k"] = {
                    m: replicates_needed(
                        target, est.var_between, est.var_within, m, n, var_shared=est.var_shared
                    )
                    for m in (n, 4 * n)
                }
            row["better"] = est.resolved and _better(metric, est.mean)
            found.append(row)
    return found


def _verdict_line(v: dict) -> str:
    k, n = v["k"], v["n"]
    larger = _words(v["axis"])["far"]
    head = f"  {v['metric']} {v['change']:+.3g} [{v['ci_low']:+.3g}, {v['ci_high']:+.3g}]"
    if k == 1:
        return (
            f"{head} (sampling only): not resolved at K = 1, N = {n}: the spread between "
            f"trainings is unknown; sampling alone hides any effect under "
            f"{v['detectable_at_least']:.3g}"
        )
    state = (
        f"resolved at K = {k}, N = {n}: {larger} is {'better' if v['better'] else 'worse'}"
        if v["resolved"]
        else f"not resolved at K = {k}, N = {n}"
    )
    line = (
        f"{head}: {state}; detectable: {v['detectable']:.3g} (variance between trainings "
        f"{v['var_between']:.3g}, within sampling {v['var_within']:.3g}, of which "
        f"{v['var_shared']:.3g} shared by every replicate's prompts)"
    )
    if "needs_k" in v:
        needs = ", ".join(
            f"K = {kk} at N = {m}" if kk else f"more than 1000 replicates at N = {m}"
            for m, kk in v["needs_k"].items()
        )
        line += f"; {v['target_effect']:g} needs {needs}"
    return line


def summary_lines(
    rows: list[dict], target_effects: dict[str, float] | None = None, no_floor: str = ""
) -> tuple[list[str], dict]:
    """The summary's lines and what they found; `no_floor`: why the rows hold no floor."""
    effects = step_effects(rows)
    found = verdicts(rows, target_effects)
    lines = []
    floors = {r["metric"]: r for r in rows if r.get("model") == "floor"}
    if not floors and no_floor:
        lines.append(f"floor: not measured: {no_floor}")
    if floors:
        lines.append(
            f"floor, real against real at N = {next(iter(floors.values()))['n']} "
            f"({next(iter(floors.values())).get('floor', '')}): "
            + ", ".join(
                f"{m} {floors[m]['value']:.3g} [{floors[m]['ci_low']:.3g}, "
                f"{floors[m]['ci_high']:.3g}]"
                for m in FLOOR_METRICS
                if m in floors
            )
        )
    ks = sorted({v["k"] for v in found})
    if found:
        lines.append(
            f"verdicts (K = {'/'.join(map(str, ks))} training{'s' if ks != [1] else ''} per grid "
            f"point, N = {_n(rows)} "
            "samples per point; resolved only where the interval, which includes the spread "
            "between trainings, excludes 0):"
        )
    for axis in AXES:
        mine = [v for v in found if v["axis"] == axis]
        if not mine:
            continue
        steps = ", ".join(f"{a} -> {b}" for a, b in mine[0]["steps"])
        lines.append(
            f"{_words(axis)['head']} ({steps}; mean over {mine[0]['cells']} step x guidance "
            "comparisons):"
        )
        lines += [_verdict_line(v) for v in mine]
    for r in rows:
        if r["metric"] == "rfid":
            psnr = next(p for p in rows if p["model"] == r["model"] and p["metric"] == "psnr")
            lines.append(
                f"{r['model']} reconstructions: rFID {r['value']:.2f} [{r['ci_low']:.2f}, "
                f"{r['ci_high']:.2f}], PSNR {psnr['value']:.1f} dB"
            )
    better = sorted({v["axis"] for v in found if v["better"]})
    worse = sorted({v["axis"] for v in found if v["resolved"] and not v["better"]})
    if not found:
        lines.append("no two grid points differ by one size step on one axis: no verdicts")
    elif not better and not worse:
        lines.append(
            "answer: not resolved: no axis's step is resolved on any metric"
            + (" (one training per grid point: run --replicates 3 or more)" if ks == [1] else "")
        )
    else:
        for name, axes in (("better", better), ("worse", worse)):
            for axis in axes:
                metrics = [v["metric"] for v in found if v["axis"] == axis and v["resolved"]
                           and v["better"] == (name == "better")]  # fmt: skip
                lines.append(f"answer: {_words(axis)['step']} is resolved {name} on "
                             f"{', '.join(metrics)}")  # fmt: skip
    best = _lowest_fid(rows)
    if best is not None:
        lines.append(
            f"lowest FID measured: {best['model']} at guidance {best['guidance_scale']:g}: "
            f"{best['value']:.2f} [{best['ci_low']:.2f}, {best['ci_high']:.2f}] "
            "(one point's measurement, not a verdict)"
        )
    return lines, {
        "effects": effects,
        "verdicts": found,
        "training_spreads": training_spreads(rows),
        "floors": {
            m: {k: floors[m][k] for k in ("value", "ci_low", "ci_high", "n")} for m in floors
        },  # fmt: skip
        "best": best
        and {k: best[k] for k in ("model", "guidance_scale", "value", "ci_low", "ci_high")},
    }


def data_lines(workspace, in_train: dict[str, dict[str, int]]) -> tuple[str, ...]:
    """What the sweep's models were trained on, per data variant (the keys of `in_train`):
    the training set (`training_set_lines`) and how many reference images are in it
    (`in_train[variant]`, prompts.check_reference)."""
    sets = {}
    for v in in_train:
        with contextlib.suppress(PairsError):  # trained from raw shards, before any filter
            sets[v] = describe_training_set(workspace, v)
    reference = [
        f"reference images in training set {v}: {n['exact']} exact copies, "
        f"{n['near']} more within {NEAR_PSNR_DB:g} dB, of {n['images']}"
        for v, n in in_train.items()
    ]
    return (*training_set_lines(sets), *reference)


def training_set_lines(summaries: dict[str, dict]) -> list[str]:
    """A line per data variant the sweep's models were trained on: its size and digest, and
    on the built-in truth its precision and recall (`store.pairs.training_set_summary`)."""
    lines = []
    for variant, t in summaries.items():
        line = (
            f"training set {variant}: {t['pairs']} pairs ({t['train']} train, {t['val']} val), "
            f"digest {t['digest']}"
        )
        if "precision" in t:
            line += f"; right captions {t['precision']:.1%} of its pairs (precision)"
        if "recall" in t:
            line += f", {t['recall']:.1%} of every usable right-caption pair (recall)"
        lines.append(line)
    return lines


def _lowest_fid(rows: list[dict]) -> dict | None:
    return min(
        (r for r in rows if r["metric"] == "fid" and is_point(r)),
        key=lambda r: r["value"],
        default=None,
    )
