"""bench/ttq_compare.py: the paired interval's closed form, and a known shift found."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "ttq_compare.py"


@pytest.fixture(scope="module")
def compare():
    spec = importlib.util.spec_from_file_location("ttq_compare", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_paired_interval_closed_form(compare):
    """Differences 1, 2, 3: mean 2, sd 1, half-width t(0.975, 2) / sqrt(3) = 4.3027 / 1.7321."""
    mean, lo, hi = compare.paired_interval([1.0, 2.0, 3.0])
    assert mean == 2.0
    assert hi - mean == pytest.approx(4.302653 / math.sqrt(3), rel=1e-6)
    assert mean - lo == pytest.approx(hi - mean)
    assert math.isnan(compare.paired_interval([1.0])[1])


def _result(path: Path, rates: dict[int, list[float]]) -> Path:
    runs = [
        {"space": "kl-f4", "seed": seed, "points": [{"step": 100, "all_correct": r[0]}]}
        for seed, r in rates.items()
    ]
    path.write_text(json.dumps({"runs": runs}))
    return path


def test_a_known_shift_is_found_and_a_null_one_is_not(compare, tmp_path):
    before = _result(tmp_path / "b.json", {0: [0.50], 1: [0.60], 2: [0.70]})
    shifted = {0: 0.60, 1: 0.71, 2: 0.79}  # +10, +11, +9 points
    after = _result(tmp_path / "a.json", {s: [r] for s, r in shifted.items()})
    row = compare.table(before, after).splitlines()[-1]
    assert row.startswith("| 100 | 50.0 → 60.0 | 60.0 → 71.0 | 70.0 → 79.0 | +10.0 [")
    assert row.endswith("(resolved) |")
    noisy = _result(tmp_path / "n.json", {0: [0.55], 1: [0.55], 2: [0.70]})  # +5, -5, 0
    assert "resolved" not in compare.table(before, noisy)
