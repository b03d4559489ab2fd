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
from tasks.store.content import fingerprint, near_pairs
from tasks.store.ids import pair_id
from tasks.store.pairs import ParquetPairs, decode_image, load_split_pairs
from tasks.store.workspace import DEFAULT_VARIANT, Workspace

HELDOUT_SEED = 1_000_003  # the built-in held-out scenes; training data uses small seeds
FLOOR_MIN = 2  # images in each real set of a floor (a covariance needs two)
FLOOR_SEED = 2_000_003  # the same scenes drawn again (position and size jitter) for the floor
SEED_RULE = "int(sha1(f'{pair_id}:{repeat}')[:15], 16)"


@dataclass(frozen=True)
class RealSets:
    """Two sets of real images, the floor of every distance: what a generator that draws
    from the data itself would score. `paired`: the second set is drawn from the first
    set's own prompts (item i of each shares a label), as a sweep's samples are drawn from
    the reference's prompts; otherwise the two sets are disjoint and independent."""

    first: np.ndarray  # (N, H, W, 3) uint8
    second: np.ndarray  # (N, H, W, 3) uint8
    first_ids: list[str]  # a prompt label per image
    second_ids: list[str]
    paired: bool
    how: str  # said beside the floor rows


@dataclass
class Prompts:
    name: str  # "val" or "heldout"
    captions: list[str]  # (N,) one per generated image
    pair_ids: list[str]
    repeats: list[int]  # how often this caption was used before, 0 first
    reference: np.ndarray  # (M, H, W, 3) uint8 real images
    reference_captions: list[str]  # (M,)
    reference_pair_ids: list[str]  # (M,) the prompt each reference image was drawn from
    digest: str  # names the data: part of the reference statistics' cache key
    floor: RealSets | None  # None: too few real images for two sets
    no_floor: str = ""  # why there is no floor

    def groups(self) -> tuple[np.ndarray, np.ndarray]:
        """Integer labels of the samples' and the reference images' prompts, in one label
        space: a sample and a reference image drawn from one prompt share a label."""
        labels: dict[str, int] = {}
        samples = [labels.setdefault(p, len(labels)) for p in self.pair_ids]
        reference = [labels.setdefault(p, len(labels)) for p in self.reference_pair_ids]
        return np.array(samples, dtype=np.int64), np.array(reference, dtype=np.int64)

    @property
    def seeds(self) -> list[int]:
        return [image_seed(p, r) for p, r in zip(self.pair_ids, self.repeats, strict=True)]


def image_seed(pid: str, repeat: int) -> int:
    """The initial-noise seed of an image: a function of its prompt's pair_id and repeat."""
    return int(hashlib.sha1(f"{pid}:{repeat}".encode()).hexdigest()[:15], 16)


def check_reference(
    workspace: Workspace, reference: np.ndarray, variant: str = DEFAULT_VARIANT
) -> dict[str, int]:
    """How many reference images are exact copies of an image in the train split of data
    variant `variant` (same pixels) and how many more are near copies (thumbnails within
    NEAR_PSNR_DB; tasks/store/content.py): every variant is split by content group, so the
    val images are in none; fresh held-out scenes may resemble training ones as any two
    drawings of one scene do."""
    train_images, _, _ = load_split_pairs(workspace.training_pairs(variant), workspace.raw)["train"]
    train = fingerprint(train_images.numpy())
    ref = fingerprint(reference)
    seen = set(train.pixel_hash)
    exact = sum(h in seen for h in ref.pixel_hash)
    close = len(np.unique(near_pairs(ref, train)[:, 0]))
    return {"images": len(ref), "exact": exact, "near": close - exact}


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
    half = min(n, m // 2)
    floor = RealSets(
        first=images[0::2][:half],
        second=images[1::2][:half],
        first_ids=list(val.pair_ids[0::2][:half]),
        second_ids=list(val.pair_ids[1::2][:half]),
        paired=False,
        how=f"two disjoint halves of the val images, {half} each (independent sets)",
    )
    return Prompts(
        name="val",
        captions=[val.captions[i % m] for i in range(n)],
        pair_ids=[val.pair_ids[i % m] for i in range(n)],
        repeats=[i // m for i in range(n)],
        reference=images,
        reference_captions=list(val.captions),
        reference_pair_ids=list(val.pair_ids),
        digest=hashlib.sha1("\n".join(sorted(val.pair_ids)).encode()).hexdigest()[:16],
        floor=floor if half >= FLOOR_MIN else None,
        no_floor=f"the val split has {m} images; a floor needs {2 * FLOOR_MIN}",
    )


def _heldout_prompts(workspace: Workspace, n: int) -> Prompts:
    first = ParquetPairs(workspace.pairs if workspace.pairs.exists() else workspace.raw)
    side = decode_image(first.image_bytes(0)).shape[0]
    scenes = [sample_scene(HELDOUT_SEED, i, 0.25) for i in range(n)]
    captions = [scene.caption(template) for scene, template in scenes]
    images = np.stack([render_scene(s, side, HELDOUT_SEED, i) for i, (s, _) in enumerate(scenes)])
    again = np.stack([render_scene(s, side, FLOOR_SEED, i) for i, (s, _) in enumerate(scenes)])
    ids = [pair_id(f"heldout://shapes/{HELDOUT_SEED}/{i}", c) for i, c in enumerate(captions)]
    return Prompts(
        name="heldout",
        captions=captions,
        pair_ids=ids,
        repeats=[0] * n,
        reference=images,
        reference_captions=captions,
        reference_pair_ids=ids,
        digest=f"shapes-heldout-{HELDOUT_SEED}-{n}-{side}",
        floor=RealSets(
            first=images,
            second=again,
            first_ids=ids,
            second_ids=ids,
            paired=True,
            how=f"the {n} held-out scenes drawn again from their captions (paired as the samples are)",
        ),
    )
