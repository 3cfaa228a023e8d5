"""A small generated image set with captions, for the demo and tests.

Deterministic for a seed: gradient-plus-noise pictures in the sizes and
aspect ratios real scraped sets have (so the reference recipe keeps some and
drops others), a few exact duplicates, and a few broken files (empty,
truncated) that a curation run must skip and report.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from lorastory.fileio import atomic_write_bytes, atomic_write_text

SIZES = [(1024, 1024), (1280, 1280), (2048, 1024), (1024, 1536), (512, 512), (768, 1024), (3000, 1000), (900, 2000)]
CAPTIONS = ["二次元，紫色长发少女", "anime girl with purple hair", "二次元，舞台上唱歌的少女", "a girl wishing on a shooting star"]


def synthetic_image(width: int, height: int, rng: np.random.Generator) -> Image.Image:
    """A smooth two-colour gradient with per-pixel noise (compresses like a photo)."""
    # Draw at a quarter size and upscale: smooth content, and cheap to generate.
    w, h = max(width // 4, 1), max(height // 4, 1)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    angle = rng.uniform(0, np.pi)
    t = (xs * np.cos(angle) + ys * np.sin(angle)) / (w * abs(np.cos(angle)) + h * abs(np.sin(angle)) + 1e-6)
    a, b = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    base = a[None, None, :] * (1 - t[..., None]) + b[None, None, :] * t[..., None]
    small = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
    return Image.fromarray(small, "RGB").resize((width, height), Image.BILINEAR)


def write_synthetic_folder(out: str | Path, count: int = 40, seed: int = 0, broken: bool = True) -> Path:
    """Write ``count`` captioned JPEGs (+ duplicates and broken files) into ``out``."""
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for index in range(count):
        width, height = SIZES[index % len(SIZES)]
        buffer = io.BytesIO()
        synthetic_image(width, height, rng).save(buffer, "JPEG", quality=88)
        atomic_write_bytes(folder / f"img_{index:03d}.jpg", buffer.getvalue())
        atomic_write_text(folder / f"img_{index:03d}.txt", CAPTIONS[index % len(CAPTIONS)])
    for index in range(0, min(count, 4)):  # exact copies: the deduplicator's work
        data = (folder / f"img_{index:03d}.jpg").read_bytes()
        atomic_write_bytes(folder / f"copy_{index:03d}.jpg", data)
        atomic_write_text(folder / f"copy_{index:03d}.txt", CAPTIONS[index % len(CAPTIONS)])
    if broken:
        atomic_write_bytes(folder / "broken_empty.jpg", b"")
        whole = (folder / "img_000.jpg").read_bytes()
        atomic_write_bytes(folder / "broken_truncated.jpg", whole[: len(whole) // 2])
        atomic_write_text(folder / "broken_truncated.txt", "truncated download")
    return folder
