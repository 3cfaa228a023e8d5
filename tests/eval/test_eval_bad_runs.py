"""Run folders and datasets written by someone else: one line and exit 1, never a traceback or a read outside."""

from __future__ import annotations

import json
import os

import pytest


def _manifest(run):
    return json.loads((run / "manifest.json").read_text(encoding="utf-8"))


def _write_manifest(run, data) -> None:
    (run / "manifest.json").write_text(json.dumps(data), encoding="utf-8")


@pytest.mark.parametrize("name", ["../../../../etc/passwd", "/etc/hostname"])
def test_a_panel_outside_the_run_folder_is_refused(cli, run_copy, tiny_clip, name):
    manifest = _manifest(run_copy)
    manifest["panels"][0]["file"] = name
    _write_manifest(run_copy, manifest)
    cli("eval", run_copy, "--clip", tiny_clip).error_line("not inside the run folder")
    assert not (run_copy / "scores.json").exists()


def test_a_symlinked_panel_leading_out_is_refused(cli, run_copy, tiny_clip, tmp_path):
    outside = tmp_path / "elsewhere.png"
    os.replace(run_copy / "panel-01.png", outside)
    (run_copy / "panel-01.png").symlink_to(outside)
    cli("eval", run_copy, "--clip", tiny_clip).error_line("not inside the run folder")


def test_a_deeply_nested_manifest_is_one_line(cli, run_copy, tiny_clip):
    (run_copy / "manifest.json").write_text("[" * 200_000, encoding="utf-8")
    cli("eval", run_copy, "--clip", tiny_clip).error_line("manifest.json")


@pytest.mark.parametrize("panels", [[], [1, 2], [{"file": 3, "prompt": "x"}], "panel-01.png"])
def test_manifest_panels_of_the_wrong_shape_are_one_line(cli, run_copy, tiny_clip, panels):
    manifest = _manifest(run_copy)
    manifest["panels"] = panels
    _write_manifest(run_copy, manifest)
    cli("eval", run_copy, "--clip", tiny_clip).error_line("manifest.json")


def test_a_fifo_panel_does_not_hang(cli, run_copy, tiny_clip):
    (run_copy / "panel-02.png").unlink()
    os.mkfifo(run_copy / "panel-02.png")
    cli("eval", run_copy, "--clip", tiny_clip).error_line("panel-02.png", "not a regular file")


def test_an_undecodable_panel_names_the_file(cli, run_copy, tiny_clip):
    (run_copy / "panel-02.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    cli("eval", run_copy, "--clip", tiny_clip).error_line("panel-02.png")


def test_a_non_finite_lora_scale_is_refused_before_rendering(cli, run_copy, tiny_clip):
    result = cli("eval", run_copy, "--clip", tiny_clip, "--compare", "--lora-scale", "nan")
    result.error_line("finite")
    assert not (run_copy / "compare").exists()


@pytest.mark.parametrize("size", ["0", "-3"])
def test_a_batch_below_one_is_one_line(cli, run_copy, tiny_clip, size):
    cli("eval", run_copy, "--clip", tiny_clip, "--batch-size", size).error_line("batch size must be 1 or more")


def test_clip_score_reports_malformed_csv_rows(cli, run_copy, tiny_clip):
    (run_copy / "m.csv").write_text(
        "file_name,text\npanel-01.png,one\n,empty name\npanel-02.png,two,extra\npanel-03.png,three\n", encoding="utf-8"
    )
    result = cli("data", "clip-score", run_copy / "m.csv", "--clip", tiny_clip)
    assert result.code == 0, result.err
    assert "Scored 2 image-text pairs" in result.out
    assert "line 3" in result.err and "line 4" in result.err


def test_clip_score_refuses_a_duplicate_column(cli, run_copy, tiny_clip):
    (run_copy / "m.csv").write_text("file_name,text,text\npanel-01.png,a,b\n", encoding="utf-8")
    cli("data", "clip-score", run_copy / "m.csv", "--clip", tiny_clip).error_line("'text' appears 2 times")


def test_clip_score_skips_rows_of_the_wrong_shape(cli, run_copy, tiny_clip):
    (run_copy / "m.jsonl").write_text(
        '[1, 2]\n7\n{"text": "a", "image": 3}\n{"text": "a", "image": ["bad\\u0000name.png"]}\n'
        '{"text": "b", "image": ["panel-01.png"]}\n' + "[" * 100_000 + "\n",
        encoding="utf-8",
    )
    result = cli("data", "clip-score", run_copy / "m.jsonl", "--clip", tiny_clip)
    assert result.code == 0, result.err
    assert "Scored 1 image-text pairs" in result.out
    for line in ("line 1", "line 2", "line 3", "line 4", "line 6"):
        assert line in result.err


def test_clip_score_never_writes_over_its_input(cli, run_copy, tiny_clip):
    (run_copy / "m.csv").write_text("file_name,text\npanel-01.png,one\n", encoding="utf-8")
    before = (run_copy / "m.csv").read_bytes()
    for target in ("m.csv", "panel-01.png"):
        result = cli("data", "clip-score", run_copy / "m.csv", "--clip", tiny_clip, "--out", run_copy / target)
        result.error_line("choose another output")
    assert (run_copy / "m.csv").read_bytes() == before


def test_clip_score_skips_a_caption_that_is_not_unicode(cli, run_copy, tiny_clip):
    (run_copy / "m.jsonl").write_text(
        '{"text": "bad \\ud800", "image": ["panel-01.png"]}\n{"text": "good", "image": ["panel-02.png"]}\n', encoding="utf-8"
    )
    result = cli("data", "clip-score", run_copy / "m.jsonl", "--clip", tiny_clip)
    assert result.code == 0, result.err
    assert "Scored 1 image-text pairs" in result.out and "line 1" in result.err
