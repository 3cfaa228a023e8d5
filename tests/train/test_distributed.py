"""Data-parallel training: `lorastory train --gpus 2` in two CPU processes (gloo) against one process."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from lorastory.train.config import TrainConfig
from lorastory.train.trainer import train

# lr 1e-4: Adam's first steps move each weight by about lr whatever its gradient, so float rounding in a
# near-zero gradient (batch 4 vs 2 x 2, one loss sum vs an all-reduce) shows up as lr-sized noise.
SETTINGS = dict(resolution=64, rank=4, alpha=4.0, lr=1e-4, max_steps=4, seed=3, gradient_checkpointing=False)


def _flags(model, data, out, batch_size, *extra):
    return ["--model", str(model), "--data", str(data), "--out", str(out), "--batch-size", str(batch_size),
            "--resolution", "64", "--rank", "4", "--alpha", "4", "--lr", "1e-4", "--max-steps", "4", "--seed", "3",
            "--no-gradient-checkpointing", *extra]


def _max_diff(a, b):
    a, b = load_file(str(a)), load_file(str(b))
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


@pytest.mark.slow
def test_two_processes_train_the_same_lora_as_one_with_the_same_global_batch(tiny_model_path, style_train_folder,
                                                                            tmp_path):
    model = tiny_model_path("kolors")
    two = tmp_path / "two"
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    run = subprocess.run([sys.executable, "-m", "lorastory", "train",
                          *_flags(model, style_train_folder, two, 2, "--gpus", "2", "--checkpoint-every", "2",
                                  "--validation-prompt", "条纹 stripes", "--validation-every", "4")],
                         env=env, capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stderr[-3000:]

    # Written once: one LoRA, one set of checkpoints, logs and samples, one summary.
    assert run.stdout.count("Trained 4 steps on 2 processes") == 1
    assert sorted(p.name for p in (two / "checkpoints").iterdir()) == ["step-000002", "step-000004"]
    assert len(list((two / "logs").rglob("events.out.tfevents.*"))) == 1
    assert [p.name for p in (two / "samples").iterdir()] == ["step-000004-00.png"]
    # The cache was filled by both processes together: 8 images and 2 captions (+ the validation prompt and
    # the empty negative) encoded once in all, every entry complete, no temporary file left behind.
    assert "8 image(s) and 4 caption(s) encoded by 2 processes" in run.stderr
    cached = [p for p in (two / "cache").rglob("*") if p.is_file()]
    assert len(cached) == 12 and all(p.suffix == ".safetensors" for p in cached)

    one = train(TrainConfig(model=str(model), data=str(style_train_folder), out=str(tmp_path / "one"), batch_size=4,
                            **SETTINGS), say=lambda m: None)
    assert one.steps == 4
    assert _max_diff(two / "lora.safetensors", tmp_path / "one" / "lora.safetensors") <= 1e-5

    # Resume the two-process run's step-2 checkpoint in one process with the same global batch: the same LoRA.
    resumed = tmp_path / "resumed"
    shutil.copytree(two, resumed, ignore=shutil.ignore_patterns("step-000004", "lora.safetensors"))
    notes: list[str] = []
    result = train(TrainConfig(model=str(model), data=str(style_train_folder), out=str(resumed), batch_size=4,
                               resume=True, cache_dir=str(two / "cache"), **SETTINGS), say=notes.append)
    assert any(n.startswith("resumed from step-000002") for n in notes)
    assert result.steps == 4 and result.losses and len(result.losses) == 2
    assert _max_diff(resumed / "lora.safetensors", two / "lora.safetensors") <= 1e-5

    # With another global batch (1 process x 2) it goes on from the same sample and says so.
    smaller = tmp_path / "smaller"
    shutil.copytree(two, smaller, ignore=shutil.ignore_patterns("step-000004", "lora.safetensors"))
    notes.clear()
    result = train(TrainConfig(model=str(model), data=str(style_train_folder), out=str(smaller), batch_size=2,
                               resume=True, cache_dir=str(two / "cache"), **SETTINGS), say=notes.append)
    assert any("global batch of 4, this run has 2" in n for n in notes)
    assert result.steps == 4 and len(result.losses) == 2
    # Other batches for the last two steps give another LoRA: the comparisons above can fail.
    assert _max_diff(smaller / "lora.safetensors", two / "lora.safetensors") > 1e-4


def test_more_gpus_than_the_machine_has_is_one_line_error(cli, style_train_folder, tmp_path, monkeypatch):
    monkeypatch.delenv("ACCELERATE_USE_CPU", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    available = torch.cuda.device_count() if torch.cuda.is_available() else 0
    result = cli("train", *_flags("m", style_train_folder, tmp_path / "run", 2, "--gpus", str(available + 1)))
    assert result.code == 1 and "Traceback" not in result.err
    assert f"this machine has {available} GPU(s)" in result.err and not (tmp_path / "run").exists()


def test_gpus_inside_a_launcher_of_another_size_is_refused(cli, style_train_folder, tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "4")
    result = cli("train", *_flags("m", style_train_folder, tmp_path / "run", 2, "--gpus", "2"))
    assert result.code == 1 and "drop --gpus" in result.err


def test_a_wrong_data_folder_fails_once_before_any_process_starts(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_CPU", "1")
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    result = cli("train", *_flags("m", tmp_path / "nothing", tmp_path / "run", 2, "--gpus", "2"))
    assert result.code == 1 and result.err.count("no metadata.csv") == 1
    assert "Starting" not in result.err and not (tmp_path / "run").exists()


@pytest.mark.slow
def test_flux_trains_in_two_processes_as_in_one(tiny_model_path, style_train_folder, tmp_path):
    """A DiT (Flux: flow matching, packed latents, guidance input) through the same launcher as the UNets."""
    model = tiny_model_path("flux")
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    run = subprocess.run([sys.executable, "-m", "lorastory", "train",
                          *_flags(model, style_train_folder, tmp_path / "two", 2, "--gpus", "2")],
                         env=env, capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count("Trained 4 steps on 2 processes") == 1
    # What the user reads on stderr: our lines only, no library's warnings or progress bars from the processes.
    lines = run.stderr.splitlines()
    assert len(lines) == 3 and lines[0] == "Starting 2 training processes (accelerate launch)...", run.stderr
    assert lines[1].startswith("cache: 8 image(s) and 2 caption(s) encoded by 2 processes")
    assert lines[2].startswith("compile: off")
    one = train(TrainConfig(model=str(model), data=str(style_train_folder), out=str(tmp_path / "one"), batch_size=4,
                            **SETTINGS), say=lambda m: None)
    assert one.steps == 4
    assert _max_diff(tmp_path / "two" / "lora.safetensors", tmp_path / "one" / "lora.safetensors") <= 1e-5
