"""Outputs never destroy inputs, leftovers of killed runs are cleaned, and unwritable outputs are one line.

`data run`, `data import` and `data export-csv` with outputs that reach their input by
another spelling (a symlinked folder, a hard link, `./x/../x`, a side file's name), and
with temp files that a killed run of each left behind.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from PIL import Image

BUG_LINE = "This is a bug"


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _dataset(folder: Path, name: str = "metadata.jsonl", count: int = 3) -> Path:
    (folder / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for index in range(count):
        Image.new("RGB", (64, 48), (40 * index, 90, 160)).save(folder / "images" / f"{index}.png")
        lines.append(json.dumps({"text": f"a picture number {index}", "image": [f"images/{index}.png"]}))
    path = folder / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _recipe(folder: Path, dataset: Path | str, export: Path | str) -> Path:
    recipe = folder / "recipe.yaml"
    recipe.write_text(
        f"dataset_path: '{dataset}'\nexport_path: '{export}'\nnp: 1\nimage_key: image\n"
        "process:\n  - image_shape_filter:\n      min_width: 32\n",
        encoding="utf-8",
    )
    return recipe


def _dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


# --- data run ------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["symlinked folder", "dot-dot spelling", "hard link"])
def test_data_run_refuses_an_export_that_reaches_the_input(cli, tmp_path, how):
    data = tmp_path / "data"
    dataset = _dataset(data)
    if how == "symlinked folder":
        (tmp_path / "alias").symlink_to(data)
        export = tmp_path / "alias" / "metadata.jsonl"
    elif how == "dot-dot spelling":
        export = f"{data}/./images/../metadata.jsonl"
    else:
        export = tmp_path / "out" / "linked.jsonl"
        export.parent.mkdir()
        os.link(dataset, export)
    recipe = _recipe(tmp_path, dataset, export)
    before = _snapshot(tmp_path)
    line = cli("data", "run", recipe).error_line()
    assert "export_path" in line and "is the input dataset_path" in line
    assert _snapshot(tmp_path) == before


@pytest.mark.parametrize(
    ("input_name", "side"),
    [("result_stats.jsonl", "its stats file"), ("result_report.json", "its report"), ("result_report.html", "its HTML report")],
)
def test_data_run_refuses_when_a_side_file_is_the_input(cli, tmp_path, input_name, side):
    data = tmp_path / "data"
    dataset = _dataset(data, input_name)
    before = _snapshot(data)
    # The input reached through a symlinked folder, to be sure the side files are resolved too.
    (tmp_path / "alias").symlink_to(data)
    line = cli("data", "run", _recipe(tmp_path, dataset, tmp_path / "alias" / "result.jsonl")).error_line()
    assert side in line and "is the input" in line
    assert _snapshot(data) == before  # input byte-identical, nothing written beside it


def test_data_run_export_path_that_is_a_folder_is_a_clear_error(cli, tmp_path):
    dataset = _dataset(tmp_path / "data")
    (tmp_path / "out.jsonl").mkdir()
    line = cli("data", "run", _recipe(tmp_path, dataset, tmp_path / "out.jsonl")).error_line()
    assert "out.jsonl is a folder" in line
    assert list((tmp_path / "out.jsonl").iterdir()) == []


def test_data_run_export_where_nothing_can_be_written_is_one_line(cli, tmp_path):
    dataset = _dataset(tmp_path / "data")
    recipe = _recipe(tmp_path, dataset, "/proc/lorastory-test/result.jsonl")
    before = _snapshot(tmp_path)
    line = cli("data", "run", recipe).error_line()
    assert "/proc/lorastory-test" in line
    assert _snapshot(tmp_path) == before


def test_data_run_cleans_temp_files_of_a_killed_run(cli, tmp_path):
    dataset = _dataset(tmp_path / "data")
    out = tmp_path / "out"
    out.mkdir()
    pid = _dead_pid()
    leftovers = [out / f".result.jsonl.{pid}.abc123.tmp", out / f".result_stats.jsonl.{pid}.x9.tmp",
                 out / f".result_report.json.{pid}.k.tmp", out / f".result_report.html.{pid}.q.tmp"]
    for path in leftovers:
        path.write_text("half-written by a killed run", encoding="utf-8")
    alive = out / f".result.jsonl.{os.getpid()}.live.tmp"  # a run in progress (this process) is left alone
    alive.write_text("in progress", encoding="utf-8")
    result = cli("data", "run", _recipe(tmp_path, dataset, out / "result.jsonl"))
    assert result.code == 0, result.err
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [alive.name, "result.jsonl", "result_stats.jsonl", "result_report.json", "result_report.html"]
    )


def test_data_run_writes_result_stats_and_reports_together(cli, tmp_path, monkeypatch):
    dataset = _dataset(tmp_path / "data")
    out = tmp_path / "out"
    recipe = _recipe(tmp_path, dataset, out / "result.jsonl")
    assert cli("data", "run", recipe).code == 0
    report = json.loads((out / "result_report.json").read_text(encoding="utf-8"))
    assert report["samples_out"] == 3 and report["stats"] == str(out / "result_stats.jsonl")
    assert "Data report" in (out / "result_report.html").read_text(encoding="utf-8")
    before = _snapshot(out)
    # A failure while the report is being written (the last file) keeps all four previous files.
    import lorastory.data.executor as executor_module

    def broken(*args, **kwargs):
        raise OSError(28, "No space left on device", str(out / "result_report.html"))

    monkeypatch.setattr(executor_module, "render_html", broken)
    (tmp_path / "data" / "metadata.jsonl").write_text(
        json.dumps({"text": "just one row now", "image": ["images/0.png"]}) + "\n", encoding="utf-8"
    )
    result = cli("data", "run", recipe)
    assert result.code == 1 and "No space left" in result.err and BUG_LINE not in result.err
    assert _snapshot(out) == before
    assert sorted(p.name for p in out.iterdir()) == sorted(before)  # no temp file left either


def test_write_reports_still_works_on_its_own(tmp_path):
    from lorastory.data.executor import run_recipe
    from lorastory.data.recipe import load_recipe
    from lorastory.data.report import report_paths, write_reports

    dataset = _dataset(tmp_path / "data")
    result = run_recipe(load_recipe(_recipe(tmp_path, dataset, tmp_path / "out" / "r.jsonl")), processes=1)
    assert (result.report_json, result.report_html) == report_paths(result.export_path)
    result.report_json.unlink()
    assert write_reports(result) == (result.report_json, result.report_html)
    assert json.loads(result.report_json.read_text(encoding="utf-8"))["samples_in"] == 3


# --- data import ---------------------------------------------------------------------------


@pytest.fixture
def source(tmp_path) -> Path:
    root = tmp_path / "photos" / "src"
    root.mkdir(parents=True)
    for index in range(2):
        Image.new("RGB", (40, 40), (200, 20 * index, 0)).save(root / f"p{index}.png")
        (root / f"p{index}.txt").write_text(f"caption {index}", encoding="utf-8")
    (root / "notes.md").write_text("my own notes", encoding="utf-8")
    return root


@pytest.mark.parametrize("where", ["the source", "inside the source", "around the source", "symlink to the source"])
def test_import_refuses_an_out_that_is_contains_or_lies_inside_the_source(cli, tmp_path, source, where):
    out = {
        "the source": source,
        "inside the source": source / "dataset",
        "around the source": source.parent,
        "symlink to the source": tmp_path / "link",
    }[where]
    if where == "symlink to the source":
        out.symlink_to(source)
    before = _snapshot(tmp_path / "photos")
    line = cli("data", "import", source, "--out", out, "--overwrite").error_line()
    assert "--out" in line and "source" in line
    assert _snapshot(tmp_path / "photos") == before


@pytest.mark.parametrize("meta", ["metadata.jsonl", "metadata.csv"])
def test_import_of_a_metadata_file_refuses_its_folder_as_out(cli, tmp_path, source, meta):
    if meta.endswith(".jsonl"):
        (source / meta).write_text(json.dumps({"file_name": "p0.png", "text": "x"}) + "\n", encoding="utf-8")
    else:
        (source / meta).write_text("file_name,text\np0.png,x\n", encoding="utf-8")
    before = _snapshot(source)
    cli("data", "import", source / meta, "--out", f"{source}/../src", "--overwrite").error_line()
    assert _snapshot(source) == before


def test_import_out_that_is_a_file_or_unwritable_is_one_line(cli, tmp_path, source):
    existing = tmp_path / "file.txt"
    existing.write_text("mine", encoding="utf-8")
    assert "is not a folder" in cli("data", "import", source, "--out", existing, "--overwrite").error_line()
    assert existing.read_text(encoding="utf-8") == "mine"
    assert "/proc/lorastory-test" in cli("data", "import", source, "--out", "/proc/lorastory-test").error_line()


def test_import_cleans_the_temp_folder_of_a_killed_import(cli, tmp_path, source):
    pid = _dead_pid()
    stale = tmp_path / f".dataset.{pid}.abcd.tmp"
    (stale / "images").mkdir(parents=True)
    (stale / "images" / "000000-p0.png").write_bytes((source / "p0.png").read_bytes())
    result = cli("data", "import", source, "--out", tmp_path / "dataset")
    assert result.code == 0, result.err
    assert not stale.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dataset", "photos"]


# --- data export-csv ------------------------------------------------------------------------


def test_export_refuses_an_out_that_holds_the_jsonl(cli, tmp_path):
    dataset = _dataset(tmp_path / "cur", "result.jsonl")
    before = _snapshot(tmp_path)
    line = cli("data", "export-csv", dataset, "--out", tmp_path / "cur", "--overwrite").error_line()
    assert "contains the input" in line
    assert _snapshot(tmp_path) == before


def test_export_refuses_an_out_that_holds_its_images(cli, tmp_path):
    images = tmp_path / "pictures"
    images.mkdir()
    rows = []
    for index in range(2):
        Image.new("RGB", (40, 40), (0, 100, 20 * index)).save(images / f"{index}.png")
        rows.append(json.dumps({"text": "t", "images": [str(images / f"{index}.png")]}))
    jsonl = tmp_path / "result.jsonl"
    jsonl.write_text("\n".join(rows) + "\n", encoding="utf-8")
    before = _snapshot(tmp_path)
    line = cli("data", "export-csv", jsonl, "--out", images, "--overwrite").error_line()
    assert "contains the input image of line 1" in line
    assert _snapshot(tmp_path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pictures", "result.jsonl"]


def test_export_to_a_read_only_file_system_is_one_line_naming_out(cli, tmp_path, monkeypatch):
    import errno
    import tempfile

    dataset = _dataset(tmp_path / "cur", "result.jsonl")
    out = tmp_path / "ro" / "train"

    def read_only(*args, dir=None, **kwargs):  # what mkdtemp meets on a read-only mount (root ignores chmod)
        raise OSError(errno.EROFS, "Read-only file system", os.path.join(dir, ".train.tmp"))

    monkeypatch.setattr(tempfile, "mkdtemp", read_only)
    line = cli("data", "export-csv", dataset, "--out", out).error_line()
    assert f"cannot write --out {out}: Read-only file system" in line
