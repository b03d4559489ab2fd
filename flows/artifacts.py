"""What the Prefect UI shows besides states: a progress artifact per long task (trainings,
sampling) and, at the end of a sweep, a table of its points and a summary with links."""

from __future__ import annotations

import contextlib
import functools
import re
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.runtime import task_run

from tasks.runtime import progress
from tasks.runtime.services import mlflow_ui_url
from tasks.store.tracking import ui_page
from tasks.store.workspace import Workspace


def artifact_key(text: str) -> str:
    """Prefect artifact keys: lowercase letters, digits and dashes."""
    return re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")[:100]


@contextlib.contextmanager
def progress_artifact(description: str) -> Iterator[None]:
    """Inside a task: one progress artifact, updated by tasks.runtime.progress.report()."""
    ids: dict[str, object] = {}
    where = task_run.get_name() or ""

    def reporter(name: str, done: int, total: int) -> None:
        percent = 100.0 * done / max(total, 1)
        text = f"{description} {where}: {name} {done}/{total}"
        if name not in ids:
            ids[name] = create_progress_artifact(percent, description=text)
        else:
            update_progress_artifact(ids[name], percent, description=text)

    with progress.reporting(reporter):
        yield


def with_progress(description: str):
    """Decorator for a task function: its long loops report to a progress artifact."""

    def wrap(fn):
        @functools.wraps(fn)
        def run(*args, **kwargs):
            with progress_artifact(description):
                return fn(*args, **kwargs)

        return run

    return wrap


def _cell(rows: dict[str, dict], metric: str) -> str:
    row = rows.get(metric)
    if row is None:
        return ""
    return f"{row['value']:.4g} [{row['ci_low']:.4g}, {row['ci_high']:.4g}]"


def sweep_artifacts(summary: dict, workspace: Workspace, comparison: list[dict] | None = None):
    """A table with a row per (model, guidance) and its metrics with intervals (and, on the
    nightly run, what moved since the night before); a markdown summary with the Pareto plot
    and links to the MLflow runs."""
    points: dict[tuple, dict[str, dict]] = {}
    for row in summary["rows"]:
        points.setdefault((row["model"], row["guidance_scale"]), {})[row["metric"]] = row
    moved: dict[tuple, list[str]] = {}
    for c in comparison or []:
        if c["status"] in ("improvement", "regression"):
            moved.setdefault((c["model"], c["guidance_scale"]), []).append(
                f"{c['status']}: {c['metric']}"
            )
    table = [
        {
            "model": model,
            "guidance": guidance,
            **{m: _cell(rows, m) for m in ("fid", "fd_clip", "cmmd", "clip_score")},
            "attr_all_correct": _cell(rows, "attr_all_correct"),
            "n": next(iter(rows.values()))["n"],
            **(
                {"vs_last_night": "; ".join(moved.get((model, guidance), [])) or "unchanged"}
                if comparison is not None
                else {}
            ),
        }  # fmt: skip
        for (model, guidance), rows in sorted(points.items())
    ]
    key = artifact_key(f"sweep-{summary['sweep_id']}")
    create_table_artifact(table, key=key, description=f"sweep {summary['sweep_id']}")
    lines = [f"# Sweep {summary['sweep_id']}", "", *[f"- {line}" for line in summary["lines"]]]
    mlflow = mlflow_ui_url(workspace)
    run_id = summary["mlflow_run_id"]
    plot = Path(summary["plot"])
    lines += ["", f"Pareto plot: `{plot}`"]
    if mlflow and run_id:
        query = urllib.parse.urlencode({"path": plot.name, "run_uuid": run_id})
        lines += [
            "",
            f"![Pareto plot]({mlflow}/get-artifact?{query})",
            "",
            f"[The sweep's MLflow run, with a sample grid per point]({ui_page(mlflow, run_id)})",
        ]
    elif run_id:
        lines += ["", f"MLflow run `{run_id}` (experiment marble-evaluate; `marble up` opens it)"]
    create_markdown_artifact("\n".join(lines), key=f"{key}-summary", description="sweep summary")
