"""Toy world: a deterministic procedural generator of captioned pictures.

Scenes (a character or a shape, an object, the ground, day or night) are
sampled from a seed, described in Chinese and English, and drawn in one of
several render styles. The embedded default model is trained on the flat
style; the other styles are what a LoRA learns in the demo.
"""

from lorastory.toyworld.caption import caption
from lorastory.toyworld.render import render
from lorastory.toyworld.scene import Scene, sample_scene
from lorastory.toyworld.vocab import LANGUAGES, STYLES

__all__ = ["LANGUAGES", "STYLES", "Scene", "caption", "render", "sample_scene"]
