"""Content identity: which pairs show the same picture, whatever their URL.

Pairs are keyed by URL and caption (`ids.pair_id`), so one image under two URLs is two
pairs. This module finds them, so that no picture lands on both sides of the train / val
split and an exact copy of a pair is trained on once.

Per image (`fingerprint`):
- pixel hash: sha1 of the decoded RGB pixels and their shape (16 hex digits). Equal pixels
  give equal hashes whatever the file's encoder, metadata or URL.
- a 16 x 16 RGB thumbnail (box filter), the image's perceptual fingerprint.

Two images are *near-duplicates* when their thumbnails agree to a PSNR of at least
`NEAR_PSNR_DB` (30 dB). Measured on the built-in shapes (docs/filter.md): a copy re-encoded
as JPEG at quality >= 85 scores >= 30.1 dB, one resized by a pixel and back >= 41 dB. Tiny
images are crowded: 3,032 of the 5,000 built-in images have another within 30 dB (the same
scene drawn again, its jitter a fraction of a pixel, or scenes that differ in one small
object), in groups of at most 48; they look alike, so they stay on one side. A DCT hash
(pHash) was measured too and is not used: on these flat 32-pixel images JPEG at quality 95
flipped up to 22 of its 64 bits, so no bit threshold separates copies from other pictures;
the thumbnail keeps colour, which pHash drops.

A *content group* is a connected set of exact and near-duplicates (union-find); its key is
the smallest pixel hash among its members, and the split is a function of that key
(`ids.split_of`), so every copy of a picture is on the same side. A pair is a *duplicate*
when an earlier pair (in reading order) has the same pixels and the same caption: it adds
nothing but weight, so it is dropped. Other captions of the same picture, and near-
duplicates, are kept, on the same side of the split.

The near-duplicate search compares every thumbnail with every other (one matrix product per
chunk, O(n^2): half a second for 5,000 images on 2 cores, by that scaling 30-40 s at
5 x 10^4); beyond about 10^5 images an approximate-neighbour index is the tool (not done
yet). Exact duplicates are a hash join at any size.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from PIL import Image

from tasks.store.ids import split_of

NEAR_PSNR_DB = 30.0  # thumbnails of a confirmed near-duplicate agree at least this well
THUMB = 16  # thumbnail side, pixels


def pixel_hash(rgb: np.ndarray) -> str:
    """sha1 of the pixels and their shape: equal only for identical decoded images."""
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    return hashlib.sha1(repr(rgb.shape).encode() + rgb.tobytes()).hexdigest()[:16]


def thumbnail(rgb: np.ndarray) -> np.ndarray:
    """(THUMB, THUMB, 3) uint8, box-filtered."""
    image = Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8))
    return np.asarray(image.resize((THUMB, THUMB), Image.BOX))


def psnr_db(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """PSNR in dB between uint8 images, over the last three axes (inf where equal)."""
    mse = ((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean(axis=(-3, -2, -1))
    with np.errstate(divide="ignore"):
        return 10 * np.log10(255.0**2 / mse)


@dataclass(frozen=True)
class Fingerprints:
    """Content identity of n images, in reading order."""

    pixel_hash: list[str]
    thumbs: np.ndarray  # (n, THUMB, THUMB, 3) uint8

    def __len__(self) -> int:
        return len(self.pixel_hash)


def fingerprint(images: Iterable[np.ndarray]) -> Fingerprints:
    """Fingerprints of decoded (H, W, 3) uint8 images."""
    hashes, thumbs = [], []
    for rgb in images:
        hashes.append(pixel_hash(rgb))
        thumbs.append(thumbnail(rgb))
    empty = np.zeros((0, THUMB, THUMB, 3), np.uint8)
    return Fingerprints(hashes, np.stack(thumbs) if thumbs else empty)


def near_pairs(a: Fingerprints, b: Fingerprints | None = None, chunk: int = 512) -> np.ndarray:
    """(k, 2) index pairs (i in a, j in b) that are near-duplicates, exact copies included;
    with b None, the pairs within a, i < j. Mean squared differences of every pair of
    thumbnails come from one matrix product per chunk: |x|^2 + |y|^2 - 2 x.y."""
    same = b is None
    b = a if same else b
    max_mse = 255.0**2 / 10 ** (NEAR_PSNR_DB / 10)
    x = a.thumbs.reshape(len(a), -1).astype(np.float32) - 128  # centred: small sums
    y = b.thumbs.reshape(len(b), -1).astype(np.float32) - 128
    dims = x.shape[1] if len(a) else 1
    x_sq, y_sq = (x * x).sum(1), (y * y).sum(1)
    found = [_exact_pairs(a.pixel_hash, None if same else b.pixel_hash)]
    for start in range(0, len(a), chunk):
        rows = slice(start, start + chunk)
        mse = (x_sq[rows, None] + y_sq[None, :] - 2 * x[rows] @ y.T) / dims
        close = mse <= max_mse
        if same:
            close &= np.arange(start, start + close.shape[0])[:, None] < np.arange(len(b))
        i, j = np.nonzero(close)
        found.append(np.stack([i + start, j], axis=1))
    return np.unique(np.concatenate(found), axis=0)


def _exact_pairs(a: list[str], b: list[str] | None) -> np.ndarray:
    """Index pairs with equal pixel hashes (a hash join). Within one list (b None) each copy
    is paired with the first only: enough to join them, and linear in the copies."""
    where: dict[str, list[int]] = {}
    for j, h in enumerate(a if b is None else b):
        where.setdefault(h, []).append(j)
    if b is None:
        pairs = [(k[0], j) for k in where.values() for j in k[1:]]
    else:
        pairs = [(i, j) for i, h in enumerate(a) for j in where.get(h, ())]
    return np.array(pairs, dtype=np.int64).reshape(-1, 2)


def _components(n: int, edges: np.ndarray) -> np.ndarray:
    """Union-find: the root index of each of n nodes."""
    parent = np.arange(n)

    def root(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for i, j in edges:
        ri, rj = root(int(i)), root(int(j))
        if ri != rj:
            parent[max(ri, rj)] = min(ri, rj)
    return np.array([root(x) for x in range(n)])


@dataclass(frozen=True)
class ContentPlan:
    """Per pair, in reading order: its content group, its split, and the earlier pair it
    copies (None when it is not a duplicate)."""

    pair_ids: list[str]
    group: list[str]  # the group's key: the smallest pixel hash among its members
    split: list[str]  # "train" / "val", a function of the group
    duplicate_of: list[str | None]

    def unique_ids(self) -> list[str]:
        """The pairs that are not duplicates, in reading order."""
        return [p for p, d in zip(self.pair_ids, self.duplicate_of, strict=True) if d is None]

    def counts(self) -> dict[str, int]:
        """For manifests and reports: duplicates and near-duplicate groups."""
        sizes: dict[str, int] = {}
        for g in self.group:
            sizes[g] = sizes.get(g, 0) + 1
        return {
            "images": len(self.pair_ids),
            "content_groups": len(sizes),
            "pairs_in_shared_groups": sum(s for s in sizes.values() if s > 1),
            "duplicates": sum(d is not None for d in self.duplicate_of),
        }


def plan_content(
    pair_ids: list[str], captions: list[str], fp: Fingerprints, val_fraction: float = 0.05
) -> ContentPlan:
    """Groups, splits and duplicates of the pairs (see the module docstring)."""
    if not len(pair_ids) == len(captions) == len(fp):
        raise ValueError("pair_ids, captions and fingerprints differ in length")
    # the near search runs over distinct pictures only (a list may hold one placeholder
    # image thousands of times); each copy then joins its picture's first occurrence
    first_at: dict[str, int] = {}
    for k, h in enumerate(fp.pixel_hash):
        first_at.setdefault(h, k)
    distinct = np.array(list(first_at.values()), dtype=np.int64)
    pictures = Fingerprints([fp.pixel_hash[k] for k in distinct], fp.thumbs[distinct])
    edges = np.concatenate([distinct[near_pairs(pictures)], _exact_pairs(fp.pixel_hash, None)])
    roots = _components(len(fp), edges)
    key: dict[int, str] = {}
    for r, h in zip(roots, fp.pixel_hash, strict=True):
        key[r] = min(key.get(r, h), h)
    group = [key[r] for r in roots]
    first: dict[tuple[str, str], str] = {}
    duplicate_of = []
    for pid, caption, h in zip(pair_ids, captions, fp.pixel_hash, strict=True):
        duplicate_of.append(first.get((h, caption)))
        first.setdefault((h, caption), pid)
    split = [split_of(g, val_fraction) for g in group]
    return ContentPlan(list(pair_ids), group, split, duplicate_of)
