"""`marble up` / `down` bookkeeping without the real services (test_deployments.py starts
them), and the nightly comparison."""

from __future__ import annotations

import json
import os
import sys
import time

import pytest

from flows.command_params import UpParams
from tasks.evaluate import nightly
from tasks.runtime import processes, services
from tasks.store.workspace import Workspace

# Like Prefect's worker: ignores SIGTERM, ends on the second SIGINT; it also starts a child
# in its group, which must end with it.
STUBBORN = """
import signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
count = []
def on_int(*_):
    count.append(1)
    if len(count) == 2:
        sys.exit(0)
signal.signal(signal.SIGINT, on_int)
subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
print("ready", flush=True)
while True:
    time.sleep(0.1)
"""


def _spawn(tmp_path, code: str, stop: tuple[str, ...]) -> processes.Process:
    process = processes.spawn(
        "stub", [sys.executable, "-c", code], dict(os.environ), tmp_path, tmp_path / "stub.log",
        stop,
    )  # fmt: skip
    deadline = time.monotonic() + 30
    while "ready" not in (tmp_path / "stub.log").read_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    return process


def test_stop_sends_its_signals_to_the_whole_group(tmp_path):
    process = _spawn(tmp_path, STUBBORN, ("SIGINT", "SIGINT"))
    assert len(processes.group_members(process)) == 2  # the stub and its child
    assert processes.stop_process(process, grace_s=10)
    assert not processes.group_alive(process) and processes.group_members(process) == []


def test_sigterm_alone_does_not_stop_it_so_it_is_killed(tmp_path):
    process = _spawn(tmp_path, STUBBORN, ("SIGTERM",))
    assert not processes.stop_process(process, grace_s=1)  # had to be killed
    time.sleep(0.2)
    assert not processes.group_alive(process)


def test_a_reused_pid_is_never_signalled():
    me = os.getpid()
    other = processes.Process("gone", me, processes.start_time(me) + 1, ("SIGKILL",), "")
    assert not processes.group_alive(other) and processes.group_members(other) == []
    processes.stop_process(other, grace_s=0.1)  # signals nothing: we are still here


def test_second_up_refuses_while_one_runs(tmp_path):
    workspace = Workspace(tmp_path / "home")
    workspace.root.mkdir()
    process = _spawn(tmp_path, "print('ready', flush=True); import time; time.sleep(600)",
                     ("SIGTERM",))  # fmt: skip
    record = services.Services(str(workspace.root), "http://127.0.0.1:1", "http://127.0.0.1:2",
                               services.POOL, [process])  # fmt: skip
    services.write_state(workspace, record)
    try:
        with pytest.raises(services.ServicesError, match="already runs"):
            services.up(workspace, 0, 0)
    finally:
        assert services.down(workspace, log=lambda _: None) == ["stub"]
    assert not (workspace.root / services.STATE_FILE).exists()
    assert services.down(workspace) == []  # nothing left: nothing to do


def test_two_ups_at_once_cannot_both_start(tmp_path):
    from tasks.store.workspace import WorkspaceBusyError

    workspace = Workspace(tmp_path / "home")
    workspace.root.mkdir()
    with workspace.lock("services"):  # another `marble up` between its check and its start
        with pytest.raises(WorkspaceBusyError, match="services"):
            services.up(workspace, 0, 0)
    assert not (workspace.root / services.STATE_FILE).exists()


def test_stale_state_does_not_block_and_a_corrupt_one_is_named(tmp_path):
    workspace = Workspace(tmp_path / "home")
    workspace.root.mkdir()
    gone = processes.Process("old", 1, 0, ("SIGTERM",), "")  # pid 1 never started at tick 0
    record = services.Services(str(workspace.root), "a", "b", services.POOL, [gone])
    services.write_state(workspace, record)
    assert services.running(workspace) is None
    (workspace.root / services.STATE_FILE).write_text("{not json")
    with pytest.raises(services.ServicesError, match="services.json"):
        services.running(workspace)


