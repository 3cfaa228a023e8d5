"""Data-Juicer-format recipes run unchanged: output files, bad rows, errors, atomicity."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from lorastory.data.executor import run_recipe
from lorastory.data.recipe import load_recipe

REFERENCE_RECIPE = """\
# global parameters
project_name: 'data-process'
dataset_path: '{dataset}' # path to your dataset directory or file
np: 4 # number of subprocess to process your dataset
text_keys: 'text'
image_key: 'image'
image_special_token: '<__dj__image>'
export_path: '{export}'
# process schedule
# a list of several process operators with their arguments
process:
- image_shape_filter:
    min_width: 1024
    min_height: 1024
    any_or_all: any
- image_aspect_ratio_filter:
    min_ratio: 0.5
    max_ratio: 2.0
    any_or_all: any
"""

SIZES = {
    "square": (1024, 1024),
    "wide2": (2048, 1024),
    "tall": (1024, 2100),
    "small": (512, 512),
    "short": (1280, 720),
    "panorama": (3000, 1000),
    "portrait": (1024, 1536),
}


def _write_dataset(folder: Path, names=SIZES, relative=False) -> Path:
    (folder / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for index, (name, size) in enumerate(names.items()):
        path = folder / "images" / f"{name}.jpg"
        Image.new("RGB", size, (index * 30 % 255, 90, 160)).save(path, quality=70)
        image = f"images/{name}.jpg" if relative else str(path)
        lines.append(json.dumps({"text": f"二次元 {name}", "image": [image]}, ensure_ascii=False))
    (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder / "metadata.jsonl"


def _write_recipe(folder: Path, dataset: Path, body: str = REFERENCE_RECIPE, **extra: str) -> Path:
    recipe = folder / "recipe.yaml"
    text = body.format(dataset=dataset, export=folder / "out" / "result.jsonl", **extra)
    recipe.write_text(text, encoding="utf-8")
    return recipe


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_reference_recipe_runs_unchanged(tmp_path, cli):
    dataset = _write_dataset(tmp_path)
    result = cli("data", "run", _write_recipe(tmp_path, dataset))
    assert result.code == 0, result.err
    out = tmp_path / "out" / "result.jsonl"
    kept = [Path(r["image"][0]).stem for r in _rows(out)]
    # Closed intervals: 2048x1024 (ratio exactly 2.0) is kept; 1024x2100 (0.49) is not.
    assert kept == ["square", "wide2", "portrait"]
    # Data-Juicer's export: original fields only, json.dumps(ensure_ascii=False) per line.
    first = out.read_text(encoding="utf-8").splitlines()[0]
    assert first == json.dumps({"text": "二次元 square", "image": [str(tmp_path / "images" / "square.jpg")]}, ensure_ascii=False)
    stats = _rows(tmp_path / "out" / "result_stats.jsonl")
    assert stats[1] == {"__dj__stats__": {"image_width": [2048], "image_height": [1024], "aspect_ratios": [2.0]}}
    assert "image_shape_filter" in result.out and "Kept 3 of 7" in result.out
    report = json.loads((tmp_path / "out" / "result_report.json").read_text(encoding="utf-8"))
    by_op = {row["op"]: row for row in report["ops"]}
    assert by_op["image_shape_filter"] | {"seconds": 0} == {
        "op": "image_shape_filter", "description": by_op["image_shape_filter"]["description"],
        "in": 7, "kept": 4, "dropped": 3, "errors": 0, "seconds": 0,
    }
    assert by_op["image_aspect_ratio_filter"]["dropped"] == 1
    page = (tmp_path / "out" / "result_report.html").read_text(encoding="utf-8")
    assert "<svg" in page and "data:image/jpeg;base64," in page and "image_width" in page


def test_relative_image_paths_are_exported_absolute(tmp_path, cli):
    dataset = _write_dataset(tmp_path, {"square": (1024, 1024)}, relative=True)
    assert cli("data", "run", _write_recipe(tmp_path, dataset)).code == 0
    (row,) = _rows(tmp_path / "out" / "result.jsonl")
    assert row["image"] == [os.path.join(str(tmp_path), "images/square.jpg")]


def test_parallel_and_serial_runs_write_identical_files(tmp_path, cli):
    many = {f"img{i}": SIZES[list(SIZES)[i % len(SIZES)]] for i in range(40)}
    dataset = _write_dataset(tmp_path, many)
    recipe = _write_recipe(tmp_path, dataset)
    assert cli("data", "run", recipe, "--np", "1").code == 0
    serial = [(tmp_path / "out" / n).read_bytes() for n in ("result.jsonl", "result_stats.jsonl")]
    assert cli("data", "run", recipe, "--np", "2").code == 0
    parallel = [(tmp_path / "out" / n).read_bytes() for n in ("result.jsonl", "result_stats.jsonl")]
    assert serial == parallel


def test_bad_rows_are_skipped_one_by_one_and_reported(tmp_path, cli):
    dataset = _write_dataset(tmp_path, {"a": (1024, 1024), "b": (1100, 1100)})
    (tmp_path / "empty.jpg").write_bytes(b"")
    whole = (tmp_path / "images" / "a.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(whole[: len(whole) // 2])
    (tmp_path / "adir.jpg").mkdir()
    bad_lines = [
        json.dumps({"text": "missing", "image": [str(tmp_path / "nope.jpg")]}),
        json.dumps({"text": "zero", "image": [str(tmp_path / "empty.jpg")]}),
        json.dumps({"text": "cut", "image": [str(tmp_path / "cut.jpg")]}),
        json.dumps({"text": "dir", "image": [str(tmp_path / "adir.jpg")]}),
        '{"text": "broken json", ',
        json.dumps({"image": [str(tmp_path / "images" / "a.jpg")]}),
    ]
    with open(dataset, "ab") as handle:
        handle.write(("\n".join(bad_lines) + "\n").encode())
        handle.write(b'{"text": "\xff\xfe latin-1", "image": []}\n')
    result = cli("data", "run", _write_recipe(tmp_path, dataset))
    assert result.code == 0, result.err
    assert len(_rows(tmp_path / "out" / "result.jsonl")) == 2  # every good row survives
    report = json.loads((tmp_path / "out" / "result_report.json").read_text(encoding="utf-8"))
    reasons = {row["line"]: row["reason"] for row in report["skipped_rows"]}
    assert report["skipped"] == 7
    assert "file not found" in reasons[3]
    assert "empty file" in reasons[4]
    assert "truncated JPEG" in reasons[5]
    assert "not a regular file" in reasons[6]
    assert "not valid JSON" in reasons[7]
    assert "no 'text' field" in reasons[8]
    assert "not UTF-8" in reasons[9]
    assert "skipped" in result.err and "truncated JPEG" in result.err


def test_typo_in_op_name_fails_before_any_work(tmp_path, cli):
    dataset = _write_dataset(tmp_path, {"a": (1024, 1024)})
    recipe = _write_recipe(tmp_path, dataset, REFERENCE_RECIPE.replace("image_shape_filter", "image_shap_filter"))
    result = cli("data", "run", recipe)
    assert result.code == 1
    assert "unknown op 'image_shap_filter'" in result.err and "did you mean 'image_shape_filter'" in result.err
    assert "Traceback" not in result.err
    assert not (tmp_path / "out").exists()


def test_wrong_parameter_type_is_a_clear_error(tmp_path, cli):
    dataset = _write_dataset(tmp_path, {"a": (1024, 1024)})
    recipe = _write_recipe(tmp_path, dataset, REFERENCE_RECIPE.replace("min_width: 1024", "min_width: wide"))
    result = cli("data", "run", recipe)
    assert result.code == 1 and "process[1] (image_shape_filter): min_width" in result.err


def test_unknown_global_key_warns_and_runs(tmp_path, cli):
    dataset = _write_dataset(tmp_path, {"a": (1024, 1024)})
    recipe = _write_recipe(tmp_path, dataset, REFERENCE_RECIPE + "export_pth: typo\nuse_cache: true\n")
    result = cli("data", "run", recipe)
    assert result.code == 0
    assert "unknown key 'export_pth'" in result.err and "use_cache" in result.err


def test_bad_yaml_names_the_line(tmp_path, cli):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("process:\n  - image_shape_filter: {min_width: 3\n", encoding="utf-8")
    result = cli("data", "run", recipe)
    assert result.code == 1 and "invalid YAML" in result.err and "line" in result.err


def test_missing_dataset_is_a_clear_error(tmp_path, cli):
    recipe = _write_recipe(tmp_path, tmp_path / "nothing.jsonl")
    result = cli("data", "run", recipe)
    assert result.code == 1 and "no such file" in result.err


def test_deduplicator_keeps_first_copy(tmp_path, cli):
    dataset = _write_dataset(tmp_path, {"a": (1024, 1024), "b": (1100, 1100)})
    # Distinct content: flat colours all share one perceptual hash.
    Image.effect_noise((1100, 1100), 64).convert("RGB").save(tmp_path / "images" / "b.jpg")
    copy = tmp_path / "images" / "a_copy.jpg"
    copy.write_bytes((tmp_path / "images" / "a.jpg").read_bytes())
    with open(dataset, "a", encoding="utf-8") as handle:
        handle.write(json.dumps({"text": "copy", "image": [str(copy)]}) + "\n")
    body = REFERENCE_RECIPE + "- image_deduplicator:\n    method: dhash\n"
    assert cli("data", "run", _write_recipe(tmp_path, dataset, body)).code == 0
    texts = [r["text"] for r in _rows(tmp_path / "out" / "result.jsonl")]
    assert texts == ["二次元 a", "二次元 b"]


def test_interrupted_run_leaves_previous_export_intact(tmp_path):
    dataset = _write_dataset(tmp_path, {f"i{n}": (1024, 1024) for n in range(3)})
    recipe = load_recipe(_write_recipe(tmp_path, dataset))
    export = tmp_path / "out" / "result.jsonl"
    export.parent.mkdir()
    export.write_text("previous\n", encoding="utf-8")

    def interrupt(done: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_recipe(recipe, processes=1, on_progress=interrupt)
    assert export.read_text(encoding="utf-8") == "previous\n"
    assert sorted(p.name for p in export.parent.iterdir()) == ["result.jsonl"]


_MEMORY_PROBE = """
import json, resource, sys
from pathlib import Path
from lorastory.data.executor import run_recipe
from lorastory.data.recipe import load_recipe
n, folder = int(sys.argv[1]), Path(sys.argv[2])
folder.mkdir()
with open(folder / "m.jsonl", "w") as handle:
    for i in range(n):
        handle.write(json.dumps({"text": f"caption number {i} " + "x" * (i % 50)}) + "\\n")
(folder / "r.yaml").write_text(
    f"dataset_path: {folder / 'm.jsonl'}\\nexport_path: {folder / 'out' / 'r.jsonl'}\\n"
    "process:\\n  - text_length_filter:\\n      min_len: 30\\n"
)
result = run_recipe(load_recipe(folder / "r.yaml"), processes=2)
print(result.read.n_in, result.n_output, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


@pytest.mark.slow
def test_memory_stays_flat_on_a_long_input(tmp_path):
    peaks = {}
    for n in (10_000, 100_000):
        done = subprocess.run(
            [sys.executable, "-c", _MEMORY_PROBE, str(n), str(tmp_path / str(n))],
            capture_output=True, text=True, check=True,
        )
        rows_in, rows_out, peak_kib = map(int, done.stdout.split())
        assert rows_in == n and 0 < rows_out < n
        peaks[n] = peak_kib
    # Ten times the rows may not cost more than a few MiB (histograms hold 8 bytes per value).
    assert peaks[100_000] - peaks[10_000] < 8 * 1024, peaks
