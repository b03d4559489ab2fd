"""MLflow tracking for training and evaluation tasks (the only module that imports mlflow).

Tracking URI: $MLFLOW_TRACKING_URI, else the MLflow server of a `marble up --database` running
for the workspace, else `sqlite:///$MARBLE_HOME/mlflow.db`; artifacts
under `$MARBLE_HOME/mlartifacts/`. A run can be resumed by id, so a training task that was
killed and restarted keeps logging into the same run.

MARBLE_TRACKING=off turns tracking off for training (benchmarks on a GPU machine that has
torch but not mlflow); on, the default, tracks; any other value is refused.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tasks.store.moved import follow_moved_workspace
from tasks.store.services_file import ServicesError, read_state
from tasks.store.workspace import Workspace

SERVER_CHECK_S = 3.0  # how long a tracking server of `marble up` has to answer
# MLflow 3's UI opens an experiment without a kind in its GenAI view (traces); marble's are
# model training, whose first page is the runs table with their metrics
EXPERIMENT_KIND = "mlflow.experimentKind"
MODEL_TRAINING = "custom_model_development"


def ui_page(base_url: str, run_id: str | None = None, experiment_id: str | None = None) -> str:
    """A page of the MLflow UI at base_url: a run's, an experiment's runs table, or the
    experiments. MLflow 3's UI opens every experiment in its GenAI view (traces) unless
    the address asks for the machine-learning one, whatever the experiment's kind."""
    where = f"runs/{run_id}" if run_id else f"experiments/{experiment_id or ''}".rstrip("/")
    return f"{base_url}/#/{where}?workflowType=machine_learning"


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
            self.experiment_id = mlflow.create_experiment(
                experiment, artifact_location=location, tags={EXPERIMENT_KIND: MODEL_TRAINING}
            )
        else:
            self.experiment_id = exp.experiment_id
            if exp.tags.get(EXPERIMENT_KIND) != MODEL_TRAINING:
                mlflow.MlflowClient().set_experiment_tag(
                    exp.experiment_id, EXPERIMENT_KIND, MODEL_TRAINING
                )
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
        _hide_spark_connect_from_a_bare_main()
        model = self._mlflow.create_external_model(
            name=name,
            source_run_id=self.run_id,
            params=flatten(params),
            tags={"checkpoint_dir": str(checkpoint_dir)},
        )
        self._mlflow.register_model(f"models:/{model.model_id}", name)
        return model.model_id


def _hide_spark_connect_from_a_bare_main() -> None:
    """MLflow's model registration infers a placeholder signature and, to ask whether its
    input is a Spark frame, imports pyspark.sql.connect. In a process whose __main__ has
    neither __spec__ nor __file__ (a Dask worker, any `python -c` child) that import takes
    itself for a doctest run and calls sys.exit(0), killing the process. There it can never
    import anyway, so mark it missing: the import fails as an ImportError, which MLflow
    expects."""
    main = sys.modules.get("__main__")
    bare = getattr(main, "__spec__", None) is None and not hasattr(main, "__file__")
    if bare and not hasattr(sys, "ps1"):
        sys.modules.setdefault("pyspark.sql.connect", None)


# ---------------------------------------------------------------------------- where runs go


def external_tracking_uri() -> str | None:
    """The user's MLFLOW_TRACKING_URI, if any (marble never leaves its own in the
    environment: see `use_tracking_store`)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or None


def tracking_server_url(workspace: Workspace) -> str | None:
    """The MLflow server of a `marble up` for this workspace that keeps runs in PostgreSQL or
    artifacts on S3, while it answers: where runs made in this workspace outside the worker
    must go too. Read from the services file `marble up` writes (store/services_file.py). With
    SQLite and local artifacts, the server and every run share the workspace's files, and
    this is None."""
    import urllib.request

    try:
        state = read_state(workspace)
    except ServicesError:
        return None
    if state is None or state.local_stores:
        return None
    url = state.mlflow_url
    if not url.startswith("http://127.0.0.1:"):
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
        follow_moved_workspace(workspace)  # the store follows a moved workspace (store.moved)
        uri = workspace.mlflow_uri
    mlflow.set_tracking_uri(uri)
    if user is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = user
    return uri


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
