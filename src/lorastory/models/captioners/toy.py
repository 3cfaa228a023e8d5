"""The toy world's captioner: the shipped toy CNN reads a picture's scene, the caption grammar writes it.

It captions toy-world pictures (any render style) in Chinese or English with
exactly the grammar the toy model was trained on (:func:`lorastory.toyworld.caption`),
or as tags (the attribute words). Weights ship in ``models/assets/toy/captioner``
(float16 safetensors, 1.4 MB); ``scripts/toy/train_toy_captioner.py`` trains them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from PIL import Image

from lorastory.errors import CaptionerError
from lorastory.models.captioners.base import Captioner, GenerationOptions, tags_text
from lorastory.models.captioners.toy_net import build_net, decode, to_input
from lorastory.models.toy import shipped_toy_dir
from lorastory.toyworld.caption import caption
from lorastory.toyworld.scene import Character, Scene
from lorastory.toyworld.vocab import CHARACTERS, COLOURS, GROUNDS, OBJECTS, POSITIONS, SHAPES, SIZES, TIMES
from lorastory.models.captioners.toy_net import ATTRIBUTES, attribute_hits
from lorastory.toyworld.render import render
from lorastory.toyworld.scene import sample_scene


def scene_tags(scene: Scene, language: str) -> list[str]:
    """The scene's attribute words as tags."""
    s = scene.subject
    words = ([CHARACTERS[s.hair], COLOURS[s.hair_colour], COLOURS[s.shirt_colour]] if isinstance(s, Character)
             else [SHAPES[s.shape], COLOURS[s.colour], SIZES[s.size]])
    words += [POSITIONS[scene.position], GROUNDS[scene.ground], TIMES[scene.time]]
    if scene.object is not None:
        words.append(OBJECTS[scene.object])
    return [getattr(word, language) for word in words]


class ToyCaptioner(Captioner):
    """Toy-world pictures → their scene → a caption in the toy grammar (zh or en)."""

    kind = "toy"
    styles = ("sentence", "tags")

    def __init__(self, net: Any, device: Any) -> None:
        self.source, self.net, self.device = "toy", net, device

    @classmethod
    def load(cls, device: Any) -> ToyCaptioner:
        from safetensors.torch import load_file

        weights = shipped_toy_dir("captioner") / "model.safetensors"
        if not weights.is_file():
            raise CaptionerError(f"this lorastory install has no toy captioner (missing {weights})")
        net = build_net()
        state = {k: v.float() if v.is_floating_point() else v for k, v in load_file(str(weights)).items()}
        net.load_state_dict(state)
        return cls(net.to(device).eval(), device)

    def scenes(self, images: Sequence[Image.Image]) -> list[Scene]:
        """The likeliest scene of each picture."""
        import torch

        with torch.inference_mode():
            return decode(self.net(to_input(list(images)).to(self.device)).cpu())

    def generate(
        self, images: Sequence[Image.Image], prompts: Sequence[str | None] | None, options: GenerationOptions
    ) -> list[list[str]]:
        if not images:
            return []
        if options.style == "tags":
            return [[tags_text(scene_tags(scene, options.language), options.language)] * options.num
                    for scene in self.scenes(images)]
        return [[caption(scene, options.language)] * options.num for scene in self.scenes(images)]


def held_out_accuracy(captioner: ToyCaptioner, style: str, count: int = 200, seed: int = 20_261_202) -> dict[str, float]:
    """Share of ``count`` new toy pictures (a seed the training never drew) with each attribute right, and all six."""
    import random


    rng = random.Random(seed)
    truths = [sample_scene(rng) for _ in range(count)]
    guesses = captioner.scenes([render(scene, style, 128, seed=seed + i) for i, scene in enumerate(truths)])
    hits = [attribute_hits(truth, guess) for truth, guess in zip(truths, guesses)]
    shares = {name: sum(hit[name] for hit in hits) / count for name in ATTRIBUTES}
    shares["all"] = sum(all(hit.values()) for hit in hits) / count
    return shares
