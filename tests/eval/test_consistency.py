"""Character consistency: identical panels score 1, different panels less, one panel has none."""

from __future__ import annotations

import pytest
from PIL import Image

from lorastory.models.clip import load_clip
from lorastory.eval.consistency import center_crop, character_consistency, mean_pairwise


def test_identical_panels_score_one(tiny_clip, noise_images):
    image = noise_images(1)[0]
    result = character_consistency(load_clip(str(tiny_clip)), [image, image.copy(), image.copy()])
    assert result.score == pytest.approx(1.0, abs=1e-5)
    assert result.subject_score == pytest.approx(1.0, abs=1e-5)
    assert result.per_panel == pytest.approx([1.0] * 3, abs=1e-5)
    assert result.as_dict()["subject_crop"] == "center"


def test_different_panels_score_below_one_and_match_the_pairwise_mean(tiny_clip, noise_images):
    clip = load_clip(str(tiny_clip))
    images = noise_images(3, seed=1) + [Image.new("RGB", (48, 40), (250, 20, 20))]
    result = character_consistency(clip, images)
    assert result.score < 1.0 and result.subject_score < 1.0
    emb = clip.image_embeddings(images)
    pairs = [float(emb[i] @ emb[j]) for i in range(4) for j in range(i + 1, 4)]
    assert result.score == pytest.approx(sum(pairs) / len(pairs), abs=1e-6)
    # the odd one out (a flat red panel) is the least like the others
    assert min(result.per_panel) == result.per_panel[3]


def test_one_panel_has_no_consistency(tiny_clip, noise_images):
    result = character_consistency(load_clip(str(tiny_clip)), noise_images(1))
    assert result.score is None and result.subject_score is None and result.per_panel == [None]


def test_subject_crop_can_be_turned_off(tiny_clip, noise_images):
    result = character_consistency(load_clip(str(tiny_clip)), noise_images(2), subject_crop="none")
    assert result.subject_score is None and result.as_dict()["subject_crop"] == "none"


def test_center_crop_keeps_the_middle():
    image = Image.new("RGB", (100, 50), "white")
    image.paste((255, 0, 0), (20, 10, 80, 40))
    crop = center_crop(image, 0.6)
    assert crop.size == (60, 30) and crop.getpixel((0, 0)) == (255, 0, 0)
    with pytest.raises(ValueError):
        center_crop(image, 0)


def test_mean_pairwise_needs_two():
    import torch

    assert mean_pairwise(torch.ones((1, 4))) is None
