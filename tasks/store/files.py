"""Files and folders written whole or not at all.

Every output is written under a temporary sibling name, flushed to disk (file, then the
folder that holds it), and renamed over its final name, so after a crash or a power cut a
reader finds the old version or the new one, never a half-written or empty file:

    atomic_write_bytes(path, data)      # or atomic_write_text(path, text)
    with atomic_file(path) as tmp:      # any writer that takes a path: Parquet,
        pq.write_table(table, tmp)      # safetensors, npz ...
    with atomic_dir(folder) as tmp:     # a whole folder (a stage output, a checkpoint)
        ...

A temporary name carries its writer's pid and start time (runtime.processes), so a later
writer removes the leftovers of writers that died, and never those of a writer still at
work, even when a dead writer's pid has been given to another process.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

from tasks.runtime.processes import alive, own_identity

_AT_FDCWD, _RENAME_EXCHANGE = -100, 2


# ---------------------------------------------------------------------------- temporary names


def temp_tag() -> str:
    """`<pid>-<start time>-<random>`: names a temporary path and the process writing it."""
    pid, start = own_identity()
    return f"{pid}-{start}-{uuid.uuid4().hex[:8]}"


def writer_alive(path: Path) -> bool:
    """Whether the process named in a temporary path's tag still runs (the same pid with the
    same start time); a name without a readable tag has no live writer."""
    parts = Path(path).name.rsplit("-", 3)
    if len(parts) != 4 or not (parts[1].isdigit() and parts[2].isdigit()):
        return False
    return alive(int(parts[1]), int(parts[2]))


def _remove_stale(folder: Path, pattern: str) -> None:
    for path in folder.glob(pattern):
        if not writer_alive(path):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)


# ---------------------------------------------------------------------------- durability


def fsync_folder(folder: Path) -> None:
    """Flush a folder's entries (a rename into it) to disk."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    for folder, _, names in os.walk(root):
        for name in names:
            if not os.path.islink(os.path.join(folder, name)):
                _fsync_file(Path(folder, name))
        fsync_folder(Path(folder))


# ---------------------------------------------------------------------------- files


@contextlib.contextmanager
def atomic_file(path: Path) -> Iterator[Path]:
    """Yield a temporary sibling path for the caller to write; on success it is flushed to
    disk and renamed to `path` (the folder flushed too), on error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(path.parent, f".{path.name}.tmp-*")
    tmp = path.parent / f".{path.name}.tmp-{temp_tag()}"
    try:
        yield tmp
        _fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_folder(path.parent)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write a file whole: readers see the old file or the new one."""
    with atomic_file(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


# ---------------------------------------------------------------------------- folders


def exchange_paths(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux renameat2 with RENAME_EXCHANGE): at every instant
    each name holds one complete folder. False where the system cannot, nothing changed."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except AttributeError:  # no such call in this C library
        return False
    result = renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if result == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):  # file system or kernel cannot
        return False
    raise OSError(err, os.strerror(err), str(a))


def recover_dir(final: Path) -> None:
    """Repair what a crash inside `atomic_dir` left: if `final` is missing but its previous
    version is still under its old-name, put it back; remove the temporary and old folders
    of writers that no longer run."""
    final = Path(final)
    if not final.parent.is_dir():
        return
    leftovers = sorted(final.parent.glob(f".{final.name}.old-*"), key=lambda p: p.stat().st_mtime)
    if not final.exists() and leftovers:
        leftovers.pop().rename(final)  # the newest previous version comes back
    _remove_stale(final.parent, f".{final.name}.old-*")
    _remove_stale(final.parent, f".{final.name}.tmp-*")


@contextlib.contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield an empty temporary folder; on success it replaces `final`, on error it is removed.

    Its files are flushed to disk before the swap. The swap exchanges the two folders in one
    step where the system can (Linux), so after a kill at any instant `final` is the old
    version or the new one. Elsewhere it is two renames, and a kill between them leaves the
    old version under its old-name, which `recover_dir` (run here first, and by every later
    writer) puts back."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    recover_dir(final)
    tag = temp_tag()
    tmp = final.parent / f".{final.name}.tmp-{tag}"
    tmp.mkdir()
    try:
        yield tmp
        _fsync_tree(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if not final.exists():
        tmp.rename(final)
    elif exchange_paths(tmp, final):
        shutil.rmtree(tmp, ignore_errors=True)  # it now holds the old version
    else:
        old = final.parent / f".{final.name}.old-{tag}"
        final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    fsync_folder(final.parent)
