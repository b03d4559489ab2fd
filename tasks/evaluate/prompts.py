"""What a sweep draws: the prompts, the seed of each image, and the real images it is
measured against.

"val": the val split of the kept pairs (captions repeat with fresh seeds when N exceeds it,
and the rows say so). "heldout", for the built-in data: N fresh scenes rendered with a seed
training never used, with their true captions. Each image's seed is derived from its
prompt's pair_id and repeat index (`SEED_RULE`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from tasks.shapes.render import render_scene, sample_scene
from tasks.store.ids import pair_id
from tasks.store.pairs import ParquetPairs, decode_image
from tasks.store.workspace import Workspace

HELDOUT_SEED = 1_000_003  # the built-in held-out scenes; training data uses small seeds
SEED_RULE = "int(sha1(f'{pair_id}:{repeat}')[:15], 16)"


@dataclass
class Prompts:
    name: str  # "val" or "heldout"
    captions: list[str]  # (N,) one per generated image
    pair_ids: list[str]
    repeats: list[int]  # how often this caption was used before, 0 first
    reference: np.ndarray  # (M, H, W, 3) uint8 real images
    reference_captions: list[str]  # (M,)
    digest: str  # names the data: part of the reference statistics' cache key

    @property
    def seeds(self) -> list[int]:
        return [image_seed(p, r) for p, r in zip(self.pair_ids, self.repeats, strict=True)]


def image_seed(pid: str, repeat: int) -> int:
    """The initial-noise seed of an image: a function of its prompt's pair_id and repeat."""
    return int(hashlib.sha1(f"{pid}:{repeat}".encode()).hexdigest()[:15], 16)


def build_prompts(workspace: Workspace, prompt_set: str, n: int) -> Prompts:
    builtin = (workspace.source / "truth.parquet").exists()
    if prompt_set == "auto":
        prompt_set = "heldout" if builtin else "val"
    if prompt_set == "heldout":
        if not builtin:
            raise ValueError(
                "prompt_set 'heldout' renders built-in scenes; this workspace has no built-in data (data/source/truth.parquet)"
            )
        return _heldout_prompts(workspace, n)
    val = ParquetPairs(workspace.pairs, "val")  # none there: an error that says to filter
    if len(val) == 0:
        raise ValueError(f"the val split of {workspace.pairs} is empty: no reference images")
    images = np.stack([decode_image(val.image_bytes(i)) for i in range(len(val))])
    m = len(val)
    return Prompts(
        name="val",
        captions=[val.captions[i % m] for i in range(n)],
        pair_ids=[val.pair_ids[i % m] for i in range(n)],
        repeats=[i // m for i in range(n)],
        reference=images,
        reference_captions=list(val.captions),
        digest=hashlib.sha1("\n".join(sorted(val.pair_ids)).encode()).hexdigest()[:16],
    )


def _heldout_prompts(workspace: Workspace, n: int) -> Prompts:
    first = ParquetPairs(workspace.pairs if workspace.pairs.exists() else workspace.raw)
    side = decode_image(first.image_bytes(0)).shape[0]
    scenes = [sample_scene(HELDOUT_SEED, i, 0.25) for i in range(n)]
    captions = [scene.caption(template) for scene, template in scenes]
    images = np.stack([render_scene(s, side, HELDOUT_SEED, i) for i, (s, _) in enumerate(scenes)])
    return Prompts(
        name="heldout",
        captions=captions,
        pair_ids=[
            pair_id(f"heldout://shapes/{HELDOUT_SEED}/{i}", c) for i, c in enumerate(captions)
        ],
        repeats=[0] * n,
        reference=images,
        reference_captions=captions,
        digest=f"shapes-heldout-{HELDOUT_SEED}-{n}-{side}",
    )
