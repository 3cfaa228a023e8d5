"""Data-Juicer's ``image_captioning_mapper`` and ``image_tagging_mapper`` in recipes (local executor)."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest

from lorastory.data.executor import run_recipe
from lorastory.data.ops.image_captioning_mapper import reduce_candidates
from lorastory.data.recipe import load_recipe
from lorastory.errors import RecipeError

CAPTION_RECIPE = """\
dataset_path: '{dataset}'
np: 1
text_keys: text
image_key: image
export_path: '{export}'
process:
  - image_captioning_mapper:
      hf_img2seq: '{model}'
      max_new_tokens: 6
{params}
"""


def tagged_dataset(folder: Path) -> Path:
    """Three rows: a plain caption, a Data-Juicer text with image tokens over two pictures, no picture."""
    from PIL import Image

    images = folder / "images"
    images.mkdir(parents=True)
    for index, colour in enumerate([(200, 30, 30), (30, 200, 30), (30, 30, 200)]):
        Image.new("RGB", (40, 32), colour).save(images / f"{index}.png")
    rows = [
        {"text": "a red picture", "image": ["images/0.png"]},
        {"text": "<__dj__image> green <|__dj__eoc|> <__dj__image> blue <|__dj__eoc|>", "image": ["images/1.png", "images/2.png"]},
        {"text": "no picture", "image": []},
    ]
    path = folder / "data.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def run(tmp_path: Path, recipe_text: str) -> list[dict]:
    recipe_path = tmp_path / "recipe.yaml"
    recipe_path.write_text(recipe_text, encoding="utf-8")
    result = run_recipe(load_recipe(recipe_path))
    return [json.loads(line) for line in result.export_path.read_text(encoding="utf-8").splitlines()]


def test_all_candidates_with_the_original_rows(tmp_path, tiny_captioner):
    data = tagged_dataset(tmp_path)
    params = "      caption_num: 2\n      keep_candidate_mode: all\n      keep_original_sample: true"
    rows = run(tmp_path, CAPTION_RECIPE.format(dataset=data, export=tmp_path / "out.jsonl",
                                               model=tiny_captioner("blip"), params=params))
    assert [r["text"] for r in rows[:1]] == ["a red picture"]  # the original first, then its two new rows
    assert len(rows) == 1 + 2 + 1 + 2 + 1  # row 3 has no picture: only the original stays
    plain = [rows[1]["text"], rows[2]["text"]]
    assert all(text and "<__dj__" not in text and text != "a red picture" for text in plain)
    tokens = rows[4]["text"]
    # Each chunk keeps only its special tokens, each picture's caption right after its token.
    assert re.fullmatch(r"<__dj__image> \S.* <\|__dj__eoc\|><__dj__image> \S.* <\|__dj__eoc\|>", tokens), tokens
    assert rows[6]["text"] == "no picture"


def test_new_rows_only_and_the_same_rows_on_a_second_run(tmp_path, tiny_captioner):
    data = tagged_dataset(tmp_path)
    params = "      caption_num: 3\n      keep_candidate_mode: random_any\n      keep_original_sample: false"
    text = CAPTION_RECIPE.format(dataset=data, export=tmp_path / "out.jsonl", model=tiny_captioner("blip2"), params=params)
    rows = run(tmp_path, text)
    assert len(rows) == 2 and rows[0]["image"][0].endswith("0.png")  # the row without a picture is gone
    assert rows[0]["text"] != "a red picture"
    assert run(tmp_path, text) == rows  # sampled with a seed from the row


def test_simhash_keeps_the_candidate_nearest_the_original():
    candidates = ["a cat sitting on a red sofa", "a girl with long red hair on the grass at night", "two dogs"]
    original = "a girl with long red hair on the grass during the day"
    assert reduce_candidates(candidates, "similar_one_simhash", original, random.Random(0)) == [candidates[1]]
    assert reduce_candidates(candidates, "all", original, random.Random(0)) == candidates


def test_tagging_mapper_writes_image_tags_per_picture(tmp_path, tiny_captioner):
    data = tagged_dataset(tmp_path)
    lines = data.read_text().splitlines()
    lines.append(json.dumps({"text": "tagged", "image": ["images/0.png"], "__dj__meta__": {"image_tags": [["kept"]]}}))
    data.write_text("\n".join(lines) + "\n")
    recipe = (f"dataset_path: '{data}'\nimage_key: image\nexport_path: '{tmp_path / 'out.jsonl'}'\nprocess:\n"
              f"  - image_tagging_mapper:\n      hf_tagger: '{tiny_captioner('wd14')}'\n      threshold: 0.3\n"
              "  - text_length_filter:\n      min_len: 1\n")
    rows = run(tmp_path, recipe)
    from lorastory.models.captioners.tiny import WD14_TAGS

    names = {name for name, category in WD14_TAGS if category != 9}
    first, second, empty, tagged = (r["__dj__meta__"]["image_tags"] for r in rows)
    assert len(first) == 1 and len(second) == 2 and first[0] and set(first[0]) <= names
    assert empty == [[]] and tagged == [["kept"]]
    assert rows[0]["text"] == "a red picture"  # tags go to the meta field, the text stays


def test_a_missing_captioner_fails_when_the_recipe_loads(tmp_path):
    data = tagged_dataset(tmp_path)
    path = tmp_path / "recipe.yaml"
    path.write_text(CAPTION_RECIPE.format(dataset=data, export=tmp_path / "o.jsonl", model="someone/no-such-captioner",
                                          params=""))
    with pytest.raises(RecipeError, match="image_captioning_mapper: captioner 'someone/no-such-captioner' is not in"):
        load_recipe(path)
