"""Foundations every stage relies on: outputs kept apart from inputs, temp files of killed runs,
files swapped in together, bounded YAML, JSON that stays JSON, and the CLI's one-line boundary."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from lorastory.config import read_yaml, yaml_from_text
from lorastory.errors import ConfigError, DataError, OutputError
from lorastory.fileio import (
    atomic_dir,
    atomic_files,
    atomic_write_json,
    check_outputs_apart,
    clean_stale_temps,
    finish_commit,
    parse_json,
)


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


# --- outputs apart from inputs ------------------------------------------------------------


def test_an_output_equal_to_an_input_by_any_spelling_is_refused(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "in.jsonl").write_text("{}\n")
    (tmp_path / "link").symlink_to(data)
    spellings = [data / "in.jsonl", tmp_path / "link" / "in.jsonl", data / ".." / "data" / "in.jsonl"]
    os.link(data / "in.jsonl", tmp_path / "hard.jsonl")
    spellings.append(tmp_path / "hard.jsonl")
    for spelling in spellings:
        with pytest.raises(OutputError, match="is the input"):
            check_outputs_apart([("export_path", spelling)], [("dataset_path", data / "in.jsonl")])


def test_an_output_folder_holding_an_input_or_inside_one_is_refused(tmp_path):
    (tmp_path / "src" / "sub").mkdir(parents=True)
    with pytest.raises(OutputError, match="contains the input"):
        check_outputs_apart([("--out", tmp_path)], [("SRC", tmp_path / "src" / "sub")])
    with pytest.raises(OutputError, match="lies inside the input"):
        check_outputs_apart([("--out", tmp_path / "src" / "sub" / "new")], [("SRC", tmp_path / "src")])
    check_outputs_apart([("--out", tmp_path / "out")], [("SRC", tmp_path / "src")])  # siblings are fine


# --- temp files of killed runs ------------------------------------------------------------


def test_stale_temps_of_dead_runs_are_removed_and_live_ones_kept(tmp_path):
    dead, live = _dead_pid(), os.getpid()
    (tmp_path / f".result.jsonl.{dead}.abc123.tmp").write_text("half")
    (tmp_path / f".result.jsonl.{live}.def456.tmp").write_text("in progress")
    (tmp_path / f".dataset.{dead}.xyz.tmp").mkdir()
    (tmp_path / f".dataset.{dead}.xyz.tmp" / "copy.png").write_bytes(b"x")
    (tmp_path / ".hidden-user-file.tmp").write_text("mine")
    removed = clean_stale_temps(tmp_path)
    assert sorted(p.name for p in removed) == sorted([f".result.jsonl.{dead}.abc123.tmp", f".dataset.{dead}.xyz.tmp"])
    assert (tmp_path / f".result.jsonl.{live}.def456.tmp").exists()
    assert (tmp_path / ".hidden-user-file.tmp").read_text() == "mine"


def test_an_old_output_moved_aside_by_a_killed_swap_is_put_back(tmp_path):
    aside = tmp_path / f".dataset.old-{_dead_pid()}-123"
    aside.mkdir()
    (aside / "metadata.jsonl").write_text("old\n")
    clean_stale_temps(tmp_path)
    assert (tmp_path / "dataset" / "metadata.jsonl").read_text() == "old\n"


def test_atomic_dir_clears_its_own_leftovers(tmp_path):
    leftover = tmp_path / f".out.{_dead_pid()}.q1w2.tmp"
    leftover.mkdir()
    with atomic_dir(tmp_path / "out") as tmp:
        (tmp / "a.txt").write_text("a")
    assert not leftover.exists() and (tmp_path / "out" / "a.txt").read_text() == "a"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


# --- several files swapped in together ----------------------------------------------------


def test_atomic_files_replace_all_targets_or_none(tmp_path):
    targets = [tmp_path / "result.jsonl", tmp_path / "result_stats.jsonl", tmp_path / "result_report.json"]
    for target in targets:
        target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_files(targets) as temps:
            temps[0].write_text("new")
            raise RuntimeError("killed half way")
    assert [t.read_text() for t in targets] == ["old"] * 3
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(t.name for t in targets)
    with atomic_files(targets) as temps:
        for temp in temps:
            temp.write_text("new")
    assert [t.read_text() for t in targets] == ["new"] * 3


def test_a_commit_killed_between_renames_is_completed_by_the_next_run(tmp_path):
    targets = [tmp_path / "result.jsonl", tmp_path / "result_stats.jsonl"]
    for target in targets:
        target.write_text("old")
    temps = [tmp_path / f".{t.name}.1.x.tmp" for t in targets]
    for temp in temps:
        temp.write_text("new")
    journal = tmp_path / ".result.jsonl.commit"
    journal.write_text(json.dumps([[str(a), str(b)] for a, b in zip(temps, targets)]))
    os.replace(temps[0], targets[0])  # the kill came after the first rename
    finish_commit(targets[0])
    assert [t.read_text() for t in targets] == ["new", "new"] and not journal.exists()


# --- YAML and JSON ------------------------------------------------------------------------

BILLION_LAUGHS = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]\n" for i in range(9)
)


def test_billion_laughs_is_refused_at_once(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(BILLION_LAUGHS + "process: *j\n")
    started = time.perf_counter()
    with pytest.raises(ConfigError, match="too large once its aliases"):
        read_yaml(recipe)
    assert time.perf_counter() - started < 5  # generous: it is a few milliseconds


def test_small_aliases_and_recursive_ones(tmp_path):
    assert yaml_from_text("base: &b {x: 1}\nother: *b\n", "c") == {"base": {"x": 1}, "other": {"x": 1}}
    with pytest.raises(ConfigError, match="contains itself"):
        yaml_from_text("a: &a [*a]\n", "c")
    with pytest.raises(ConfigError, match="nested too deeply"):
        yaml_from_text("[" * 100_000, "c")


def test_a_fifo_config_is_not_read(tmp_path):
    os.mkfifo(tmp_path / "recipe.yaml")
    with pytest.raises(ConfigError, match="not a regular file"):
        read_yaml(tmp_path / "recipe.yaml")


def test_json_deep_or_invalid_is_a_data_error():
    with pytest.raises(DataError, match="nested too deeply"):
        parse_json("[" * 200_000, "line 3")
    with pytest.raises(DataError, match="invalid JSON"):
        parse_json("{", "line 4")


def test_json_outputs_stay_valid_json(tmp_path):
    atomic_write_json(tmp_path / "m.json", {"cfg": float("inf"), "scale": float("nan"), "name": "bad\udcff"})
    text = (tmp_path / "m.json").read_text(encoding="utf-8")
    assert json.loads(text) == {"cfg": None, "scale": None, "name": "bad\\xff"}


# --- the CLI boundary ---------------------------------------------------------------------


def test_an_unwritable_output_is_one_line(cli, tmp_path):
    (tmp_path / "story.yaml").write_text("title: t\n")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = cli("model", "tiny", "--family", "sd15", "--out", blocker / "model")
    assert result.code == 1 and "Traceback" not in result.err and "This is a bug" not in result.err
    assert len(result.err.strip().splitlines()) == 1 and "file" in result.err


def test_an_unexpected_error_asks_for_a_report_and_debug_shows_it(cli, monkeypatch):
    import lorastory.cli.models as models_cli

    def broken(*args, **kwargs):
        raise KeyError("boom")

    monkeypatch.setattr(models_cli, "build_tiny_model", broken)
    result = cli("model", "tiny", "--family", "sd15", "--out", "x")
    assert result.code == 1 and "Traceback" not in result.err
    assert "unexpected KeyError" in result.err and "please report it" in result.err
    with pytest.raises(KeyError):
        cli("--debug", "model", "tiny", "--family", "sd15", "--out", "x")


def test_model_commands_do_not_replace_a_users_folder(cli, tmp_path):
    folder = tmp_path / "my-pictures"
    folder.mkdir()
    (folder / "holiday.jpg").write_bytes(b"precious")
    for args in (("tiny", "--family", "sd15"), ("toy", "--component", "clip")):
        result = cli("model", *args, "--out", folder)
        assert result.code == 1 and "is not empty" in result.err and "--overwrite" in result.err
    assert [p.name for p in folder.iterdir()] == ["holiday.jpg"]
    assert (folder / "holiday.jpg").read_bytes() == b"precious"


def test_tiny_ip_adapter_may_not_write_into_its_model(cli, tiny_model_path):
    model = tiny_model_path("sd15")
    result = cli("model", "tiny-ip-adapter", "--model", model, "--out", model / "ip")
    assert result.code == 1 and "lies inside the input --model" in result.err


def test_the_demo_does_not_write_into_a_users_folder(cli, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    result = cli("demo", "--out", tmp_path, "--pictures", "8", "--train-steps", "1", "--story-steps", "1")
    assert result.code == 1 and "not an earlier demo folder" in result.err
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]
