"""Path safety: nothing outside the workspace is read, imported or served."""

from __future__ import annotations

import io
import json
import zipfile

import pytest
from PIL import Image

from lorastory.ui import actions
from lorastory.ui.workspace import PathRefused, Workspace


@pytest.fixture
def setup(tmp_path):
    ws = Workspace(tmp_path / "ws")
    outside = tmp_path / "outside"
    outside.mkdir()
    Image.new("RGB", (64, 64), "red").save(outside / "secret.png")
    (outside / "secret.txt").write_text("top secret", encoding="utf-8")
    return ws, outside


def png_bytes(size=(64, 64)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, "blue").save(buffer, "PNG")
    return buffer.getvalue()


@pytest.mark.parametrize("attempt", ["../outside", "../outside/secret.txt", "datasets/../../outside", "/etc/passwd",
                                     "~/.ssh", "..", "datasets/../.."])
def test_paths_leaving_the_workspace_are_refused(setup, attempt):
    ws, _ = setup
    with pytest.raises(PathRefused, match="outside the workspace"):
        ws.resolve(attempt)


def test_absolute_path_outside_and_inside(setup):
    ws, outside = setup
    with pytest.raises(PathRefused):
        ws.resolve(str(outside / "secret.txt"))
    assert ws.resolve(str(ws.root / "datasets")) == ws.root / "datasets"
    assert ws.resolve("datasets/../models") == ws.root / "models"


def test_symlinks_escaping_are_refused(setup):
    ws, outside = setup
    (ws.root / "link").symlink_to(outside)
    (ws.root / "file-link.txt").symlink_to(outside / "secret.txt")
    for attempt in ("link", "link/secret.txt", "file-link.txt", str(ws.root / "link" / "secret.png")):
        with pytest.raises(PathRefused):
            ws.resolve(attempt)
    with pytest.raises(PathRefused):
        ws.check(ws.root / "link" / "secret.png")
    # A link that stays inside is fine.
    (ws.root / "inner").symlink_to(ws.root / "datasets")
    assert ws.resolve("inner") == ws.root / "datasets"


def test_empty_nul_and_bad_names(setup):
    ws, _ = setup
    for bad in ("", "   ", None, "a\x00b"):
        with pytest.raises(PathRefused):
            ws.resolve(bad)
    for bad in ("../x", "a/b", "..", ".hidden", "", "x" * 65):
        with pytest.raises(PathRefused):
            ws.child("datasets", bad)
    assert ws.child("stories", "小猫-1").name == "小猫-1"


def test_must_exist(setup):
    ws, _ = setup
    with pytest.raises(PathRefused, match="does not exist"):
        ws.resolve("nothing/here", must_exist=True)


def test_import_refuses_links_and_metadata_pointing_outside(setup):
    ws, outside = setup
    folder = ws.root / "incoming"
    folder.mkdir()
    Image.new("RGB", (64, 64)).save(folder / "ok.png")
    (folder / "sneaky.png").symlink_to(outside / "secret.png")
    with pytest.raises(PathRefused, match="leave the workspace"):
        actions.import_folder(ws, "incoming", "d1", "二次元", replace=True)
    (folder / "sneaky.png").unlink()
    (folder / "metadata.jsonl").write_text(
        json.dumps({"text": "x", "image": [str(outside / "secret.png")]}) + "\n", encoding="utf-8")
    with pytest.raises(PathRefused, match="outside the workspace"):
        actions.import_folder(ws, "incoming", "d1", None, replace=True)
    (folder / "metadata.jsonl").write_text(
        json.dumps({"text": "x", "image": ["../../outside/secret.png"]}) + "\n", encoding="utf-8")
    with pytest.raises(PathRefused, match="outside the workspace"):
        actions.import_folder(ws, "incoming", "d1", None, replace=True)
    assert not (ws.root / "datasets" / "d1").exists()


def test_recipe_paths_are_workspace_paths(setup):
    ws, outside = setup
    (ws.root / "datasets" / "d").mkdir()
    (ws.root / "datasets" / "d" / "metadata.jsonl").write_text(
        json.dumps({"text": "x", "image": [str(outside / "secret.png")]}) + "\n", encoding="utf-8")
    recipe = "dataset_path: datasets/d/metadata.jsonl\nexport_path: curated/r/result.jsonl\nnp: 1\nprocess:\n  - image_shape_filter: {}\n"
    with pytest.raises(PathRefused, match="line 1: image .* outside the workspace"):
        actions.run_recipe_text(ws, recipe, "r")
    escaping = recipe.replace("curated/r/result.jsonl", "../../escaped.jsonl")
    with pytest.raises(PathRefused):
        actions.run_recipe_text(ws, escaping, "r2")
    with pytest.raises(PathRefused):
        actions.run_recipe_text(ws, recipe.replace("datasets/d/metadata.jsonl", str(outside / "x.jsonl")), "r3")


