"""What a stage's output was computed from, so that a rerun with unchanged inputs is skipped.

A stage that can be skipped writes a record, `_stage.json`, into its output folder (inside
the same atomic write as the output): a digest of its inputs (the data it read, its
settings, the digest of its own code) and its summary. A rerun computes the digest again;
equal, it returns the recorded summary with the reason it skipped.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterable
from pathlib import Path
from types import ModuleType
from typing import Any

RECORD = "_stage.json"


def files_digest(paths: Iterable[Path]) -> str:
    """sha1 over each file's name and content, in the given order."""
    h = hashlib.sha1()
    for path in paths:
        h.update(Path(path).name.encode() + b"\0")
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:16]


def source_digest(*modules: ModuleType) -> str:
    """sha1 of the source files of the modules: the code that computed an output."""
    return files_digest(Path(m.__file__) for m in modules)


def inputs_digest(inputs: dict[str, Any]) -> str:
    return hashlib.sha1(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()[:16]


def recorded(folder: Path, digest: str) -> dict | None:
    """The summary recorded in `folder` if its inputs digest is `digest`, with the reason
    the stage is skipped; None when the stage must run."""
    path = Path(folder) / RECORD
    if not path.exists():
        return None
    record = json.loads(path.read_text())
    if record.get("inputs_digest") != digest:
        return None
    return record["summary"] | {"skipped": f"inputs unchanged since {record['written']}"}


def write_record(folder: Path, digest: str, summary: dict[str, Any]) -> None:
    """Write the record into `folder` (the stage's temporary output folder)."""
    record = {
        "inputs_digest": digest,
        "written": time.strftime("%Y-%m-%d %H:%M:%S"),
        "summary": summary,
    }
    (Path(folder) / RECORD).write_text(json.dumps(record, indent=2, default=str))
