"""Shared fixtures. Servers bind 127.0.0.1 on free ports and stop when the test ends."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

import pytest

import tasks  # noqa: F401  (offline defaults before anything imports Prefect or MLflow)
from tasks.shapes.render import FaultRates, ShapesSpec
from tasks.shapes.server import serve_shapes
from tasks.store.workspace import Workspace


@pytest.fixture
def workspace(tmp_path) -> Workspace:
    return Workspace(tmp_path / "home")


# 120 pairs with 6 of each fault kind: counts after ingest are known exactly.
FAULTY_SPEC = ShapesSpec(n=120, faults=FaultRates(0.05, 0.05, 0.05, 0.05, 0.05), slow_delay_s=0.2)


@pytest.fixture(scope="module")
def faulty_source(tmp_path_factory):
    with serve_shapes(FAULTY_SPEC, tmp_path_factory.mktemp("source")) as source:
        yield source


@pytest.fixture(scope="session")
def prefect_api(tmp_path_factory) -> Path:
    """One Prefect test server (prefect_test_harness: a temporary database, a server on a free
    port of 127.0.0.1) for every test that runs flows in this process; stopped at the end of
    the session. Yields a copy of its database taken as it started (migrated, no runs yet):
    `prefect.db` in a new Prefect home saves a `marble` subprocess's temporary server the
    migrations (about 7 of its 14 s)."""
    from prefect.settings import PREFECT_SERVER_DATABASE_CONNECTION_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        database = PREFECT_SERVER_DATABASE_CONNECTION_URL.value().split(":///", 1)[1]
        template = tmp_path_factory.mktemp("prefect-template") / "prefect.db"
        with (
            contextlib.closing(sqlite3.connect(database)) as live,
            contextlib.closing(sqlite3.connect(template)) as copy,
        ):
            live.backup(copy)  # a consistent copy of a database in use
        yield template


@pytest.fixture(scope="session")
def ui_shapes_port() -> int:
    """The built-in data's port for the pipeline runs on the session's `marble up`: the same
    URLs in each, so a run there finds the pairs and models of an earlier one of the same
    settings and skips them (test_browser.py's run trains; test_deployments.py's, of the same
    small settings, then runs the chain from the API without training it again)."""
    from tasks.runtime.services import free_port

    return free_port()


@pytest.fixture(scope="session")
def ui_stack(tmp_path_factory):
    """One `marble up` (Prefect server, deployments, worker, MLflow UI; free ports, SQLite in a
    temporary workspace) for every test that needs the UI stack: test_browser.py, then
    test_deployments.py, whose last test takes it down and checks that nothing is left.
    Yields (home, env, the `up` result)."""
    from tests.service_helpers import cli_env, marble

    root = tmp_path_factory.mktemp("ui-stack")
    home, env = root / "home", cli_env(root)
    up = marble(home, "up", "--prefect-port", "0", "--mlflow-port", "0",
                "--timezone", "Europe/Berlin", env=env)  # fmt: skip
    try:
        yield home, env, up
    finally:
        if (home / "services.json").exists():  # a test failed before taking it down
            marble(home, "down", env=env)
