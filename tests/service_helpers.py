"""Starting and stopping `marble up` in tests (test_deployments.py, test_browser.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from tasks.runtime.processes import Process, group_alive


def marble(home: Path, *args: str, env: dict) -> subprocess.CompletedProcess:
    """The marble CLI of this environment, in a subprocess."""
    exe = Path(sys.executable).with_name("marble")
    return subprocess.run(
        [str(exe), "--home", str(home), *args],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip


def cli_env(tmp_path: Path) -> dict:
    """The environment for marble commands: the Prefect CLI's home in the temporary folder."""
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect-cli")}
    env.pop("MARBLE_HOME", None)
    return env


def started(home: Path) -> tuple[dict, list[Process]]:
    """services.json of a `marble up`, and the processes it names."""
    state = json.loads((home / "services.json").read_text())
    processes = [
        Process(**p | {"stop_signals": tuple(p["stop_signals"])}) for p in state["processes"]
    ]
    return state, processes


def assert_all_stopped(processes: list[Process]) -> None:
    time.sleep(0.5)
    assert processes and not any(group_alive(p) for p in processes), processes


def wait_final(client, run_id, timeout_s: float = 600):
    """Poll a Prefect flow run until it reaches a final state."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        run = client.read_flow_run(run_id)
        if run.state is not None and run.state.is_final():
            return run
        time.sleep(0.5)
    raise AssertionError(f"flow run {run_id} did not finish in {timeout_s} s")
