"""Exclusive file locks (flock): the system drops one when its holder dies, SIGKILL
included, so a crash never leaves a stale lock.

    with file_lock(path):                     # waits for the holder
    with file_lock(path, wait=False) as fd:   # LockHeldError at once when held
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path


class LockHeldError(BlockingIOError):
    """Another process holds the lock (only with wait=False)."""


@contextlib.contextmanager
def file_lock(path: Path, wait: bool = True) -> Iterator[int]:
    """Hold an exclusive flock on `path` (created when missing) for as long as the block
    runs; yields the open descriptor, so a holder may record who it is in the file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            raise LockHeldError(f"{path} is locked by another process") from None
        yield fd
    finally:
        os.close(fd)  # closing the descriptor releases the lock
