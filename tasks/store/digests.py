"""Digests that name what an output was computed from: settings, files, code.

Each is sha1 unless said otherwise; `json_digest` and `files_digest` keep the first 16 hex
digits (a key in a file name or a row), `file_digest` the whole hex (compared with a
published checksum).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from types import ModuleType
from typing import Any


def json_digest(value: Any) -> str:
    """sha1 of the value as JSON with sorted keys (anything JSON lacks as its str)."""
    blob = json.dumps(value, sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


def file_digest(path: Path, algorithm: str = "sha1") -> str:
    """The hex digest of one file's content, read in blocks."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


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
