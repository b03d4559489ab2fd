"""The pixel-level attribute detector reads rendered scenes back, also blurred and noisy."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from eval.attributes import BACKGROUNDS, COLOURS, Scene, ShapeObject
from eval.detector import ATTRIBUTES, attribute_scores, detect_scene, scene_matches
from tasks.shapes.render import render_scene, sample_scene

N_SCENES = 2000
TWO_OBJECT_FRACTION = 0.25


def _render(n: int, size: int, seed: int = 0) -> tuple[list[Scene], list[str], np.ndarray]:
    scenes, captions, images = [], [], []
    for index in range(n):
        scene, template = sample_scene(seed, index, TWO_OBJECT_FRACTION)
        scenes.append(scene)
        captions.append(scene.caption(template))  # every caption template
        images.append(render_scene(scene, size, seed, index))
    return scenes, captions, np.stack(images)


def _degrade(images: np.ndarray, noise_std: float, seed: int = 0) -> np.ndarray:
    """A 3x3 box blur (1 px radius), then Gaussian pixel noise; back to uint8."""
    blurred = ndimage.uniform_filter(images.astype(np.float64), size=(1, 3, 3, 1), mode="nearest")
    noisy = blurred + np.random.default_rng(seed).normal(0.0, noise_std, images.shape)
    return np.clip(np.round(noisy), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def renders32():
    return _render(N_SCENES, 32)


# ---------------------------------------------------------------------------- accuracy


def test_reads_renders_at_32px(renders32):
    scenes, captions, images = renders32
    scores = attribute_scores(images, captions)
    assert scores["all_correct"] >= 0.99, scores
    for attribute in ATTRIBUTES:
        assert scores[attribute] >= 0.995, (attribute, scores)
    # objects come back in caption order too, not only as the same set
    pairs = zip(scenes[:500], images[:500], strict=True)
    assert np.mean([detect_scene(image) == scene for scene, image in pairs]) >= 0.99


def test_reads_renders_at_64px():
    _, captions, images = _render(N_SCENES // 2, 64, seed=1)
    scores = attribute_scores(images, captions)
    assert scores["all_correct"] >= 0.995, scores


@pytest.mark.parametrize("size", [16, 24, 48])
def test_reads_other_sizes(size):
    _, captions, images = _render(200, size, seed=2)
    assert attribute_scores(images, captions)["all_correct"] >= 0.98


def test_robust_to_blur_and_noise(renders32):
    _, captions, images = renders32
    scores = attribute_scores(_degrade(images, noise_std=8.0), captions)
    assert scores["all_correct"] >= 0.95, scores


def test_robust_to_colour_shift(renders32):
    """Generated colours are a bit off: shift each image's channels by up to 15 levels."""
    _, captions, images = renders32
    shift = np.random.default_rng(3).uniform(-15, 15, (len(images), 1, 1, 3))
    shifted = np.clip(np.round(images + shift), 0, 255).astype(np.uint8)
    assert attribute_scores(shifted[:500], captions[:500])["all_correct"] >= 0.95


def test_two_objects_in_caption_order():
    for objects in (
        (
            ShapeObject("red", "circle", "large", "left"),
            ShapeObject("red", "square", "small", "right"),
        ),
        (
            ShapeObject("blue", "triangle", "small", "top"),
            ShapeObject("green", "circle", "large", "bottom"),
        ),
    ):
        scene = Scene(objects, "white")
        assert detect_scene(render_scene(scene, 32, seed=0, index=0)) == scene


# ---------------------------------------------------------------------------- no scene


@pytest.mark.parametrize("rgb", [*BACKGROUNDS.values(), *COLOURS.values(), (100, 100, 100)])
def test_uniform_image_is_no_scene(rgb):
    assert detect_scene(np.full((32, 32, 3), rgb, dtype=np.uint8)) is None


@pytest.mark.parametrize("size", [16, 32, 64])
def test_random_noise_is_no_scene(size):
    rng = np.random.default_rng(size)
    for _ in range(50):
        assert detect_scene(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) is None
    for std in (20.0, 40.0):  # noise around each background colour
        for rgb in BACKGROUNDS.values():
            noisy = np.clip(np.round(np.add(rgb, rng.normal(0, std, (size, size, 3)))), 0, 255)
            assert detect_scene(noisy.astype(np.uint8)) is None


