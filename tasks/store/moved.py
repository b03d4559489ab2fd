"""A workspace that was moved or copied keeps working: MLflow stores absolute artifact
locations, so the store is rewritten to point into the workspace's new folder."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

from tasks.store.files import atomic_write_bytes
from tasks.store.locks import file_lock
from tasks.store.workspace import Workspace

WORKSPACE_MARKER = ".marble-workspace"  # the folder this workspace's MLflow store points into


def follow_moved_workspace(workspace: Workspace) -> None:
    """MLflow stores absolute artifact locations. When the workspace has been moved or
    copied since its store was written, rewrite every path into the old folder as the same
    path into this one (SQLite, in place), so nothing is read from or written to the old
    location; the marker file records the folder the store now points into.

    Trainings that run at once (Dask workers) may all find the marker stale: one rewrites
    the store under a lock, the others wait for it and then find the marker current."""
    marker = workspace.root / WORKSPACE_MARKER
    here = str(workspace.root)
    if _read_marker(marker) == here:
        return
    workspace.root.mkdir(parents=True, exist_ok=True)
    with file_lock(workspace.root / ".locks" / "mlflow-store.lock"):  # waits for a holder
        previous = _read_marker(marker)
        store = workspace.root / "mlflow.db"
        if previous and previous != here and store.exists():
            _rewrite_paths(store, previous, workspace.root)
        if previous != here:
            atomic_write_bytes(marker, here.encode())


def _read_marker(marker: Path) -> str | None:
    return marker.read_text().strip() if marker.exists() else None


def _rewrite_paths(store: Path, previous: str, root: Path) -> None:
    """Every text value in the SQLite store that names the folder `previous` (as a path or
    as a file URI, which quotes some characters) names `root` instead, in one transaction."""
    pairs = [(f"{previous}/", f"{root}/"), (Path(previous).as_uri() + "/", root.as_uri() + "/")]
    with contextlib.closing(sqlite3.connect(store, timeout=60)) as db, db:
        db.execute("BEGIN IMMEDIATE")  # the write lock first: no reader to upgrade from
        tables = [
            name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        ]
        for table in tables:
            columns = [row[1] for row in db.execute(f'PRAGMA table_info("{table}")')]
            for column in columns:
                for old, new in pairs:
                    db.execute(
                        f'UPDATE "{table}" SET "{column}" = REPLACE("{column}", ?, ?) '
                        f'WHERE typeof("{column}") = \'text\' AND instr("{column}", ?) > 0',
                        (old, new, old),
                    )
