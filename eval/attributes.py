"""The built-in captioned-shapes world: its vocabulary, geometry and caption grammar.

This module is the single definition of what the built-in data can depict, and so the label
space of the attribute-accuracy metric: the attribute detector (`eval/detector.py`) reads
images back against it, and the renderer (`tasks/shapes/render.py`) draws from it, so both always
agree on what "a large red circle on the left" looks like. It sits in eval/ beside the
detector because eval/ may import nothing from tasks/; the renderer's import of it follows
the arrow tasks -> eval.

Geometry is in fractions of the image side, so any image size works.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# ---------------------------------------------------------------------------- vocabulary

COLOURS: dict[str, tuple[int, int, int]] = {  # name -> sRGB uint8
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (240, 210, 40),
    "purple": (140, 60, 180),
    "orange": (245, 140, 30),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "gray": (128, 128, 128),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
SIZES: dict[str, float] = {"small": 0.13, "large": 0.22}  # half-extent / image side
POSITIONS: dict[str, tuple[float, float]] = {  # name -> centre (x, y) / image side
    "left": (0.25, 0.5),
    "right": (0.75, 0.5),
    "top": (0.5, 0.25),
    "bottom": (0.5, 0.75),
    "centre": (0.5, 0.5),
}
# Two objects share an image only where they cannot overlap at any size.
POSITION_PAIRS: tuple[tuple[str, str], ...] = (("left", "right"), ("top", "bottom"))

WHERE: dict[str, str] = {  # position -> phrase used in captions
    "left": "on the left",
    "right": "on the right",
    "top": "at the top",
    "bottom": "at the bottom",
    "centre": "in the centre",
}
CAPTION_TEMPLATES: tuple[str, ...] = (
    "{objects}, {background} background",
    "a picture of {objects} on a {background} background",
    "{objects} against {background}",
)


@dataclass(frozen=True)
class ShapeObject:
    colour: str  # key of COLOURS
    shape: str  # one of SHAPES
    size: str  # key of SIZES
    position: str  # key of POSITIONS

    def phrase(self) -> str:
        return f"a {self.size} {self.colour} {self.shape} {WHERE[self.position]}"


@dataclass(frozen=True)
class Scene:
    objects: tuple[ShapeObject, ...]  # one or two, ordered as in the caption
    background: str  # key of BACKGROUNDS

    def caption(self, template: int = 0) -> str:
        objects = " and ".join(o.phrase() for o in self.objects)
        return CAPTION_TEMPLATES[template].format(objects=objects, background=self.background)


# ---------------------------------------------------------------------------- grammar

_OBJECT_RE = re.compile(
    r"a (?P<size>{sizes}) (?P<colour>{colours}) (?P<shape>{shapes}) (?P<where>{wheres})".format(
        sizes="|".join(SIZES),
        colours="|".join(COLOURS),
        shapes="|".join(SHAPES),
        wheres="|".join(re.escape(w) for w in WHERE.values()),
    )
)
_BACKGROUND_RE = re.compile(r"\b({})\b".format("|".join(BACKGROUNDS)))
_POSITION_OF_PHRASE = {phrase: name for name, phrase in WHERE.items()}


def parse_caption(caption: str) -> Scene:
    """Read a caption written by `Scene.caption` back into a Scene.

    Raises ValueError naming the caption when it does not follow the grammar.
    """
    matches = list(_OBJECT_RE.finditer(caption))
    objects = tuple(
        ShapeObject(m["colour"], m["shape"], m["size"], _POSITION_OF_PHRASE[m["where"]])
        for m in matches
    )
    tail = caption[matches[-1].end() :] if matches else caption  # background follows the objects
    backgrounds = _BACKGROUND_RE.findall(tail)
    if not objects or len(objects) > 2 or len(backgrounds) != 1:
        raise ValueError(f"caption does not follow the shapes grammar: {caption!r}")
    return Scene(objects, backgrounds[0])
