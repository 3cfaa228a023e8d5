"""A run's pictures written on threads: the same files as written inline (pixels and the parameters A1111 /
ComfyUI read), atomic, and a failed write surfaces after the others finish."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from PIL import Image

from lorastory.generate.grid import save_storyboard
from lorastory.generate.pngmeta import (
    PNG_COMPRESS_LEVEL,
    GenerationParams,
    format_parameters,
    png_info,
    read_parameters,
    save_png_with_info,
)
from lorastory.generate.writer import PictureWriter

PARAMS = GenerationParams(prompt="二次元,紫色长发少女 (best quality)", negative_prompt="丑陋、变形", steps=50,
                          sampler="Euler", cfg_scale=4.0, seed=7, width=1024, height=1024, model="Kolors-diffusers")


def _picture(width: int, height: int, seed: int = 0) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels, "RGB")


def test_panels_written_on_threads_keep_pixels_and_the_parameters_a1111_and_comfyui_read(tmp_path):
    images = [_picture(64, 48, seed) for seed in range(5)]
    with PictureWriter(workers=3) as writer:
        for number, image in enumerate(images, start=1):
            writer.submit(save_png_with_info, image, tmp_path / f"panel-{number:02d}.png", png_info(PARAMS))
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"panel-{n:02d}.png" for n in range(1, 6)]  # no temporaries
    for number, image in enumerate(images, start=1):
        path = tmp_path / f"panel-{number:02d}.png"
        with Image.open(path) as opened:  # A1111: image.info["parameters"]; ComfyUI: the PNG's text chunks
            assert opened.info["parameters"] == format_parameters(PARAMS)
            assert np.array_equal(np.asarray(opened), np.asarray(image))
        assert read_parameters(path) == PARAMS


def test_a_storyboard_on_a_writers_thread_is_the_same_file(tmp_path):
    panels = [_picture(96, 64, seed=i) for i in range(4)]
    options = {"cols": 2, "title": "故事", "captions": ["一", None, "three", ""], "compress_level": PNG_COMPRESS_LEVEL}
    with PictureWriter(workers=2) as writer:
        writer.submit(save_storyboard, panels, tmp_path / "threads.png", **options)
    save_storyboard(panels, tmp_path / "inline.png", **options)
    assert (tmp_path / "threads.png").read_bytes() == (tmp_path / "inline.png").read_bytes()


def test_a_failed_write_is_raised_after_the_others_finish_and_an_error_cancels_the_rest():
    writer = PictureWriter(workers=2)
    written: list[int] = []

    def write(number: int) -> None:
        if number == 1:
            raise OSError(28, "No space left on device")
        written.append(number)

    for number in range(4):
        writer.submit(write, number)
    with pytest.raises(OSError, match="No space"):
        writer.wait()
    assert sorted(written) == [0, 2, 3]

    with pytest.raises(RuntimeError), PictureWriter(workers=1) as writer:
        writer.submit(threading.Event().wait, 0.2)  # the one thread busy for a moment
        writer.submit(written.append, 99)  # queued behind it: cancelled when the block fails
        raise RuntimeError("the render failed")
    assert 99 not in written
