"""Issue 19's deduplicators, selectors and image ops: Data-Juicer parity, mappers' files, the unknown-op line.

Parity cases live in dj_parity/cases/ (the format of scripts/dj_parity.py, which
recorded dj_parity/expected/ from the real Data-Juicer 1.6.1). Here they run
on the local executor; the Ray test runs a few of them plus the image mappers in
one local Ray and checks the files equal the local executor's.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from PIL import Image

from lorastory.data.executor import run_recipe
from lorastory.data.recipe import load_recipe
from lorastory.errors import LorastoryError

CASES = Path(__file__).parent / "dj_parity" / "cases"
EXPECTED = Path(__file__).parent / "dj_parity" / "expected"
OPS = (
    "document_deduplicator", "document_minhash_deduplicator", "document_simhash_deduplicator",
    "document_line_deduplicator", "topk_specified_field_selector", "frequency_specified_field_selector",
    "range_specified_field_selector", "tags_specified_field_selector", "random_selector",
    "image_face_count_filter", "image_face_ratio_filter", "image_subplot_filter",
)
CASE_PATHS = sorted(
    path for path in CASES.glob("*.yaml")
    if any(name in OPS for entry in (yaml.safe_load(path.read_text()) or {}).get("process") or [] for name in entry)
)
RAY_CASES = ("document_minhash_deduplicator_character", "document_line_deduplicator_opts", "random_selector_ratio")


def _case(name_or_path: str | Path) -> dict[str, Any]:
    path = name_or_path if isinstance(name_or_path, Path) else CASES / f"{name_or_path}.yaml"
    text = path.read_text(encoding="utf-8")
    case = yaml.safe_load(text)
    case["name"] = path.stem
    case["input_path"] = CASES / case.get("input", f"{path.stem}.jsonl")
    digest = hashlib.sha256(text.encode("utf-8"))
    digest.update(case["input_path"].read_bytes())
    case["source_sha256"] = digest.hexdigest()
    return case


def _write_recipe(case: dict[str, Any], folder: Path, extra: list[dict] | None = None) -> Path:
    recipe = {"project_name": case["name"], "np": 1, **(case.get("recipe") or {}),
              "dataset_path": str(case["input_path"]), "export_path": str(folder / "out" / "result.jsonl"),
              "process": (case.get("process") or []) + (extra or [])}
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, allow_unicode=True), encoding="utf-8")
    return path


def _kept(folder: Path) -> tuple[list[dict], list[dict]]:
    """Rows as the parity script normalises them (no __dj__ fields, images relative to cases/) and stats."""
    export = folder / "out" / "result.jsonl"
    rows = [json.loads(line) for line in export.read_text(encoding="utf-8").splitlines()]
    stats_path = export.with_name("result_stats.jsonl")
    stats = ([json.loads(line)["__dj__stats__"] for line in stats_path.read_text().splitlines()]
             if stats_path.exists() else [{} for _ in rows])
    clean = []
    for row in rows:
        row = {k: v for k, v in row.items() if not k.startswith("__dj__")}
        if isinstance(row.get("images"), list):
            row["images"] = [os.path.relpath(os.path.normpath(p), CASES) for p in row["images"]]
        clean.append(row)
    return clean, stats


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) or isinstance(b, float):
        return isinstance(b, (int, float)) and isinstance(a, (int, float)) and math.isclose(a, b, rel_tol=1e-9)
    return a == b


def _check_against_data_juicer(case: dict[str, Any], folder: Path, refused: str | None) -> None:
    """Same kept rows, text and stats as Data-Juicer; or refused where Data-Juicer refused the recipe."""
    expected = json.loads((EXPECTED / f"{case['name']}.json").read_text(encoding="utf-8"))
    assert expected["source_sha256"] == case["source_sha256"], f"{case['name']}: re-record with scripts/dj_parity.py"
    if expected["error"]:
        assert refused, f"Data-Juicer refused {case['name']} ({expected['error']}) but lorastory ran it"
        return
    assert refused is None, refused
    rows, stats = _kept(folder)
    assert [r["text"] for r in rows] == [r["text"] for r in expected["rows"]]
    assert rows == expected["rows"]
    for want, have in zip(expected["stats"], stats):
        assert set(want) == set(have) and all(_same(want[k], have[k]) for k in want), (want, have)


def test_every_op_of_this_part_has_a_parity_case():
    used = {name for path in CASE_PATHS for entry in _case(path)["process"] for name in entry}
    assert sorted(set(OPS) - used) == []


def _run_case(case: dict[str, Any], folder: Path, runner: Any, extra: list[dict] | None = None) -> str | None:
    """Run the case; the one-line message if lorastory refused it."""
    try:
        runner(load_recipe(_write_recipe(case, folder, extra)))
    except LorastoryError as err:
        return str(err)
    return None


@pytest.mark.parametrize("case_path", CASE_PATHS, ids=[p.stem for p in CASE_PATHS])
def test_local_executor_keeps_what_data_juicer_keeps(case_path, tmp_path):
    case = _case(case_path)
    refused = _run_case(case, tmp_path, lambda recipe: run_recipe(recipe, processes=2))
    _check_against_data_juicer(case, tmp_path, refused)


def test_minhash_drops_near_copies_and_keeps_the_first(tmp_path):
    base = "a small red fox runs across the snowy field near the old wooden barn at dawn"
    rows = [base, "something else entirely about a cat that sleeps on a warm windowsill all day", base + " today"]
    data = tmp_path / "in.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in rows))
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"dataset_path": str(data), "export_path": str(tmp_path / "o" / "r.jsonl"),
                                      "process": [{"document_minhash_deduplicator": {"jaccard_threshold": 0.6}}]}))
    result = run_recipe(load_recipe(recipe), processes=1)
    kept = [json.loads(line)["text"] for line in (tmp_path / "o" / "r.jsonl").read_text().splitlines()]
    assert kept == rows[:2] and (result.ops[0].n_in, result.ops[0].dropped) == (3, 1)
    report = json.loads((tmp_path / "o" / "r_report.json").read_text())
    assert [(e["line"], e["why"]) for e in report["dropped_examples"]] == [(3, "duplicate")]


def test_a_filter_after_a_selector_reports_input_line_numbers(tmp_path):
    texts = ["bbbbbbbbbbbbbbbbbbbb", "aa", "cccccccccccccccc", "dddddddddddddddddddddddddd"]
    data = tmp_path / "in.jsonl"
    data.write_text("".join(json.dumps({"text": t, "n": i}) + "\n" for i, t in enumerate(texts)))
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"dataset_path": str(data), "export_path": str(tmp_path / "o" / "r.jsonl"),
                                      "process": [{"topk_specified_field_selector": {"field_key": "n", "topk": 3}},
                                                  {"text_length_filter": {"min_len": 15}}]}))
    run_recipe(load_recipe(recipe), processes=1)
    kept = [json.loads(line)["n"] for line in (tmp_path / "o" / "r.jsonl").read_text().splitlines()]
    report = json.loads((tmp_path / "o" / "r_report.json").read_text())
    assert kept == [3, 2]  # rank order, as Data-Juicer writes a top-k selection
    assert {(e["line"], e["op"]) for e in report["dropped_examples"]} == {
        (1, "topk_specified_field_selector"), (2, "text_length_filter")}


def test_a_data_juicer_op_we_lack_stops_before_any_work(cli, tmp_path):
    data = tmp_path / "in.jsonl"
    data.write_text(json.dumps({"text": "hello"}) + "\n")
    recipe = tmp_path / "r.yaml"
    export = tmp_path / "o" / "r.jsonl"
    recipe.write_text(yaml.safe_dump({"dataset_path": str(data), "export_path": str(export),
                                      "process": [{"document_deduplicator": None},
                                                  {"video_motion_score_filter": {"min_score": 0.25}}]}))
    line = cli("data", "run", recipe).error_line("'video_motion_score_filter' is a Data-Juicer operator", "process[2]")
    assert "does not support yet" in line and not export.parent.exists()
    recipe.write_text(yaml.safe_dump({"dataset_path": str(data), "export_path": str(export),
                                      "process": [{"make_it_pretty_mapper": None}]}))
    line = cli("data", "run", recipe).error_line("unknown op 'make_it_pretty_mapper'", "not a Data-Juicer 1.6.1 operator")
    assert "data ops" in line


def test_data_ops_names_each_op_with_a_line_on_what_it_does(cli):
    result = cli("data", "ops")
    assert result.code == 0
    lines = {line.split("│")[1].strip(): line for line in result.out.splitlines() if line.count("│") > 2}
    assert "Near-duplicate texts by MinHash" in lines["document_minhash_deduplicator"]
    assert "Keep a random subset" in lines["random_selector"]
    assert "target_tags (required)" in lines["tags_specified_field_selector"]


def _image_recipe(tmp_path: Path, process: list[dict], rows: list[dict]) -> tuple[Path, Path]:
    data = tmp_path / "data"
    data.mkdir()
    for name in ("face_one.png", "noise.png"):
        (data / name).write_bytes((CASES / "images" / name).read_bytes())
    (data / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"dataset_path": str(data / "in.jsonl"), "np": 1,
                                      "export_path": str(tmp_path / "out" / "result.jsonl"), "process": process}))
    return recipe, data


def _digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_face_blur_writes_new_images_beside_the_export_and_leaves_the_inputs(cli, tmp_path):
    rows = [{"text": "face", "images": ["face_one.png"]}, {"text": "no face", "images": ["noise.png"]}]
    recipe, data = _image_recipe(tmp_path, [{"image_face_blur_mapper": {"radius": 4}}], rows)
    before = _digests(data)
    assert cli("data", "run", recipe).code == 0
    assert _digests(data) == before  # nothing written into, or over, the input folder
    out = [json.loads(line) for line in (tmp_path / "out" / "result.jsonl").read_text().splitlines()]
    blurred = Path(out[0]["images"][0])
    assert blurred.parent == tmp_path / "out" / "__dj__produced_data__" / "image_face_blur_mapper"
    assert blurred.name.startswith("face_one__dj_hash_#") and blurred.suffix == ".png"
    assert out[0]["__dj__source_file__"] == [str(data / "face_one.png")]
    assert out[1]["images"] == [str(data / "noise.png")]  # no face found: the row keeps its image
    original = np.asarray(Image.open(data / "face_one.png").convert("RGB")).astype(int)
    new = np.asarray(Image.open(blurred).convert("RGB")).astype(int)
    changed = np.argwhere(np.abs(new - original).sum(axis=2) > 0)
    assert changed.size > 0 and (original[:8, :8] == new[:8, :8]).all()  # the face changed, the corner did not


def test_blur_mapper_p_one_blurs_every_image_and_p_zero_none(cli, tmp_path):
    rows = [{"text": "a", "images": ["face_one.png", "noise.png"]}]
    recipe, data = _image_recipe(tmp_path, [{"image_blur_mapper": {"p": 1.0, "blur_type": "mean"}},
                                            {"image_blur_mapper": {"p": 0.0}}], rows)
    assert cli("data", "run", recipe).code == 0
    out = json.loads((tmp_path / "out" / "result.jsonl").read_text())
    produced = tmp_path / "out" / "__dj__produced_data__" / "image_blur_mapper"
    assert sorted(Path(p).parent for p in out["images"]) == [produced, produced]
    assert len(list(produced.iterdir())) == 2
    blurred = np.asarray(Image.open(out["images"][1]))
    source = Image.open(data / "noise.png").convert("RGB")
    assert blurred.shape == np.asarray(source).shape and not (blurred == np.asarray(source)).all()


def test_a_save_dir_in_the_input_folder_is_refused(cli, tmp_path):
    rows = [{"text": "a", "images": ["face_one.png"]}]
    recipe, data = _image_recipe(tmp_path, [{"image_blur_mapper": {"p": 1.0, "save_dir": "PLACEHOLDER"}}], rows)
    recipe.write_text(recipe.read_text().replace("PLACEHOLDER", str(data)))
    before = _digests(data)
    result = cli("data", "run", recipe)
    assert result.code == 0  # the row is skipped with the reason; nothing is written beside the inputs
    assert _digests(data) == before
    report = json.loads((tmp_path / "out" / "result_report.json").read_text())
    assert "never go beside the inputs" in json.dumps(report)


def test_pair_similarity_with_a_tiny_clip(tmp_path, clip_dir):
    rows = [{"text": "same", "images": ["face_one.png", "copy.png"]}, {"text": "one image", "images": ["noise.png"]}]
    recipe, data = _image_recipe(
        tmp_path, [{"image_pair_similarity_filter": {"hf_clip": str(clip_dir), "min_score": 0.999}}], rows)
    (data / "copy.png").write_bytes((data / "face_one.png").read_bytes())
    result = run_recipe(load_recipe(recipe), processes=1)
    stats = [json.loads(line)["__dj__stats__"] for line in (tmp_path / "out" / "result_stats.jsonl").read_text().splitlines()]
    assert len(stats) == 1 and stats[0]["image_pair_similarity"][0] == pytest.approx(1.0, abs=1e-5)
    assert result.ops[0].errors == 1 and "exactly two different images" in result.skipped[0].reason


@pytest.mark.slow
def test_ray_executor_writes_what_the_local_one_writes(tmp_path, ray_local):
    """One local Ray (2 CPUs) for every Ray check of this part."""
    from lorastory.data.executor_ray import run_recipe_ray

    blur = [{"image_face_blur_mapper": {}}, {"ray_image_deduplicator": {}}, {"ray_document_deduplicator": {}},
            {"ray_bts_minhash_deduplicator": {"union_find_parallel_num": 2}}]
    for name in (*RAY_CASES, "image_face_ratio_filter"):
        case = _case(name)
        extra = blur if name == "image_face_ratio_filter" else None
        local, remote = tmp_path / f"{name}-local", tmp_path / f"{name}-ray"
        local.mkdir(), remote.mkdir()
        assert _run_case(case, local, lambda recipe: run_recipe(recipe, processes=2), extra) is None
        refused = _run_case(case, remote, lambda r: run_recipe_ray(r, processes=2, block_bytes=200), extra)
        assert refused is None, refused
        for output in ("result.jsonl", "result_stats.jsonl"):
            a, b = local / "out" / output, remote / "out" / output
            assert a.exists() == b.exists(), (name, output)
            if a.exists():  # produced images sit beside each run's export
                assert a.read_text().replace(str(local), "X") == b.read_text().replace(str(remote), "X"), name
        if extra is None:
            _check_against_data_juicer(case, remote, None)


@pytest.fixture(scope="module")
def tiny_classifier(tmp_path_factory) -> Path:
    """A random two-label ViT image classifier saved as save_pretrained writes it (safetensors)."""
    import torch
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    folder = tmp_path_factory.mktemp("tiny-vit") / "model"
    torch.manual_seed(0)
    config = ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=37, num_labels=2)
    ViTForImageClassification(config).save_pretrained(folder)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


@pytest.mark.parametrize(("op", "model_key", "stat"), [
    ("image_nsfw_filter", "hf_nsfw_model", "image_nsfw_score"),
    ("image_watermark_filter", "hf_watermark_model", "image_watermark_prob"),
])
def test_classifier_ops_keep_rows_by_label_one_probability(tmp_path, tiny_classifier, op, model_key, stat):
    rows = [{"text": "face", "images": ["face_one.png"]}, {"text": "noise", "images": ["noise.png"]},
            {"text": "none", "images": []}]
    everything = {"max_score": 1.0} if op == "image_nsfw_filter" else {"prob_threshold": 1.0}
    recipe, _ = _image_recipe(tmp_path, [{op: {model_key: str(tiny_classifier), **everything}}], rows)
    run_recipe(load_recipe(recipe), processes=1)
    stats = [json.loads(line)["__dj__stats__"][stat] for line in (tmp_path / "out" / "result_stats.jsonl").read_text().splitlines()]
    assert len(stats) == 3 and stats[2] == [] and all(0 < s[0] < 1 for s in stats[:2]) and stats[0] != stats[1]
    low, high = sorted([stats[0][0], stats[1][0]])
    middle = (low + high) / 2
    data = yaml.safe_load(recipe.read_text())
    data["process"][0][op][next(iter(everything))] = middle
    recipe.write_text(yaml.safe_dump(data))
    run_recipe(load_recipe(recipe), processes=1)
    kept = [json.loads(line)["text"] for line in (tmp_path / "out" / "result.jsonl").read_text().splitlines()]
    lower_row = "face" if stats[0][0] == low else "noise"
    assert kept == [text for text in ("face", "noise") if text == lower_row] + ["none"]


def test_a_pickle_only_classifier_is_refused_before_any_work(cli, tmp_path, tiny_classifier):
    folder = tmp_path / "pickled"
    folder.mkdir()
    for name in ("config.json", "preprocessor_config.json"):
        (folder / name).write_bytes((tiny_classifier / name).read_bytes())
    (folder / "pytorch_model.bin").write_bytes(b"not loaded")
    recipe, _ = _image_recipe(tmp_path, [{"image_nsfw_filter": {"hf_nsfw_model": str(folder)}}],
                              [{"text": "a", "images": ["noise.png"]}])
    cli("data", "run", recipe).error_line("image_nsfw_filter", "no safetensors weights", "never loads")
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def tiny_blip(tmp_path_factory) -> Path:
    """A random BLIP image-text retrieval model with a 40-token vocabulary, saved with its processor."""
    import torch
    from transformers import BertTokenizerFast, BlipConfig, BlipForImageTextRetrieval, BlipImageProcessor, BlipProcessor

    folder = tmp_path_factory.mktemp("tiny-blip") / "model"
    folder.mkdir()
    torch.manual_seed(0)
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *"abcdefghijklmnopqrstuvwxyz", "face", "noise", "photo"]
    (folder / "vocab.txt").write_text("\n".join(words) + "\n")
    tokenizer = BertTokenizerFast(vocab_file=str(folder / "vocab.txt"))
    BlipProcessor(image_processor=BlipImageProcessor(size={"height": 32, "width": 32}), tokenizer=tokenizer).save_pretrained(folder)
    small = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 37}
    config = BlipConfig(
        text_config={**small, "vocab_size": len(words), "max_position_embeddings": 64, "encoder_hidden_size": 32,
                     "bos_token_id": 2, "sep_token_id": 3, "pad_token_id": 0},
        vision_config={**small, "image_size": 32, "patch_size": 8}, projection_dim=16, image_text_hidden_size=16)
    BlipForImageTextRetrieval(config).save_pretrained(folder)
    return folder


def test_text_matching_keeps_rows_by_blip_match_probability(tmp_path, tiny_blip):
    rows = [{"text": "a face", "images": ["face_one.png"]},
            {"text": "<__dj__image> noise <|__dj__eoc|> <__dj__image> photo", "images": ["noise.png", "face_one.png"]}]
    recipe, _ = _image_recipe(tmp_path, [{"image_text_matching_filter": {"hf_blip": str(tiny_blip), "min_score": 0}}], rows)
    run_recipe(load_recipe(recipe), processes=1)
    stats = [json.loads(line)["__dj__stats__"]["image_text_matching_score"]
             for line in (tmp_path / "out" / "result_stats.jsonl").read_text().splitlines()]
    assert [len(s) for s in stats] == [1, 2] and all(0 < v < 1 for s in stats for v in s)
    data = yaml.safe_load(recipe.read_text())
    middle = (stats[0][0] + max(stats[1])) / 2  # between row 1's score and row 2's best chunk
    data["process"][0]["image_text_matching_filter"].update(min_score=middle, any_or_all="any")
    recipe.write_text(yaml.safe_dump(data))
    run_recipe(load_recipe(recipe), processes=1)
    kept = [json.loads(line)["text"] for line in (tmp_path / "out" / "result.jsonl").read_text().splitlines()]
    assert stats[0][0] != max(stats[1]) and kept == [rows[0 if stats[0][0] > middle else 1]["text"]]
