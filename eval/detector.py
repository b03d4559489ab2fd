"""Pixel-level attribute detector: read a captioned-shapes image back into a `Scene`.

`detect_scene` inverts the renderer in `tasks/shapes/render.py` with plain image statistics (no
learning, no file I/O), so images a text-to-image model generates can be scored against
their captions. Geometry is in fractions of the image side, so any size from 16 px works.
How each part of the scene is read:

- **background**: the per-channel median of the border pixels, snapped to the nearest
  `BACKGROUNDS` colour. None when that median is farther than `BACKGROUND_TOLERANCE` from
  every background, when fewer than `BORDER_AGREEMENT` of the border pixels lie near it,
  or when the border noise (robust std of neighbouring-pixel differences) exceeds
  `MAX_NOISE`: such an image is noise, not a scene.
- **objects**: foreground = pixels farther than `FG_DISTANCE` (RGB Euclidean) from the
  measured background colour. Connected components (4-connectivity) smaller than
  `MIN_AREA_FRACTION` of the smallest object the renderer draws are speckle and dropped. A
  component wider (taller) than one object can be, `MAX_EXTENT` of the side, is two objects
  touching and is cut at its emptiest column (row) in the middle band `SPLIT_BAND`. One or
  two objects make a scene; none, three or more give None, as does a component covering
  over `MAX_COVER` of the image or elongated beyond `MAX_ASPECT`.
- **colour**: the per-channel median of the object's core: pixels of the component eroded
  by one pixel that are at least `CORE_FRACTION` as far from the background as its 90th
  percentile. A core whose pixels scatter (median distance to that colour over
  `MAX_SPREAD` of its contrast) is a clump of noise: None. The colour is then matched to
  each `COLOURS` entry c as the nearest point of the segment background + g (c -
  background), g in `COLOUR_GAIN`, because blur leaves a small object's core short of its
  full colour; the nearest c wins, and none within `COLOUR_TOLERANCE` gives None.
- **coverage**: alpha, the projection of (pixel - background) onto (object colour -
  background), so anti-aliased and blurred edge pixels count fractionally. It is kept on
  the component grown by `GROW` pixels, where the 3x3 mean of alpha rises above the
  background noise (`SUPPORT_Z`, `SUPPORT_FLOOR`), and on this object's side of another.
- **shape**: two scale-free cumulants of alpha, seen as a mass distribution with area A.
  Cumulants of a convolution add, and a symmetric, separable blur (box, Gaussian, the
  pixel grid itself) has zero third cumulant and zero mixed (x, x, y, y) cumulant, so both
  are blur-invariant:
  k3 = third cumulant of y / A^1.5: the apex-up triangle has its mass low, k3 =
  -8 / (135 * 2 sqrt 2) = -0.0210; circle and square 0. Below `TRIANGLE_CUT` of the
  triangle's value: triangle.
  k22 = mixed cumulant (x, x, y, y) / A^2: a square's x and y are independent, k22 = 0; a
  disc has -1 / (48 pi^2) = -0.00211. Below `SQUARE_CUT` of the disc's value: circle, else
  square.
- **size**: the renderer's half-extent r from the area and the shape (circle and square
  have area pi r^2, the triangle 2 r^2; blur keeps the area), compared with the geometric
  mean of the two `SIZES` (r / side 0.12-0.14 small, 0.20-0.24 large with jitter). An r
  outside `RADIUS_RANGE` gives None.
- **position**: the centre of the component's bounding box (for every shape the box
  centre is the renderer's centre; a triangle's centroid lies r / 3 below it), snapped to
  the nearest `POSITIONS` centre.
- **order**: two objects are ordered as captions order them (`POSITION_PAIRS`: left before
  right, top before bottom); pairs the renderer never draws are ordered by x, then y.

`attribute_scores` and `scene_matches` compare detections with parsed captions; see
`scene_matches` for the per-image rule (whole-scene equality ignores object order).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from eval.attributes import (
    BACKGROUNDS,
    COLOURS,
    POSITION_PAIRS,
    POSITIONS,
    SIZES,
    Scene,
    ShapeObject,
    parse_caption,
)

MIN_SIDE = 16  # smallest image side the detector reads
FG_DISTANCE = 40.0  # RGB distance from the background that makes a pixel foreground
BACKGROUND_TOLERANCE = 60.0  # border median farther than this from every background: None
BORDER_AGREEMENT = 0.5  # fraction of border pixels that must lie near the background
MAX_NOISE = 0.5 * FG_DISTANCE  # border noise (robust std per channel) above this: None
MAX_SPREAD = 0.5  # core pixels' median distance from their colour, share of its contrast
COLOUR_TOLERANCE = 60.0  # object colour farther than this from every palette colour: None
COLOUR_GAIN = (0.75, 1.0)  # share of the way from background to palette colour a core may lie
CORE_FRACTION = 0.75  # core: interior pixels this far from the background as the 90th pct
MIN_AREA_FRACTION = 0.5  # speckle: components below this share of the smallest object
MAX_EXTENT = 0.6  # one object is at most 2 * 0.238 of the side; wider is two objects
SPLIT_BAND = (0.44, 0.56)  # two objects at most reach 0.518 / start at 0.482 of the side
MAX_COVER = 0.5  # a component covering more of the image than this is not an object
MAX_ASPECT = 2.5  # nor is one whose bounding box is this much longer than wide
RADIUS_RANGE = (0.06, 0.4)  # nor is one whose half-extent r / side lies outside this
GROW = 3  # pixels added around a component for its soft coverage
SUPPORT_FLOOR = 0.02  # ...where the 3x3 mean of the coverage exceeds this, or
SUPPORT_Z = 2.5  # this many standard deviations of that mean on pure background noise
TRIANGLE_CUT = 0.3  # a triangle has k3 below this share of the ideal triangle's
SQUARE_CUT = 0.5  # not a triangle: a circle has k22 below this share of the ideal disc's

_BG_NAMES = tuple(BACKGROUNDS)
_BG_RGB = np.array([BACKGROUNDS[k] for k in _BG_NAMES], dtype=np.float64)
_COLOUR_NAMES = tuple(COLOURS)
_COLOUR_RGB = np.array([COLOURS[k] for k in _COLOUR_NAMES], dtype=np.float64)
_SMALL, _LARGE = sorted(SIZES, key=SIZES.get)
_SIZE_THRESHOLD = float(np.sqrt(SIZES[_SMALL] * SIZES[_LARGE]))  # on r / side
# smallest object area / side^2: the smallest triangle (area 2 r^2) at -8% jitter
_MIN_OBJECT_AREA = 2 * (SIZES[_SMALL] * 0.92) ** 2
# Blur-invariant shape cumulants, exact for the renderer's shapes (area A = sum of alpha):
# k3 = third cumulant of y / A^1.5, k22 = mixed cumulant of (x, x, y, y) / A^2.
_K3_TRIANGLE = -8 / (135 * 2 * np.sqrt(2))  # apex-up triangle; circle and square 0
_K22_CIRCLE = -1 / (48 * np.pi**2)  # disc; square 0, triangle -1/540
_SHAPE_AREA = {"circle": np.pi, "square": np.pi, "triangle": 2.0}  # area / r^2
_POSITION_NAMES = tuple(POSITIONS)
_POSITION_XY = np.array([POSITIONS[k] for k in _POSITION_NAMES], dtype=np.float64)
_PAIRS = frozenset(POSITION_PAIRS)

ATTRIBUTES = ("colour", "shape", "size", "position", "background", "n_objects")


# ---------------------------------------------------------------------------- detection


def _nearest(table: np.ndarray, value: np.ndarray) -> tuple[int, float]:
    distances = np.linalg.norm(table - value, axis=1)
    index = int(np.argmin(distances))
    return index, float(distances[index])


def _nearest_colour(colour: np.ndarray, background: np.ndarray) -> tuple[int, float]:
    """Palette colour nearest to `colour`, allowing a blurred mix with the background.

    Each palette colour c stands for the segment background + g (c - background) with the
    gain g in COLOUR_GAIN: blur leaves a small object's core short of its full colour.
    """
    offsets = _COLOUR_RGB - background  # (K, 3)
    gains = offsets @ (colour - background) / (offsets * offsets).sum(axis=1)
    gains = np.clip(gains, *COLOUR_GAIN)[:, None]
    distances = np.linalg.norm(background + gains * offsets - colour, axis=1)
    index = int(np.argmin(distances))
    return index, float(distances[index])


def _border(image: np.ndarray) -> np.ndarray:
    return np.concatenate([image[0], image[-1], image[1:-1, 0], image[1:-1, -1]])


def _noise_level(image: np.ndarray) -> float:
    """Robust per-channel noise std from differences of neighbouring border pixels.

    Differences ignore the background level and an object touching the border adds only
    its two edges, so the median absolute difference stays a noise estimate.
    """
    sides = (image[0], image[-1], image[:, 0], image[:, -1])
    steps = np.concatenate([np.diff(side, axis=0) for side in sides])
    return 1.4826 * float(np.median(np.abs(steps), axis=0).mean()) / np.sqrt(2)


def _split_wide(mask: np.ndarray) -> list[np.ndarray]:
    """Cut a component wider (taller) than one object at its emptiest middle column (row)."""
    height, width = mask.shape
    rows, cols = np.nonzero(mask)
    parts = [mask]
    for axis, extent, size in (
        (1, cols.max() - cols.min() + 1, width),
        (0, rows.max() - rows.min() + 1, height),
    ):
        if extent <= MAX_EXTENT * size:
            continue
        lo, hi = (int(round(f * size)) for f in SPLIT_BAND)
        counts = mask.sum(axis=1 - axis)[lo:hi]
        cut = lo + int(np.argmin(counts))
        first, second = mask.copy(), mask.copy()
        if axis == 1:
            first[:, cut:] = False
            second[:, :cut] = False
        else:
            first[cut:] = False
            second[:cut] = False
        parts = [first, second]
        break
    return parts


def _shape_statistics(alpha: np.ndarray) -> tuple[float, float, float]:
    """Area, vertical skew cumulant k3 and mixed cumulant k22 of alpha, scale-free."""
    area = float(alpha.sum())
    if area <= 0:
        return area, 0.0, 0.0
    ys, xs = np.indices(alpha.shape, dtype=np.float64)
    dx = xs - float((alpha * xs).sum()) / area
    dy = ys - float((alpha * ys).sum()) / area

    def moment(p: int, q: int) -> float:
        return float((alpha * dx**p * dy**q).sum()) / area

    k3 = moment(0, 3) / area**1.5
    k22 = (moment(2, 2) - moment(2, 0) * moment(0, 2) - 2 * moment(1, 1) ** 2) / area**2
    return area, k3, k22


def _read_object(
    image: np.ndarray, background: np.ndarray, noise: float, mask: np.ndarray, others: np.ndarray
) -> tuple[ShapeObject, tuple[float, float]] | None:
    """One object from its component `mask`, with its box centre (x, y) / side; or None."""
    height, width = mask.shape
    distance = np.linalg.norm(image - background, axis=-1)
    interior = ndimage.binary_erosion(mask)
    if interior.sum() < 4:
        interior = mask
    core = interior & (distance >= CORE_FRACTION * np.percentile(distance[interior], 90))
    colour = np.median(image[core], axis=0)
    contrast = float(np.linalg.norm(colour - background))
    spread = float(np.median(np.linalg.norm(image[core] - colour, axis=1)))
    if contrast < FG_DISTANCE or spread > MAX_SPREAD * contrast:
        return None  # no coherent colour: a clump of noise
    colour_index, colour_error = _nearest_colour(colour, background)
    if colour_error > COLOUR_TOLERANCE:
        return None

    rows, cols = np.nonzero(mask)
    box_h, box_w = np.ptp(rows) + 1, np.ptp(cols) + 1
    if max(box_h, box_w) > MAX_ASPECT * min(box_h, box_w):
        return None
    pad = GROW + 1
    top, bottom = max(rows.min() - pad, 0), min(rows.max() + pad + 1, height)
    left, right = max(cols.min() - pad, 0), min(cols.max() + pad + 1, width)
    window = (slice(top, bottom), slice(left, right))
    direction = colour - background
    alpha = (image[window] - background) @ direction / float(direction @ direction)
    alpha = np.clip(alpha, -0.5, 1.0)
    # a 3x3 mean has a third of the pixel noise, projected onto the colour direction
    threshold = max(SUPPORT_FLOOR, SUPPORT_Z * noise / 3 / float(np.linalg.norm(direction)))
    support = ndimage.uniform_filter(alpha, size=3, mode="nearest") > threshold
    region = ndimage.binary_dilation(mask[window], iterations=GROW) & ~others[window]
    if others.any():  # keep to this object's side of the other one's anti-aliased edge
        own = ndimage.distance_transform_edt(~mask)[window]
        other = ndimage.distance_transform_edt(~others)[window]
        region &= own < other
    alpha = np.where(region & (support | mask[window]), alpha, 0.0)
    area, k3, k22 = _shape_statistics(alpha)
    if area <= 0:
        return None
    if k3 < TRIANGLE_CUT * _K3_TRIANGLE:
        shape = "triangle"
    elif k22 < SQUARE_CUT * _K22_CIRCLE:
        shape = "circle"
    else:
        shape = "square"
    radius = np.sqrt(area / (width * height) / _SHAPE_AREA[shape])
    if not RADIUS_RANGE[0] <= radius <= RADIUS_RANGE[1]:
        return None
    size = _LARGE if radius > _SIZE_THRESHOLD else _SMALL

    centre = np.array(
        [(cols.min() + cols.max() + 1) / (2 * width), (rows.min() + rows.max() + 1) / (2 * height)]
    )
    position = _POSITION_NAMES[_nearest(_POSITION_XY, centre)[0]]
    obj = ShapeObject(_COLOUR_NAMES[colour_index], shape, size, position)
    return obj, (float(centre[0]), float(centre[1]))


def detect_scene(image: np.ndarray) -> Scene | None:
    """The Scene an (H, W, 3) uint8 image depicts, or None when it depicts none.

    None means: no background colour at the border (or a border of noise), no object, more
    than two, or a blob that is no object (too large, elongated, incoherent in colour, or
    far from every palette colour). Raises ValueError (TypeError) for another shape (dtype).
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) image, got shape {image.shape}")
    if image.dtype != np.uint8:
        raise TypeError(f"expected a uint8 image, got {image.dtype}")
    height, width = image.shape[:2]
    if min(height, width) < MIN_SIDE:
        raise ValueError(f"image sides must be at least {MIN_SIDE} px, got {height}x{width}")
    pixels = image.astype(np.float64)

    border = _border(pixels)
    background = np.median(border, axis=0)
    bg_index, bg_error = _nearest(_BG_RGB, background)
    if bg_error > BACKGROUND_TOLERANCE:
        return None
    if np.mean(np.linalg.norm(border - background, axis=1) <= FG_DISTANCE) < BORDER_AGREEMENT:
        return None

    noise = _noise_level(pixels)
    if noise > MAX_NOISE:
        return None
    foreground = np.linalg.norm(pixels - background, axis=-1) > FG_DISTANCE
    labels, count = ndimage.label(foreground)
    if count == 0:
        return None
    areas = np.bincount(labels.ravel(), minlength=count + 1)[1:]
    min_area = MIN_AREA_FRACTION * _MIN_OBJECT_AREA * height * width
    masks: list[np.ndarray] = []
    for label in np.flatnonzero(areas >= min_area) + 1:
        masks.extend(_split_wide(labels == label))
    masks = [m for m in masks if m.sum() >= min_area]
    if not masks or len(masks) > 2:
        return None
    if any(m.sum() > MAX_COVER * height * width for m in masks):
        return None

    union = np.logical_or.reduce(masks)
    found = []
    for mask in masks:
        read = _read_object(pixels, background, noise, mask, union & ~mask)
        if read is None:
            return None
        found.append(read)

    if len(found) == 2:
        found.sort(key=lambda item: (item[1][0], item[1][1]))  # by x, then y
        first, second = found[0][0].position, found[1][0].position
        if (second, first) in _PAIRS:
            found.reverse()
    return Scene(tuple(obj for obj, _ in found), _BG_NAMES[bg_index])


