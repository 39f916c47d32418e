"""Concept vocabulary: 8 shapes x 6 colours = 48 concepts, with varied phrasings."""
from __future__ import annotations

from dataclasses import dataclass

# name, hue in degrees (HSV), synonyms used in phrasings
COLOURS = [
    ("red", 0.0, ["red", "crimson", "scarlet", "bright red"]),
    ("orange", 28.0, ["orange", "tangerine", "orange coloured", "amber"]),
    ("yellow", 56.0, ["yellow", "lemon yellow", "golden yellow", "canary yellow"]),
    ("green", 125.0, ["green", "emerald", "lime green", "grass green"]),
    ("blue", 222.0, ["blue", "azure", "cobalt blue", "royal blue"]),
    ("purple", 285.0, ["purple", "violet", "magenta", "lilac"]),
]

SHAPES = [
    ("circle", ["circle", "disc", "round dot", "round thing", "filled circle", "ball"]),
    ("square", ["square", "box", "square block", "tile", "square shape"]),
    ("triangle", ["triangle", "triangular shape", "three-sided shape", "wedge"]),
    ("star", ["star", "five-pointed star", "star shape", "starlet"]),
    ("ring", ["ring", "donut", "hoop", "circle outline", "annulus"]),
    ("cross", ["cross", "plus sign", "plus shape", "x-shaped cross"]),
    ("heart", ["heart", "heart shape", "love heart"]),
    ("hexagon", ["hexagon", "six-sided shape", "hex tile", "honeycomb cell"]),
]

TEMPLATES = [
    "{c} {s}", "{c} {s}", "a {c} {s}", "the {c} {s}", "{s} that is {c}", "the {c} {s} in the picture",
    "{c}-coloured {s}", "a {s} in {c}", "find the {c} {s}", "{C} {s}",
]


@dataclass(frozen=True)
class Concept:
    idx: int
    colour: str
    shape: str

    @property
    def name(self) -> str:
        return f"{self.colour} {self.shape}"


CONCEPTS = [Concept(ci * len(SHAPES) + si, c[0], s[0]) for ci, c in enumerate(COLOURS) for si, s in enumerate(SHAPES)]
NUM_CONCEPTS = len(CONCEPTS)
COLOUR_HUE = {c[0]: c[1] for c in COLOURS}
SHAPE_NAMES = [s[0] for s in SHAPES]
COLOUR_NAMES = [c[0] for c in COLOURS]

DEMO_PROMPTS = ["red circle", "blue square", "yellow star"]


def concept_index(colour: str, shape: str) -> int:
    return COLOUR_NAMES.index(colour) * len(SHAPES) + SHAPE_NAMES.index(shape)


def phrasings(c: Concept) -> list[str]:
    """All phrasings of a concept; index 0 is the canonical one ("red circle")."""
    cs = dict((x[0], x[2]) for x in COLOURS)[c.colour]
    ss = dict(SHAPES)[c.shape]
    out = [c.name]
    for t in TEMPLATES:
        for ccol in cs:
            for shp in ss:
                p = t.format(c=ccol, s=shp, C=ccol.capitalize())
                if p not in out:
                    out.append(p)
    return out


if __name__ == "__main__":
    print(NUM_CONCEPTS, "concepts")
    tot = 0
    for c in CONCEPTS:
        p = phrasings(c)
        tot += len(p)
    print(tot, "phrasings; e.g.", phrasings(CONCEPTS[0])[:12])