def test_busy_port_is_refused_before_anything_starts(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(services.ServicesError, match=f"port {port}"):
            services.up(Workspace(tmp_path / "home"), port, 0)
    assert not (tmp_path / "home" / services.STATE_FILE).exists()


def test_prefect_file_deploys_the_three_deployments():
    import yaml

    config = yaml.safe_load(services.PREFECT_FILE.read_text())
    by_name = {d["name"]: d for d in config["deployments"]}
    assert set(by_name) == {"pipeline", "evaluate-nightly", "ingest"}
    (schedule,) = by_name["evaluate-nightly"]["schedules"]
    assert schedule["cron"] == "{{ $MARBLE_NIGHTLY_CRON }}"
    for deployment in by_name.values():
        module, function = deployment["entrypoint"].split(":")
        assert (services.ROOT / module).exists() and function in (
            services.ROOT / module
        ).read_text()
    env = services.deploy_env("pool", "UTC", UpParams().nightly_cron)
    assert env["MARBLE_NIGHTLY_CRON"] == "0 2 * * *" and env["MARBLE_ROOT"] == str(services.ROOT)


@pytest.mark.parametrize(
    "field, value", [("timezone", "Mars/Base"), ("nightly_cron", "0 25 * * *"),
                     ("nightly_cron", "daily"), ("prefect_port", 70000)],
)  # fmt: skip
def test_up_params_refuse_bad_schedules_and_ports(field, value):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=field):
        UpParams(**{field: value})


# ---------------------------------------------------------------------------- nightly


def _row(metric, value, low, high, model="m", guidance=4.0, key="k", unet="u1"):
    return {"model": model, "grid_point": model, "guidance_scale": guidance, "metric": metric,
            "value": value, "ci_low": low, "ci_high": high, "n": 10, "inputs_key": key,
            "unet_digest": unet, "text_encoder_digest": "t", "autoencoder_digest": "a"}  # fmt: skip


def test_nightly_compare_marks_moves_beyond_the_intervals():
    before = [_row("fid", 10, 9, 11), _row("clip_score", 30, 29, 31), _row("cmmd", 1, 0.5, 1.5)]
    after = [
        _row("fid", 13, 12, 14),  # intervals apart, higher distance: regression
        _row("clip_score", 33, 32, 34),  # apart, higher score: improvement
        _row("cmmd", 1.4, 1.2, 1.6),  # overlapping: unchanged
        _row("fid", 5, 4, 6, guidance=8.0),  # not evaluated last night
    ]
    statuses = [c["status"] for c in nightly.compare(before, after)]
    assert statuses == ["regression", "improvement", "unchanged", "new"]
    lower = nightly.compare([_row("fid", 10, 9, 11)], [_row("fid", 7, 6, 8)])
    assert lower[0]["status"] == "improvement" and lower[0]["previous"] == 10
    line = nightly.verdict(nightly.compare(before, after))
    assert line.startswith("nightly: 1 regressions, 1 improvements") and "m@4 fid 10 -> 13" in line
    assert nightly.verdict(nightly.compare([], after)).startswith("nightly: first night")
    assert "| m | 4 | fid | 13 |" in nightly.as_markdown(nightly.compare(before, after))


def test_a_retrained_model_is_judged_against_the_spread_between_trainings():
    before = [_row("fid", 10, 9, 11)]
    retrained = [_row("fid", 13, 12, 14, unet="u2")]  # sampling intervals apart
    # the spread between trainings unknown: reported, never flagged
    unknown = nightly.compare(before, retrained)
    assert unknown[0]["status"] == "retrained"
    assert "not judged" in nightly.verdict(unknown)
    # σ_b = 2: a change of 3 is within 1.96 sqrt(0.26 + 0.26 + 8)
    spread = {"m@4:fid": 4.0}
    assert nightly.compare(before, retrained, spread)[0]["status"] == "unchanged"
    # σ_b = 0.5: 3 is beyond 1.96 sqrt(0.26 + 0.26 + 0.5) = 1.98
    assert nightly.compare(before, retrained, {"m@4:fid": 0.25})[0]["status"] == "regression"


def test_nightly_records_sort_by_night(tmp_path):
    workspace = Workspace(tmp_path)
    assert nightly.previous_record(workspace) is None
    nightly.write_record(workspace, "20261201T020000-aaaaaa", [_row("fid", 1, 0, 2)], {"x": 1.0})
    nightly.write_record(workspace, "20261202T020000-bbbbbb", [_row("fid", 2, 1, 3)], {})
    record = nightly.previous_record(workspace)
    assert record["sweep_id"] == "20261202T020000-bbbbbb" and record["rows"][0]["value"] == 2
    assert nightly.known_spreads({"y": 2.0}, {"training_spreads": {"x": 1.0, "y": 9.0}}) == {
        "x": 1.0,
        "y": 2.0,
    }
    assert json.loads(next(nightly.folder(workspace).glob("*aaaaaa.json")).read_text())["rows"]
