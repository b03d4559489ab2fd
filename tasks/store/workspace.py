"""The workspace: one root (MARBLE_HOME) that every stage reads from and writes to.

Layout::

    $MARBLE_HOME/
      data/source/   built-in URL list and ground truth
      data/raw/      img2dataset Parquet shards + pair_id, and the ingest manifest
      data/scores/   filter scores, one row per raw pair
      data/pairs/    kept pairs with their split (the training set of data variant "kept")
      data/variants/ the training set of every other data variant, one folder each
      checkpoints/   <kind>/<name>/ weights (safetensors) + config.json + state
      cache/         encoded training sets, keyed by what they were computed from
      results/       evaluations/, samples/ (Parquet, one file per sweep point), verdicts/
                     (one per sweep), plots/
      mlflow.db      MLflow tracking store; mlartifacts/ its artifacts

Stage outputs are written into a temporary sibling folder and renamed into place, so a
crash never leaves a half-written folder under its final name (tasks/store/files.py).
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tasks.store.locks import LockHeldError, file_lock

DEFAULT_HOME = "marble-home"
# Training sets a diffusion model may be trained on (a sweep axis), with what each holds.
DATA_VARIANTS = {
    "kept": "the filter's kept pairs: similarity above the keep rule's cut, duplicates dropped",
    "all": "every downloaded pair, unfiltered (duplicates dropped), split by picture as kept",
}
DEFAULT_VARIANT = "kept"
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

    def training_pairs(self, variant: str) -> Path:
        """The training set of a data variant: the kept pairs, or data/variants/<variant>."""
        if variant not in DATA_VARIANTS:
            raise ValueError(
                f"unknown data variant {variant!r}; choose from {', '.join(DATA_VARIANTS)}"
            )
        return (
            self.pairs if variant == DEFAULT_VARIANT else self.root / "data" / "variants" / variant
        )

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
    def verdicts(self) -> Path:
        """One Parquet file per sweep: its verdicts and their variance components."""
        return self.results / "verdicts"

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

    def lock(
        self, output: str, wait: bool = False, log=print
    ) -> contextlib.AbstractContextManager[None]:
        """Hold the lock of one stage output (`output_lock`)."""
        return output_lock(self.root, output, wait, log)


# ---------------------------------------------------------------------------- one writer at a time


class WorkspaceBusyError(ValueError):
    """Another run is writing the same stage output."""


@contextlib.contextmanager
def output_lock(root: Path, output: str, wait: bool = False, log=print) -> Iterator[None]:
    """An exclusive lock on one stage output of the workspace at `root`, for as long as the
    block runs; a second run stops at once with one line naming the run that holds it, or
    with `wait`, logs that line and waits for it.

    The lock is an flock on `.locks/<output>.lock` (store.locks): a crash never leaves a
    stale lock. The holder writes who it is into the file for that line."""
    path = Path(root) / ".locks" / f"{output}.lock"
    with contextlib.ExitStack() as held:
        try:
            fd = held.enter_context(file_lock(path, wait=False))
        except LockHeldError:
            holder = path.read_text(errors="replace").strip() or "unknown"
            if wait:
                log(f"{output} in {root} is held by another run ({holder}); waiting for it")
                fd = held.enter_context(file_lock(path, wait=True))
            else:
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
