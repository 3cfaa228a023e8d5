"""``lorastory eval --compare``: the story rendered with and without its LoRA at the same seeds."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image


def _pixels(path):
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)


def test_compare_renders_both_scores_both_and_writes_the_two_row_image(cli, run_copy, tiny_clip):
    result = cli("eval", run_copy, "--clip", tiny_clip, "--compare")
    assert result.code == 0, result.err
    compare_dir = run_copy / "compare"
    scores = json.loads((run_copy / "scores.json").read_text(encoding="utf-8"))
    compare = scores["compare"]
    assert compare == json.loads((compare_dir / "compare.json").read_text(encoding="utf-8"))
    files = ["panel-01.png", "panel-02.png", "panel-03.png"]
    for side in ("with_lora", "without_lora"):
        assert all((compare_dir / side / f).is_file() for f in files)
        assert (compare_dir / side / "scores.json").is_file()

    # Same seeds: the LoRA render reproduces the run's panels; without the LoRA they differ.
    for name in files:
        assert np.array_equal(_pixels(run_copy / name), _pixels(compare_dir / "with_lora" / name))
        assert not np.array_equal(_pixels(compare_dir / "with_lora" / name), _pixels(compare_dir / "without_lora" / name))
    manifests = [json.loads((compare_dir / s / "manifest.json").read_text(encoding="utf-8")) for s in ("with_lora", "without_lora")]
    assert [p["seed"] for p in manifests[0]["panels"]] == [p["seed"] for p in manifests[1]["panels"]] == [1, 11, 12]
    assert manifests[0]["lora"]["scale"] == 0.8 and manifests[1]["lora"] is None

    # Deltas are with − without, side by side, per panel and overall.
    side = {s: json.loads((compare_dir / s / "scores.json").read_text(encoding="utf-8")) for s in ("with_lora", "without_lora")}
    for key in ("clip_t_mean", "consistency", "subject_consistency"):
        row = compare["summary"][key]
        assert row["with_lora"] == side["with_lora"]["summary"][key]
        assert row["without_lora"] == side["without_lora"]["summary"][key]
        assert row["delta"] == pytest.approx(row["with_lora"] - row["without_lora"], abs=1e-5)
    assert compare["summary"]["aesthetic_mean"] == {"with_lora": None, "without_lora": None, "delta": None}
    assert [p["clip_t"]["with_lora"] for p in compare["panels"]] == [p["clip_t"] for p in scores["panels"]]
    assert any(p["clip_t"]["delta"] != 0 for p in compare["panels"])

    # Two rows: panels with the LoRA on top, without below.
    board = Image.open(compare_dir / "lora_on_off.png").convert("RGB")
    assert board.width == 3 * 64
    grid = np.asarray(board, dtype=np.int16)
    top_row = [y for y in range(grid.shape[0] - 63) if np.array_equal(grid[y:y + 64, 0:64], _pixels(compare_dir / "with_lora" / files[0]))]
    bottom_row = [y for y in range(grid.shape[0] - 63) if np.array_equal(grid[y:y + 64, 0:64], _pixels(compare_dir / "without_lora" / files[0]))]
    assert len(top_row) == 1 and len(bottom_row) == 1 and top_row[0] < bottom_row[0]

    for text in ("with LoRA", "without", "delta", "mean CLIP-T", "lora_on_off.png"):
        assert text in result.out, text


def test_compare_with_a_missing_lora_file_asks_for_one(cli, run_copy, tiny_clip):
    manifest = json.loads((run_copy / "manifest.json").read_text(encoding="utf-8"))
    manifest["lora"]["path"] = "/nowhere/style.safetensors"
    (run_copy / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    result = cli("eval", run_copy, "--clip", tiny_clip, "--compare")
    assert result.code == 1 and "--lora" in result.err and len(result.err.strip().splitlines()) == 1


def test_compare_twice_replaces_its_own_renders(cli, run_copy, tiny_clip):
    for _ in range(2):
        result = cli("eval", run_copy, "--clip", tiny_clip, "--compare")
        assert result.code == 0, result.err
    assert (run_copy / "compare" / "with_lora" / "manifest.json").is_file()
