"""`services.json`: what `marble up` started for a workspace, read by everything that needs
to find those services (`marble down`, the tracking store, the CLI's links).

It records each service's process (pid and start time, so a later reader never mistakes
a process that reused a pid for it), the Prefect and MLflow addresses, the deployments'
pages, and where Prefect and MLflow keep their data.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from tasks.runtime.processes import Process
from tasks.store.files import atomic_write_text
from tasks.store.workspace import Workspace

STATE_FILE = "services.json"


class ServicesError(RuntimeError):
    """marble up / down cannot do what was asked (already running, a port taken, a
    service that does not become healthy, an unreadable services file)."""


@dataclass
class Services:
    home: str
    prefect_url: str
    mlflow_url: str
    pool: str
    processes: list[Process] = field(default_factory=list)
    deployments: dict[str, str] = field(default_factory=dict)  # name -> its page in the UI
    database: str = "sqlite"  # or the PostgreSQL URL, its password masked
    artifacts: str = "workspace"  # or the s3:// prefix the MLflow server stores artifacts in

    @property
    def api_url(self) -> str:
        return f"{self.prefect_url}/api"

    @property
    def local_stores(self) -> bool:
        """Prefect and MLflow keep everything in the workspace's own files."""
        return (self.database, self.artifacts) == ("sqlite", "workspace")


def read_state(workspace: Workspace) -> Services | None:
    """The workspace's services record; None when there is none."""
    path = workspace.root / STATE_FILE
    try:
        data = json.loads(path.read_text())
        processes = [
            Process(**p | {"stop_signals": tuple(p["stop_signals"])}) for p in data.pop("processes")
        ]
        return Services(**data, processes=processes)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise ServicesError(f"cannot read {path}: {e}; remove it if no services run") from e


def write_state(workspace: Workspace, services: Services) -> None:
    atomic_write_text(workspace.root / STATE_FILE, json.dumps(asdict(services), indent=2) + "\n")
