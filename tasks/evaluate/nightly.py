"""The nightly evaluation's comparison with the night before.

Each nightly sweep leaves a record, results/nightly/<sweep_id>.json: the identity (inputs key,
checkpoint digests) and values of every point row it reported, and the spread between
trainings of every grid point the sweep had replicates of. The next night compares each
(model, guidance, metric) with that record; it is an improvement or a regression by the
metric's direction, and only when the change is outside the interval of a change between
two runs:

- the same checkpoints (only the measurement can have changed): the two sampling intervals
  do not overlap (a conservative test);
- a retrained model: |change| > 1.96 sqrt(se² + se_before² + 2 σ²_b), with σ²_b the spread
  between trainings of its grid point (tonight's sweep, else the latest record that had
  one); without a known σ²_b the change is reported as "retrained" and never flagged, since
  sampling alone would take a retraining's noise for a regression.

A point skipped because nothing changed reports the same rows, so it reads "unchanged".
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from tasks.store.files import atomic_write_bytes
from tasks.store.workspace import Workspace

LOWER_IS_BETTER = ("fid", "fd_clip", "cmmd")  # distances; every other metric: higher is better
DIGESTS = ("unet_digest", "text_encoder_digest", "autoencoder_digest")
KEPT = ("model", "grid_point", "guidance_scale", "metric", "value", "ci_low", "ci_high", "n",
        "inputs_key", *DIGESTS)  # fmt: skip
Z = 1.959963984540054  # the normal 97.5 % quantile: 95 % two-sided


def _key(row: dict) -> str:
    return f"{row['model']}@{row['guidance_scale']:g}:{row['metric']}"


def _spread_key(row: dict) -> str:
    return f"{row.get('grid_point') or row['model']}@{row['guidance_scale']:g}:{row['metric']}"


def _half(row: dict) -> float:
    return (row["ci_high"] - row["ci_low"]) / 2


def compare(
    previous: list[dict], current: list[dict], spreads: dict[str, float] | None = None
) -> list[dict]:
    """One entry per current point row: its value, the previous night's, and the verdict
    ("new", "unchanged", "retrained", "improvement", "regression"); `spreads`: σ²_b by
    grid point, guidance and metric (report.training_spreads)."""
    before = {_key(r): r for r in previous}
    out = []
    for row in current:
        old = before.get(_key(row))
        entry = {k: row[k] for k in ("model", "guidance_scale", "metric", "value")}
        entry |= {"ci_low": row["ci_low"], "ci_high": row["ci_high"], "previous": None}
        if old is None:
            out.append(entry | {"status": "new"})
            continue
        entry["previous"] = old["value"]
        change = row["value"] - old["value"]
        if all(row.get(d) and row.get(d) == old.get(d) for d in DIGESTS):
            apart = row["ci_low"] > old["ci_high"] or row["ci_high"] < old["ci_low"]
        else:
            var_between = (spreads or {}).get(_spread_key(row))
            if var_between is None:
                out.append(entry | {"status": "retrained" if change else "unchanged"})
                continue
            se2 = (_half(row) / Z) ** 2 + (_half(old) / Z) ** 2 + 2 * var_between
            apart = abs(change) > Z * se2**0.5
        if not apart:
            out.append(entry | {"status": "unchanged"})
            continue
        better = (change < 0) == (row["metric"] in LOWER_IS_BETTER)
        out.append(entry | {"status": "improvement" if better else "regression"})
    return out


def folder(workspace: Workspace) -> Path:
    return workspace.results / "nightly"


def previous_record(workspace: Workspace) -> dict | None:
    """The most recent nightly record, or None on the first night."""
    records = sorted(folder(workspace).glob("*.json")) if folder(workspace).is_dir() else []
    return json.loads(records[-1].read_text()) if records else None


def known_spreads(tonight: dict[str, float], previous: dict | None) -> dict[str, float]:
    """Tonight's spreads between trainings, and the last record's where tonight has none."""
    return ((previous or {}).get("training_spreads") or {}) | tonight


def write_record(
    workspace: Workspace, sweep_id: str, rows: list[dict], spreads: dict[str, float]
) -> Path:
    """Record tonight's point rows and the spreads between trainings known tonight (names
    sort by time: sweep ids start with a timestamp)."""
    record = {
        "sweep_id": sweep_id,
        "written": datetime.now(UTC).isoformat(timespec="seconds"),
        "rows": [{k: r.get(k) for k in KEPT} for r in rows if r.get("guidance_scale") is not None],
        "training_spreads": spreads,
    }
    path = folder(workspace) / f"{sweep_id}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, (json.dumps(record, indent=1) + "\n").encode())
    return path


def verdict(comparison: list[dict]) -> str:
    """One line: how many values moved, and which."""
    moved = [c for c in comparison if c["status"] in ("improvement", "regression")]
    if not comparison:
        return "nightly: nothing evaluated"
    if all(c["status"] == "new" for c in comparison):
        return f"nightly: first night, {len(comparison)} values recorded"
    retrained = sum(c["status"] == "retrained" for c in comparison)
    unknown = (
        f"; {retrained} values of retrained models not judged (spread between trainings "
        "unknown: evaluate with --replicates 2 or more once)"
        if retrained
        else ""
    )
    if not moved:
        return f"nightly: no change beyond its interval in {len(comparison)} values{unknown}"
    names = ", ".join(
        f"{c['status']} {c['model']}@{c['guidance_scale']:g} {c['metric']} "
        f"{c['previous']:.4g} -> {c['value']:.4g}"
        for c in moved
    )
    counts = {s: sum(c["status"] == s for c in moved) for s in ("regression", "improvement")}
    return (
        f"nightly: {counts['regression']} regressions, {counts['improvement']} improvements: "
        f"{names}{unknown}"
    )


def as_markdown(comparison: list[dict]) -> str:
    """The comparison as a markdown table (the MLflow artifact nightly.md)."""
    lines = [
        "| model | guidance | metric | value | interval | last night | status |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in comparison:
        before = "" if c["previous"] is None else f"{c['previous']:.4g}"
        lines.append(
            f"| {c['model']} | {c['guidance_scale']:g} | {c['metric']} | {c['value']:.4g} | "
            f"[{c['ci_low']:.4g}, {c['ci_high']:.4g}] | {before} | {c['status']} |"
        )
    return "\n".join(lines) + "\n"
