"""Keys that follow one image-text pair through every stage."""

from __future__ import annotations

import hashlib


def pair_id(url: str, caption: str) -> str:
    """First 16 hex digits of sha1(url + "\\n" + caption): the key every stage carries."""
    return hashlib.sha1(f"{url}\n{caption}".encode()).hexdigest()[:16]


def split_of(pid: str, val_fraction: float = 0.05) -> str:
    """'train' or 'val', a pure function of the pair_id (stable across runs and machines)."""
    bucket = int(hashlib.sha1(f"split:{pid}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return "val" if bucket < val_fraction else "train"
