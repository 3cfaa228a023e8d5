"""The Data tab's actions keep the user's data: captions from files, an existing dataset,
same-name pictures in a zip, recipe model paths in the workspace, and the recipe's image key."""

from __future__ import annotations

import json
import shutil
import zipfile

import pytest
from PIL import Image

from lorastory.errors import ConfigError
from lorastory.ui import actions
from lorastory.ui.actions.data import workspace_model_paths
from lorastory.ui.tabs.data import import_message, recipe_message
from lorastory.ui.workspace import PathRefused, Workspace


def rows_of(ws: Workspace, name: str) -> list[dict]:
    text = (ws.root / "datasets" / name / "metadata.jsonl").read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines()]


def colour_of(ws: Workspace, name: str, row: dict) -> tuple[int, int, int]:
    with Image.open(ws.root / "datasets" / name / row["image"][0]) as image:
        return image.convert("RGB").getpixel((0, 0))


@pytest.fixture
def ws(tmp_path):
    ws = Workspace(tmp_path / "ws")
    folder = ws.root / "incoming"
    folder.mkdir()
    Image.new("RGB", (64, 64), "red").save(folder / "a.png")
    (folder / "a.txt").write_text("a red square", encoding="utf-8")
    Image.new("RGB", (64, 64), "blue").save(folder / "b.png")  # no caption of its own
    return ws


def test_captions_from_files_win_over_the_fallback(ws):
    result = actions.import_folder(ws, "incoming", "d", "二次元", replace=True)
    texts = {colour_of(ws, "d", row): row["text"] for row in rows_of(ws, "d")}
    assert texts == {(255, 0, 0): "a red square", (0, 0, 255): "二次元"}
    assert (result["captions_from_files"], result["captions_from_fallback"]) == (1, 1)
    assert "1 from files, 1 from the fallback caption" in import_message(result)


def test_unticked_replace_never_replaces(ws, tmp_path):
    actions.import_folder(ws, "incoming", "d", "x", replace=True)
    before = (ws.root / "datasets" / "d" / "metadata.jsonl").read_bytes()
    (ws.root / "incoming" / "a.txt").write_text("changed", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"^dataset 'd' already exists .*tick 'Replace an existing dataset' or pick another name$"):
        actions.import_folder(ws, "incoming", "d", "x", replace=False)
    assert (ws.root / "datasets" / "d" / "metadata.jsonl").read_bytes() == before
    uploads = tmp_path / "up"
    uploads.mkdir()
    shutil.copy(ws.root / "incoming" / "a.png", uploads / "a.png")
    with pytest.raises(ConfigError, match="already exists"):
        actions.import_upload(ws, [str(uploads / "a.png")], str(uploads), "d", "x", False)
    assert not (ws.root / "uploads").exists() or not any((ws.root / "uploads").iterdir())
    actions.import_folder(ws, "incoming", "d", "x", replace=True)  # ticked: replaced
    assert "changed" in [row["text"] for row in rows_of(ws, "d")]


def test_zip_pairs_each_picture_with_its_own_folders_caption(ws, tmp_path):
    uploads = tmp_path / "up"
    uploads.mkdir()
    with zipfile.ZipFile(uploads / "set.zip", "w") as z:
        for folder, colour, caption in (("a", "red", "a red cat"), ("b", "blue", "a blue dog")):
            buffer = tmp_path / f"{folder}.png"
            Image.new("RGB", (64, 64), colour).save(buffer)
            z.write(buffer, f"{folder}/x.png")
            z.writestr(f"{folder}/x.txt", caption)
        z.writestr("c/x.txt", "a caption whose picture is missing")
    result = actions.import_upload(ws, [str(uploads / "set.zip")], str(uploads), "z", None, True)
    assert result["written"] == 2
    texts = {colour_of(ws, "z", row): row["text"] for row in rows_of(ws, "z")}
    assert texts == {(255, 0, 0): "a red cat", (0, 0, 255): "a blue dog"}


RECIPE = """dataset_path: datasets/toy/metadata.jsonl
export_path: curated/{name}/result.jsonl
np: 1
{extra}process:
  - {op}
"""


@pytest.fixture
def toy_ws(tmp_path):
    """A workspace dataset whose rows list their pictures under 'image' (as lorastory imports write them)."""
    ws = Workspace(tmp_path / "ws")
    folder = ws.root / "datasets" / "toy"
    (folder / "images").mkdir(parents=True)
    with open(folder / "metadata.jsonl", "w", encoding="utf-8") as meta:
        for index, size in enumerate([(64, 64), (16, 16), (128, 32)]):
            Image.new("RGB", size, "green").save(folder / "images" / f"{index}.png")
            meta.write(json.dumps({"text": f"picture {index}", "image": [f"images/{index}.png"]}) + "\n")
    return ws


def test_recipe_model_paths_resolve_in_the_workspace(toy_ws, tiny_clip):
    ws = toy_ws
    shutil.copytree(tiny_clip, ws.root / "models" / "toy-clip")
    op = "image_text_similarity_filter: {{hf_clip: '{}', min_score: -1.0}}"
    report = actions.run_recipe_text(ws, RECIPE.format(name="c", extra="image_key: image\n", op=op.format("models/toy-clip")), "c")
    assert report["samples_out"] == 3
    for outside in ("/etc", "../outside", str(ws.root.parent)):
        with pytest.raises(PathRefused, match=rf"^image_text_similarity_filter: hf_clip '{outside}' is outside the workspace;"):
            actions.run_recipe_text(ws, RECIPE.format(name="c", extra="", op=op.format(outside)), "c")
    with pytest.raises(PathRefused, match="'models/nothing' does not exist in the workspace"):
        actions.run_recipe_text(ws, RECIPE.format(name="c", extra="", op=op.format("models/nothing")), "c")
    hub = [{"image_text_similarity_filter": {"hf_clip": "openai/clip-vit-base-patch32"}}]
    assert workspace_model_paths(ws, hub) == hub


def test_recipe_image_key_the_rows_lack_is_named(toy_ws, cli, monkeypatch):
    ws = toy_ws
    op = "image_shape_filter: {min_width: 32, min_height: 32}"
    report = actions.run_recipe_text(ws, RECIPE.format(name="k", extra="", op=op), "k")
    warning = "rows have 'image', the recipe reads 'images': set image_key: image"
    assert len(report["warnings"]) == 1 and report["warnings"][0].startswith(warning)
    assert warning in recipe_message(ws, report)
    right = actions.run_recipe_text(ws, RECIPE.format(name="k2", extra="image_key: image\n", op=op), "k2")
    assert right["warnings"] == [] and right["samples_out"] == 2
    monkeypatch.chdir(ws.root)  # the recipe's paths are relative to the workspace
    result = cli("data", "run", "-q", "recipes/k.yaml")
    assert result.code == 0, result.err
    assert warning in " ".join(result.err.split())
