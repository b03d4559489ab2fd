"""A nightly sweep cut to the time it has, from rates measured on this machine."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tasks.evaluate import budget
from tasks.evaluate.spec import IMAGEN_GUIDANCE, SweepSpec
from tasks.store.workspace import Workspace

RATES = {"unet-xs": 0.1, "unet-s": 0.2}  # seconds per image
PRESETS = ["unet-xs", "unet-xs", "unet-s", "unet-s"]  # four models: 0.6 s per image of a point


def test_a_sweep_that_fits_runs_as_asked():
    spec = SweepSpec(guidance_scales=(1.0, 4.0), num_samples=1000)
    fit = budget.fit(spec, PRESETS, RATES, budget_s=1300)  # needs 0.6 x 1000 x 2 = 1200 s
    assert fit.spec == spec and fit.estimate_s == pytest.approx(1200)
    assert fit.line.startswith("time budget: 2 guidance scales x N = 1000 fits")


def test_guidance_scales_are_thinned_first_keeping_the_ends():
    spec = SweepSpec(num_samples=10_000)  # Imagen's 13 scales: 78,000 s
    fit = budget.fit(spec, PRESETS, RATES, budget_s=6 * 3600)  # 21,600 s: 3 scales fit
    assert fit.spec.guidance_scales == (1.0, 4.0, 10.0) and fit.spec.num_samples == 10_000
    assert "would not fit 6.0 h; running guidance 1, 4, 10 at N = 10000" in fit.line


def test_then_the_samples_down_to_the_smallest_useful_sweep():
    spec = SweepSpec(num_samples=10_000)
    fit = budget.fit(spec, PRESETS, RATES, budget_s=1800)  # one scale: 3,000 images fit
    assert fit.spec.guidance_scales == (4.0,) and fit.spec.num_samples == 3000
    with pytest.raises(ValueError, match="the nightly cannot fit: 4 models"):
        budget.fit(spec, PRESETS, RATES, budget_s=0.6 * 499)  # not even N = 500


def test_without_a_measured_rate_it_runs_as_asked_and_says_so():
    fit = budget.fit(SweepSpec(), PRESETS, {}, budget_s=60)
    assert fit.spec == SweepSpec() and fit.estimate_s is None and "no rate measured" in fit.line


def test_thinned_keeps_the_ends_and_spreads_the_rest():
    assert budget.thinned(IMAGEN_GUIDANCE, 2) == (1.0, 10.0)
    assert budget.thinned(IMAGEN_GUIDANCE, 1) == (4.0,)
    assert budget.thinned((1.0, 4.0), 5) == (1.0, 4.0)


def test_rates_are_read_from_the_points_evaluated_here(tmp_path):
    workspace = Workspace(tmp_path)
    workspace.evaluations.mkdir(parents=True)
    for i, (unet, seconds) in enumerate([("unet-xs", 10.0), ("unet-xs", 30.0), ("unet-s", 50.0)]):
        rows = [{"unet": unet, "n": 100, "point_s": seconds, "timestamp": f"2026-12-0{i + 1}",
                 "metric": m} for m in ("fid", "clip_score")]  # fmt: skip
        pq.write_table(pa.Table.from_pylist(rows), workspace.evaluations / f"p{i}.parquet")
    pq.write_table(pa.table({"metric": ["judge_r1"]}), workspace.evaluations / "ref.parquet")
    assert budget.measured_rates(workspace) == {"unet-xs": 0.2, "unet-s": 0.5}
