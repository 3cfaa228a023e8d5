"""Recipes never run code, a model that cannot load stops the run, and bad rows or settings never crash it.

trust_remote_code from a recipe (CLI and web app), pickle-only CLIP weights, a CLIP folder
that fails to load (the previous result stays), the model loaded once per process,
filter ranges (min > max, negative, nan/inf), stats written by another tool, and rows
of every wrong shape.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

from lorastory.data.recipe import load_recipe
from lorastory.errors import ConfigError, RecipeError

BUG_LINE = "This is a bug"

EVIL_MODELING = """
from pathlib import Path
Path({marker!r}).write_text("remote code ran")
from transformers import PretrainedConfig, PreTrainedModel
class EvilConfig(PretrainedConfig):
    model_type = "evil"
class EvilModel(PreTrainedModel):
    config_class = EvilConfig
"""


@pytest.fixture
def dataset(tmp_path) -> Path:
    folder = tmp_path / "data"
    (folder / "images").mkdir(parents=True)
    lines = []
    for index in range(5):
        Image.new("RGB", (48, 40), (50 * index, 80, 120)).save(folder / "images" / f"{index}.png")
        lines.append(json.dumps({"text": f"a picture with a long enough caption {index}", "image": [f"images/{index}.png"]}))
    (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder / "metadata.jsonl"


def _recipe(tmp_path: Path, dataset: Path, process: list, np: int = 1) -> Path:
    recipe = {"dataset_path": str(dataset), "np": np, "image_key": "image",
              "export_path": str(tmp_path / "out" / "result.jsonl"), "process": process}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, allow_unicode=True), encoding="utf-8")
    return path


def _evil_model(folder: Path, marker: Path) -> Path:
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({
        "model_type": "evil", "architectures": ["EvilModel"],
        "auto_map": {"AutoConfig": "modeling_evil.EvilConfig", "AutoModel": "modeling_evil.EvilModel"},
    }), encoding="utf-8")
    (folder / "modeling_evil.py").write_text(EVIL_MODELING.format(marker=str(marker)), encoding="utf-8")
    return folder


def _previous_result(tmp_path: Path) -> dict[str, bytes]:
    out = tmp_path / "out"
    out.mkdir()
    files = {name: f"previous {name}\n".encode() for name in
             ("result.jsonl", "result_stats.jsonl", "result_report.json", "result_report.html")}
    for name, data in files.items():
        (out / name).write_bytes(data)
    return files


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


# --- trust_remote_code and model loading ----------------------------------------------------------


@pytest.mark.parametrize("op", ["image_text_similarity_filter", "image_aesthetics_filter"])
def test_trust_remote_code_from_a_recipe_is_refused_and_no_code_runs(cli, tmp_path, dataset, op):
    marker = tmp_path / "marker.txt"
    evil = _evil_model(tmp_path / "evil", marker)
    key = "hf_clip" if op == "image_text_similarity_filter" else "hf_scorer_model"
    recipe = _recipe(tmp_path, dataset, [{op: {key: str(evil), "trust_remote_code": True}}])
    line = cli("data", "run", recipe).error_line()
    assert "trust_remote_code is never allowed from a recipe" in line and "process[1]" in line
    assert not marker.exists() and not (tmp_path / "out").exists()
    # Without the flag the folder is not CLIP: the run stops in one line, still without running its code.
    recipe = _recipe(tmp_path, dataset, [{"image_text_similarity_filter": {"hf_clip": str(evil)}}])
    cli("data", "run", recipe).error_line()
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_trust_remote_code_from_the_web_recipe_editor_is_refused(tmp_path, dataset):
    from lorastory.ui.actions import run_recipe_text
    from lorastory.ui.workspace import Workspace

    marker = tmp_path / "marker.txt"
    ws = Workspace(tmp_path)
    evil = _evil_model(tmp_path / "evil", marker)
    text = yaml.safe_dump({"dataset_path": "data/metadata.jsonl", "export_path": "curated/x/result.jsonl",
                           "process": [{"image_text_similarity_filter": {"hf_clip": str(evil), "trust_remote_code": True}}]})
    with pytest.raises(ConfigError, match="trust_remote_code is never allowed"):
        run_recipe_text(ws, text, "evil")
    assert not marker.exists() and not list(tmp_path.rglob("result*"))


def test_load_clip_refuses_pickle_only_weights_unless_allowed(tmp_path, clip_dir):
    from transformers import CLIPModel

    from lorastory.models.clip import load_clip
    from lorastory.errors import ClipModelError

    folder = tmp_path / "pickled"
    shutil.copytree(clip_dir, folder)
    for weights in folder.glob("*.safetensors"):
        weights.unlink()
    torch.save(CLIPModel.from_pretrained(clip_dir).state_dict(), folder / "pytorch_model.bin")
    assert (folder / "pytorch_model.bin").is_file() and not list(folder.glob("*.safetensors"))
    with pytest.raises(ClipModelError, match="only pickle weights") as caught:
        load_clip(str(folder), "cpu")
    assert "\n" not in str(caught.value)
    assert load_clip(str(folder), "cpu", allow_pickle=True).embed_dim > 0


def test_pickle_only_clip_in_a_recipe_stops_the_run_and_keeps_the_previous_result(cli, tmp_path, dataset, clip_dir):
    from transformers import CLIPModel

    folder = tmp_path / "pickled"
    shutil.copytree(clip_dir, folder)
    for weights in folder.glob("*.safetensors"):
        weights.unlink()
    torch.save(CLIPModel.from_pretrained(clip_dir).state_dict(), folder / "pytorch_model.bin")
    previous = _previous_result(tmp_path)
    recipe = _recipe(tmp_path, dataset, [{"image_text_similarity_filter": {"hf_clip": str(folder), "min_score": -1.0}}])
    line = cli("data", "run", recipe).error_line()
    assert "pickle" in line
    assert _files(tmp_path / "out") == previous


@pytest.mark.parametrize("np", [1, 2])
def test_a_clip_that_fails_to_load_stops_the_run_once_and_keeps_the_previous_result(cli, tmp_path, dataset, clip_dir, np):
    broken = tmp_path / "broken-clip"
    shutil.copytree(clip_dir, broken)
    weights = next(broken.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:100])  # truncated: config.json is there, the weights are not usable
    previous = _previous_result(tmp_path)
    recipe = _recipe(tmp_path, dataset, [{"image_text_similarity_filter": {"hf_clip": str(broken), "min_score": -1.0}}], np=np)
    line = cli("data", "run", recipe).error_line()
    assert "image_text_similarity_filter" in line and "broken-clip" in line
    assert _files(tmp_path / "out") == previous


def test_the_model_is_loaded_once_per_process_not_per_row(tmp_path, dataset, clip_dir, monkeypatch):
    import lorastory.models.clip as clip_score
    from lorastory.data.executor import run_recipe

    calls = []
    real = clip_score.from_pretrained

    def counting(cls, *args, **kwargs):
        calls.append(cls.__name__)
        return real(cls, *args, **kwargs)

    monkeypatch.setattr(clip_score, "from_pretrained", counting)
    clip_score._load_cached.cache_clear()
    recipe = load_recipe(_recipe(tmp_path, dataset, [{"image_text_similarity_filter": {"hf_clip": str(clip_dir), "min_score": -1.0}}]))
    result = run_recipe(recipe, processes=1)
    assert result.n_output == 5
    assert calls.count("CLIPModel") == 1
    # A model that fails is tried once too, not once per row.
    calls.clear()
    clip_score._load_cached.cache_clear()
    (tmp_path / "empty-clip").mkdir()
    shutil.copy(clip_dir / "config.json", tmp_path / "empty-clip" / "config.json")
    (tmp_path / "empty-clip" / "model.safetensors").write_bytes(b"not safetensors")
    recipe = load_recipe(_recipe(tmp_path, dataset, [{"image_text_similarity_filter": {"hf_clip": str(tmp_path / "empty-clip")}}]))
    with pytest.raises(Exception, match="image_text_similarity_filter"):
        run_recipe(recipe, processes=1)
    assert calls.count("CLIPModel") == 1


# --- filter ranges ------------------------------------------------------------------------


def test_min_above_max_is_a_config_error_before_any_work(cli, tmp_path, dataset):
    for op, params, field in [
        ("text_length_filter", {"min_len": 50, "max_len": 10}, "min_len 50 is greater than max_len 10"),
        ("image_shape_filter", {"min_width": 300, "max_width": 200}, "min_width 300 is greater than max_width 200"),
        ("image_size_filter", {"min_size": "2MB", "max_size": "1MB"}, "min_size"),
    ]:
        line = cli("data", "run", _recipe(tmp_path, dataset, [{op: params}])).error_line()
        assert field in line and "process[1]" in line
        assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf"])
def test_non_finite_thresholds_are_refused(tmp_path, dataset, value):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        f"dataset_path: {dataset}\nexport_path: {tmp_path / 'out' / 'r.jsonl'}\n"
        f"process:\n  - image_aspect_ratio_filter:\n      max_ratio: {value}\n", encoding="utf-8")
    with pytest.raises(RecipeError, match="max_ratio"):
        load_recipe(recipe)


def test_a_negative_maximum_warns_once_before_the_run(cli, tmp_path, dataset):
    recipe = _recipe(tmp_path, dataset, [{"words_num_filter": {"min_num": -5, "max_num": -1}}])
    result = cli("data", "run", recipe)
    assert result.code == 0, result.err
    warnings = [line for line in result.err.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "max_num is -1" in warnings[0] and "every row will be dropped" in warnings[0]
    assert (tmp_path / "out" / "result.jsonl").read_text(encoding="utf-8") == ""


# --- rows that are not what the ops expect ----------------------------------------------------------


def test_stats_written_by_another_tool_are_recomputed(cli, tmp_path, dataset):
    foreign = [
        {"image_width": ["48"], "image_height": None, "aspect_ratios": [float("inf")], "text_len": "12"},
        {"image_width": [None], "image_height": [40], "aspect_ratios": "wide", "text_len": [3]},
        {"image_width": [1e400], "image_height": [40], "aspect_ratios": [float("nan")], "text_len": float("inf")},
        "not a dict",
        {"image_width": [48], "image_height": [40], "aspect_ratios": [1.2], "text_len": 44},  # usable: reused
    ]
    lines = dataset.read_text(encoding="utf-8").splitlines()
    rows = []
    for line, stats in zip(lines, foreign):
        row = json.loads(line)
        row["__dj__stats__"] = stats
        rows.append(json.dumps(row))  # Infinity and NaN as Python writes them
    dataset.write_text("\n".join(rows) + "\n", encoding="utf-8")
    recipe = _recipe(tmp_path, dataset, [
        {"image_shape_filter": {"min_width": 10}}, {"image_aspect_ratio_filter": {"min_ratio": 0.5, "max_ratio": 2.0}},
        {"text_length_filter": {"min_len": 10}},
    ])
    result = cli("data", "run", recipe)
    assert result.code == 0, result.err
    kept = (tmp_path / "out" / "result.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(kept) == 5
    stats = [json.loads(line)["__dj__stats__"] for line in (tmp_path / "out" / "result_stats.jsonl").read_text().splitlines()]
    assert all(s["image_width"] == [48] and s["image_height"] == [40] for s in stats)
    assert all(s["aspect_ratios"] == [pytest.approx(1.2)] for s in stats)
    assert [s["text_len"] for s in stats[:4]] == [len(json.loads(line)["text"]) for line in lines[:4]]
    assert "<svg" in (tmp_path / "out" / "result_report.html").read_text(encoding="utf-8")


def test_every_bad_row_is_skipped_with_its_line_and_every_good_row_kept(cli, tmp_path, dataset):
    good = dataset.read_text(encoding="utf-8").splitlines()
    fifo = tmp_path / "data" / "images" / "fifo.png"
    os.mkfifo(fifo)
    bad = [
        '{"text": "a lone surrogate \\ud800 in a caption here", "image": ["images/0.png"]}',
        json.dumps({"text": "a NUL byte in the path of the image", "image": ["images/0\x00.png"]}),
        "[" * 200_000 + "]" * 200_000,
        '["an", "array"]',
        "42",
        json.dumps({"text": "images is a number, not a list", "image": 5}),
        json.dumps({"text": "images hold something not a path", "image": ["images/0.png", 7]}),
        json.dumps({"text": "an empty image path in this row", "image": [""]}),
        json.dumps({"text": "a pipe named like a picture here", "image": ["images/fifo.png"]}),
        b"\xff\xfe not utf-8".decode("latin-1"),
    ]
    lines = []
    for index, line in enumerate(good):
        lines.append(line)
        lines.append(bad[index * 2])
        lines.append(bad[index * 2 + 1])
    dataset.write_text("\n".join(lines) + "\n", encoding="utf-8")
    result = cli("data", "run", _recipe(tmp_path, dataset, [{"image_shape_filter": {"min_width": 10}}]))
    assert result.code == 0, result.err
    assert BUG_LINE not in result.err
    kept = [json.loads(line)["text"] for line in (tmp_path / "out" / "result.jsonl").read_text(encoding="utf-8").splitlines()]
    assert kept == [json.loads(line)["text"] for line in good]
    report = json.loads((tmp_path / "out" / "result_report.json").read_text(encoding="utf-8"))
    skipped = {row["line"]: row["reason"] for row in report["skipped_rows"]}
    bad_lines = sorted(set(range(1, len(lines) + 1)) - {1, 4, 7, 10, 13})
    assert sorted(skipped) == bad_lines
    assert "surrogate" in skipped[2] and "NUL" in skipped[3] and "nested too deeply" in skipped[5]
    assert "list" in skipped[6] and "int" in skipped[8] and "list of paths" in skipped[9]
    assert "directory" in skipped[12] and "not a regular file" in skipped[14]
    assert report["samples_out"] == 5 and report["skipped"] == 10


def test_a_fifo_as_dataset_path_is_one_line_not_a_hang(cli, tmp_path):
    os.mkfifo(tmp_path / "data.jsonl")
    line = cli("data", "run", _recipe(tmp_path, tmp_path / "data.jsonl", [{"text_length_filter": {}}])).error_line()
    assert "not a regular file" in line


def test_a_recipe_cannot_allow_pickle_files(cli, tmp_path):
    (tmp_path / "in.jsonl").write_text('{"text": "a", "images": []}\n', encoding="utf-8")
    (tmp_path / "recipe.yaml").write_text(
        f"dataset_path: {tmp_path / 'in.jsonl'}\nexport_path: {tmp_path / 'out.jsonl'}\n"
        "process:\n  - image_aesthetics_filter:\n      hf_scorer_model: head.pth\n      allow_pickle: true\n",
        encoding="utf-8",
    )
    result = cli("data", "run", tmp_path / "recipe.yaml")
    assert result.code == 1 and "allow_pickle is never allowed from a recipe" in result.err
    assert not (tmp_path / "out.jsonl").exists()
