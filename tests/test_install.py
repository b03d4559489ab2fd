"""Install hygiene: the dataclasses backport stays out, telemetry is off, the CLI lists its commands."""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys

import pytest

import tasks  # noqa: F401


def test_dataclasses_backport_is_not_installed():
    # img2dataset depends on `dataclasses` 0.6, whose dataclasses.py shadows the standard
    # library in Prefect's server process ("unexpected keyword argument 'slots'").
    with pytest.raises(importlib.metadata.PackageNotFoundError):
        importlib.metadata.distribution("dataclasses")
    import dataclasses

    assert "site-packages" not in dataclasses.__file__


def test_telemetry_switches_are_set_on_import():
    assert os.environ["DO_NOT_TRACK"] == "true"
    assert os.environ["MLFLOW_DISABLE_TELEMETRY"] == "true"
    assert os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false"
    assert os.environ["NO_ALBUMENTATIONS_UPDATE"] == "1"
    assert os.environ["HF_HUB_OFFLINE"] == "1"


def test_cli_lists_every_subcommand():
    out = subprocess.run(
        [sys.executable, "-m", "flows.cli", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for command in ("run", "ingest", "filter", "train", "shapes"):
        assert f"    {command} " in out


def test_cli_bad_input_is_one_clear_line(tmp_path):
    bad = tmp_path / "list.csv"
    bad.write_text("link,text\nhttp://a/b.png,c\n")
    proc = subprocess.run(
        [sys.executable, "-m", "flows.cli", "--home", str(tmp_path / "h"), "ingest", str(bad)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert "marble: error:" in proc.stderr and "columns found: link, text" in proc.stderr
    assert "Traceback" not in proc.stderr
