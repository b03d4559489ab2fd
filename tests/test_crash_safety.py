"""A stage output survives a kill at any instant of its swap, and two runs never write the
same output at once."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tasks.runtime.processes import start_time
from tasks.store.files import atomic_dir, atomic_write_bytes, recover_dir, writer_alive
from tasks.store.workspace import WorkspaceBusyError, output_lock

REPO = Path(__file__).resolve().parents[1]

# A child process that replaces `out` by a new version and is SIGKILLed at one point of the
# swap: a step of `atomic_dir` is wrapped so that its n-th call kills the process.
SWAP_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    import tasks.store.files as ws
    out, point, exchange = Path(sys.argv[1]), sys.argv[2], sys.argv[3] == "exchange"

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    if not exchange:
        ws.exchange_paths = lambda a, b: False  # a file system without RENAME_EXCHANGE
    real_rename, real_exchange, real_rmtree = Path.rename, ws.exchange_paths, ws.shutil.rmtree
    calls = {"rename": 0}

    def rename(self, target):
        calls["rename"] += 1
        if point == f"rename{calls['rename']}":
            die()
        return real_rename(self, target)

    def exchange(a, b):
        done = real_exchange(a, b)
        if point == "after_exchange":
            die()
        return done

    def rmtree(path, *args, **kwargs):
        if point == "before_cleanup":
            die()
        return real_rmtree(path, *args, **kwargs)

    Path.rename, ws.exchange_paths, ws.shutil.rmtree = rename, exchange, rmtree
    with ws.atomic_dir(out) as tmp:
        for k in range(50):
            (tmp / f"part-{k}").write_text("new")
        if point == "while_writing":
            die()
    """
)


def _version(folder: Path) -> str:
    texts = {p.read_text() for p in folder.iterdir()}
    assert len(texts) == 1, f"{folder} mixes versions"
    count = len(list(folder.iterdir()))
    version = texts.pop()
    assert count == (50 if version == "new" else 30), f"{folder}: {count} files of {version}"
    return version


@pytest.mark.parametrize(
    "exchange, point, expected",
    [
        ("exchange", "while_writing", "old"),
        ("exchange", "after_exchange", "new"),
        ("exchange", "before_cleanup", "new"),
        ("renames", "while_writing", "old"),
        ("renames", "rename1", "old"),  # killed before the first rename
        ("renames", "rename2", "old"),  # between the renames: out is missing until repaired
        ("renames", "before_cleanup", "new"),
    ],
)
def test_a_kill_anywhere_in_the_swap_leaves_the_old_or_the_new_version(
    tmp_path, exchange, point, expected
):
    out = tmp_path / "data" / "raw"
    out.mkdir(parents=True)
    for k in range(30):
        (out / f"part-{k}").write_text("old")
    script = tmp_path / "swap.py"
    script.write_text(SWAP_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, script, out, point, exchange], env=env, timeout=60)
    assert proc.returncode == -9  # killed where asked
    recover_dir(out)  # what the next writer does first
    assert _version(out) == expected
    assert sorted(p.name for p in out.parent.iterdir()) == ["raw"]  # nothing left behind
    with atomic_dir(out) as tmp:  # and the next swap works
        (tmp / "part-0").write_text("next")
    assert [p.read_text() for p in out.iterdir()] == ["next"]


def test_a_second_writer_stops_with_one_line_naming_the_first(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys, time
            from tasks.store.workspace import output_lock
            with output_lock({str(tmp_path)!r}, "raw"):
                print("locked", flush=True)
                time.sleep(60)
        """)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(WorkspaceBusyError) as busy:
            with output_lock(tmp_path, "raw"):
                pass
        assert f"pid {holder.pid}" in str(busy.value) and "\n" not in str(busy.value)
        with output_lock(tmp_path, "pairs"):  # another output is free
            pass
    finally:
        holder.kill()
        holder.wait()
    with output_lock(tmp_path, "raw"):  # a killed holder leaves no stale lock
        pass


# A child process that replaces a file through the atomic helper and is SIGKILLed at one
# point: after writing half the new content, or with the new file complete but not renamed.
FILE_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    import tasks.store.files as files
    out, point = Path(sys.argv[1]), sys.argv[2]

    def die(*args):
        os.kill(os.getpid(), signal.SIGKILL)

    if point == "before_rename":
        files.os.replace = die
    with files.atomic_file(out) as tmp:
        with open(tmp, "wb") as f:
            f.write(b"new " * 1000)
            f.flush()
            if point == "while_writing":
                die()
            f.write(b"new " * 1000)
    """
)


@pytest.mark.parametrize("point", ["while_writing", "before_rename"])
def test_a_file_written_through_the_atomic_helper_and_cut_off_leaves_the_old_file(tmp_path, point):
    out = tmp_path / "results" / "point.parquet"
    out.parent.mkdir()
    out.write_bytes(b"old")
    script = tmp_path / "write.py"
    script.write_text(FILE_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, script, out, point], env=env, timeout=60)
    assert proc.returncode == -9
    assert out.read_bytes() == b"old"
    assert len(list(out.parent.iterdir())) == 2  # the dead writer's temporary file
    atomic_write_bytes(out, b"next")  # the next writer removes it and writes whole
    assert sorted(p.name for p in out.parent.iterdir()) == ["point.parquet"]
    assert out.read_bytes() == b"next"


def test_a_temporary_of_a_recycled_pid_is_stale_and_one_of_a_live_writer_is_kept(tmp_path):
    """A writer is named by pid and start time: the same pid with another start time is a
    process that reused the pid, so what the dead writer left is removed."""
    out = tmp_path / "data" / "pairs"
    pid, start = os.getpid(), start_time(os.getpid())
    recycled = tmp_path / "data" / f".pairs.tmp-{pid}-{start + 1}-0123abcd"
    live = tmp_path / "data" / f".pairs.tmp-{pid}-{start}-4567cdef"
    recycled.mkdir(parents=True)
    live.mkdir()
    assert writer_alive(live) and not writer_alive(recycled)
    recover_dir(out)
    assert live.exists() and not recycled.exists()
    stale_file = tmp_path / f".x.json.tmp-{pid}-{start - 1}-89abcdef"
    stale_file.write_text("half")
    atomic_write_bytes(tmp_path / "x.json", b"{}")
    assert not stale_file.exists()
