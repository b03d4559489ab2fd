"""MLflow tracking for training and evaluation tasks (the only module that imports mlflow).

Tracking URI: $MLFLOW_TRACKING_URI, else the MLflow server of a `marble up --database` running
for the workspace, else `sqlite:///$MARBLE_HOME/mlflow.db`; artifacts
under `$MARBLE_HOME/mlartifacts/`. A run can be resumed by id, so a training task that was
killed and restarted keeps logging into the same run.

MARBLE_TRACKING=off turns tracking off for training (benchmarks on a GPU machine that has
torch but not mlflow); on, the default, tracks; any other value is refused.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tasks.store.workspace import SERVICES_FILE, Workspace, atomic_write_bytes

SERVER_CHECK_S = 3.0  # how long a tracking server of `marble up` has to answer


def flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """{"a": {"b": 1}} -> {"a.b": "1"}: MLflow params are flat strings."""
    out: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = str(value)[:6000]
    return out


def code_version() -> str:
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            cwd=Path(__file__).parent,
            timeout=5,
        )
        return sha.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


class Tracker:
    """One MLflow run. Use as a context manager; `enabled=False` makes every call a no-op
    (DDP ranks other than 0)."""

    def __init__(
        self,
        workspace: Workspace,
        experiment: str,
        run_name: str,
        run_id: str | None = None,
        enabled: bool = True,
        parent_run_id: str | None = None,
    ):
        self.enabled = enabled
        self.run_id = run_id
        self.parent_run_id = parent_run_id  # a child run (one point of a sweep) of this run
        if not enabled:
            return
        import logging

        import mlflow

        logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)
        self._mlflow = mlflow
        uri = use_tracking_store(workspace)
        exp = mlflow.get_experiment_by_name(experiment)
        if exp is None:
            # through a tracking server, the server's artifact root (its own store, or S3)
            served = uri.startswith(("http://", "https://"))
            location = None if served else (workspace.mlartifacts / experiment).as_uri()
            self.experiment_id = mlflow.create_experiment(experiment, artifact_location=location)
        else:
            self.experiment_id = exp.experiment_id
        self._run_name = run_name

    def __enter__(self) -> Tracker:
        if self.enabled:
            run = self._mlflow.start_run(
                run_id=self.run_id,
                experiment_id=None if self.run_id else self.experiment_id,
                run_name=None if self.run_id else self._run_name,
                nested=self.parent_run_id is not None,
                parent_run_id=self.parent_run_id,
                log_system_metrics=_psutil_available() and self.parent_run_id is None,
            )
            self.run_id = run.info.run_id
            self._mlflow.set_tag("code_version", code_version())
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.enabled:
            self._mlflow.end_run(status="FAILED" if exc_type else "FINISHED")

    def log_params(self, params: Mapping[str, Any]) -> None:
        if self.enabled:
            existing = self._mlflow.get_run(self.run_id).data.params
            new = {k: v for k, v in flatten(params).items() if k not in existing}
            if new:
                self._mlflow.log_params(new)

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        if self.enabled:
            self._mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        if self.enabled:
            self._mlflow.log_artifact(str(path), artifact_path)

    def log_text(self, text: str, name: str) -> None:
        if self.enabled:
            self._mlflow.log_text(text, name)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        if self.enabled:
            self._mlflow.set_tags({k: str(v) for k, v in tags.items()})

    def log_figure(self, figure, name: str) -> None:
        if self.enabled:
            self._mlflow.log_figure(figure, name)

    def log_model(self, name: str, checkpoint_dir: Path, params: Mapping[str, Any]) -> str | None:
        """Record the checkpoint as an MLflow LoggedModel and register it under `name`."""
        if not self.enabled:
            return None
        model = self._mlflow.create_external_model(
            name=name,
            source_run_id=self.run_id,
            params=flatten(params),
            tags={"checkpoint_dir": str(checkpoint_dir)},
        )
        self._mlflow.register_model(f"models:/{model.model_id}", name)
        return model.model_id


# ---------------------------------------------------------------------------- where runs go


def external_tracking_uri() -> str | None:
    """The user's MLFLOW_TRACKING_URI, if any (marble never leaves its own in the
    environment: see `use_tracking_store`)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or None


def tracking_server_url(workspace: Workspace) -> str | None:
    """The MLflow server of a `marble up` for this workspace that keeps runs in PostgreSQL or
    artifacts on S3, while it answers: where runs made in this workspace outside the worker
    must go too. Read from the services file `marble up` writes (tasks/runtime/services.py). With
    SQLite and local artifacts, the server and every run share the workspace's files, and
    this is None."""
    import json
    import urllib.request

    try:
        state = json.loads((workspace.root / SERVICES_FILE).read_text())
        local = (state.get("database", "sqlite"), state.get("artifacts", "workspace"))
        url = state["mlflow_url"]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    if local == ("sqlite", "workspace") or not str(url).startswith("http://127.0.0.1:"):
        return None
    no_proxy = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with no_proxy.open(f"{url}/health", timeout=SERVER_CHECK_S):
            return url
    except OSError:  # not running any more: `marble down` or a crash
        return None


def use_tracking_store(workspace: Workspace) -> str:
    """Point MLflow at $MLFLOW_TRACKING_URI when the user set one, else at the MLflow server
    of a `marble up` on PostgreSQL for this workspace (its runs are not in the workspace's
    file), else at the workspace's own store (following the workspace if it moved); returns
    the URI.

    mlflow.set_tracking_uri also exports the URI as MLFLOW_TRACKING_URI for child
    processes; marble puts the variable back as the user had it, so a child working in
    another workspace, or a later call for another workspace, is not pinned to this one."""
    import mlflow

    user = external_tracking_uri()
    uri = user or tracking_server_url(workspace)
    if uri is None:
        follow_moved_workspace(workspace)
        uri = workspace.mlflow_uri
    mlflow.set_tracking_uri(uri)
    if user is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = user
    return uri


# ---------------------------------------------------------------------------- a moved workspace

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
    with _store_lock(workspace):
        previous = _read_marker(marker)
        store = workspace.root / "mlflow.db"
        if previous and previous != here and store.exists():
            _rewrite_paths(store, previous, workspace.root)
        if previous != here:
            atomic_write_bytes(marker, here.encode())


def _read_marker(marker: Path) -> str | None:
    return marker.read_text().strip() if marker.exists() else None


@contextlib.contextmanager
def _store_lock(workspace: Workspace):
    """An exclusive flock that waits for its holder (the workspace's output locks refuse
    at once instead); the system drops it when the holder dies."""
    folder = workspace.root / ".locks"
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / "mlflow-store.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


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


def training_tracker(workspace: Workspace, kind: str, name: str):
    """Tracker factory for one model's training: (run_id, enabled) -> Tracker, one MLflow run
    named <kind>-<name> in the experiment marble-train, resumable by run id."""
    tracking = tracking_enabled()

    def factory(run_id: str | None = None, enabled: bool = True) -> Tracker:
        return Tracker(workspace, "marble-train", f"{kind}-{name}", run_id, enabled and tracking)

    return factory


def tracking_enabled() -> bool:
    value = os.environ.get("MARBLE_TRACKING", "on").strip().lower()
    if value not in ("on", "off"):
        raise ValueError(f"MARBLE_TRACKING must be 'on' or 'off', got {value!r}")
    return value == "on"


def _psutil_available() -> bool:
    try:
        import psutil  # noqa: F401
    except ImportError:
        return False
    return True
