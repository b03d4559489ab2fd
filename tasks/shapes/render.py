"""Built-in data: captioned shapes, deterministic from a seed.

Every image is a function of (seed, index) alone, so a server can render any image on
demand and two runs with the same spec see identical pixels. The vocabulary and geometry
come from `eval.attributes`, which the attribute detector reads too.

A `ShapesSpec` decides, for each index:
- the scene (one or two objects, each with colour, shape, size, position; a background),
- the caption shown to the pipeline, which for a seeded fraction of pairs is another
  image's caption (a *wrong caption*, recorded only in the ground-truth table),
- the HTTP fault the server injects for it, if any (exact counts, seeded).
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from eval.attributes import (
    BACKGROUNDS,
    CAPTION_TEMPLATES,
    COLOURS,
    POSITION_PAIRS,
    POSITIONS,
    SHAPES,
    SIZES,
    Scene,
    ShapeObject,
)

FAULT_KINDS = ("not_found", "corrupt", "truncated", "slow", "redirect")
SUPERSAMPLE = 4  # render at 4x and box-filter down: smooth edges at 32 px
JITTER_POS = 0.03  # centre jitter, fraction of the side
JITTER_SIZE = 0.08  # relative half-extent jitter


DEFAULT_FAULT_RATE = 0.005  # of each kind: 25 of each in 5,000 pairs


@dataclass(frozen=True)
class FaultRates:
    """Fraction of served images that get each fault (exact: round(rate * n) images)."""

    not_found: float = DEFAULT_FAULT_RATE  # HTTP 404
    corrupt: float = DEFAULT_FAULT_RATE  # 200 with bytes that are not an image
    truncated: float = DEFAULT_FAULT_RATE  # 200 with the first part of a real PNG only
    slow: float = DEFAULT_FAULT_RATE  # served after `slow_delay_s`
    redirect: float = DEFAULT_FAULT_RATE  # 302 to the real image

    @classmethod
    def uniform(cls, rate: float) -> FaultRates:
        """The same rate for every kind of fault."""
        return cls(*(rate,) * len(FAULT_KINDS))

    def __post_init__(self):
        rates = [getattr(self, k) for k in FAULT_KINDS]
        if any(not 0.0 <= r <= 1.0 for r in rates) or sum(rates) > 1.0:
            raise ValueError(f"fault rates must lie in [0, 1] and sum to at most 1, got {self}")


@dataclass(frozen=True)
class ShapesSpec:
    n: int = 5000  # number of image-text pairs
    image_size: int = 32  # pixels per side
    seed: int = 0
    wrong_caption_fraction: float = 0.2  # pairs whose caption belongs to another image
    two_object_fraction: float = 0.25  # images with two objects
    faults: FaultRates = field(default_factory=FaultRates)
    slow_delay_s: float = 0.3

    def __post_init__(self):
        if not 1 <= self.n <= 10_000_000:
            raise ValueError(f"n must be between 1 and 10,000,000, got {self.n}")
        if not 8 <= self.image_size <= 1024:
            raise ValueError(f"image_size must be between 8 and 1024 pixels, got {self.image_size}")
        for name in ("wrong_caption_fraction", "two_object_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1], got {getattr(self, name)}")


# ---------------------------------------------------------------------------- scenes


def sample_scene(seed: int, index: int, two_object_fraction: float) -> tuple[Scene, int]:
    """The scene and caption template of image `index`; a pure function of its arguments."""
    rng = np.random.default_rng([seed, index, 0])
    colours, sizes = list(COLOURS), list(SIZES)

    def pick_object(position: str) -> ShapeObject:
        return ShapeObject(
            colour=colours[rng.integers(len(colours))],
            shape=SHAPES[rng.integers(len(SHAPES))],
            size=sizes[rng.integers(len(sizes))],
            position=position,
        )

    if rng.random() < two_object_fraction:
        pair = POSITION_PAIRS[rng.integers(len(POSITION_PAIRS))]
        objects = (pick_object(pair[0]), pick_object(pair[1]))
    else:
        objects = (pick_object(list(POSITIONS)[rng.integers(len(POSITIONS))]),)
    background = list(BACKGROUNDS)[rng.integers(len(BACKGROUNDS))]
    return Scene(objects, background), int(rng.integers(len(CAPTION_TEMPLATES)))


def render_scene(scene: Scene, image_size: int, seed: int, index: int) -> np.ndarray:
    """Draw a scene: (H, W, 3) uint8. Jitter of position and size is seeded by (seed, index)."""
    rng = np.random.default_rng([seed, index, 1])
    side = image_size * SUPERSAMPLE
    # pixel-centre coordinates in units of the image side
    coords = (np.arange(side) + 0.5) / side
    y, x = np.meshgrid(coords, coords, indexing="ij")  # (side, side) each
    canvas = np.empty((side, side, 3), dtype=np.float32)
    canvas[:] = BACKGROUNDS[scene.background]
    for obj in scene.objects:
        cx, cy = POSITIONS[obj.position] + rng.uniform(-JITTER_POS, JITTER_POS, size=2)
        r = SIZES[obj.size] * (1 + rng.uniform(-JITTER_SIZE, JITTER_SIZE))
        dx, dy = x - cx, y - cy
        if obj.shape == "circle":
            mask = dx**2 + dy**2 <= r**2
        elif obj.shape == "square":  # same area as the circle: side = r * sqrt(pi)
            half = r * np.sqrt(np.pi) / 2
            mask = (np.abs(dx) <= half) & (np.abs(dy) <= half)
        else:  # triangle, apex up, base at the bottom, bounding box 2r x 2r
            depth = (dy + r) / (2 * r)  # 0 at the apex, 1 at the base
            mask = (depth >= 0) & (depth <= 1) & (np.abs(dx) <= r * depth)
        canvas[mask] = COLOURS[obj.colour]
    pooled = canvas.reshape(image_size, SUPERSAMPLE, image_size, SUPERSAMPLE, 3).mean(axis=(1, 3))
    return np.round(pooled).astype(np.uint8)


def render_png(spec: ShapesSpec, index: int) -> bytes:
    scene, _ = sample_scene(spec.seed, index, spec.two_object_fraction)
    buf = io.BytesIO()
    Image.fromarray(render_scene(scene, spec.image_size, spec.seed, index)).save(buf, format="PNG")
    return buf.getvalue()


# ---------------------------------------------------------------------------- the table


@dataclass(frozen=True)
class ShapesTable:
    """Everything about the n pairs of a spec except the pixels."""

    scenes: list[Scene]
    true_captions: list[str]
    captions: list[str]  # what the pipeline sees
    caption_is_wrong: np.ndarray  # (n,) bool
    faults: list[str | None]  # FAULT_KINDS entry or None


def build_table(spec: ShapesSpec) -> ShapesTable:
    scenes, true_captions = [], []
    for i in range(spec.n):
        scene, template = sample_scene(spec.seed, i, spec.two_object_fraction)
        scenes.append(scene)
        true_captions.append(scene.caption(template))

    rng = np.random.default_rng([spec.seed, 2])
    n_wrong = round(spec.wrong_caption_fraction * spec.n)
    wrong = np.zeros(spec.n, dtype=bool)
    captions = list(true_captions)
    for i in rng.permutation(spec.n)[:n_wrong]:
        # Borrow the caption of another image that depicts something different.
        for _ in range(1000):
            j = int(rng.integers(spec.n))
            if scenes[j] != scenes[i]:
                captions[i], wrong[i] = true_captions[j], True
                break

    faults: list[str | None] = [None] * spec.n
    order = rng.permutation(spec.n)
    start = 0
    for kind in FAULT_KINDS:
        count = round(getattr(spec.faults, kind) * spec.n)
        for i in order[start : start + count]:
            faults[i] = kind
        start += count
    return ShapesTable(scenes, true_captions, captions, wrong, faults)


def write_as_raw_shard(spec: ShapesSpec, path, base_url: str = "http://127.0.0.1:1") -> None:
    """Render `spec` straight into one raw-style Parquet shard, as if ingested without a
    single failure: for tests and benchmarks that need pairs but not HTTP or img2dataset.
    Faults in the spec are ignored."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tasks.store.ids import pair_id

    table = build_table(spec)
    urls = [f"{base_url}/shapes/{spec.seed}/{i}.png" for i in range(spec.n)]
    rows = {
        "pair_id": [pair_id(u, c) for u, c in zip(urls, table.captions, strict=True)],
        "caption": table.captions,
        "url": urls,
        "status": ["success"] * spec.n,
        "png": [render_png(spec, i) for i in range(spec.n)],
    }
    pq.write_table(pa.table(rows), path)
