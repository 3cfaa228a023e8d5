"""CLIP data operators in recipes: image_text_similarity_filter and image_aesthetics_filter."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageOps
from safetensors.torch import save_file

from lorastory.data.ops.image_text_similarity_filter import reduce, split_chunks
from lorastory.data.recipe import load_recipe
from lorastory.errors import RecipeError

TEXTS = ["二次元 少女", "a red circle", "a blue square", "a girl singing", "a cat"]


@pytest.fixture
def dataset(tmp_path) -> Path:
    import numpy as np

    folder = tmp_path / "data"
    (folder / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    lines = []
    for index, text in enumerate(TEXTS):
        Image.fromarray(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)).save(folder / "images" / f"{index}.png")
        lines.append(json.dumps({"text": text, "image": [f"images/{index}.png"]}, ensure_ascii=False))
    (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder / "metadata.jsonl"


def _recipe(tmp_path: Path, dataset: Path, op: str, params: dict, np: int = 1) -> Path:
    import yaml

    recipe = {
        "dataset_path": str(dataset), "np": np, "text_keys": "text", "image_key": "image",
        "export_path": str(tmp_path / "out" / "result.jsonl"), "process": [{op: params}],
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, allow_unicode=True), encoding="utf-8")
    return path


def _stats(tmp_path: Path, key: str) -> list:
    lines = (tmp_path / "out" / "result_stats.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line)["__dj__stats__"][key] for line in lines]


def _manual_cosines(clip_dir: Path, images, texts) -> list[float]:
    from transformers import CLIPModel, CLIPProcessor

    model, processor = CLIPModel.from_pretrained(clip_dir), CLIPProcessor.from_pretrained(clip_dir)
    with torch.no_grad():
        out = model(**processor(text=texts, images=images, return_tensors="pt", padding=True))
    # Data-Juicer: logits_per_text / 100
    return [float(out.logits_per_text[i, i]) / 100 for i in range(len(texts))]


def _images(dataset: Path, flip: bool = False):
    images = [Image.open(dataset.parent / "images" / f"{i}.png").convert("RGB") for i in range(len(TEXTS))]
    return [ImageOps.mirror(image) for image in images] if flip else images


def test_similarity_stats_are_data_juicers_and_thresholds_filter(cli, tmp_path, dataset, clip_dir):
    result = cli("data", "run", _recipe(tmp_path, dataset, "image_text_similarity_filter",
                                        {"hf_clip": str(clip_dir), "min_score": -1.0, "max_score": 1.0}))
    assert result.code == 0, result.err
    values = [v[0] for v in _stats(tmp_path, "image_text_similarity")]
    assert values == pytest.approx(_manual_cosines(clip_dir, _images(dataset), TEXTS), abs=1e-4)

    threshold = sorted(values)[2]
    result = cli("data", "run", _recipe(tmp_path, dataset, "image_text_similarity_filter",
                                        {"hf_clip": str(clip_dir), "min_score": threshold, "max_score": 1.0}))
    assert result.code == 0, result.err
    kept = [json.loads(line)["text"] for line in (tmp_path / "out" / "result.jsonl").read_text(encoding="utf-8").splitlines()]
    assert kept == [t for t, v in zip(TEXTS, values) if v >= threshold] and len(kept) == 3


def test_flip_changes_what_clip_sees(cli, tmp_path, dataset, clip_dir):
    recipe = _recipe(tmp_path, dataset, "image_text_similarity_filter",
                     {"hf_clip": str(clip_dir), "min_score": -1.0, "horizontal_flip": True}, np=2)
    result = cli("data", "run", recipe)  # two worker processes, each loading the model once
    assert result.code == 0, result.err
    values = [v[0] for v in _stats(tmp_path, "image_text_similarity")]
    assert values == pytest.approx(_manual_cosines(clip_dir, _images(dataset, flip=True), TEXTS), abs=1e-4)


def test_chunks_follow_data_juicer_image_tokens():
    token = "<__dj__image>"
    text = f"{token} a cat <|__dj__eoc|> {token}{token} two dogs <|__dj__eoc|> no image here"
    assert split_chunks(text, 3, token) == [("a cat", [0]), ("two dogs", [1, 2])]
    assert split_chunks("plain caption", 2, token) == [("plain caption", [0, 1])]
    assert split_chunks(f"{token}{token}{token} more tokens than images", 2, token) == [("more tokens than images", [0, 1])]
    assert split_chunks("no images", 0, token) == []
    assert reduce([0.1, 0.3], "avg") == pytest.approx(0.2) and reduce([0.1, 0.3], "max") == 0.3
    assert reduce([0.1, 0.3], "min") == 0.1


def test_multi_image_rows_reduce_per_chunk(tmp_path, dataset, clip_dir):
    from lorastory.data.ops import build_op
    from lorastory.data.sample import DatasetKeys, Sample

    row = {"text": "<__dj__image><__dj__image> a red circle", "image": ["images/0.png", "images/1.png"]}
    values = {}
    for mode in ("avg", "max", "min"):
        op = build_op("image_text_similarity_filter", {"hf_clip": str(clip_dir), "reduce_mode": mode,
                                                       "image_key": "image", "text_key": "text"})
        sample = Sample(row, DatasetKeys(image_key="image", base_dir=str(dataset.parent)))
        op.compute_stats(sample)
        values[mode] = sample.stats["image_text_similarity"]
    images = _images(dataset)[:2]
    per_image = _manual_cosines(clip_dir, images, ["a red circle", "a red circle"])
    assert values["max"] == pytest.approx([max(per_image)], abs=1e-4)
    assert values["min"] == pytest.approx([min(per_image)], abs=1e-4)
    assert values["avg"] == pytest.approx([sum(per_image) / 2], abs=1e-4)


def _head(tmp_path: Path, clip_dir: Path) -> Path:
    generator = torch.Generator().manual_seed(0)
    sizes = ((8, 16), (8, 8), (4, 8), (2, 4), (1, 2))
    state = {}
    for index, (out, inp) in zip((0, 2, 4, 6, 7), sizes):
        state[f"layers.{index}.weight"] = torch.randn(out, inp, generator=generator)
        state[f"layers.{index}.bias"] = torch.full((out,), 5.0 if out == 1 else 0.0)
    path = tmp_path / "aesthetic.safetensors"
    save_file(state, str(path))
    return path


def test_aesthetics_filter_scores_on_data_juicers_scale(cli, tmp_path, dataset, clip_dir):
    from lorastory.models.aesthetic import load_aesthetic
    from lorastory.models.clip import load_clip

    head = _head(tmp_path, clip_dir)
    result = cli("data", "run", _recipe(tmp_path, dataset, "image_aesthetics_filter",
                                        {"hf_scorer_model": str(head), "hf_clip": str(clip_dir), "min_score": 0.0, "max_score": 10.0}))
    assert result.code == 0, result.err
    values = [v[0] for v in _stats(tmp_path, "image_aesthetics_scores")]
    ratings = load_aesthetic(head).score_embeddings(load_clip(str(clip_dir)).image_embeddings(_images(dataset)))
    assert values == pytest.approx([r / 10 for r in ratings], abs=1e-5)  # LAION's 1-10 rating / 10, as Data-Juicer


def test_aesthetics_without_weights_stops_before_work(cli, tmp_path, dataset):
    with pytest.raises(RecipeError, match="shunk031/aesthetics-predictor-v2-sac-logos-ava1-l14-linearMSE"):
        load_recipe(_recipe(tmp_path, dataset, "image_aesthetics_filter", {}))
    result = cli("data", "run", _recipe(tmp_path, dataset, "image_aesthetics_filter", {"hf_scorer_model": str(tmp_path / "none.safetensors")}))
    assert result.code == 1 and "no such file" in result.err and len(result.err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()
    (tmp_path / "head.pth").write_bytes(b"x")
    result = cli("data", "run", _recipe(tmp_path, dataset, "image_aesthetics_filter", {"hf_scorer_model": str(tmp_path / "head.pth")}))
    assert result.code == 1 and "pickle" in result.err


def test_missing_clip_stops_before_work(cli, tmp_path, dataset):
    result = cli("data", "run", _recipe(tmp_path, dataset, "image_text_similarity_filter", {}))
    assert result.code == 1 and "openai/clip-vit-base-patch32" in result.err and "hf download" in result.err
    assert len(result.err.strip().splitlines()) == 1 and not (tmp_path / "out").exists()
    result = cli("data", "run", _recipe(tmp_path, dataset, "image_text_similarity_filter", {"hf_clip": str(tmp_path / "nope")}))
    assert result.code == 1 and "no such folder" in result.err


def test_parameters_are_validated(tmp_path, dataset, clip_dir):
    with pytest.raises(RecipeError, match="reduce_mode"):
        load_recipe(_recipe(tmp_path, dataset, "image_text_similarity_filter", {"hf_clip": str(clip_dir), "reduce_mode": "median"}))
    with pytest.raises(RecipeError, match="min_score"):
        load_recipe(_recipe(tmp_path, dataset, "image_text_similarity_filter", {"hf_clip": str(clip_dir), "min_score": "high"}))


def test_bad_image_is_an_error_for_that_row_only(cli, tmp_path, dataset, clip_dir):
    (dataset.parent / "images" / "2.png").write_bytes(b"\x89PNG broken")
    result = cli("data", "run", _recipe(tmp_path, dataset, "image_text_similarity_filter", {"hf_clip": str(clip_dir), "min_score": -1.0}))
    assert result.code == 0, result.err
    assert len((tmp_path / "out" / "result.jsonl").read_text(encoding="utf-8").splitlines()) == 4
