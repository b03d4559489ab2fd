"""What a stage's output was computed from, so that a rerun with unchanged inputs is skipped.

A stage that can be skipped writes a record, `_stage.json`, into its output folder (inside
the same atomic write as the output): a digest of its inputs (the data it read, its
settings, the digest of its own code) and its summary. A rerun computes the digest again;
equal, it returns the recorded summary with the reason it skipped.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

RECORD = "_stage.json"


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
