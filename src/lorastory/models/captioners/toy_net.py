"""The toy captioner's network: a small CNN that reads a toy-world scene's attributes from a picture.

One head per attribute (subject kind; a character's hair length, hair and shirt
colours; a shape's kind, colour and size; the subject's position; the object and
its side; the ground; the time of day). The captioner turns the answers into a
scene and the toy world's caption grammar writes it in Chinese or English.
Only torch, so ``scripts/toy/train_toy_captioner.py`` can run it on a bare GPU machine.
"""

from __future__ import annotations

from typing import Any

from lorastory.toyworld.scene import HAIR_COLOURS
from lorastory.toyworld.vocab import COLOURS, GROUNDS, OBJECTS, POSITIONS, SHAPES, SIZES, TIMES
from lorastory.toyworld.scene import Character
from lorastory.toyworld.scene import Scene, Shape

INPUT = 64
OBJECT_CHOICES: tuple[tuple[str | None, str | None], ...] = ((None, None),) + tuple(
    (name, side) for name in OBJECTS for side in ("left", "right"))
# attribute → its values, in the order of the network's outputs
HEADS: dict[str, tuple[Any, ...]] = {
    "kind": ("character", "shape"),
    "hair": ("long", "short"),
    "hair_colour": HAIR_COLOURS,
    "shirt_colour": tuple(COLOURS),
    "shape": tuple(SHAPES),
    "shape_colour": tuple(COLOURS),
    "size": tuple(SIZES),
    "position": tuple(POSITIONS),
    "object": OBJECT_CHOICES,
    "ground": tuple(GROUNDS),
    "time": tuple(TIMES),
}
WIDTHS = (32, 64, 96, 128)
HIDDEN = 256


def build_net() -> Any:
    """The untrained network: 4 stride-2 convolutions (64 → 4 px), a hidden layer, all heads' logits."""
    from torch import nn

    layers: list[Any] = []
    channels = 3
    for width in WIDTHS:
        layers += [nn.Conv2d(channels, width, 3, stride=2, padding=1), nn.BatchNorm2d(width), nn.ReLU()]
        channels = width
    side = INPUT // 2 ** len(WIDTHS)
    outputs = sum(len(values) for values in HEADS.values())
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(channels * side * side, HIDDEN), nn.ReLU(),
                         nn.Linear(HIDDEN, outputs))


def split_heads(logits: Any) -> dict[str, Any]:
    """The network's output cut into one logit block per attribute."""
    blocks, start = {}, 0
    for name, values in HEADS.items():
        blocks[name] = logits[:, start : start + len(values)]
        start += len(values)
    return blocks


def to_input(images: list[Any]) -> Any:
    """RGB pictures as the network's input: 64 px squares, values -1..1, NCHW float32."""
    import numpy as np
    import torch
    from PIL import Image

    arrays = [np.asarray(image.convert("RGB").resize((INPUT, INPUT), Image.BILINEAR, reducing_gap=2.0), dtype=np.float32)
              for image in images]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2) / 127.5 - 1.0


def targets(scene: Any) -> dict[str, int]:
    """The index of each attribute's value in ``scene`` (-1: the attribute does not apply, e.g. hair of a shape)."""

    subject = scene.subject
    is_character = isinstance(subject, Character)
    return {
        "kind": 0 if is_character else 1,
        "hair": HEADS["hair"].index(subject.hair) if is_character else -1,
        "hair_colour": HEADS["hair_colour"].index(subject.hair_colour) if is_character else -1,
        "shirt_colour": HEADS["shirt_colour"].index(subject.shirt_colour) if is_character else -1,
        "shape": -1 if is_character else HEADS["shape"].index(subject.shape),
        "shape_colour": -1 if is_character else HEADS["shape_colour"].index(subject.colour),
        "size": -1 if is_character else HEADS["size"].index(subject.size),
        "position": HEADS["position"].index(scene.position),
        "object": OBJECT_CHOICES.index((scene.object, scene.object_position)),
        "ground": HEADS["ground"].index(scene.ground),
        "time": HEADS["time"].index(scene.time),
    }


def decode(logits: Any) -> list[Any]:
    """The likeliest valid scene per picture: the subject's side and the object's side never coincide."""

    blocks = {name: block.float().log_softmax(-1) for name, block in split_heads(logits).items()}
    scenes = []
    for i in range(logits.shape[0]):
        best = {name: int(block[i].argmax()) for name, block in blocks.items()}
        pick = {name: HEADS[name][index] for name, index in best.items()}
        pairs = [(float(blocks["position"][i, p] + blocks["object"][i, o]), p, o)
                 for p, position in enumerate(HEADS["position"]) for o, (_, side) in enumerate(OBJECT_CHOICES)
                 if side != position]
        _, p, o = max(pairs)
        if pick["kind"] == "character":
            subject: Any = Character(pick["hair"], pick["hair_colour"], pick["shirt_colour"])
        else:
            subject = Shape(pick["shape"], pick["shape_colour"], pick["size"])
        name, side = OBJECT_CHOICES[o]
        scenes.append(Scene(subject, HEADS["position"][p], name, side, pick["ground"], pick["time"]))
    return scenes


ATTRIBUTES = ("subject", "colours", "position", "objects", "ground", "time")


def attribute_hits(truth: Any, guess: Any) -> dict[str, bool]:
    """Which of the issue's six attributes a guessed scene gets right (subject = kind and shape/hair length)."""

    a, b = truth.subject, guess.subject
    same_kind = type(a) is type(b)
    if same_kind and isinstance(a, Character):
        subject, colours = a.hair == b.hair, (a.hair_colour, a.shirt_colour) == (b.hair_colour, b.shirt_colour)
    elif same_kind:
        subject, colours = (a.shape, a.size) == (b.shape, b.size), a.colour == b.colour
    else:
        subject = colours = False
    return {"subject": subject, "colours": colours, "position": truth.position == guess.position,
            "objects": (truth.object, truth.object_position) == (guess.object, guess.object_position),
            "ground": truth.ground == guess.ground, "time": truth.time == guess.time}
