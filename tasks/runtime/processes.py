"""Which process is which: a pid names a process only together with its start time.

The kernel reuses pids, so anything that records a process to find it again (the reaper's
list of marble's descendants, the services `marble up` started, the owner of a temporary
folder) records the pair (pid, start time in clock ticks since boot, /proc/PID/stat field
22). A process is alive when its pid runs, is not a zombie, and started at the recorded time;
a recycled pid (same number, another start time) is not the process that was recorded.
Linux only (/proc); elsewhere every start time reads as unknown.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path


def proc_stat(pid: int | str) -> list[str] | None:
    """The fields of /proc/PID/stat after the process name (state, ppid, pgrp, ...; the
    start time in clock ticks is [19]); None when the process is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()  # the name may hold spaces and ")"


def start_time(pid: int | str) -> int | None:
    """The process's start time in clock ticks since boot; None when it has ended (a
    zombie has ended too: it only waits for its parent to read its status)."""
    fields = proc_stat(pid)
    return None if fields is None or fields[0] == "Z" else int(fields[19])


def alive(pid: int, start: int) -> bool:
    """Whether `pid` is still the process that started at `start` (clock ticks), and not a
    zombie: a finished process its parent has not waited for cannot be signalled away."""
    return start_time(pid) == start


def own_identity() -> tuple[int, int]:
    """(pid, start time) of this process; the start time is 0 where /proc is missing."""
    pid = os.getpid()
    return pid, start_time(pid) or 0


def signal_alive(known: dict[int, int], sig: int) -> None:
    """`sig` to every process of `known` (pid -> start time) that is still the one recorded."""
    for pid, start in known.items():
        if alive(pid, start):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass


# ---------------------------------------------------------------------------- supervised groups


@dataclass(frozen=True)
class Process:
    """A process marble started in a session of its own, and how it stops."""

    name: str
    pid: int
    start: int  # start time in clock ticks: (pid, start) names one process for ever
    stop_signals: tuple[str, ...]  # sent in order, a second apart, to the process group
    log: str


def group_members(leader: Process) -> list[int]:
    """Live processes of the leader's process group (the session it was started in) that
    started no earlier than the leader: what marble started there, and nothing else."""
    found = []
    for entry in os.listdir("/proc"):
        fields = proc_stat(entry) if entry.isdigit() else None
        if (
            fields is not None
            and fields[0] != "Z"
            and int(fields[2]) == leader.pid
            and int(fields[19]) >= leader.start
        ):
            found.append(int(entry))
    return found


def group_alive(process: Process) -> bool:
    """The leader or any process of its group still runs."""
    return alive(process.pid, process.start) or bool(group_members(process))


def _signal(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def stop_process(process: Process, grace_s: float) -> bool:
    """Stop the process and its group with its stop signals; SIGKILL after `grace_s`.
    Returns True when it ended on its own signals."""
    for i, name in enumerate(process.stop_signals):
        if i:
            time.sleep(1.0)
        _signal(group_members(process), getattr(signal, name))
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        if not group_members(process):
            return True
        time.sleep(0.2)
    _signal(group_members(process), signal.SIGKILL)
    return False


def spawn(
    name: str, argv: list[str], env: dict, cwd: Path, log: Path, stop: tuple[str, ...]
) -> Process:
    """Start `argv` in a session of its own (it outlives its starter and stops as one
    group), output appended to `log`; a process that exits at once raises ChildProcessError."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        popen = subprocess.Popen(
            argv,
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    start = start_time(popen.pid)
    if start is None:
        raise ChildProcessError(f"{name} exited at once; see {log}")
    return Process(name, popen.pid, start, stop, str(log))
