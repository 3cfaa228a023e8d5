"""Operator semantics, matched against Data-Juicer's (see the op modules' docstrings)."""

from __future__ import annotations

import pytest
from PIL import Image

from lorastory.data.ops import build_op, registered_ops
from lorastory.data.ops.image_size_filter import size_to_bytes
from lorastory.data.ops.words_num_filter import count_words
from lorastory.data.sample import DatasetKeys, Sample
from lorastory.errors import RecipeError


def _image(path, size, color=(200, 30, 30)):
    Image.new("RGB", size, color).save(path)
    return str(path)


def _sample(row, base="."):
    return Sample(dict(row), DatasetKeys(text_key="text", image_key="images", base_dir=str(base)))


def _run_filter(name, params, row, base="."):
    op = build_op(name, params)
    op.params = op.params.model_copy(update={"text_key": "text", "image_key": "images"})
    sample = _sample(row, base)
    op.compute_stats(sample)
    return op.keep(sample.stats), sample.stats


def test_registry_has_the_data_juicer_ops():
    assert {
        "image_shape_filter",
        "image_aspect_ratio_filter",
        "image_size_filter",
        "text_length_filter",
        "words_num_filter",
        "image_deduplicator",
    } <= set(registered_ops())


def test_shape_filter_closed_interval_and_any_or_all(tmp_path):
    small = _image(tmp_path / "s.png", (100, 50))
    big = _image(tmp_path / "b.png", (120, 80))
    params = {"min_width": 100, "max_width": 120, "min_height": 60}
    keep, stats = _run_filter("image_shape_filter", {**params, "any_or_all": "any"}, {"images": [small, big]})
    assert keep and stats == {"image_width": [100, 120], "image_height": [50, 80]}
    keep, _ = _run_filter("image_shape_filter", {**params, "any_or_all": "all"}, {"images": [small, big]})
    assert not keep
    keep, _ = _run_filter("image_shape_filter", {"min_width": 120, "max_width": 120}, {"images": [big]})
    assert keep  # both bounds are inclusive


def test_sample_without_images_is_kept(tmp_path):
    keep, stats = _run_filter("image_shape_filter", {"min_width": 5000}, {"images": []})
    assert keep and stats["image_width"] == []
    keep, stats = _run_filter("image_aspect_ratio_filter", {"min_ratio": 9, "max_ratio": 10}, {"text": "x"})
    assert keep and stats["aspect_ratios"] == []


def test_aspect_ratio_is_width_over_height_inclusive(tmp_path):
    wide = _image(tmp_path / "w.png", (200, 100))
    keep, stats = _run_filter("image_aspect_ratio_filter", {"min_ratio": 0.5, "max_ratio": 2.0}, {"images": [wide]})
    assert keep and stats["aspect_ratios"] == [2.0]
    keep, _ = _run_filter("image_aspect_ratio_filter", {"min_ratio": 0.5, "max_ratio": 1.99}, {"images": [wide]})
    assert not keep


def test_relative_paths_resolve_against_dataset_folder(tmp_path):
    (tmp_path / "imgs").mkdir()
    _image(tmp_path / "imgs" / "a.png", (30, 20))
    keep, stats = _run_filter("image_shape_filter", {}, {"images": ["imgs/a.png"]}, base=tmp_path)
    assert keep and stats["image_width"] == [30]


def test_existing_stats_are_reused_not_recomputed(tmp_path):
    op = build_op("image_shape_filter", {"min_width": 10})
    sample = Sample({"images": ["/does/not/exist.png"]}, DatasetKeys(image_key="images"),
                    {"image_width": [5], "image_height": [5]})
    op.params = op.params.model_copy(update={"image_key": "images"})
    op.compute_stats(sample)
    assert not op.keep(sample.stats)


