"""A WD14-style booru tagger (SmilingWolf's wd-*-tagger models) through onnxruntime.

The model folder holds ``model.onnx`` and ``selected_tags.csv`` (``tag_id,name,
category,count``; category 9 is the rating, 4 a character, 0 a general tag).
A picture is padded to a white square, resized to the model's input side and
fed as BGR values 0–255 in NHWC, as the taggers were trained; the model's
outputs are per-tag probabilities. A tag is kept above its threshold (general
0.35, character 0.85 by default, SmilingWolf's); the rating is the likeliest one.
onnxruntime is an optional extra (``pip install 'lorastory[tagger]'``), and it
does not pull torchvision.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from lorastory.errors import CaptionerError, MissingExtraError
from lorastory.fileio import display_path
from lorastory.models.captioners.base import Captioner, GenerationOptions, Tags, tags_text

MODEL_FILE = "model.onnx"
TAGS_FILE = "selected_tags.csv"
RATING, GENERAL, CHARACTER = 9, 0, 4


@dataclass(frozen=True)
class TagThresholds:
    """Probabilities a tag must reach to be kept."""

    general: float = 0.35
    character: float = 0.85


def is_tagger_folder(path: Path) -> bool:
    """A folder with the two files of a WD14 tagger."""
    return (path / MODEL_FILE).is_file() and (path / TAGS_FILE).is_file()


def read_tag_table(path: Path) -> tuple[list[str], np.ndarray]:
    """(tag names, category per tag) from ``selected_tags.csv``."""
    try:
        rows = list(csv.DictReader(io.StringIO(path.read_text(encoding="utf-8"))))
        names = [row["name"] for row in rows]
        categories = np.array([int(row["category"]) for row in rows])
    except (KeyError, ValueError, TypeError, UnicodeDecodeError) as err:
        raise CaptionerError(f"{display_path(path)}: not a tagger's tag table (needs name,category columns): {err}") from None
    if not names:
        raise CaptionerError(f"{display_path(path)}: no tags")
    return names, categories


def square_bgr(image: Image.Image, side: int) -> np.ndarray:
    """The picture on a white square, resized to ``side``, as float32 BGR 0–255 (H, W, 3)."""
    rgb = image.convert("RGB")
    longest = max(rgb.size)
    canvas = Image.new("RGB", (longest, longest), (255, 255, 255))
    canvas.paste(rgb, ((longest - rgb.width) // 2, (longest - rgb.height) // 2))
    if longest != side:
        canvas = canvas.resize((side, side), Image.BICUBIC)
    return np.asarray(canvas, dtype=np.float32)[:, :, ::-1].copy()


class Wd14Tagger(Captioner):
    """model.onnx + selected_tags.csv → tags above thresholds, character and general apart."""

    kind = "wd14"
    styles = ("tags",)

    def __init__(self, folder: Path, device: Any = None, thresholds: TagThresholds | None = None) -> None:
        try:
            import onnxruntime
        except ImportError:
            raise MissingExtraError("onnxruntime", "tagger", "A WD14 tagger") from None
        self.source = str(folder)
        self.names, self.categories = read_tag_table(folder / TAGS_FILE)
        self.thresholds = thresholds or TagThresholds()
        wanted = ["CUDAExecutionProvider"] if str(device or "").startswith("cuda") else []
        providers = [p for p in wanted if p in onnxruntime.get_available_providers()] + ["CPUExecutionProvider"]
        try:
            self.session = onnxruntime.InferenceSession(str(folder / MODEL_FILE), providers=providers)
        except Exception as err:  # noqa: BLE001  a corrupt or foreign file: the folder's fault, one line
            raise CaptionerError(f"cannot load tagger {display_path(folder / MODEL_FILE)}: {err}") from None
        self.device = providers[0]
        model_input = self.session.get_inputs()[0]
        self.input_name = model_input.name
        self.side = int(model_input.shape[1]) if isinstance(model_input.shape[1], int) else 448
        outputs = self.session.get_outputs()[0].shape
        if isinstance(outputs[-1], int) and outputs[-1] != len(self.names):
            raise CaptionerError(f"tagger {display_path(folder)}: the model gives {outputs[-1]} tags but "
                                 f"{TAGS_FILE} lists {len(self.names)}")

    def probabilities(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Per-tag probabilities, shape (pictures, tags)."""
        batch = np.stack([square_bgr(image, self.side) for image in images])
        return np.asarray(self.session.run(None, {self.input_name: batch})[0], dtype=np.float32)

    def tag(self, images: Sequence[Image.Image]) -> list[Tags]:
        if not images:
            return []
        return [self._tags(row) for row in self.probabilities(images)]

    def _tags(self, probs: np.ndarray) -> Tags:
        found = Tags()
        ratings = np.flatnonzero(self.categories == RATING)
        if ratings.size:
            found.rating = self.names[int(ratings[np.argmax(probs[ratings])])]
        for category, threshold, into in ((GENERAL, self.thresholds.general, found.general),
                                          (CHARACTER, self.thresholds.character, found.character)):
            index = np.flatnonzero((self.categories == category) & (probs >= threshold))
            for i in index[np.argsort(-probs[index], kind="stable")]:
                into.append((self.names[int(i)], float(probs[i])))
        return found

    def generate(
        self, images: Sequence[Image.Image], prompts: Sequence[str | None] | None, options: GenerationOptions
    ) -> list[list[str]]:
        """The tags as one caption per picture (a tagger has one answer: ``num`` copies of it)."""
        return [[tags_text(tags.names())] * options.num for tags in self.tag(images)]
