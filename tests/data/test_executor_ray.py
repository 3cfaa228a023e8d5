"""The Ray executor writes exactly what the local one writes; images are read where they live.

One local Ray (2 CPUs) serves the whole session (the ``ray_local`` fixture in tests/conftest.py); the Ray tests skip, saying
why, only when Ray Data is not installed (``pip install 'lorastory[ray]'``).
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lorastory.data.executor import run_recipe
from lorastory.data.executor_ray import range_bytes, read_range
from lorastory.data.recipe import load_recipe

RECIPE = """\
dataset_path: '{dataset}'
np: 2
text_keys: 'text'
image_key: 'image'
export_path: '{export}'
process:
  - image_shape_filter:
      min_width: 1024
      min_height: 1024
      any_or_all: any
  - image_aspect_ratio_filter:
      min_ratio: 0.5
      max_ratio: 2.0
  - image_deduplicator:
      method: phash
"""

OUTPUTS = ("result.jsonl", "result_stats.jsonl")


def _image(path: Path, size: tuple[int, int], seed: int) -> None:
    # Blocks of random colour: every seed gives a different perceptual hash.
    blocks = np.random.default_rng(seed).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    Image.fromarray(blocks).resize(size, Image.NEAREST).save(path, quality=80)


def _mixed_dataset(folder: Path) -> Path:
    """Good rows, rows a filter drops, duplicates, bad rows, blank lines, relative paths, a file:// URI."""
    images = folder / "images"
    images.mkdir(parents=True)
    sizes = [(1024, 1024), (2048, 1024), (512, 512), (1280, 720), (3000, 1000), (1024, 1536), (1100, 1100), (2200, 1024)]
    lines: list[bytes] = []
    for index in range(40):
        name = f"{index:02d}.jpg"
        _image(images / name, sizes[index % len(sizes)], index)
        image = f"images/{name}" if index % 3 == 0 else str(images / name)  # relative and absolute
        lines.append(json.dumps({"text": f"二次元 {index}", "image": [image]}, ensure_ascii=False).encode())
    _image(images / "uri.jpg", (1200, 1200), 1000)
    (images / "same.jpg").write_bytes((images / "00.jpg").read_bytes())
    whole = (images / "01.jpg").read_bytes()
    (images / "cut.jpg").write_bytes(whole[: len(whole) // 2])
    (images / "empty.jpg").write_bytes(b"")
    extra = [
        json.dumps({"text": "dup of 0", "image": [str(images / "same.jpg")]}).encode(),
        json.dumps({"text": "dup of 1, relative", "image": ["images/01.jpg"]}).encode(),
        json.dumps({"text": "uri", "image": [(images / "uri.jpg").as_uri()]}).encode(),
        json.dumps({"text": "missing", "image": [str(images / "nope.jpg")]}).encode(),
        json.dumps({"text": "cut", "image": [str(images / "cut.jpg")]}).encode(),
        json.dumps({"text": "empty", "image": ["images/empty.jpg"]}).encode(),
        b'{"text": "broken json", ',
        json.dumps({"image": [str(images / "00.jpg")]}).encode(),
        b'{"text": "\xff\xfe latin-1", "image": []}',
        b"",
        b"   ",
        json.dumps({"text": "long " + "x" * 3000, "image": [str(images / "04.jpg")]}).encode(),
    ]
    # Interleave so bad rows and duplicates fall inside and across ranges.
    for offset, line in enumerate(extra):
        lines.insert(3 + offset * 4, line)
    dataset = folder / "metadata.jsonl"
    dataset.write_bytes(b"\n".join(lines) + b"\n" + json.dumps({"text": "no newline", "image": ["images/06.jpg"]}).encode())
    return dataset


def _recipe(folder: Path, dataset: Path) -> Path:
    path = folder / "recipe.yaml"
    path.write_text(RECIPE.format(dataset=dataset, export=folder / "out" / "result.jsonl"), encoding="utf-8")
    return path


def _outputs(folder: Path) -> list[bytes]:
    return [(folder / "out" / name).read_bytes() for name in OUTPUTS]


def _counts(result) -> list[tuple]:
    return [(r.name, r.n_in, r.kept, r.dropped, r.errors) for r in [result.read, *result.ops]]


def _comparable(result) -> dict:
    return {
        "counts": _counts(result),
        "skipped": result.skipped,
        "n_skipped": result.n_skipped,
        "n_output": result.n_output,
        "histograms": {k: list(v) for k, v in result.histograms.items()},
        "examples": result.dropped_examples,
    }


# --- no Ray needed ------------------------------------------------------------------------


@pytest.mark.parametrize("block", [1, 7, 64, 100_000])
def test_ranges_cover_every_line_once_with_file_line_numbers(tmp_path, block):
    data = b'{"a": 1}\n\n  \n' + b"x" * 150 + b"\n\xff\xfe\n{}\nlast, no newline"
    path = tmp_path / "in.jsonl"
    path.write_bytes(data)
    with open(path, "rb") as handle:
        expected = [(n, raw) for n, raw in enumerate(handle, start=1) if raw.strip()]
    got, offset = [], 0
    for start in range(0, len(data), block):
        chunk, n_lines = read_range(str(path), start, min(len(data), start + block))
        got += [(n + offset, raw) for n, raw in chunk]
        offset += n_lines
    assert got == expected
    assert offset == data.count(b"\n") + 1


def test_range_size_follows_line_length_and_workers(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_bytes((b"y" * 99 + b"\n") * 100_000)  # 10 MB, 100-byte lines
    assert abs(range_bytes(path, workers=2) - 1024 * 100) < 100  # ~1024 lines a range
    small = tmp_path / "small.jsonl"
    small.write_bytes((b"y" * 99 + b"\n") * 50)
    assert range_bytes(small, workers=2) == 4096  # never below the floor


def test_uri_images_are_read_through_fsspec(tmp_path):
    fsspec = pytest.importorskip("fsspec")
    buffer = io.BytesIO()
    Image.new("RGB", (1200, 1100), (10, 20, 30)).save(buffer, "JPEG")
    with fsspec.open("memory://lorastory-test/big.jpg", "wb") as handle:
        handle.write(buffer.getvalue())
    rows = [
        {"text": "in memory", "image": ["memory://lorastory-test/big.jpg"]},
        {"text": "missing", "image": ["memory://lorastory-test/nope.jpg"]},
    ]
    dataset = tmp_path / "metadata.jsonl"
    dataset.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    recipe = load_recipe(_recipe(tmp_path, dataset))
    result = run_recipe(recipe, processes=1)  # memory:// lives in this process only
    (row,) = [json.loads(line) for line in (tmp_path / "out" / "result.jsonl").read_text().splitlines()]
    assert row["image"] == ["memory://lorastory-test/big.jpg"]  # URIs are exported as given
    assert [s.reason for s in result.skipped] == ["memory://lorastory-test/nope.jpg: file not found"]


# --- Ray ----------------------------------------------------------------------------------


def test_ray_writes_the_same_files_and_counts_as_local(tmp_path, ray_local):
    from lorastory.data.executor_ray import run_recipe_ray

    recipe = load_recipe(_recipe(tmp_path, _mixed_dataset(tmp_path)))
    local = run_recipe(recipe, processes=2)
    local_files = _outputs(tmp_path)
    # 256-byte ranges: lines straddle ranges, some ranges start no line (the 3 KB row).
    ray_result = run_recipe_ray(recipe, block_bytes=256)
    assert _outputs(tmp_path) == local_files
    assert _comparable(ray_result) == _comparable(local)
    # The dataset exercises what it should: every kind of outcome happened.
    read, shape, ratio, dedup = ray_result.read, *ray_result.ops
    assert read.errors == 3 and shape.errors == 3 and shape.dropped > 0 and ratio.dropped > 0
    assert dedup.dropped >= 2 and ray_result.n_output > 10
    assert any(line.startswith(b'{"text": "uri"') for line in local_files[0].splitlines())


def test_cli_executor_ray(tmp_path, ray_local, cli):  # default range size: one range here
    dataset = _mixed_dataset(tmp_path)
    recipe = _recipe(tmp_path, dataset)
    assert cli("data", "run", recipe, "--np", "2").code == 0
    local_files = _outputs(tmp_path)
    result = cli("data", "run", recipe, "--executor", "ray")
    assert result.code == 0, result.err
    assert _outputs(tmp_path) == local_files
    assert "Kept" in result.out and (tmp_path / "out" / "result_report.html").is_file()


def test_cli_rejects_address_without_ray(tmp_path, cli):
    recipe = _recipe(tmp_path, tmp_path / "none.jsonl")
    assert cli("data", "run", recipe, "--address", "auto").code == 2
    assert cli("data", "run", recipe, "--executor", "spark").code == 2


@pytest.mark.slow
def test_ray_runs_the_captioning_and_tagging_mappers_as_local(tmp_path, ray_local, tiny_captioner):
    from lorastory.data.executor_ray import run_recipe_ray

    images = tmp_path / "images"
    images.mkdir()
    lines = []
    for index in range(6):
        _image(images / f"{index}.jpg", (48, 40), index)
        lines.append(json.dumps({"text": f"picture {index}", "image": [f"images/{index}.jpg"]}))
    (tmp_path / "data.jsonl").write_text("\n".join(lines) + "\n")
    recipe_path = tmp_path / "recipe.yaml"
    recipe_path.write_text(
        f"dataset_path: '{tmp_path / 'data.jsonl'}'\nnp: 2\nimage_key: image\nexport_path: '{tmp_path / 'out' / 'result.jsonl'}'\n"
        f"process:\n  - image_captioning_mapper:\n      hf_img2seq: '{tiny_captioner('blip')}'\n      caption_num: 2\n"
        "      keep_candidate_mode: all\n      max_new_tokens: 5\n"
        f"  - image_tagging_mapper:\n      hf_tagger: '{tiny_captioner('wd14')}'\n"
    )
    recipe = load_recipe(recipe_path)
    result = tmp_path / "out" / "result.jsonl"  # mappers only: no stats file
    local = run_recipe(recipe, processes=2)
    local_bytes = result.read_bytes()
    ray_result = run_recipe_ray(recipe, block_bytes=200)
    assert result.read_bytes() == local_bytes
    assert local.n_output == ray_result.n_output == 18  # each row, then its two captioned copies
    rows = [json.loads(line) for line in local_bytes.splitlines()]
    assert all(isinstance(row["__dj__meta__"]["image_tags"][0], list) for row in rows)