# ---------------------------------------------------------------------------- scoring


def _compare(detected: Scene | None, expected: Scene) -> dict[str, bool]:
    result = dict.fromkeys(ATTRIBUTES, False)
    if detected is None:
        return result
    result["background"] = detected.background == expected.background
    if len(detected.objects) != len(expected.objects):
        return result
    result["n_objects"] = True
    # Align the objects to the caption's: the order that agrees on the most attributes.
    keys = ("colour", "shape", "size", "position")
    best: tuple[int, dict[str, bool]] | None = None
    for order in itertools.permutations(detected.objects):
        pairs = list(zip(order, expected.objects, strict=True))
        agree = {k: [getattr(d, k) == getattr(e, k) for d, e in pairs] for k in keys}
        total = sum(sum(v) for v in agree.values())
        if best is None or total > best[0]:
            best = (total, {k: all(v) for k, v in agree.items()})
    assert best is not None
    result.update(best[1])
    return result


def scene_matches(image: np.ndarray, caption: str) -> dict[str, bool]:
    """Which attributes of `caption` the image shows, plus `all_correct`.

    A None detection gets every entry False. `background` compares the backgrounds. With
    a different number of objects, only `background` can be True. Otherwise the detected
    objects are aligned with the caption's in the order agreeing on the most attributes,
    and `colour` (`shape`, `size`, `position`) is True when every aligned pair agrees on
    it. `all_correct` is True exactly when the detected Scene equals the caption's up to
    the order of its objects.
    """
    result = _compare(detect_scene(image), parse_caption(caption))
    result["all_correct"] = all(result[k] for k in ATTRIBUTES)
    return result


def attribute_scores(
    images: np.ndarray | Sequence[np.ndarray], captions: Sequence[str]
) -> dict[str, float]:
    """Accuracy of each attribute over image-caption pairs (see `scene_matches`).

    Returns `colour`, `shape`, `size`, `position`, `background`, `n_objects` and
    `all_correct` as fractions of the pairs, and `detected`, the fraction of images the
    detector read a scene from at all. Captions must follow the shapes grammar.
    """
    if len(images) != len(captions):
        raise ValueError(f"{len(images)} images but {len(captions)} captions")
    if len(captions) == 0:
        raise ValueError("attribute_scores needs at least one image")
    totals = dict.fromkeys((*ATTRIBUTES, "all_correct", "detected"), 0)
    for image, caption in zip(images, captions, strict=True):
        detected = detect_scene(image)
        result = _compare(detected, parse_caption(caption))
        result["all_correct"] = all(result[k] for k in ATTRIBUTES)
        result["detected"] = detected is not None
        for key, value in result.items():
            totals[key] += int(value)
    return {key: value / len(captions) for key, value in totals.items()}
