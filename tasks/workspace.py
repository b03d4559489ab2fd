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
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

DEFAULT_HOME = "marble-home"
CHECKPOINT_KINDS = ("autoencoder", "clip", "diffusion")
# A checkpoint name becomes a folder name: letters, digits, '.', '_', '-', no leading dot.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


@dataclass(frozen=True)
class Workspace:
    root: Path

    @classmethod
    def from_env(cls, root: str | os.PathLike | None = None) -> Workspace:
        return cls(Path(root or os.environ.get("MARBLE_HOME") or DEFAULT_HOME).resolve())

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

    def staging(self, name: str) -> Path:
        """A folder kept across crashes for resumable work (e.g. a download in progress)."""
        return self.root / "data" / f".{name}.staging"


@contextlib.contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield an empty temporary folder; on success it replaces `final`, on error it is removed.

    The swap is two renames on one file system: `final` is never half-written.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tag = uuid.uuid4().hex[:8]
    tmp = final.parent / f".{final.name}.tmp-{tag}"
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = final.parent / f".{final.name}.old-{tag}"
    if final.exists():
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
