"""The CLI contract: exit codes, --debug, the demo."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest
from PIL import Image

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


def test_console_script_writes_its_file_and_output_before_the_process_ends(tmp_path):
    # The process entry leaves its objects to the operating system at the end (no final GC passes).
    panels = []
    for index, colour in enumerate(("red", "blue")):
        panels.append(tmp_path / f"p{index}.png")
        Image.new("RGB", (16, 16), colour).save(panels[-1])
    done = subprocess.run([sys.executable, "-m", "lorastory", "grid", *map(str, panels), "--out", str(tmp_path / "b.png")],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "Wrote" in done.stdout and "(32x16)" in done.stdout
    with Image.open(tmp_path / "b.png") as board:
        assert board.size == (32, 16) and board.convert("RGB").getpixel((20, 8)) == (0, 0, 255)


def test_data_ops_lists_the_operators(cli):
    result = cli("data", "ops")
    assert result.code == 0 and "image_shape_filter" in result.out and "min_width" in result.out


@pytest.mark.slow
def test_demo_runs_the_whole_job_end_to_end(cli, tmp_path):
    # Reduced size: the full demo (make demo) trains 300 steps on 120 pictures.
    result = cli("demo", "--out", tmp_path / "demo", "--pictures", "40", "--train-steps", "200", "--story-steps", "12")
    assert result.code == 0, result.err
    demo = tmp_path / "demo"
    imported = json.loads((demo / "dataset" / "import_report.json").read_text(encoding="utf-8"))
    assert {item["item"] for item in imported["skipped_items"]} == {"bad_truncated.png"}
    report = json.loads((demo / "curated" / "result_report.json").read_text(encoding="utf-8"))
    dropped = {op["op"]: op["dropped"] for op in report["ops"]}
    assert dropped["image_shape_filter"] == 2 and dropped["image_aspect_ratio_filter"] == 2
    assert dropped["image_deduplicator"] >= 2  # the pictures came without captions: the toy captioner wrote them
    captions = json.loads((demo / "dataset" / "caption_report.json").read_text(encoding="utf-8"))
    assert captions["captioned"] == imported["written"] and captions["failed"] == 0
    assert "every attribute right" in result.out
    with open(demo / "train" / "metadata.csv", encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == report["samples_out"] and all(not row["file_name"].startswith("bad_") for row in rows)
    assert all((demo / "train" / row["file_name"]).is_file() and row["text"] for row in rows)
    assert all(row["text"].endswith("，黑色描边的漫画风格") for row in rows)  # toy captions, the style phrase last
    assert (demo / "lora" / "lora.safetensors").is_file()
    manifest = json.loads((demo / "story" / "manifest.json").read_text(encoding="utf-8"))
    assert len(manifest["panels"]) == 8 and manifest["lora"]["path"].endswith("best.safetensors")
    # The checkpoints (every 50 steps) were scored and one chosen; its scale swept and one recommended.
    checkpoints = json.loads((demo / "lora" / "eval" / "checkpoints.json").read_text(encoding="utf-8"))
    sweep = json.loads((demo / "lora" / "eval" / "sweep.json").read_text(encoding="utf-8"))
    assert [c["step"] for c in checkpoints["candidates"]] == [0, 50, 100, 150, 200]
    assert manifest["lora"]["scale"] == sweep["recommended_scale"]
    assert (demo / "lora" / "eval" / "checkpoints.png").is_file() and (demo / "lora" / "eval" / "sweep.png").is_file()
    assert f"recommended LoRA scale {sweep['recommended_scale']:g}" in result.out
    assert all(p["prompt"].startswith("一个红色长发、穿蓝色衣服的女孩在") for p in manifest["panels"])
    assert "storyboard: " in result.out and (demo / "story" / "storyboard.png").is_file()
    scores = json.loads((demo / "story" / "scores.json").read_text(encoding="utf-8"))
    style = scores["compare"]["summary"]["style_score_mean"]
    assert style["delta"] > 5.0, style  # the LoRA moved the pictures toward the learned style


def test_every_training_setting_has_a_flag():
    """The train command's flags cover TrainConfig's fields, so a new setting cannot be forgotten."""
    from typer.main import get_command

    from lorastory.cli import app
    from lorastory.train.config import TrainConfig

    from lorastory.config import YamlModel
    from lorastory.train.config import FLAT_KEYS

    renamed = {"format": "save_formats", "validation_prompt": "validation_prompts", "target_module": "target_modules",
               "text_encoder_target": "text_encoder_targets"}
    command = get_command(app).commands["train"]
    flags = {renamed.get(param.name, param.name) for param in command.params}
    # A nested setting (the LoRA's shape, an optimizer's own settings) has a flag under its flat key.
    covered = {FLAT_KEYS[flag] for flag in flags if flag in FLAT_KEYS}
    missing = []
    for name, field in TrainConfig.model_fields.items():
        if isinstance(field.annotation, type) and issubclass(field.annotation, YamlModel):
            missing += [f"{name}.{sub}" for sub in field.annotation.model_fields if (name, sub) not in covered]
        elif name not in flags:
            missing.append(name)
    assert missing == []
    assert {"lora", "prodigy", "adafactor"} <= set(TrainConfig.model_fields)  # the walk above went into them


@pytest.mark.slow
def test_a_story_prints_only_its_own_lines(toy_model_path, tmp_path):
    # With the fp8 extra installed, diffusers imports torchao, whose kernel libraries and pytree enums log lines
    # on every command; a story's output is its own three lines and nothing on stderr.
    story = tmp_path / "story.yaml"
    story.write_text("defaults: {width: 128, height: 128, steps: 2}\npanels:\n  - prompt: a red fox\n", encoding="utf-8")
    done = subprocess.run([sys.executable, "-m", "lorastory", "generate", str(story), "--model", str(toy_model_path()),
                           "--out", str(tmp_path / "run")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert done.stdout.startswith("Rendered 1 panel in ") and "storyboard:" in done.stdout
