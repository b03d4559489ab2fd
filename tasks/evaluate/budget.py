"""A sweep that fits its time: the wall time of a sweep estimated from the rates measured on
this machine, and the sweep cut down (fewer guidance scales, then fewer samples) until it
fits, or refused when even the smallest useful sweep would not.

Rates: the seconds per image of every point evaluated before in this workspace (each row
records its point's wall time, `point_s`, and its N), per U-Net preset, the median of the
latest points; where a preset was never evaluated here, the slowest preset measured; with
no history at all, `calibrate` times a few images of each model.

Cutting: guidance scales are thinned to an evenly spread subset that keeps the smallest and
the largest (the ends of a Pareto curve), down to one, the median; then N is lowered, down
to MIN_SAMPLES. Every cut is said in one line and recorded with the sweep.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from dataclasses import dataclass

import pyarrow.parquet as pq

from tasks.evaluate.spec import SweepSpec
from tasks.store.workspace import Workspace

MIN_SAMPLES = 500  # the smallest N worth a nightly (docs/evaluation.md: FID's N-bias)
LATEST_POINTS = 20  # the points a rate is read from, most recent first
MARGIN = 0.9  # of the time between runs: what the sweep may take


@dataclass(frozen=True)
class Fit:
    spec: SweepSpec
    estimate_s: float | None  # None: no rate known
    line: str  # what was asked, what runs, why


def measured_rates(workspace: Workspace) -> dict[str, float]:
    """U-Net preset -> seconds per image, from the points evaluated in this workspace."""
    folder = workspace.evaluations
    per_preset: dict[str, list[tuple[str, float]]] = {}
    for path in sorted(folder.glob("*.parquet")) if folder.is_dir() else []:
        table = pq.read_table(path)
        if "point_s" not in table.column_names:
            continue
        for row in table.select(["unet", "n", "point_s", "timestamp"]).to_pylist()[:1]:
            if row["point_s"] and row["n"]:
                per_preset.setdefault(row["unet"], []).append(
                    (row["timestamp"], row["point_s"] / row["n"])
                )
    return {
        unet: statistics.median(r for _, r in sorted(found, reverse=True)[:LATEST_POINTS])
        for unet, found in per_preset.items()
    }


def calibrate(workspace: Workspace, spec: SweepSpec, configs: dict[str, dict]) -> dict[str, float]:
    """Seconds per image of each U-Net preset, timed on two images of one of its models
    (sampling only: a lower bound of a point's time per image)."""
    from tasks.runtime.devices import pick_device
    from tasks.store.loaders import load_pipeline

    device = pick_device(spec.device)
    rates = {}
    for name, config in configs.items():
        if config["unet_preset"] in rates:
            continue
        pipe = load_pipeline(workspace, name, device)
        t0 = time.perf_counter()
        pipe.generate(["a calibration"] * 2, [0, 1], 4.0, spec.num_inference_steps, spec.sampler)
        rates[config["unet_preset"]] = (time.perf_counter() - t0) / 2
    return rates


def estimate_s(spec: SweepSpec, presets: list[str], rates: dict[str, float]) -> float | None:
    """Seconds the sweep's points take: images x seconds per image of each model's U-Net."""
    if not rates:
        return None
    slowest = max(rates.values())
    per_image = sum(rates.get(p, slowest) for p in presets)
    return per_image * spec.num_samples * len(spec.guidance_scales)


def thinned(scales: tuple[float, ...], count: int) -> tuple[float, ...]:
    """`count` of the sorted scales, evenly spread, the ends kept (one: the median)."""
    ordered = sorted(scales)
    if count >= len(ordered):
        return tuple(ordered)
    if count == 1:
        return (ordered[(len(ordered) - 1) // 2],)
    picks = {round(i * (len(ordered) - 1) / (count - 1)) for i in range(count)}
    return tuple(ordered[i] for i in sorted(picks))


def fit(spec: SweepSpec, presets: list[str], rates: dict[str, float], budget_s: float) -> Fit:
    """The largest sweep of `spec`'s kind that fits `budget_s`: fewer guidance scales
    first, then fewer samples; ValueError when one guidance scale at MIN_SAMPLES (or the N
    asked, if smaller) would not fit."""
    count = len(spec.guidance_scales)
    asked = f"{count} guidance scale{'s' if count != 1 else ''} x N = {spec.num_samples}"
    estimate = estimate_s(spec, presets, rates)
    if estimate is None:
        return Fit(
            spec, None, f"time budget: no rate measured here yet; running as asked ({asked})"
        )
    if estimate <= budget_s:
        return Fit(spec, estimate, f"time budget: {asked} fits ({_h(estimate)} of {_h(budget_s)})")
    for count in range(len(spec.guidance_scales) - 1, 0, -1):
        smaller = dataclasses.replace(spec, guidance_scales=thinned(spec.guidance_scales, count))
        estimate = estimate_s(smaller, presets, rates)
        if estimate <= budget_s:
            return Fit(smaller, estimate, _cut_line(asked, smaller, estimate, budget_s))
    one = dataclasses.replace(spec, guidance_scales=thinned(spec.guidance_scales, 1))
    per_point_image = estimate_s(one, presets, rates) / one.num_samples  # s per image, all models
    n = int(budget_s / per_point_image * (1 + 1e-9))  # 1800 / 0.6 is 3000, not 2999
    floor = min(MIN_SAMPLES, spec.num_samples)
    if n < floor:
        raise ValueError(
            f"the nightly cannot fit: {len(presets)} models at one guidance scale and "
            f"N = {floor} take {_h(per_point_image * floor)} here, the time between runs "
            f"allows {_h(budget_s)}; evaluate fewer models or run it less often"
        )
    smaller = dataclasses.replace(one, num_samples=min(n, spec.num_samples))
    estimate = estimate_s(smaller, presets, rates)
    return Fit(smaller, estimate, _cut_line(asked, smaller, estimate, budget_s))


def _cut_line(asked: str, spec: SweepSpec, estimate: float, budget_s: float) -> str:
    scales = ", ".join(f"{g:g}" for g in spec.guidance_scales)
    return (
        f"time budget: {asked} would not fit {_h(budget_s)}; running guidance {scales} at "
        f"N = {spec.num_samples} ({_h(estimate)})"
    )


def _h(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.0f} min"
