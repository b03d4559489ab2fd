"""The workspace: one root (MARBLE_HOME) that every stage reads from and writes to.

Layout::

    $MARBLE_HOME/
      data/source/   built-in URL list and ground truth
      data/raw/      img2dataset Parquet shards + pair_id, and the ingest manifest
      data/scores/   filter scores, one row per raw pair
      data/pairs/    kept pairs with their split
      checkpoints/   <kind>/<name>/ weights (safetensors) + config.json + state
      cache/         encoded training sets, keyed by what they were computed from
      results/       evaluations/, samples/ (Parquet, one file per sweep point), plots/
      mlflow.db      MLflow tracking store; mlartifacts/ its artifacts

Stage outputs are written into a temporary sibling folder and renamed into place, so a
crash never leaves a half-written folder under its final name.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import re
import shutil
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

DEFAULT_HOME = "marble-home"
SERVICES_FILE = "services.json"  # what `marble up` runs for a workspace (tasks/runtime/services.py)
CHECKPOINT_KINDS = ("autoencoder", "clip", "diffusion")
# A checkpoint name becomes a folder name: letters, digits, '.', '_', '-', no leading dot.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


@dataclass(frozen=True)
class Workspace:
    root: Path

    @classmethod
    def from_env(cls, root: str | os.PathLike | None = None) -> Workspace:
        """The workspace at `root`, else $MARBLE_HOME, else ./marble-home; refused when that
        path exists and is not a folder."""
        path = Path(root or os.environ.get("MARBLE_HOME") or DEFAULT_HOME).resolve()
        if path.exists() and not path.is_dir():
            raise ValueError(f"workspace {path} is a file, not a folder; choose another --home")
        return cls(path)

    def ensure_writable(self) -> None:
        """Create the workspace folder and write a probe file in it: an OSError naming the
        folder now, before a stage starts, when it cannot be written."""
        self.root.mkdir(parents=True, exist_ok=True)
        probe = self.root / f".write-probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()

    @property
    def source(self) -> Path:
        return self.root / "data" / "source"

    @property
    def raw(self) -> Path:
        return self.root / "data" / "raw"

    @property
    def scores(self) -> Path:
        return self.root / "data" / "scores"

    @property
    def pairs(self) -> Path:
        return self.root / "data" / "pairs"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    def checkpoint(self, kind: str, name: str) -> Path:
        """checkpoints/<kind>/<name>/; the name is refused unless it is a plain folder name."""
        if kind not in CHECKPOINT_KINDS:
            raise ValueError(
                f"unknown checkpoint kind {kind!r}; expected one of {CHECKPOINT_KINDS}"
            )
        if not _NAME.fullmatch(name):
            raise ValueError(
                f"checkpoint name {name!r} is not a plain folder name "
                "(letters, digits, '.', '_', '-'; no leading dot)"
            )
        return self.checkpoints / kind / name

    @property
    def cache(self) -> Path:
        return self.root / "cache"

    @property
    def results(self) -> Path:
        return self.root / "results"

    @property
    def evaluations(self) -> Path:
        """One Parquet file per evaluated sweep point: a row per metric."""
        return self.results / "evaluations"

    @property
    def samples(self) -> Path:
        """One Parquet file per evaluated sweep point: a row per generated image."""
        return self.results / "samples"

    @property
    def plots(self) -> Path:
        return self.results / "plots"

    @property
    def mlflow_uri(self) -> str:
        return f"sqlite:///{self.root / 'mlflow.db'}"

    @property
    def mlartifacts(self) -> Path:
        return self.root / "mlartifacts"

    def staging(self, name: str, key: str) -> Path:
        """A folder kept across crashes for resumable work (a download in progress), one per
        `key` (what the work is: a rerun of the same work resumes, other work starts apart)."""
        return self.root / "data" / f".{name}.staging-{key}"

    def lock(self, output: str) -> contextlib.AbstractContextManager[None]:
        """Hold the lock of one stage output (`output_lock`)."""
        return output_lock(self.root, output)


# ---------------------------------------------------------------------------- one writer at a time


class WorkspaceBusyError(ValueError):
    """Another run is writing the same stage output."""


@contextlib.contextmanager
def output_lock(root: Path, output: str) -> Iterator[None]:
    """An exclusive lock on one stage output of the workspace at `root`, for as long as the
    block runs; a second run stops at once with one line naming the run that holds it.

    The lock is an flock on `.locks/<output>.lock`, so the system drops it when its holder
    dies, SIGKILL included: a crash never leaves a stale lock."""
    folder = Path(root) / ".locks"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{output}.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "unknown"
            raise WorkspaceBusyError(
                f"{output} in {root} is being written by another run ({holder}); wait for "
                "it to finish or stop it"
            ) from None
        started = time.strftime("%Y-%m-%d %H:%M:%S")
        holder = f"pid {os.getpid()}, started {started}: {' '.join(sys.argv)[:200]}"
        os.ftruncate(fd, 0)
        os.pwrite(fd, holder.encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------- atomic outputs

_AT_FDCWD, _RENAME_EXCHANGE = -100, 2


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


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def recover_dir(final: Path) -> None:
    """Repair what a crash inside `atomic_dir` left: if `final` is missing but its previous
    version is still under its old-name, put it back; remove temporary and old folders of
    processes that are no longer running."""
    final = Path(final)
    if not final.parent.is_dir():
        return
    leftovers = sorted(final.parent.glob(f".{final.name}.old-*"), key=lambda p: p.stat().st_mtime)
    if not final.exists() and leftovers:
        leftovers.pop().rename(final)  # the newest previous version comes back
    for path in [*leftovers, *final.parent.glob(f".{final.name}.tmp-*")]:
        pid = path.name.rsplit("-", 2)[-2]
        if not (pid.isdigit() and _pid_alive(int(pid))):
            shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield an empty temporary folder; on success it replaces `final`, on error it is removed.

    The swap exchanges the two folders in one step where the system can (Linux), so after a
    kill at any instant `final` is the old version or the new one. Elsewhere it is two
    renames, and a kill between them leaves the old version under its old-name, which
    `recover_dir` (run here first, and by every later writer) puts back."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    recover_dir(final)
    tag = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp = final.parent / f".{final.name}.tmp-{tag}"
    tmp.mkdir()
    try:
        yield tmp
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


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write a file via a temporary sibling and rename: readers see the old or the new file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
