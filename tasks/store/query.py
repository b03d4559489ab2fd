"""SQL over a workspace with DuckDB: one view per table the pipeline writes, and the MLflow runs.

    views: raw (data/raw), scores (data/scores), pairs (data/pairs), evaluations
           (results/evaluations), samples (results/samples), verdicts (results/verdicts:
           each sweep's verdicts and variance components), runs (MLflow runs: run_id,
           experiment, run name, status, start time, then params.* and metrics.* columns),
           lineage (each sample with its model's training set and whether its prompt's pair
           was kept)

The Parquet views read the files in place (a glob per folder); `runs` is read through
MLflow's own API from the workspace's tracking store (no DuckDB extension is needed, none is
downloaded). A view whose folder is empty does not exist yet, and saying so is the error.

With `source` (an s3:// prefix `marble publish` wrote, tasks/store/objectstore.py) the Parquet
views read the files its manifest lists, through s3fs registered with DuckDB (DuckDB's own
httpfs extension is never loaded: it would be downloaded).
"""

from __future__ import annotations

from pathlib import Path

import duckdb

from tasks.store.objectstore import S3Prefix, filesystem, published_tables, workspace_tables
from tasks.store.tracking import external_tracking_uri, use_tracking_store
from tasks.store.workspace import Workspace

FORMATS = ("table", "csv", "json")


class QueryError(ValueError):
    pass


def _sql_list(paths: list[str]) -> str:
    return "[" + ", ".join("'" + p.replace("'", "''") + "'" for p in paths) + "]"


def _parquet_views(workspace: Workspace, source: S3Prefix | None, con) -> dict[str, list[str]]:
    """view name -> the Parquet files (local paths or s3:// URLs) it reads."""
    if source is None:
        return {
            name: [str(Path(folder) / "*.parquet")]
            for name, folder in workspace_tables(workspace).items()
            if any(Path(folder).glob("*.parquet"))
        }
    fs = filesystem()
    tables = published_tables(source, fs)
    con.execute("SET autoinstall_known_extensions = false; SET autoload_known_extensions = false")
    con.register_filesystem(fs)
    return tables


def _runs_frame(workspace: Workspace):
    import mlflow

    if not (workspace.root / "mlflow.db").exists() and external_tracking_uri() is None:
        return None
    use_tracking_store(workspace)
    runs = mlflow.search_runs(search_all_experiments=True)
    if runs.empty:
        return None
    experiments = {e.experiment_id: e.name for e in mlflow.search_experiments()}
    runs.insert(1, "experiment", runs["experiment_id"].map(experiments))
    runs = runs.rename(columns={"tags.mlflow.runName": "run_name"})
    keep = [c for c in runs.columns if not c.startswith("tags.")]
    return runs[keep]


def connect(
    workspace: Workspace, source: S3Prefix | None = None
) -> tuple[duckdb.DuckDBPyConnection, list[str]]:
    """An in-memory DuckDB connection with every view the workspace (or the tables published
    at `source`) can fill; their names."""
    con = duckdb.connect()
    names = []
    for name, files in _parquet_views(workspace, source, con).items():
        con.execute(
            f"CREATE VIEW {name} AS SELECT * FROM read_parquet({_sql_list(files)}, "
            "union_by_name = true)"
        )
        names.append(name)
    if {"samples", "evaluations"} <= set(names):
        _lineage_view(con, names)
        names.append("lineage")
    runs = _runs_frame(workspace)
    if runs is not None:
        con.register("runs", runs)
        names.append("runs")
    return con, names


def _lineage_view(con, names: list[str]) -> None:
    """`lineage`: every sample with the training set its model saw (data_variant,
    training_set_digest, from its point's evaluation rows) and whether its prompt's pair
    was kept by the filter (null for prompts that are not raw pairs: held-out scenes)."""
    have = {r[0] for r in con.execute("DESCRIBE evaluations").fetchall()}
    trained = [
        f"{c}" if c in have else f"NULL AS {c}" for c in ("data_variant", "training_set_digest")
    ]
    kept, join = "NULL AS prompt_pair_kept", ""
    if "scores" in names:
        kept, join = "sc.kept AS prompt_pair_kept", "LEFT JOIN scores sc USING (pair_id)"
    con.execute(
        f"""CREATE VIEW lineage AS
        SELECT s.sweep_id, s.point_id, s.model, s.guidance_scale, s.pair_id, s.caption, s.seed,
               e.data_variant, e.training_set_digest, {kept}
        FROM samples s
        LEFT JOIN (SELECT DISTINCT sweep_id, point_id, {", ".join(trained)}
                   FROM evaluations WHERE guidance_scale IS NOT NULL) e
          USING (sweep_id, point_id)
        {join}"""
    )


def run_query(
    workspace: Workspace, sql: str, source: S3Prefix | None = None
) -> tuple[list[str], list[tuple]]:
    """(column names, rows) of `sql`; a bad query is one QueryError naming the problem."""
    con, names = connect(workspace, source)
    try:
        result = con.execute(sql)
        return [d[0] for d in result.description or []], result.fetchall()
    except duckdb.Error as e:
        message = str(e).splitlines()[0]
        where = source or workspace.root
        raise QueryError(
            f"{message} (views in {where}: {', '.join(names) or 'none yet'})"
        ) from None
    finally:
        con.close()


def format_result(columns: list[str], rows: list[tuple], fmt: str = "table") -> str:
    import csv
    import io
    import json

    if fmt == "json":
        return json.dumps([dict(zip(columns, r, strict=True)) for r in rows], default=str, indent=1)
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(columns)
        writer.writerows(rows)
        return buf.getvalue()
    cells = [[_cell(v) for v in r] for r in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    line = lambda values: "  ".join(v.ljust(w) for v, w in zip(values, widths, strict=True))  # noqa: E731
    out = [line(columns), line(["-" * w for w in widths])] + [line(r) for r in cells]
    return "\n".join(out) + f"\n({len(rows)} row{'s' if len(rows) != 1 else ''})"


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list) and len(value) > 4:
        return f"[{len(value)} values]"
    return str(value)