def test_three_objects_is_no_scene():
    scene = Scene(
        (
            ShapeObject("red", "circle", "small", "left"),
            ShapeObject("blue", "square", "small", "right"),
            ShapeObject("green", "triangle", "small", "top"),
        ),
        "gray",
    )
    for size in (32, 64):
        assert detect_scene(render_scene(scene, size, seed=0, index=0)) is None


def test_rejects_bad_input():
    with pytest.raises(ValueError):
        detect_scene(np.zeros((32, 32), dtype=np.uint8))
    with pytest.raises(ValueError):
        detect_scene(np.zeros((8, 8, 3), dtype=np.uint8))
    with pytest.raises(TypeError):
        detect_scene(np.zeros((32, 32, 3), dtype=np.float32))
    with pytest.raises(ValueError):
        attribute_scores(np.zeros((2, 32, 32, 3), dtype=np.uint8), ["x"])


# ---------------------------------------------------------------------------- scoring


def _scene(*objects: ShapeObject, background: str = "gray") -> Scene:
    return Scene(objects, background)


RED_CIRCLE = ShapeObject("red", "circle", "large", "centre")
BLUE_SQUARE = ShapeObject("blue", "square", "small", "left")
GREEN_TRIANGLE = ShapeObject("green", "triangle", "large", "right")
YELLOW_SQUARE = ShapeObject("yellow", "square", "large", "top")


def test_attribute_scores_closed_form():
    scenes = [
        _scene(RED_CIRCLE),
        _scene(BLUE_SQUARE, GREEN_TRIANGLE, background="white"),
        _scene(YELLOW_SQUARE, background="black"),
        _scene(GREEN_TRIANGLE),
    ]
    images = np.stack([render_scene(s, 32, seed=0, index=i) for i, s in enumerate(scenes)])
    captions = [s.caption() for s in scenes]
    exact = {key: 1.0 for key in (*ATTRIBUTES, "all_correct", "detected")}
    assert attribute_scores(images, captions) == exact

    # one wrong colour: only colour and all_correct lose a quarter
    wrong = list(captions)
    wrong[0] = _scene(ShapeObject("orange", "circle", "large", "centre")).caption(1)
    assert attribute_scores(images, wrong) == {**exact, "colour": 0.75, "all_correct": 0.75}

    # another image's caption (one object for two): every object attribute and the count
    # are wrong for it, the background too; the other three images stay right
    wrong = list(captions)
    wrong[1] = captions[2]
    expected = {**exact, **dict.fromkeys((*ATTRIBUTES, "all_correct"), 0.75)}
    assert attribute_scores(images, wrong) == expected

    # two wrong of four: shape on one image, size and background on another
    wrong = list(captions)
    wrong[3] = _scene(ShapeObject("green", "circle", "large", "right")).caption(2)
    wrong[2] = _scene(ShapeObject("yellow", "square", "small", "top")).caption()
    scores = attribute_scores(images, wrong)
    assert scores == {**exact, "shape": 0.75, "size": 0.75, "background": 0.75, "all_correct": 0.5}


def test_scene_matches_ignores_object_order():
    scene = _scene(BLUE_SQUARE, GREEN_TRIANGLE)
    image = render_scene(scene, 32, seed=0, index=0)
    swapped = _scene(GREEN_TRIANGLE, BLUE_SQUARE).caption()
    assert scene_matches(image, swapped) == dict.fromkeys((*ATTRIBUTES, "all_correct"), True)

    # swap the colours between the two objects: colour is wrong, the rest aligns
    other = _scene(
        ShapeObject("green", "square", "small", "left"),
        ShapeObject("blue", "triangle", "large", "right"),
    )
    result = scene_matches(image, other.caption())
    assert result == {**dict.fromkeys(ATTRIBUTES, True), "colour": False, "all_correct": False}


def test_no_detection_scores_nothing():
    blank = np.full((32, 32, 3), BACKGROUNDS["gray"], dtype=np.uint8)
    result = scene_matches(blank, _scene(RED_CIRCLE).caption())
    assert not any(result.values())
    scores = attribute_scores(blank[None], [_scene(RED_CIRCLE).caption()])
    assert all(value == 0.0 for value in scores.values())
