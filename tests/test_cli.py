"""The CLI contract: exit codes, --debug, the demo."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest

from lorastory import __version__
from lorastory.errors import ConfigError


def test_version(cli):
    result = cli("--version")
    assert result.code == 0 and __version__ in result.out


def test_usage_error_exits_2(cli):
    assert cli("data", "run").code == 2
    assert cli("no-such-command").code == 2


def test_user_error_is_one_line_without_traceback(cli, tmp_path):
    result = cli("data", "run", tmp_path / "missing.yaml")
    assert result.code == 1
    assert result.err.strip().startswith("error:") and "no such file" in result.err
    assert "Traceback" not in result.err and len(result.err.strip().splitlines()) == 1


def test_debug_shows_the_traceback(cli, tmp_path):
    with pytest.raises(ConfigError):
        cli("--debug", "data", "run", tmp_path / "missing.yaml")


def test_console_script_entry_point(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "lorastory", "data", "run", str(tmp_path / "x.yaml")],
        capture_output=True, text=True,
    )
    assert done.returncode == 1 and "no such file" in done.stderr


def test_data_ops_lists_the_operators(cli):
    result = cli("data", "ops")
    assert result.code == 0 and "image_shape_filter" in result.out and "min_width" in result.out


@pytest.mark.slow
def test_demo_runs_the_whole_job_end_to_end(cli, tmp_path):
    result = cli("demo", "--out", tmp_path / "demo")
    assert result.code == 0, result.err
    demo = tmp_path / "demo"
    report = json.loads((demo / "curated" / "result_report.json").read_text(encoding="utf-8"))
    assert report["samples_out"] > 0 and report["samples_in"] > report["samples_out"]
    with open(demo / "train" / "metadata.csv", encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == report["samples_out"]
    assert all((demo / "train" / row["file_name"]).is_file() and row["text"] for row in rows)
    imported = json.loads((demo / "dataset" / "import_report.json").read_text(encoding="utf-8"))
    assert {item["item"] for item in imported["skipped_items"]} == {"broken_empty.jpg", "broken_truncated.jpg"}
    assert (demo / "lora" / "lora.safetensors").is_file()
    manifest = json.loads((demo / "story" / "manifest.json").read_text(encoding="utf-8"))
    assert [p["seed"] for p in manifest["panels"]] == [1, 1, 2, 5, 0, 1, 7, 0]
    assert manifest["lora"]["path"].endswith("lora.safetensors")
    assert "storyboard: " in result.out and (demo / "story" / "storyboard.png").is_file()