def test_upload_checks_images_and_zips(setup, tmp_path):
    ws, _ = setup
    uploads = tmp_path / "gradio-uploads"
    uploads.mkdir()
    (uploads / "good.png").write_bytes(png_bytes())
    (uploads / "good.txt").write_text("一个女孩", encoding="utf-8")
    (uploads / "truncated.png").write_bytes(png_bytes()[:-20])
    (uploads / "empty.jpg").write_bytes(b"")
    (uploads / "script.sh").write_text("rm -rf /", encoding="utf-8")
    (uploads / "fake.png").write_text("not an image", encoding="utf-8")
    bomb = Image.new("1", (20_000, 20_000))  # 400 Mpx, a few KB on disk
    bomb.save(uploads / "bomb.png")
    archive = uploads / "set.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("../../evil.png", png_bytes())
        z.writestr("/abs/path.png", png_bytes())
        z.writestr("nested/dir/inner.png", png_bytes())
        z.writestr("inner.txt", "二次元")
        z.writestr("notes.exe", b"MZ")
        z.writestr("huge.png", b"\0" * (80 * 1024 * 1024))  # compresses ~1000:1
        link = zipfile.ZipInfo("link.png")
        link.external_attr = (0o120777 << 16)
        z.writestr(link, "/etc/passwd")
    outsider = tmp_path / "not-uploaded.png"
    outsider.write_bytes(png_bytes())
    files = sorted(uploads.iterdir()) + [outsider]
    result = ws.store_upload(files, uploads, ws.root / "uploads" / "u1")
    stored = sorted(p.name for p in (ws.root / "uploads" / "u1").iterdir())
    # inner.txt (zip root) is not the caption of nested/dir/inner.png: it is stored apart from it.
    assert stored == sorted(["good.png", "good.txt", "evil.png", "path.png", "inner.png", "inner-2.txt"])
    reasons = {r["file"]: r["reason"] for r in result.refused}
    assert "truncated" in reasons["truncated.png"]
    assert "empty" in reasons["empty.jpg"]
    assert "decompression bomb" in reasons["bomb.png"]
    assert "not a recognised image" in reasons["fake.png"]
    assert "script.sh" in reasons and "set.zip:notes.exe" in reasons
    assert "zip bomb" in reasons["set.zip:huge.png"]
    assert "symbolic link" in reasons["set.zip:link.png"]
    assert reasons["not-uploaded.png"] == "not an upload of this app"
    assert not (ws.root.parent / "evil.png").exists() and not (ws.root / "evil.png").exists()
    assert result.images == 4 and result.captions == 2


def test_import_upload_end_to_end(setup, tmp_path):
    ws, _ = setup
    uploads = tmp_path / "up"
    uploads.mkdir()
    for name in ("a.png", "b.png"):
        (uploads / name).write_bytes(png_bytes())
    (uploads / "a.txt").write_text("一只猫", encoding="utf-8")
    result = actions.import_upload(ws, [str(p) for p in uploads.iterdir()], str(uploads), "up", None, True)
    assert result["written"] == 1  # b.png has no caption and no caption was given
    assert "caption" in result["skipped"][0]["reason"]
    rows = [json.loads(line) for line in (ws.root / "datasets" / "up" / "metadata.jsonl").read_text(encoding="utf-8").splitlines()]
    assert rows[0]["text"] == "一只猫"


def test_model_choice_never_another_local_path(setup, monkeypatch, tmp_path):
    ws, outside = setup
    with pytest.raises(PathRefused):
        actions.resolve_model(ws, str(outside))
    with pytest.raises(PathRefused):
        actions.resolve_model(ws, "../outside")
    # A hub id is passed through, unless a folder of that name exists where the server runs.
    monkeypatch.chdir(tmp_path)
    assert actions.resolve_model(ws, "Kwai-Kolors/Kolors-diffusers") == "Kwai-Kolors/Kolors-diffusers"
    (tmp_path / "owner" / "name").mkdir(parents=True)
    with pytest.raises(PathRefused):
        actions.resolve_model(ws, "owner/name")
