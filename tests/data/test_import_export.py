"""`data import` and `data export-csv`, through the CLI and the library, on real files.

Every source type the design names, bad input skipped and reported (never a crash,
never silently dropped), stable output names, refusal to clobber a folder, and an
export that is all-or-nothing.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import lorastory.data.dataset as dataset_module
from lorastory.captions import clean_caption
from lorastory.data.dataset import ImportConfig, export_csv, import_dataset, safe_stem
from lorastory.errors import MissingExtraError, OutputError, SourceError

RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)


# --- helpers ---------------------------------------------------------------------------------


def _jpeg(path: Path, seed: int = 0) -> Path:
    """A noisy 64x64 RGB JPEG (distinct bytes per seed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(pixels, "RGB").save(path, "JPEG", quality=90)
    return path


def _png(path: Path, color=RED, size=(64, 64)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path, "PNG")
    return path


def _cmyk_jpeg(path: Path) -> Path:
    Image.new("CMYK", (64, 64), (0, 255, 255, 0)).save(path, "JPEG", quality=95)  # red ink
    return path


def _palette_png(path: Path) -> Path:
    """Left half transparent (palette index 0, red underneath), right half blue."""
    image = Image.new("P", (64, 64), 0)
    image.putpalette([*RED, *BLUE] + [0] * (256 * 3 - 6))
    image.paste(1, (32, 0, 64, 64))
    image.save(path, transparency=0)
    return path


def _rotated_jpeg(path: Path) -> Path:
    """Stored 64x32 with a red left half, EXIF orientation 6: displayed 32x64, red on top."""
    image = Image.new("RGB", (64, 32), RED)
    image.paste(BLUE, (32, 0, 64, 32))
    exif = Image.Exif()
    exif[0x0112] = 6
    image.save(path, "JPEG", quality=95, exif=exif)
    return path


def _close(pixel, expected, tol=8):
    return all(abs(a - b) <= tol for a, b in zip(pixel, expected))


def _rows(dataset_dir: Path) -> list[dict]:
    lines = (dataset_dir / "metadata.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


def _report(folder: Path, name: str = "import_report.json") -> dict:
    return json.loads((folder / name).read_text(encoding="utf-8"))


def _reasons(report: dict) -> dict[str, str]:
    return {item["item"]: item["reason"] for item in report["skipped_items"]}


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _export_rows(out: Path) -> list[dict[str, str]]:
    text = (out / "metadata.csv").read_text(encoding="utf-8")
    assert text.splitlines()[0] == "file_name,text"
    return list(csv.DictReader(io.StringIO(text, newline="")))


@pytest.fixture
def captioned_folder(tmp_path) -> Path:
    """Images with same-name .txt captions, nested, with one name used in two subfolders."""
    root = tmp_path / "src"
    _jpeg(root / "a.jpg", seed=1)
    (root / "a.txt").write_text("二次元，紫色长发少女\n", encoding="utf-8")
    _png(root / "sub1" / "img.png", RED)
    (root / "sub1" / "img.txt").write_text("red square", encoding="utf-8")
    _png(root / "sub2" / "img.png", GREEN)
    (root / "sub2" / "img.txt").write_text("\ufeffgreen square", encoding="utf-8")  # BOM is not text
    _jpeg(root / "sub2" / "deeper" / "x.jpg", seed=2)
    (root / "sub2" / "deeper" / "x.txt").write_text("deep one", encoding="utf-8")
    return root


# --- import: sources -----------------------------------------------------------------------------


def test_import_folder_with_txt_captions(cli, captioned_folder, tmp_path):
    out = tmp_path / "ds"
    result = cli("data", "import", captioned_folder, "--out", out)
    assert result.code == 0, result.err
    assert "Imported 4 images" in result.out and "(0 skipped)" in result.out

    rows = _rows(out)
    assert len(rows) == 4
    names = [row["image"][0] for row in rows]
    assert len(set(names)) == 4  # sub1/img.png and sub2/img.png do not collide
    for name in names:
        assert name.startswith("images/") and (out / name).is_file()
    assert sorted(p.name for p in (out / "images").iterdir()) == sorted(Path(n).name for n in names)
    sources = sorted(p for p in captioned_folder.rglob("*") if p.suffix in (".jpg", ".png"))
    by_source = {}
    for row in rows:
        data = (out / row["image"][0]).read_bytes()
        (source,) = [p for p in sources if p.read_bytes() == data]  # copied byte for byte
        by_source[source.relative_to(captioned_folder).as_posix()] = row["text"]
    assert by_source == {
        "a.jpg": "二次元，紫色长发少女",
        "sub1/img.png": "red square",
        "sub2/img.png": "green square",
        "sub2/deeper/x.jpg": "deep one",
    }
    # Chinese is stored as text, not \u escapes, and the run is recorded.
    assert "二次元" in (out / "metadata.jsonl").read_text(encoding="utf-8")
    report = _report(out)
    assert (report["written"], report["skipped"]) == (4, 0)
    assert ImportConfig.from_yaml(out / "config.yaml").source == str(captioned_folder)


def test_import_with_one_caption_for_all(cli, captioned_folder, tmp_path):
    _png(captioned_folder / "no_caption.png", BLUE)
    (captioned_folder / "unreadable.txt").write_bytes("二次元".encode("gbk"))
    _png(captioned_folder / "unreadable.png", WHITE)
    out = tmp_path / "ds"
    result = cli("data", "import", captioned_folder, "--out", out, "--caption", "二次元")
    assert result.code == 0, result.err
    rows = _rows(out)
    # Every image is kept, even those whose own caption is missing or not UTF-8: it is not used.
    assert len(rows) == 6
    assert {row["text"] for row in rows} == {"二次元"}
    assert _report(out)["skipped"] == 0


def test_import_hf_imagefolder_metadata_jsonl(tmp_path):
    root = tmp_path / "hf"
    _png(root / "train" / "one.png", RED)
    _png(root / "train" / "two.png", GREEN)
    _png(root / "train" / "unlisted.png", BLUE)  # not in metadata: not imported
    (root / "metadata.jsonl").write_text(
        json.dumps({"file_name": "train/one.png", "text": "第一张"}, ensure_ascii=False)
        + "\n\n"  # blank lines are fine
        + json.dumps({"file_name": "train/two.png", "text": "  second  ", "extra": 1})
        + "\n",
        encoding="utf-8",
    )
    out = tmp_path / "ds"
    result = import_dataset(ImportConfig(source=str(root)), out)
    assert (result.written, result.skipped) == (2, [])
    rows = _rows(out)
    assert [row["text"] for row in rows] == ["第一张", "second"]
    assert [Image.open(out / row["image"][0]).getpixel((0, 0)) for row in rows] == [RED, GREEN]


def test_import_metadata_csv(cli, tmp_path):
    root = tmp_path / "csv"
    _png(root / "a.png", RED)
    _png(root / "b.png", GREEN)
    (root / "metadata.csv").write_text(
        'file_name,text\na.png,"二次元，少女, with a comma"\nb.png,"a ""quoted"" word"\n', encoding="utf-8"
    )
    out = tmp_path / "ds"
    result = cli("data", "import", root / "metadata.csv", "--out", out)
    assert result.code == 0, result.err
    assert [row["text"] for row in _rows(out)] == ["二次元，少女, with a comma", 'a "quoted" word']


def test_import_metadata_csv_without_file_name_column(cli, tmp_path):
    root = tmp_path / "csv"
    _png(root / "a.png")
    (root / "metadata.csv").write_text("path,text\na.png,hello\n", encoding="utf-8")
    result = cli("data", "import", root, "--out", tmp_path / "ds")
    assert result.code == 1
    assert "file_name" in result.err and "Traceback" not in result.err
    assert not (tmp_path / "ds").exists()


def test_import_text_column_and_real_extension(cli, tmp_path):
    root = tmp_path / "src"
    _png(root / "really_a_png.jpg", RED)  # the extension lies; the copy gets the real one
    (root / "metadata.jsonl").write_text(
        json.dumps({"file_name": "really_a_png.jpg", "prompt": "from prompt", "tags": "1girl, solo"}) + "\n",
        encoding="utf-8",
    )
    assert cli("data", "import", root, "--out", tmp_path / "auto").code == 0
    (row,) = _rows(tmp_path / "auto")
    assert row["text"] == "from prompt" and row["image"][0].endswith(".png")
    assert cli("data", "import", root, "--out", tmp_path / "tags", "--text-column", "tags").code == 0
    assert _rows(tmp_path / "tags")[0]["text"] == "1girl, solo"


def test_import_data_juicer_jsonl(tmp_path):
    root = tmp_path / "dj"
    _png(root / "imgs" / "a.png", RED)
    _png(root / "imgs" / "b.png", GREEN)
    absolute = _png(tmp_path / "elsewhere" / "c.png", BLUE)
    lines = [
        {"text": "<__dj__image> 二次元", "image": ["imgs/a.png"]},
        {"text": "two", "images": ["imgs/b.png"]},
        {"text": "three", "image": [str(absolute)]},
    ]
    (root / "data.jsonl").write_text(
        "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines), encoding="utf-8"
    )
    out = tmp_path / "ds"
    result = import_dataset(ImportConfig(source=str(root / "data.jsonl")), out)
    assert (result.written, result.skipped) == (3, [])
    rows = _rows(out)
    assert [row["text"] for row in rows] == ["<__dj__image> 二次元", "two", "three"]
    assert [Image.open(out / row["image"][0]).getpixel((0, 0)) for row in rows] == [RED, GREEN, BLUE]


def test_import_saved_hugging_face_dataset(cli, tmp_path):
    datasets = pytest.importorskip("datasets")
    files = [_png(tmp_path / "raw" / f"{i}.png", color) for i, color in enumerate((RED, GREEN, BLUE))]
    table = datasets.Dataset.from_dict(
        {"image": [str(f) for f in files], "text": ["二次元", "green", "blue"], "score": [1, 2, 3]}
    ).cast_column("image", datasets.Image())
    table.save_to_disk(str(tmp_path / "saved"))
    for file in files:  # the saved dataset must not depend on the original files
        file.unlink()
    out = tmp_path / "ds"
    result = cli("data", "import", tmp_path / "saved", "--out", out)
    assert result.code == 0, result.err
    assert "Imported 3 images" in result.out
    rows = _rows(out)
    assert [row["text"] for row in rows] == ["二次元", "green", "blue"]
    assert [Image.open(out / row["image"][0]).getpixel((0, 0)) for row in rows] == [RED, GREEN, BLUE]


def test_import_saved_dataset_dict_picks_the_split(tmp_path):
    datasets = pytest.importorskip("datasets")
    files = [_png(tmp_path / "raw" / f"{i}.png", color) for i, color in enumerate((RED, GREEN))]

    def part(file, caption):
        table = datasets.Dataset.from_dict({"picture": [str(file)], "caption": [caption]})
        return table.cast_column("picture", datasets.Image())

    saved = tmp_path / "saved"
    datasets.DatasetDict({"train": part(files[0], "for training"), "test": part(files[1], "held out")}).save_to_disk(
        str(saved)
    )
    import_dataset(ImportConfig(source=str(saved), split="test"), tmp_path / "ds")
    assert [row["text"] for row in _rows(tmp_path / "ds")] == ["held out"]
    with pytest.raises(SourceError, match=r"no split 'validation' \(splits: train, test\)"):
        import_dataset(ImportConfig(source=str(saved), split="validation"), tmp_path / "ds2")
    without_images = tmp_path / "text_only"
    datasets.Dataset.from_dict({"text": ["a"]}).save_to_disk(str(without_images))
    with pytest.raises(SourceError, match="no image column"):
        import_dataset(ImportConfig(source=str(without_images)), tmp_path / "ds3")
    assert not (tmp_path / "ds2").exists() and not (tmp_path / "ds3").exists()


def test_import_hub_id_offline_is_one_clear_line(cli, tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    # The libraries read these variables once, at import: set the values they already read too.
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.chdir(tmp_path)
    result = cli("data", "import", "someone/anime-set", "--out", tmp_path / "ds")
    assert result.code == 1
    lines = [line for line in result.err.splitlines() if line.strip() and "error:" in line]
    assert len(lines) == 1
    assert "someone/anime-set" in lines[0] and "save_to_disk" in lines[0]
    assert "Traceback" not in result.err
    assert not (tmp_path / "ds").exists()


def _without_modelscope():
    try:
        import modelscope  # noqa: F401
    except ImportError:
        return
    pytest.skip("modelscope is installed")


def test_import_modelscope_without_the_extra(tmp_path):
    _without_modelscope()
    with pytest.raises(MissingExtraError, match=r"pip install 'lorastory\[modelscope\]'"):
        import_dataset(ImportConfig(source="modelscope:AI-ModelScope/lowres_anime"), tmp_path / "ds")
    assert list(tmp_path.iterdir()) == []  # no out folder, no temporary folder


def test_cli_names_the_modelscope_extra(cli, tmp_path):
    _without_modelscope()
    result = cli("data", "import", "modelscope:AI-ModelScope/lowres_anime", "--out", tmp_path / "ds")
    assert result.code == 1
    assert "Traceback" not in result.err
    assert "lorastory[modelscope]" in result.err  # printed as text, not read as rich markup
    assert not (tmp_path / "ds").exists()


def test_cli_prints_bracketed_names_as_text(cli, tmp_path):
    # Names like "[red] dress.png" or "art[/b]" are the user's text, not rich markup.
    root = tmp_path / "src"
    root.mkdir()
    (root / "[red] dress.png").write_bytes(b"")
    result = cli("data", "import", root, "--out", tmp_path / "ds", "--caption", "x")
    assert result.code == 0
    assert "[red] dress.png" in result.err
    (tmp_path / "rows.jsonl").write_text('{"text": "t", "images": ["art[/b]/gone.png"]}\n', encoding="utf-8")
    result = cli("data", "export-csv", tmp_path / "rows.jsonl", "--out", tmp_path / "train")
    assert result.code == 0
    assert "art[/b]/gone.png" in result.err


def test_import_missing_source(cli, tmp_path):
    result = cli("data", "import", tmp_path / "nowhere", "--out", tmp_path / "ds")
    assert result.code == 1
    assert "no such file or folder" in result.err and "Traceback" not in result.err


def test_import_folder_without_images(cli, tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "notes.txt").write_text("hello", encoding="utf-8")
    result = cli("data", "import", tmp_path / "src", "--out", tmp_path / "ds")
    assert result.code == 1
    assert "no images found" in result.err
    assert not (tmp_path / "ds").exists()


# --- import: bad input ------------------------------------------------------------------------------


def test_bad_captions_are_skipped_and_reported(cli, tmp_path):
    root = tmp_path / "src"
    _png(root / "good.png", RED)
    (root / "good.txt").write_text("fine", encoding="utf-8")
    _png(root / "empty.png", GREEN)
    (root / "empty.txt").write_text("", encoding="utf-8")
    _png(root / "blank.png", GREEN)
    (root / "blank.txt").write_text("  \n\t\n", encoding="utf-8")
    _png(root / "gbk.png", BLUE)
    (root / "gbk.txt").write_bytes("二次元少女".encode("gbk"))
    _png(root / "none.png", WHITE)
    out = tmp_path / "ds"
    result = cli("data", "import", root, "--out", out)
    assert result.code == 0, result.err
    assert "Imported 1 images" in result.out and "(4 skipped)" in result.out
    assert [row["text"] for row in _rows(out)] == ["fine"]
    reasons = _reasons(_report(out))
    assert set(reasons) == {"empty.png", "blank.png", "gbk.png", "none.png"}
    for name in ("empty.png", "blank.png", "none.png"):
        assert "empty or missing caption" in reasons[name]
    assert "gbk.txt" in reasons["gbk.png"] and "not UTF-8" in reasons["gbk.png"]
    assert "skipped" in result.err and "gbk.png" in result.err
    # --allow-empty-caption keeps the captionless ones, never the undecodable one.
    result = cli("data", "import", root, "--out", out, "--allow-empty-caption")
    assert result.code == 0, result.err
    assert sorted(row["text"] for row in _rows(out)) == ["", "", "", "fine"]
    assert set(_reasons(_report(out))) == {"gbk.png"}


def test_corrupt_images_are_skipped_and_reported(cli, tmp_path):
    root = tmp_path / "src"
    whole = _jpeg(root / "good.jpg", seed=3).read_bytes()
    (root / "cut.jpg").write_bytes(whole[: len(whole) // 2])
    (root / "zero.jpg").write_bytes(b"")
    (root / "text.jpg").write_text("not an image at all\n" * 5, encoding="utf-8")
    for stem in ("good", "cut", "zero", "text"):
        (root / f"{stem}.txt").write_text(f"caption {stem}", encoding="utf-8")
    out = tmp_path / "ds"
    result = cli("data", "import", root, "--out", out)
    assert result.code == 0, result.err
    rows = _rows(out)
    assert [row["text"] for row in rows] == ["caption good"]
    assert (out / rows[0]["image"][0]).read_bytes() == whole
    reasons = _reasons(_report(out))
    assert "truncated" in reasons["cut.jpg"].lower()
    assert "empty file" in reasons["zero.jpg"]
    assert "not a recognised image" in reasons["text.jpg"]
    assert sorted(p.name for p in (out / "images").iterdir()) == [Path(rows[0]["image"][0]).name]


def test_bad_jsonl_lines_are_skipped_and_reported(tmp_path):
    root = tmp_path / "src"
    _png(root / "a.png", RED)
    _png(root / "b.png", GREEN)
    (root / "metadata.jsonl").write_bytes(
        b'{"file_name": "a.png", "text": "first"}\n'
        b'{"file_name": "b.png", "text": "unterminated\n'
        b"[1, 2, 3]\n"
        b'{"file_name": "b.png", "text": 42}\n'
        b'{"text": "no image"}\n'
        b'{"file_name": "missing.png", "text": "gone"}\n'
        b'{"file_name": "b.png", "text": "\xff\xfe bad bytes"}\n'
        b'{"file_name": "b.png", "text": "last"}\n'
    )
    out = tmp_path / "ds"
    result = import_dataset(ImportConfig(source=str(root)), out)
    assert [row["text"] for row in _rows(out)] == ["first", "last"]
    assert result.written == 2
    reasons = _reasons(_report(out))
    assert "not valid JSON" in reasons["metadata.jsonl line 2"]
    assert "not a JSON object" in reasons["metadata.jsonl line 3"]
    assert "not text" in reasons["metadata.jsonl line 4: b.png"]
    assert "no image path" in reasons["metadata.jsonl line 5"]
    assert "not found" in reasons["metadata.jsonl line 6: missing.png"]
    assert "not UTF-8" in reasons["metadata.jsonl line 7"]
    assert len(reasons) == 6


# --- import: output folder ------------------------------------------------------------------------


def test_importing_twice_gives_the_same_dataset(cli, captioned_folder, tmp_path):
    assert cli("data", "import", captioned_folder, "--out", tmp_path / "one").code == 0
    assert cli("data", "import", captioned_folder, "--out", tmp_path / "two").code == 0
    first = (tmp_path / "one" / "metadata.jsonl").read_bytes()
    assert first == (tmp_path / "two" / "metadata.jsonl").read_bytes()
    assert _snapshot(tmp_path / "one" / "images") == _snapshot(tmp_path / "two" / "images")
    # Importing again into an earlier import's folder replaces it (no --overwrite needed).
    assert cli("data", "import", captioned_folder, "--out", tmp_path / "one").code == 0
    assert (tmp_path / "one" / "metadata.jsonl").read_bytes() == first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one", "src", "two"]


def test_an_out_folder_inside_the_source_is_refused_and_old_outputs_there_are_not_imported(cli, captioned_folder, tmp_path):
    import shutil

    _png(captioned_folder / ".hidden" / "skip.png", BLUE)  # hidden folders are never sources
    before = _snapshot(captioned_folder)
    result = cli("data", "import", captioned_folder, "--out", captioned_folder / "dataset", "--overwrite")
    assert result.code == 1 and "lies inside the input source" in result.err
    assert _snapshot(captioned_folder) == before
    # Outputs that an earlier version wrote inside the source folder are not read as new images.
    assert cli("data", "import", captioned_folder, "--out", tmp_path / "dataset").code == 0
    first = (tmp_path / "dataset" / "metadata.jsonl").read_bytes()
    assert export_csv(tmp_path / "dataset" / "metadata.jsonl", tmp_path / "train").written == 4
    shutil.move(tmp_path / "dataset", captioned_folder / "dataset")
    shutil.move(tmp_path / "train", captioned_folder / "train")
    assert cli("data", "import", captioned_folder, "--out", tmp_path / "again").code == 0
    assert (tmp_path / "again" / "metadata.jsonl").read_bytes() == first


def test_refuses_a_non_empty_unrelated_folder(cli, captioned_folder, tmp_path):
    out = tmp_path / "mine"
    (out / "sub").mkdir(parents=True)
    (out / "notes.txt").write_text("my notes", encoding="utf-8")
    (out / "sub" / "keep.bin").write_bytes(b"\x00\x01")
    before = _snapshot(out)
    result = cli("data", "import", captioned_folder, "--out", out)
    assert result.code == 1
    assert "not empty" in result.err and "--overwrite" in result.err
    assert _snapshot(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine", "src"]  # nothing half-written beside it
    # A file where the folder should be is refused too.
    (tmp_path / "afile").write_text("x", encoding="utf-8")
    result = cli("data", "import", captioned_folder, "--out", tmp_path / "afile")
    assert result.code == 1 and "not a folder" in result.err
    # With --overwrite the folder becomes the dataset.
    result = cli("data", "import", captioned_folder, "--out", out, "--overwrite")
    assert result.code == 0, result.err
    assert not (out / "notes.txt").exists() and len(_rows(out)) == 4


def test_an_empty_existing_folder_is_fine(captioned_folder, tmp_path):
    (tmp_path / "empty").mkdir()
    assert import_dataset(ImportConfig(source=str(captioned_folder)), tmp_path / "empty").written == 4


def test_safe_stem():
    assert safe_stem("sub/二次元 少女!.png") == "sub_二次元_少女_png"
    assert safe_stem("../..") == "image"
    assert len(safe_stem("x" * 500)) == 48


# --- export ----------------------------------------------------------------------------------------


@pytest.fixture
def curated(tmp_path) -> Path:
    """A Data-Juicer-format result jsonl over every awkward image kind, plus bad rows."""
    root = tmp_path / "curated"
    images = root / "images"
    images.mkdir(parents=True)
    rgb = _jpeg(images / "rgb.jpg", seed=5)
    _cmyk_jpeg(images / "cmyk.jpg")
    _palette_png(images / "palette.png")
    _rotated_jpeg(images / "rotated.jpg")
    rows = [
        {"text": "<__dj__image> 二次元，紫色长发少女 <|__dj__eoc|>", "images": ["images/rgb.jpg"]},
        {"text": "cmyk  red\nink", "images": ["images/cmyk.jpg"]},
        {"text": "palette, with \"quotes\"", "images": ["images/palette.png"]},
        {"text": "rotated", "images": ["images/rotated.jpg"], "__dj__stats__": {"image_width": [32]}},
        {"text": "gone", "images": ["images/missing.png"]},
        {"text": "both", "images": [str(rgb), "images/palette.png"]},  # absolute and relative
        {"text": "no images"},
    ]
    lines = [json.dumps(row, ensure_ascii=False) for row in rows]
    lines.insert(4, "{not json")
    (root / "result.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


def test_export_csv(cli, curated, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # relative paths in the jsonl are taken from its folder, not the cwd
    out = tmp_path / "train"
    result = cli("data", "export-csv", curated / "result.jsonl", "--out", out)
    assert result.code == 0, result.err
    assert "Exported 6 images" in result.out and "(3 skipped)" in result.out

    rows = _export_rows(out)
    assert [row["text"] for row in rows] == [
        "二次元，紫色长发少女",
        "cmyk red ink",
        'palette, with "quotes"',
        "rotated",
        "both",
        "both",
    ]
    for row in rows:
        assert not Path(row["file_name"]).is_absolute()
        assert (out / row["file_name"]).is_file()
    assert len({row["file_name"] for row in rows}) == 6
    files = [out / row["file_name"] for row in rows]

    # An RGB JPEG is copied as it is, byte for byte.
    assert files[0].suffix == ".jpg"
    assert files[0].read_bytes() == (curated / "images" / "rgb.jpg").read_bytes()
    assert files[4].read_bytes() == files[0].read_bytes()
    # Everything else becomes an upright RGB PNG.
    opened = [Image.open(f) for f in files[1:4]]
    assert [(im.format, im.mode) for im in opened] == [("PNG", "RGB")] * 3
    cmyk, palette, rotated = opened
    assert _close(cmyk.getpixel((32, 32)), RED)
    assert palette.getpixel((5, 5)) == WHITE and palette.getpixel((50, 5)) == BLUE
    assert rotated.size == (32, 64)
    assert _close(rotated.getpixel((16, 8)), RED) and _close(rotated.getpixel((16, 56)), BLUE)
    assert "exif" not in rotated.info  # no orientation left to turn it twice

    report = _report(out, "export_report.json")
    assert (report["written"], report["skipped"]) == (6, 3)
    reasons = _reasons(report)
    assert "unreadable" in reasons["line 5"]
    assert "not found" in reasons["line 6: images/missing.png"]
    assert "needs 'text' text and 'images' paths" in reasons["line 8"]
    assert "missing.png" in result.err


def test_export_csv_is_read_by_the_imagefolder_loader(curated, tmp_path):
    datasets = pytest.importorskip("datasets")
    export_csv(curated / "result.jsonl", tmp_path / "train")
    loaded = datasets.load_dataset(
        "imagefolder", data_dir=str(tmp_path / "train"), split="train", cache_dir=str(tmp_path / "hf-cache")
    )
    assert loaded.num_rows == 6
    assert sorted(loaded["text"])[0] == "both" and "二次元，紫色长发少女" in loaded["text"]


def test_import_then_export(cli, captioned_folder, tmp_path):
    assert cli("data", "import", captioned_folder, "--out", tmp_path / "ds").code == 0
    result = cli("data", "export-csv", tmp_path / "ds" / "metadata.jsonl", "--out", tmp_path / "train")
    assert result.code == 0, result.err
    rows = _export_rows(tmp_path / "train")
    assert sorted(row["text"] for row in rows) == sorted(["二次元，紫色长发少女", "red square", "green square", "deep one"])


def test_export_of_a_missing_file(cli, tmp_path):
    result = cli("data", "export-csv", tmp_path / "nope.jsonl", "--out", tmp_path / "train")
    assert result.code == 1 and "no such file" in result.err
    assert not (tmp_path / "train").exists()


def test_export_refuses_a_non_empty_unrelated_folder(curated, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me", encoding="utf-8")
    with pytest.raises(OutputError, match="--overwrite"):
        export_csv(curated / "result.jsonl", out)
    assert _snapshot(out) == {"notes.txt": b"keep me"}
    assert export_csv(curated / "result.jsonl", out, overwrite=True).written == 6
    assert not (out / "notes.txt").exists()


def _interrupt_on_second_image(monkeypatch):
    real = dataset_module._export_image
    calls = []

    def interrupted(*args, **kwargs):
        calls.append(args)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(dataset_module, "_export_image", interrupted)
    return calls


def test_interrupted_export_leaves_nothing(cli, curated, tmp_path, monkeypatch):
    parent = tmp_path / "outs"
    parent.mkdir()
    calls = _interrupt_on_second_image(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        export_csv(curated / "result.jsonl", parent / "train")
    assert len(calls) == 2
    assert list(parent.iterdir()) == []  # no out folder, no temporary folder
    # Through the CLI: exit code 130 (Ctrl-C), same clean state.
    calls.clear()
    result = cli("data", "export-csv", curated / "result.jsonl", "--out", parent / "train")
    assert result.code == 130
    assert list(parent.iterdir()) == []


def test_interrupted_export_keeps_the_previous_one(curated, tmp_path, monkeypatch):
    parent = tmp_path / "outs"
    out = parent / "train"
    export_csv(curated / "result.jsonl", out)
    before = _snapshot(out)
    assert "metadata.csv" in before
    _interrupt_on_second_image(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        export_csv(curated / "result.jsonl", out)
    assert _snapshot(out) == before
    assert [p.name for p in parent.iterdir()] == ["train"]


def test_interrupted_import_leaves_nothing(captioned_folder, tmp_path, monkeypatch):
    real = dataset_module._write_image

    def interrupted(item, images_dir, index):
        if index == 1:
            raise KeyboardInterrupt
        return real(item, images_dir, index)

    monkeypatch.setattr(dataset_module, "_write_image", interrupted)
    parent = tmp_path / "outs"
    with pytest.raises(KeyboardInterrupt):
        import_dataset(ImportConfig(source=str(captioned_folder)), parent / "ds")
    assert list(parent.iterdir()) == []


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("<__dj__image> 二次元 <|__dj__eoc|>", "二次元"),
        ("<__dj__image><__dj__image>two images", "two images"),
        ("  spaced\tout\n text ", "spaced out text"),
        ("<not a token>", "<not a token>"),
    ],
)
def test_clean_caption(text, expected):
    assert clean_caption(text) == expected
