"""The nightly evaluation's comparison with the night before.

Each nightly sweep leaves a record, results/nightly/<sweep_id>.json: the identity (inputs key)
and values of every point row it reported. The next night compares each (model, guidance,
metric) with that record. A value moved when its confidence interval and the previous one do
not overlap (the change is larger than both intervals' half-widths together, a conservative
test); it is an improvement or a regression by the metric's direction. A point skipped
because nothing changed reports the same rows, so it reads "unchanged".
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from tasks.store.files import atomic_write_bytes
from tasks.store.workspace import Workspace

LOWER_IS_BETTER = ("fid", "fd_clip", "cmmd")  # distances; every other metric: higher is better
KEPT = ("model", "guidance_scale", "metric", "value", "ci_low", "ci_high", "n", "inputs_key")


def _key(row: dict) -> str:
    return f"{row['model']}@{row['guidance_scale']:g}:{row['metric']}"


def compare(previous: list[dict], current: list[dict]) -> list[dict]:
    """One entry per current point row: its value, the previous night's, and the verdict
    ("new", "unchanged", "improvement", "regression")."""
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
        apart = row["ci_low"] > old["ci_high"] or row["ci_high"] < old["ci_low"]
        if not apart:
            out.append(entry | {"status": "unchanged"})
            continue
        went_down = row["value"] < old["value"]
        better = went_down == (row["metric"] in LOWER_IS_BETTER)
        out.append(entry | {"status": "improvement" if better else "regression"})
    return out


def folder(workspace: Workspace) -> Path:
    return workspace.results / "nightly"


def previous_record(workspace: Workspace) -> dict | None:
    """The most recent nightly record, or None on the first night."""
    records = sorted(folder(workspace).glob("*.json")) if folder(workspace).is_dir() else []
    return json.loads(records[-1].read_text()) if records else None


def write_record(workspace: Workspace, sweep_id: str, rows: list[dict]) -> Path:
    """Record tonight's point rows (names sort by time: sweep ids start with a timestamp)."""
    record = {
        "sweep_id": sweep_id,
        "written": datetime.now(UTC).isoformat(timespec="seconds"),
        "rows": [{k: r.get(k) for k in KEPT} for r in rows if r.get("guidance_scale") is not None],
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
    if not moved:
        return f"nightly: no change beyond its interval in {len(comparison)} values"
    names = ", ".join(
        f"{c['status']} {c['model']}@{c['guidance_scale']:g} {c['metric']} "
        f"{c['previous']:.4g} -> {c['value']:.4g}"
        for c in moved
    )
    counts = {s: sum(c["status"] == s for c in moved) for s in ("regression", "improvement")}
    return f"nightly: {counts['regression']} regressions, {counts['improvement']} improvements: {names}"


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
