"""Write a toy-world image folder (PNG + caption .txt), with deliberately bad samples for curation.

The bad samples are what a scraped set has and a recipe must remove: pictures
too small, pictures of the wrong aspect ratio, exact duplicates, captions that
describe another picture, and one truncated file. Every one is listed in the
returned summary so a demo or a test can check what curation dropped.
"""

from __future__ import annotations

import io
import random
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from lorastory.fileio import atomic_write_bytes, atomic_write_text
from lorastory.toyworld.caption import caption
from lorastory.toyworld.render import render
from lorastory.toyworld.scene import Scene, sample_scene
from lorastory.toyworld.vocab import LANGUAGES, STYLES


@dataclass
class ToyDataset:
    """What was written: the folder, the good sample names and the bad ones by kind."""

    folder: Path
    good: list[str] = field(default_factory=list)
    bad: dict[str, list[str]] = field(default_factory=dict)


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def _write_sample(folder: Path, name: str, png: bytes, text: str) -> None:
    """One sample as ``name.png`` with its caption in ``name.txt``."""
    atomic_write_bytes(folder / f"{name}.png", png)
    atomic_write_text(folder / f"{name}.txt", text)


def write_toy_dataset(
    out: str | Path,
    count: int = 100,
    style: str = "outlined",
    lang: str = "both",
    seed: int = 0,
    size: int = 128,
    bad_samples: bool = True,
) -> ToyDataset:
    """``count`` captioned toy-world pictures in ``style`` (captions name the style), plus bad samples."""
    if style not in STYLES:
        raise ValueError(f"unknown style {style!r}; choose one of {', '.join(STYLES)}")
    if lang not in (*LANGUAGES, "both"):
        raise ValueError(f"unknown language {lang!r}; choose en, zh or both")
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    result = ToyDataset(folder)
    scenes: list[tuple[Scene, str]] = []
    for index in range(count):
        scene = sample_scene(rng)
        language = rng.choice(LANGUAGES) if lang == "both" else lang
        name = f"toy_{index:04d}"
        _write_sample(folder, name, _png(render(scene, style, size, seed=seed * 100_003 + index)),
                      caption(scene, language, style, rng))
        scenes.append((scene, language))
        result.good.append(name)
    if not bad_samples:
        return result
    bad = result.bad
    # Bad samples draw fresh scenes, so each is caught by the filter meant for it and no other.
    extra = random.Random(seed * 7919 + 1)

    def fresh() -> tuple[Scene, str]:
        return sample_scene(extra), (extra.choice(LANGUAGES) if lang == "both" else lang)

    for index in range(max(1, count // 20)):
        scene, language = fresh()
        tiny, wide = f"bad_small_{index:02d}", f"bad_aspect_{index:02d}"
        _write_sample(folder, tiny, _png(render(scene, style, size // 3, seed=index)), caption(scene, language, style))
        panorama = render(scene, style, size, seed=index).resize((size * 3, size), Image.BICUBIC)
        _write_sample(folder, wide, _png(panorama), caption(scene, language, style))
        bad.setdefault("too_small", []).append(tiny)
        bad.setdefault("wrong_aspect", []).append(wide)
    for index in range(max(1, count // 20)):
        source = result.good[-1 - index]
        copy = f"bad_duplicate_{index:02d}"
        _write_sample(folder, copy, (folder / f"{source}.png").read_bytes(),
                      (folder / f"{source}.txt").read_text(encoding="utf-8"))
        bad.setdefault("duplicate", []).append(copy)
    for index in range(max(1, count // 10)):
        scene, language = fresh()
        other, _ = fresh()
        name = f"bad_caption_{index:02d}"
        _write_sample(folder, name, _png(render(scene, style, size, seed=10_000 + index)), caption(other, language, style))
        bad.setdefault("wrong_caption", []).append(name)
    whole = (folder / f"{result.good[0]}.png").read_bytes()
    _write_sample(folder, "bad_truncated", whole[: len(whole) // 2], caption(*scenes[0], style))
    bad["truncated"] = ["bad_truncated"]
    return result