@pytest.mark.parametrize(
    ("text", "size"),
    [("0", 0), ("6KB", 6 * 1024), ("6 kib", 6 * 1024), ("2MB", 2 << 20), ("1TB", 1 << 40), ("1.5MB", int(1.5 * (1 << 20))),
     ("512", 512), ("100B", 100)],
)
def test_size_parsing_is_binary_and_keeps_fractions(text, size):
    assert size_to_bytes(text) == size


def test_bad_size_is_a_recipe_error():
    with pytest.raises(RecipeError, match="max_size"):
        build_op("image_size_filter", {"max_size": "big"})


def test_image_size_filter(tmp_path):
    path = _image(tmp_path / "a.png", (64, 64))
    size = (tmp_path / "a.png").stat().st_size
    keep, stats = _run_filter("image_size_filter", {"min_size": f"{size}", "max_size": "1MB"}, {"images": [path]})
    assert keep and stats["image_sizes"] == [size]
    keep, _ = _run_filter("image_size_filter", {"min_size": f"{size + 1}"}, {"images": [path]})
    assert not keep


def test_text_length_counts_characters():
    keep, stats = _run_filter("text_length_filter", {"min_len": 3, "max_len": 3}, {"text": "二次元"})
    assert keep and stats["text_len"] == 3


def test_words_match_data_juicer_for_latin_text():
    # Data-Juicer: split on space/newline/tab, strip punctuation and digits from word edges.
    assert count_words("Hello, world! 2024 is -- great.") == 4
    assert count_words("a\tb\nc  d") == 4


def test_words_count_chinese_per_character():
    assert count_words("你好世界，这是一个测试。") == 10
    assert count_words("二次元 anime girl") == 5


def test_words_num_filter_keep():
    keep, stats = _run_filter("words_num_filter", {"min_num": 3, "max_num": 5, "lang": "zh"}, {"text": "紫色长发"})
    assert keep and stats["num_words"] == 4


def _dedup_hash(params, row, base="."):
    op = build_op("image_deduplicator", params)
    op.params = op.params.model_copy(update={"text_key": "text", "image_key": "images"})
    return op.compute_hash(_sample(row, base))


def test_dedup_hash_uses_distinct_paths_in_order(tmp_path):
    a = _image(tmp_path / "a.png", (64, 64), (10, 10, 10))
    Image.new("RGB", (64, 64)).save(tmp_path / "b.png")
    b = str(tmp_path / "b.png")
    Image.effect_noise((64, 64), 60).convert("RGB").save(b)
    assert _dedup_hash({}, {"images": [a, a]}) == _dedup_hash({}, {"images": [a]})
    assert _dedup_hash({}, {"images": [a, b]}) != _dedup_hash({}, {"images": [b, a]})
    assert _dedup_hash({}, {"images": []}) == ""
    assert _dedup_hash({"consider_text": True}, {"images": [], "text": "x"}) != ""


@pytest.mark.parametrize("method", ["phash", "dhash", "whash", "ahash"])
def test_dedup_methods_hash_copies_equally(tmp_path, method):
    Image.effect_noise((96, 96), 80).convert("RGB").save(tmp_path / "a.png")
    (tmp_path / "b.png").write_bytes((tmp_path / "a.png").read_bytes())
    assert _dedup_hash({"method": method}, {"images": [str(tmp_path / "a.png")]}) == _dedup_hash(
        {"method": method}, {"images": [str(tmp_path / "b.png")]}
    )


def test_unknown_op_suggests_the_close_name():
    with pytest.raises(RecipeError, match="did you mean 'image_shape_filter'"):
        build_op("image_shape_filtr", {})


def test_wrong_parameter_type_and_unknown_parameter():
    with pytest.raises(RecipeError, match="min_width"):
        build_op("image_shape_filter", {"min_width": "wide"})
    with pytest.raises(RecipeError, match="min_widht: unknown key"):
        build_op("image_shape_filter", {"min_widht": 3})
    with pytest.raises(RecipeError, match="any_or_all"):
        build_op("image_shape_filter", {"any_or_all": "some"})
