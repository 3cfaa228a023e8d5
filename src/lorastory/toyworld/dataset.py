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
        atomic_write_bytes(folder / f"{name}.png", _png(render(scene, style, size, seed=seed * 100_003 + index)))
        atomic_write_text(folder / f"{name}.txt", caption(scene, language, style, rng))
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
        atomic_write_bytes(folder / f"{tiny}.png", _png(render(scene, style, size // 3, seed=index)))
        atomic_write_text(folder / f"{tiny}.txt", caption(scene, language, style))
        panorama = render(scene, style, size, seed=index).resize((size * 3, size), Image.BICUBIC)
        atomic_write_bytes(folder / f"{wide}.png", _png(panorama))
        atomic_write_text(folder / f"{wide}.txt", caption(scene, language, style))
        bad.setdefault("too_small", []).append(tiny)
        bad.setdefault("wrong_aspect", []).append(wide)
    for index in range(max(1, count // 20)):
        source = result.good[-1 - index]
        copy = f"bad_duplicate_{index:02d}"
        atomic_write_bytes(folder / f"{copy}.png", (folder / f"{source}.png").read_bytes())
        atomic_write_text(folder / f"{copy}.txt", (folder / f"{source}.txt").read_text(encoding="utf-8"))
        bad.setdefault("duplicate", []).append(copy)
    for index in range(max(1, count // 10)):
        scene, language = fresh()
        other, _ = fresh()
        name = f"bad_caption_{index:02d}"
        atomic_write_bytes(folder / f"{name}.png", _png(render(scene, style, size, seed=10_000 + index)))
        atomic_write_text(folder / f"{name}.txt", caption(other, language, style))
        bad.setdefault("wrong_caption", []).append(name)
    whole = (folder / f"{result.good[0]}.png").read_bytes()
    atomic_write_bytes(folder / "bad_truncated.png", whole[: len(whole) // 2])
    atomic_write_text(folder / "bad_truncated.txt", caption(*scenes[0], style))
    bad["truncated"] = ["bad_truncated"]
    return result
