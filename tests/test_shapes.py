"""The built-in captioned shapes: determinism, attributes, caption grammar, wrong captions."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from eval.attributes import BACKGROUNDS, CAPTION_TEMPLATES, COLOURS, POSITIONS, parse_caption
from tasks.shapes.render import (
    FAULT_KINDS,
    FaultRates,
    ShapesSpec,
    build_table,
    render_png,
    render_scene,
    sample_scene,
)


def test_render_is_deterministic_and_seeded():
    spec = ShapesSpec(n=10, seed=3)
    assert render_png(spec, 4) == render_png(spec, 4)
    assert render_png(spec, 4) != render_png(ShapesSpec(n=10, seed=4), 4)
    image = np.asarray(Image.open(io.BytesIO(render_png(spec, 4))))
    assert image.shape == (32, 32, 3) and image.dtype == np.uint8


@pytest.mark.parametrize("index", range(40))
def test_render_draws_the_scene(index):
    """The object's colour sits at its position; the background colour at the far corner."""
    size = 64
    scene, _ = sample_scene(0, index, two_object_fraction=0.5)
    image = render_scene(scene, size, seed=0, index=index).astype(int)
    for obj in scene.objects:
        cx, cy = POSITIONS[obj.position]
        # triangles are thin at the apex: look a little below the centre
        px, py = int(cx * size), int(cy * size) + (3 if obj.shape == "triangle" else 0)
        np.testing.assert_array_equal(image[py, px], COLOURS[obj.colour])
    corner = (0, size - 1) if scene.objects[0].position != "right" else (0, 0)
    np.testing.assert_array_equal(image[corner], BACKGROUNDS[scene.background])


def test_size_changes_the_drawn_area():
    def area(size_name):
        from eval.attributes import Scene, ShapeObject

        scene = Scene((ShapeObject("red", "square", size_name, "centre"),), "gray")
        image = render_scene(scene, 64, seed=0, index=0)
        return (np.abs(image.astype(int) - BACKGROUNDS["gray"]).sum(-1) > 30).sum()

    assert area("large") > 2 * area("small")


def test_every_template_parses_back_to_its_scene():
    for index in range(200):
        scene, _ = sample_scene(7, index, two_object_fraction=0.5)
        for template in range(len(CAPTION_TEMPLATES)):
            assert parse_caption(scene.caption(template)) == scene


def test_caption_grammar_example():
    scene = parse_caption(
        "a large red circle on the left and a small blue square on the right, gray background"
    )
    assert [o.phrase() for o in scene.objects] == [
        "a large red circle on the left",
        "a small blue square on the right",
    ]
    assert scene.background == "gray"
    with pytest.raises(ValueError, match="shapes grammar"):
        parse_caption("a cat on a mat")


def test_wrong_captions_are_exact_and_really_wrong():
    spec = ShapesSpec(n=500, seed=1, wrong_caption_fraction=0.2)
    table = build_table(spec)
    assert table.caption_is_wrong.sum() == 100
    for i in range(spec.n):
        shown = parse_caption(table.captions[i])
        assert (shown != table.scenes[i]) == bool(table.caption_is_wrong[i])


def test_fault_counts_are_exact():
    spec = ShapesSpec(n=1000, faults=FaultRates(0.01, 0.02, 0.03, 0.0, 0.005))
    faults = build_table(spec).faults
    counts = {k: faults.count(k) for k in FAULT_KINDS}
    assert counts == {"not_found": 10, "corrupt": 20, "truncated": 30, "slow": 0, "redirect": 5}


def test_two_object_fraction_and_no_overlap():
    table = build_table(
        ShapesSpec(n=400, two_object_fraction=0.5, faults=FaultRates(0, 0, 0, 0, 0))
    )
    two = [s for s in table.scenes if len(s.objects) == 2]
    assert 140 < len(two) < 260
    assert all(
        {o.position for o in s.objects} in ({"left", "right"}, {"top", "bottom"}) for s in two
    )


@pytest.mark.parametrize("bad", [dict(n=0), dict(image_size=4), dict(wrong_caption_fraction=1.5)])
def test_bad_spec_is_refused(bad):
    with pytest.raises(ValueError):
        ShapesSpec(**bad)
    with pytest.raises(ValueError, match="fault rates"):
        FaultRates(0.5, 0.6, 0, 0, 0)
