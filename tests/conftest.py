"""Shared fixtures. Servers bind 127.0.0.1 on free ports and stop when the test ends."""

from __future__ import annotations

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
