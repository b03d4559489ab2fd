"""Keys that follow one image-text pair through every stage."""

from __future__ import annotations

import hashlib


def pair_id(url: str, caption: str) -> str:
    """First 16 hex digits of sha1(url + "\\n" + caption): the key every stage carries."""
    return hashlib.sha1(f"{url}\n{caption}".encode()).hexdigest()[:16]


def split_of(key: str, val_fraction: float = 0.05) -> str:
    """'train' or 'val', a pure function of a key (stable across runs and machines); pairs
    are split by the key of their picture's content group (`store.content`)."""
    bucket = int(hashlib.sha1(f"split:{key}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return "val" if bucket < val_fraction else "train"
