"""The captioner backends directly: the shipped toy captioner's accuracy, tag thresholds, tag tables."""

from __future__ import annotations

import pytest

from lorastory.errors import CaptionerError
from lorastory.models.captioners.base import GenerationOptions
from lorastory.models.captioners.loader import load_captioner
from lorastory.models.captioners.toy import held_out_accuracy
from lorastory.models.captioners.wd14 import read_tag_table
from lorastory.toyworld import STYLES, caption, render, sample_scene


@pytest.mark.parametrize("style", sorted(STYLES))
def test_toy_captioner_reads_held_out_pictures(style):
    accuracy = held_out_accuracy(load_captioner("toy", "cpu"), style, count=60, seed=987)
    assert accuracy["all"] >= 0.9, accuracy


def test_toy_captions_use_the_toy_grammar_in_both_languages():
    import random

    scene = sample_scene(random.Random(31))
    picture = render(scene, "outlined", 128)
    toy = load_captioner("toy", "cpu")
    for language in ("zh", "en"):
        (text,), = toy.generate([picture], None, GenerationOptions(language=language))
        assert text == caption(scene, language)


def test_a_tag_table_without_categories_is_refused(tmp_path):
    (tmp_path / "selected_tags.csv").write_text("tag_id,name\n0,cat\n")
    with pytest.raises(CaptionerError, match="needs name,category columns"):
        read_tag_table(tmp_path / "selected_tags.csv")
