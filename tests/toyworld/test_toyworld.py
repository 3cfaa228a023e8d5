"""The toy world: deterministic scenes, captions in both languages, styles, and the image folder."""

from __future__ import annotations

import hashlib
import random

import numpy as np
import pytest
from PIL import Image

from lorastory.toyworld import STYLES, Scene, caption, render, sample_scene
from lorastory.toyworld.dataset import write_toy_dataset
from lorastory.toyworld.scene import Character, Shape


def _digest(image: Image.Image) -> str:
    return hashlib.sha256(image.tobytes()).hexdigest()


def test_same_seed_same_scenes_pictures_and_captions():
    def draw(seed):
        rng = random.Random(seed)
        scenes = [sample_scene(rng) for _ in range(6)]
        return [(_digest(render(s, style, 96, seed=i)), caption(s, "zh", style)) for i, s in enumerate(scenes) for style in STYLES]

    assert draw(3) == draw(3)
    assert draw(3) != draw(4)


def test_captions_name_what_is_drawn_in_both_languages():
    scene = Scene(Character("long", "red", "blue"), "left", "house", "right", "grass", "day")
    assert caption(scene, "en") == "a girl with long red hair and a blue shirt on the left, a house on the right, on the grass, during the day"
    assert caption(scene, "zh") == "一个红色长发、穿蓝色衣服的女孩在左边，右边有一座房子，草地上，白天"
    assert caption(scene, "en", "pixel").endswith(", pixel art")
    shape = Scene(Shape("star", "yellow", "large"), "center", None, None, "snow", "night")
    assert caption(shape, "zh", "watercolor") == "一个大的黄色星形在中间，雪地里，夜晚，水彩画风格"
    with pytest.raises(ValueError):
        caption(shape, "fr")


def test_scene_rejects_impossible_attributes():
    with pytest.raises(ValueError):
        Scene(Shape("star", "yellow", "large"), "left", "tree", "left", "snow", "night")  # object on the subject's side
    with pytest.raises(ValueError):
        Scene(Shape("hexagon", "yellow", "large"), "left", None, None, "snow", "night")


def test_what_the_caption_says_is_where_the_pixels_are():
    red_left = Scene(Shape("square", "red", "large"), "left", None, None, "grass", "day")
    red_right = Scene(Shape("square", "red", "large"), "right", None, None, "grass", "day")
    night = Scene(Shape("square", "red", "large"), "left", None, None, "grass", "night")

    def redness(image, columns):
        pixels = np.asarray(image, dtype=np.int16)[:, columns]
        return int(((pixels[..., 0] > 180) & (pixels[..., 1] < 80) & (pixels[..., 2] < 80)).sum())

    left, right = render(red_left, "flat", 128), render(red_right, "flat", 128)
    assert redness(left, slice(0, 64)) > 1000 and redness(left, slice(64, 128)) == 0
    assert redness(right, slice(64, 128)) > 1000 and redness(right, slice(0, 64)) == 0
    sky_day = np.asarray(left)[5, 64]
    sky_night = np.asarray(render(night, "flat", 128))[5, 64]
    assert sky_day.mean() > 150 > 80 > sky_night.mean()


def test_styles_look_different_from_flat():
    scene = sample_scene(random.Random(1))
    flat = np.asarray(render(scene, "flat", 128), dtype=np.float32)
    for style in ("outlined", "pixel", "watercolor"):
        other = np.asarray(render(scene, style, 128), dtype=np.float32)
        assert np.abs(other - flat).mean() > 2.0, style
    pixel = np.asarray(render(scene, "pixel", 128))
    assert (pixel[::4, ::4].repeat(4, 0).repeat(4, 1) == pixel).all()  # 4x4 blocks
    with pytest.raises(ValueError):
        render(scene, "oil", 128)


def test_dataset_folder_has_good_and_labelled_bad_samples(tmp_path):
    written = write_toy_dataset(tmp_path / "toy", count=20, style="pixel", lang="en", seed=2)
    assert len(written.good) == 20
    assert set(written.bad) == {"too_small", "wrong_aspect", "duplicate", "wrong_caption", "truncated"}
    for name in written.good:
        assert Image.open(tmp_path / "toy" / f"{name}.png").size == (128, 128)
        text = (tmp_path / "toy" / f"{name}.txt").read_text(encoding="utf-8")
        assert text.endswith("pixel art") and text.isascii()
    small = Image.open(tmp_path / "toy" / f"{written.bad['too_small'][0]}.png")
    wide = Image.open(tmp_path / "toy" / f"{written.bad['wrong_aspect'][0]}.png")
    assert small.width < 64 and wide.width == 3 * wide.height
    copy = written.bad["duplicate"][0]
    originals = {(tmp_path / "toy" / f"{n}.png").read_bytes() for n in written.good}
    assert (tmp_path / "toy" / f"{copy}.png").read_bytes() in originals
    again = write_toy_dataset(tmp_path / "again", count=20, style="pixel", lang="en", seed=2)
    assert [(tmp_path / "again" / f"{n}.txt").read_text(encoding="utf-8") for n in again.good] == [
        (tmp_path / "toy" / f"{n}.txt").read_text(encoding="utf-8") for n in written.good
    ]


def test_cli_draws_a_folder_and_rejects_an_unknown_style(cli, tmp_path):
    result = cli("data", "toyworld", "--out", tmp_path / "toy", "--count", "6", "--no-bad-samples")
    assert result.code == 0, result.err
    assert len(list((tmp_path / "toy").glob("*.png"))) == 6
    bad = cli("data", "toyworld", "--out", tmp_path / "x", "--style", "oil")
    assert bad.code == 1 and "unknown style 'oil'" in bad.err and "Traceback" not in bad.err
