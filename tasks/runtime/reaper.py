"""No orphans: every process marble starts ends when marble ends, SIGKILL of marble included.

marble starts processes through libraries it does not control: img2dataset's download
workers, Prefect's temporary API server, DataLoader workers. `start_reaper()` (the CLI calls
it first) starts a small watcher process in a session of its own, connected to marble by a
pipe that only marble holds open. While marble lives, the watcher records marble's
descendants every `INTERVAL_S` (pid and start time, so a reused pid is never mistaken for
one of them). When the pipe reports end of file, marble has ended, however it ended; the
watcher then sends SIGTERM to every recorded descendant still running, and SIGKILL to what
is left after `GRACE_S`.

    python -m tasks.runtime.reaper PID FD     (what start_reaper runs)
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

from tasks.runtime.processes import alive, proc_stat, signal_alive

INTERVAL_S = 0.2
GRACE_S = 3.0
_pipe_to_reaper: int | None = None  # marble's end; closing it (exiting) wakes the reaper


def _stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, start time in clock ticks) of a process, None if it is gone."""
    fields = proc_stat(pid)
    return None if fields is None else (int(fields[1]), int(fields[19]))


def descendants(root: int) -> dict[int, int]:
    """pid -> start time of every process below `root` now."""
    parents: dict[int, list[int]] = {}
    starts: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _stat(int(entry))
            if stat is not None:
                parents.setdefault(stat[0], []).append(int(entry))
                starts[int(entry)] = stat[1]
    found: dict[int, int] = {}
    stack = [root]
    while stack:
        for child in parents.get(stack.pop(), []):
            if child not in found:
                found[child] = starts[child]
                stack.append(child)
    return found


def watch(pid: int, fd: int) -> None:
    """Record pid's descendants until fd reaches end of file, then end them all."""
    known: dict[int, int] = {}
    while True:
        known |= descendants(pid)
        ready, _, _ = select.select([fd], [], [], INTERVAL_S)
        if ready and not os.read(fd, 4096):
            break
    known = {p: s for p, s in known.items() if p != os.getpid()}
    signal_alive(known, signal.SIGTERM)
    deadline = time.monotonic() + GRACE_S
    while time.monotonic() < deadline and any(alive(p, s) for p, s in known.items()):
        time.sleep(0.1)
    signal_alive(known, signal.SIGKILL)


def start_reaper() -> None:
    """Watch this process: its descendants end when it ends. Linux only (/proc); a no-op
    elsewhere and when already started."""
    global _pipe_to_reaper
    if _pipe_to_reaper is not None or not Path("/proc/self/stat").exists():
        return
    read_end, write_end = os.pipe()  # both close-on-exec: no child inherits marble's end
    subprocess.Popen(
        [sys.executable, "-m", "tasks.runtime.reaper", str(os.getpid()), str(read_end)],
        pass_fds=(read_end,),
        start_new_session=True,  # out of marble's process group: a Ctrl-C does not stop it
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    os.close(read_end)
    _pipe_to_reaper = write_end


if __name__ == "__main__":
    watch(int(sys.argv[1]), int(sys.argv[2]))
