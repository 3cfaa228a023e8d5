"""`data import` and `data export-csv` on hostile input: every good item kept, every bad one reported.

Caption links out of the source, FIFOs where files are expected (no hang), file names and
captions that are not valid Unicode, JSON and csv of the wrong shape, files that are not
images, and a float TIFF.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

BUG_LINE = "This is a bug"


pytestmark = pytest.mark.usefixtures("no_hang")  # a FIFO read by mistake fails the test instead of hanging it


def _png(path: Path, color=(200, 30, 30), size=(40, 32)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


def _report(folder: Path, name: str = "import_report.json") -> dict:
    return json.loads((folder / name).read_text(encoding="utf-8"))


def _reasons(report: dict) -> dict[str, str]:
    return {item["item"]: item["reason"] for item in report["skipped_items"]}


def _rows(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "metadata.jsonl").read_text(encoding="utf-8").splitlines()]


def _ok(result) -> None:
    assert result.code == 0, (result.out, result.err)
    assert BUG_LINE not in result.err and "Traceback" not in result.err


# --- image folders ---------------------------------------------------------------------------


def test_a_caption_link_out_of_the_source_is_not_read(cli, tmp_path):
    src = tmp_path / "src"
    _png(src / "good.png")
    (src / "good.txt").write_text("a good caption", encoding="utf-8")
    _png(src / "leak.png")
    (src / "leak.txt").symlink_to("/etc/passwd")
    _png(src / "inside.png")
    (src / "notes").mkdir()
    (src / "notes" / "inside-caption").write_text("a caption kept in another file", encoding="utf-8")
    (src / "inside.txt").symlink_to(src / "notes" / "inside-caption")  # a link inside the source is fine
    _ok(cli("data", "import", src, "--out", tmp_path / "ds"))
    texts = sorted(row["text"] for row in _rows(tmp_path / "ds"))
    assert texts == ["a caption kept in another file", "a good caption"]
    reasons = _reasons(_report(tmp_path / "ds"))
    assert "outside the source folder" in reasons["leak.png"]
    assert "root:" not in (tmp_path / "ds" / "metadata.jsonl").read_text(encoding="utf-8")
    # With --caption the image is imported, still without reading the link.
    _ok(cli("data", "import", src, "--out", tmp_path / "ds2", "--caption", "one for all"))
    assert [row["text"] for row in _rows(tmp_path / "ds2")] == ["one for all"] * 3


def test_fifos_in_an_image_folder_are_skipped_without_hanging(cli, tmp_path):
    src = tmp_path / "src"
    _png(src / "good.png")
    (src / "good.txt").write_text("a good caption", encoding="utf-8")
    os.mkfifo(src / "pipe.png")
    (src / "pipe.txt").write_text("caption of a pipe", encoding="utf-8")
    _png(src / "piped-caption.png")
    os.mkfifo(src / "piped-caption.txt")
    _ok(cli("data", "import", src, "--out", tmp_path / "ds"))
    assert [row["text"] for row in _rows(tmp_path / "ds")] == ["a good caption"]
    reasons = _reasons(_report(tmp_path / "ds"))
    assert "not a regular file" in reasons["pipe.png"]
    assert "not a regular file" in reasons["piped-caption.png"]


def test_a_fifo_metadata_file_is_an_error_not_a_hang(cli, tmp_path):
    (tmp_path / "src").mkdir()
    os.mkfifo(tmp_path / "src" / "metadata.csv")
    line = cli("data", "import", tmp_path / "src" / "metadata.csv", "--out", tmp_path / "ds").error_line()
    assert "not a regular file" in line


def test_undecodable_file_names_are_imported_under_a_safe_name(cli, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    name = os.fsdecode(b"caf\xe9")
    _png(src / f"{name}.png")
    (src / f"{name}.txt").write_text("a latin-1 file name", encoding="utf-8")
    _png(src / (os.fsdecode(b"no-caption-\xff") + ".png"))
    result = cli("data", "import", src, "--out", tmp_path / "ds")
    _ok(result)
    rows = _rows(tmp_path / "ds")
    assert [row["text"] for row in rows] == ["a latin-1 file name"]
    assert (tmp_path / "ds" / rows[0]["image"][0]).is_file()
    rows[0]["image"][0].encode("utf-8")
    report_text = (tmp_path / "ds" / "import_report.json").read_text(encoding="utf-8")
    assert "no-caption-\\\\xff.png" in report_text  # the name shown escaped
    assert "no-caption-\\xff.png" in result.err


def test_files_that_are_not_images_are_listed_with_the_reason(cli, tmp_path):
    src = tmp_path / "src"
    _png(src / "good.png")
    (src / "good.txt").write_text("a good caption", encoding="utf-8")
    (src / "x.avif").write_bytes(b"\x00\x00\x00\x1cftypavif" + b"\x00" * 64)
    (src / "y.heic").write_bytes(b"\x00\x00\x00\x18ftypheic" + b"\x00" * 64)
    (src / "notes.pdf").write_bytes(b"%PDF-1.4\n")
    (src / "README").write_text("no extension", encoding="utf-8")
    (src / "orphan.txt").write_text("a caption with no picture", encoding="utf-8")
    result = cli("data", "import", src, "--out", tmp_path / "ds")
    _ok(result)
    assert len(_rows(tmp_path / "ds")) == 1
    reasons = _reasons(_report(tmp_path / "ds"))
    assert reasons == {
        "x.avif": "not an image type lorastory imports: .avif",
        "y.heic": "not an image type lorastory imports: .heic",
        "notes.pdf": "not an image type lorastory imports: .pdf",
        "README": "not an image type lorastory imports: no extension",
        "orphan.txt": "caption file with no image of the same name",
    }
    assert "(5 skipped, 5 of them files that are not images" in result.out


# --- metadata.jsonl / metadata.csv -----------------------------------------------------------


def test_jsonl_rows_of_every_wrong_shape_are_skipped_with_their_line(cli, tmp_path):
    src = tmp_path / "src"
    for index in range(3):
        _png(src / f"{index}.png", (60 * index, 10, 10))
    os.mkfifo(src / "pipe.png")
    lines = [
        json.dumps({"file_name": "0.png", "text": "good zero"}),
        '{"file_name": "1.png", "text": "lone \\ud800 surrogate"}',
        json.dumps({"file_name": "0\x00.png", "text": "a NUL in the name"}),
        "[" * 200_000 + "]" * 200_000,
        '["an", "array"]',
        "7",
        json.dumps({"images": 5, "text": "images a number"}),
        json.dumps({"images": ["1.png", 3], "text": "a number in the list"}),
        json.dumps({"file_name": "", "text": "empty name"}),
        json.dumps({"file_name": ".", "text": "dot name"}),
        json.dumps({"file_name": "pipe.png", "text": "a pipe"}),
        '{"file_name": "\\udcff.png", "text": "an escaped surrogate name"}',
        json.dumps({"file_name": "1.png", "text": "good one"}),
        json.dumps({"images": ["2.png"], "text": ["good two", "second caption"]}),
    ]
    (src / "metadata.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    result = cli("data", "import", src, "--out", tmp_path / "ds")
    _ok(result)
    assert [row["text"] for row in _rows(tmp_path / "ds")] == ["good zero", "good one", "good two"]
    reasons = _reasons(_report(tmp_path / "ds"))
    assert len(reasons) == 11
    assert "not valid Unicode" in reasons["metadata.jsonl line 2: 1.png"]
    assert "NUL" in reasons["metadata.jsonl line 3: 0\x00.png"]
    assert "nested too deeply" in reasons["metadata.jsonl line 4"]
    assert "not a JSON object (a list)" in reasons["metadata.jsonl line 5"]
    assert "not a JSON object (a int)" in reasons["metadata.jsonl line 6"]
    assert "no image path" in reasons["metadata.jsonl line 7"]
    assert "no image path" in reasons["metadata.jsonl line 8"]
    assert "empty file name" in reasons["metadata.jsonl line 9: "]
    assert "empty file name" in reasons["metadata.jsonl line 10: ."]
    assert "not a regular file" in reasons["metadata.jsonl line 11: pipe.png"]
    assert "not valid Unicode" in reasons["metadata.jsonl line 12: \\xff.png"]


def _csv_source(tmp_path: Path, text: str | bytes, images=("a.png", "b.png", "c.png")) -> Path:
    src = tmp_path / "src"
    for index, name in enumerate(images):
        _png(src / name, (70 * index, 20, 20))
    data = text.encode("utf-8") if isinstance(text, str) else text
    (src / "metadata.csv").write_bytes(data)
    return src


def test_csv_with_a_huge_caption_and_bad_rows(cli, tmp_path):
    long_caption = "長" * 150_000
    src = _csv_source(tmp_path, f'file_name,text\na.png,"{long_caption}"\n,no name\nb.png,two,extra\nc.png,fine\n')
    _ok(cli("data", "import", src, "--out", tmp_path / "ds"))
    assert [len(row["text"]) for row in _rows(tmp_path / "ds")] == [150_000, 4]
    reasons = _reasons(_report(tmp_path / "ds"))
    assert "empty file name" in reasons["metadata.csv line 3: "]
    assert "3 fields but the header has 2" in reasons["metadata.csv line 4"]
    assert len(reasons) == 2


def test_non_utf8_csv_is_one_line(cli, tmp_path):
    src = _csv_source(tmp_path, "file_name,text\na.png,caf\xe9\n".encode("latin-1"))
    line = cli("data", "import", src, "--out", tmp_path / "ds").error_line()
    assert "metadata.csv" in line and "not UTF-8" in line


def test_csv_duplicate_column_is_one_line_naming_it(cli, tmp_path):
    src = _csv_source(tmp_path, "file_name,text,text\na.png,one,two\n")
    line = cli("data", "import", src, "--out", tmp_path / "ds").error_line()
    assert "column 'text' appears 2 times" in line


def test_csv_unterminated_quote_does_not_swallow_the_next_rows(cli, tmp_path):
    # Quote never closed: reaches the end of the file.
    src = _csv_source(tmp_path, 'file_name,text\na.png,"first caption\nb.png,second\nc.png,third\n')
    result = cli("data", "import", src, "--out", tmp_path / "ds0")
    assert "Traceback" not in result.err and "metadata.csv lines 2-4" in result.err
    assert "unexpected end of data" in _reasons(_report(tmp_path / "ds0"))["metadata.csv lines 2-4"]
    # A stray quote closes much later: the swallowed rows are noticed and the row reported, the others kept.
    (src / "metadata.csv").write_text('file_name,text\na.png,"first caption\nb.png,second"\nc.png,third\n', encoding="utf-8")
    _ok(cli("data", "import", src, "--out", tmp_path / "ds"))
    assert [row["text"] for row in _rows(tmp_path / "ds")] == ["third"]
    reasons = _reasons(_report(tmp_path / "ds"))
    assert "unterminated quote" in reasons["metadata.csv lines 2-3"]
    # A legitimate multi-line caption is kept.
    (src / "metadata.csv").write_text('file_name,text\na.png,"line one\nline two"\nb.png,x\n', encoding="utf-8")
    _ok(cli("data", "import", src, "--out", tmp_path / "ds2"))
    assert [row["text"] for row in _rows(tmp_path / "ds2")] == ["line one\nline two", "x"]


# --- export-csv ------------------------------------------------------------------------------


def test_export_skips_every_bad_row_with_its_line_and_keeps_the_good(cli, tmp_path):
    folder = tmp_path / "cur"
    _png(folder / "images" / "0.png")
    _png(folder / "images" / "1.png", (10, 200, 10))
    os.mkfifo(folder / "images" / "pipe.png")
    lines = [
        json.dumps({"text": "good zero", "images": ["images/0.png"]}),
        '{"text": "lone \\ud800", "images": ["images/0.png"]}',
        json.dumps({"text": "nul", "images": ["images/0\x00.png"]}),
        "[" * 200_000 + "]" * 200_000,
        '["an", "array"]',
        "3.5",
        json.dumps({"text": "number", "images": 5}),
        json.dumps({"text": "mixed", "images": ["images/0.png", None]}),
        json.dumps({"text": "empty", "images": [""]}),
        json.dumps({"text": "dot", "images": ["."]}),
        json.dumps({"text": "pipe", "images": ["images/pipe.png"]}),
        json.dumps({"text": "good one", "images": ["images/1.png"]}),
    ]
    jsonl = folder / "result.jsonl"
    jsonl.write_text("\n".join(lines) + "\n", encoding="utf-8")
    _ok(cli("data", "export-csv", jsonl, "--out", tmp_path / "train"))
    csv_lines = (tmp_path / "train" / "metadata.csv").read_text(encoding="utf-8").splitlines()
    assert [line.split(",", 1)[1] for line in csv_lines[1:]] == ["good zero", "good one"]
    reasons = _reasons(_report(tmp_path / "train", "export_report.json"))
    assert sorted(reasons) == sorted(
        ["line 2", "line 3: images/0\x00.png", "line 4", "line 5", "line 6", "line 7", "line 8", "line 9", "line 10",
         "line 11: images/pipe.png"]
    )
    assert "not valid Unicode" in reasons["line 2"] and "NUL" in reasons["line 3: images/0\x00.png"]
    assert "nested too deeply" in reasons["line 4"] and "a list" in reasons["line 5"] and "a float" in reasons["line 6"]
    assert "not int" in reasons["line 7"] and "other values" in reasons["line 8"]
    assert "empty file name" in reasons["line 9"] and "empty file name" in reasons["line 10"]
    assert "not a regular file" in reasons["line 11: images/pipe.png"]


def test_export_of_a_float_tiff_is_not_black(cli, tmp_path):
    folder = tmp_path / "cur"
    folder.mkdir()
    ramp = np.tile(np.linspace(0.0, 1.0, 64, dtype=np.float32), (48, 1))
    Image.fromarray(ramp, "F").save(folder / "float.tif")
    (folder / "result.jsonl").write_text(json.dumps({"text": "a float tiff", "images": ["float.tif"]}) + "\n", encoding="utf-8")
    _ok(cli("data", "export-csv", folder / "result.jsonl", "--out", tmp_path / "train"))
    exported = np.asarray(Image.open(tmp_path / "train" / "images" / "000000.png").convert("L"), dtype=np.float32)
    assert exported.max() > 200 and exported[:, :8].mean() < exported[:, -8:].mean()
