"""A toy-world scene: what is in the picture, independent of how it is drawn or described."""

from __future__ import annotations

import random
from dataclasses import dataclass

from lorastory.toyworld.vocab import COLOURS, GROUNDS, OBJECTS, POSITIONS, SHAPES, SIZES, TIMES

# Colours that read on both day and night skies; white and black stay for shapes and shirts.
HAIR_COLOURS = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "black", "brown")


@dataclass(frozen=True)
class Character:
    """A standing figure; ``hair`` is "long" (a girl) or "short" (a boy)."""

    hair: str
    hair_colour: str
    shirt_colour: str


@dataclass(frozen=True)
class Shape:
    """A floating shape."""

    shape: str
    colour: str
    size: str


@dataclass(frozen=True)
class Scene:
    """One picture: a subject at a position, an optional object on another side, ground and time."""

    subject: Character | Shape
    position: str
    object: str | None
    object_position: str | None
    ground: str
    time: str

    def __post_init__(self) -> None:
        if self.position not in POSITIONS or self.ground not in GROUNDS or self.time not in TIMES:
            raise ValueError(f"unknown scene attribute in {self}")
        if (self.object is None) != (self.object_position is None):
            raise ValueError("object and object_position go together")
        if self.object is not None and (self.object not in OBJECTS or self.object_position == self.position):
            raise ValueError(f"object {self.object!r} must be known and not on the subject's side")
        subject = self.subject
        if isinstance(subject, Character):
            if subject.hair not in ("long", "short") or subject.hair_colour not in COLOURS or subject.shirt_colour not in COLOURS:
                raise ValueError(f"unknown character attribute in {subject}")
        elif subject.shape not in SHAPES or subject.colour not in COLOURS or subject.size not in SIZES:
            raise ValueError(f"unknown shape attribute in {subject}")


def sample_scene(rng: random.Random, character_share: float = 0.5) -> Scene:
    """A random scene; the same ``rng`` state gives the same scene."""
    if rng.random() < character_share:
        subject: Character | Shape = Character(
            hair=rng.choice(("long", "short")),
            hair_colour=rng.choice(HAIR_COLOURS),
            shirt_colour=rng.choice(tuple(COLOURS)),
        )
    else:
        subject = Shape(shape=rng.choice(tuple(SHAPES)), colour=rng.choice(tuple(COLOURS)), size=rng.choice(tuple(SIZES)))
    position = rng.choice(tuple(POSITIONS))
    obj = object_position = None
    if rng.random() < 0.6:
        obj = rng.choice(tuple(OBJECTS))
        object_position = rng.choice([p for p in ("left", "right") if p != position])
    return Scene(subject, position, obj, object_position, rng.choice(tuple(GROUNDS)), rng.choice(tuple(TIMES)))
