"""Describe a scene in English or Chinese, optionally naming the render style."""

from __future__ import annotations

import random

from lorastory.toyworld.scene import Character, Scene
from lorastory.toyworld.vocab import CHARACTERS, COLOURS, GROUNDS, OBJECTS, POSITIONS, SHAPES, SIDES_ZH, SIZES, STYLES, TIMES


def subject_phrase(scene: Scene, lang: str) -> str:
    """"a girl with red long hair and a blue shirt" / "一个红色长发、穿蓝色衣服的女孩"."""
    s = scene.subject
    if isinstance(s, Character):
        noun, hair, shirt = CHARACTERS[s.hair], COLOURS[s.hair_colour], COLOURS[s.shirt_colour]
        if lang == "en":
            return f"a {noun.en} with {s.hair} {hair.en} hair and a {shirt.en} shirt"
        return f"一个{hair.zh}{'长' if s.hair == 'long' else '短'}发、穿{shirt.zh}衣服的{noun.zh}"
    size, colour, shape = SIZES[s.size], COLOURS[s.colour], SHAPES[s.shape]
    if lang == "en":
        return f"a {size.en} {colour.en} {shape.en}"
    return f"一个{size.zh}的{colour.zh}{shape.zh}"


def caption(scene: Scene, lang: str = "en", style: str | None = None, rng: random.Random | None = None) -> str:
    """The scene's caption; with ``rng`` the clauses after the subject come in a random order."""
    if lang not in ("en", "zh"):
        raise ValueError(f"unknown language {lang!r}; choose en or zh")
    subject = subject_phrase(scene, lang)
    if lang == "en":
        head = f"{subject} {POSITIONS[scene.position].en}"
        rest = [GROUNDS[scene.ground].en, TIMES[scene.time].en]
        if scene.object is not None:
            rest.insert(0, f"{OBJECTS[scene.object].en} {POSITIONS[scene.object_position].en}")  # type: ignore[index]
    else:
        head = f"{subject}{POSITIONS[scene.position].zh}"
        rest = [GROUNDS[scene.ground].zh, TIMES[scene.time].zh]
        if scene.object is not None:
            rest.insert(0, f"{SIDES_ZH[scene.object_position]}有{OBJECTS[scene.object].zh}")  # type: ignore[index]
    if rng is not None:
        rng.shuffle(rest)
    parts = [head, *rest]
    if style is not None:
        parts.append(getattr(STYLES[style], lang))
    return (", " if lang == "en" else "，").join(parts)
