"""``lorastory eval checkpoints`` and ``eval sweep`` on a tiny trained run, and ``train --select-best``."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from lorastory.eval.checkpoints import CheckpointsReport
from lorastory.eval.plot import CURVES_SIZE, TRADEOFF_SIZE
from lorastory.eval.sweep import SweepReport, recommended_scale
from lorastory.train.config import TrainConfig
from lorastory.train.trainer import train

PROMPTS = ["striped style 条纹, a red square", "striped style 条纹, a blue circle"]


@pytest.fixture(scope="module")
def trained_run(tiny_model_path, style_train_folder, tmp_path_factory):
    """A tiny run with a checkpoint at every one of 3 steps, of which only the newest is kept."""
    out = tmp_path_factory.mktemp("ckpt") / "run"
    train(TrainConfig(model=str(tiny_model_path("kolors")), data=str(style_train_folder), out=str(out), resolution=64,
                      rank=4, alpha=4.0, lr=3e-3, max_steps=3, batch_size=2, seed=3, gradient_checkpointing=False,
                      checkpoint_every=1, keep_checkpoints=1, validation_prompts=PROMPTS, validation_steps=2,
                      validation_style="striped style 条纹", target_modules=["to_q", "to_k", "to_v", "to_out.0", "conv1"]),
          say=lambda _m: None)
    return out


@pytest.fixture
def run_copy(trained_run, tmp_path):
    target = tmp_path / "run"
    shutil.copytree(trained_run, target)
    return target


def _png_size(path):
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        return image.format, image.size


def test_every_checkpoint_keeps_its_lora_after_pruning(trained_run):
    assert [p.name for p in (trained_run / "checkpoints").iterdir() if p.name.startswith("step-")] == ["step-000003"]
    assert sorted(p.name for p in (trained_run / "loras").iterdir()) == [
        "step-000001.safetensors", "step-000002.safetensors", "step-000003.safetensors"]


def test_eval_checkpoints_scores_each_step_and_copies_the_best(cli, run_copy, tiny_clip):
    result = cli("eval", "checkpoints", run_copy, "--clip", tiny_clip, "--seeds", "1", "--batch-size", "2")
    assert result.code == 0, result.err
    report = CheckpointsReport.model_validate_json((run_copy / "eval" / "checkpoints.json").read_bytes())
    assert [c.step for c in report.candidates] == [0, 1, 2, 3]
    assert report.candidates[0].lora is None and report.validation.prompts == PROMPTS
    for candidate in report.candidates:
        scores = candidate.scores
        assert scores.images == 2 and scores.style is not None and scores.style_phrase is not None
        assert scores.memorisation is not None and scores.memorisation_max >= scores.memorisation
        assert len(list((run_copy / "eval" / "renders").glob(f"step-{candidate.step}*/*.png"))) == 2
    chosen = report.candidates[report.choice.index]
    assert chosen.step == report.choice.step >= 1
    assert (run_copy / "best.safetensors").read_bytes() == (run_copy / "loras" / f"step-{chosen.step:06d}.safetensors").read_bytes()
    assert report.choice.reason.startswith(f"step {chosen.step}: style ") and "vs base" in report.choice.reason
    assert "Best: step" in result.out
    assert _png_size(run_copy / "eval" / "checkpoints.png") == ("PNG", CURVES_SIZE)
    assert list((run_copy / "logs" / "checkpoint_eval").glob("events.out.tfevents.*"))


def test_eval_sweep_recommends_a_scale_at_fixed_seeds(cli, run_copy, tiny_clip):
    result = cli("eval", "sweep", run_copy, "--scales", "1,0.5", "--clip", tiny_clip, "--seeds", "1")
    assert result.code == 0, result.err
    report = SweepReport.model_validate_json((run_copy / "eval" / "sweep.json").read_bytes())
    assert [c.scale for c in report.candidates] == [0.0, 0.5, 1.0]  # scale 0, the reference, always first
    assert report.lora.endswith("lora.safetensors") and report.recommended_scale in (0.5, 1.0)
    assert f"Recommended scale {report.recommended_scale:g}" in result.out
    assert _png_size(run_copy / "eval" / "sweep.png") == ("PNG", TRADEOFF_SIZE)
    assert recommended_scale(run_copy / "lora.safetensors") == report.recommended_scale
    # Same seeds: scale 0 draws what the base model draws; a LoRA scale draws something else.
    renders = run_copy / "eval" / "renders"
    base, half = (np.asarray(Image.open(next((renders / name).glob("01-*.png")))) for name in ("scale-0", "scale-0.5"))
    assert not np.array_equal(base, half)
    (run_copy / "lora.safetensors").write_bytes(b"changed")  # a changed file has no recommendation
    assert recommended_scale(run_copy / "lora.safetensors") is None


def test_refusals_are_one_line(cli, tmp_path, run_copy, tiny_clip):
    cli("eval", "checkpoints", tmp_path, "--clip", tiny_clip).error_line("no config.yaml")
    cli("eval", "sweep", run_copy / "lora.safetensors", "--scales", "1,x").error_line("--scales", "'x'")
    outside = tmp_path / "style.safetensors"
    shutil.copy(run_copy / "lora.safetensors", outside)
    cli("eval", "sweep", outside, "--clip", tiny_clip).error_line("--model and --prompts")
    shutil.rmtree(run_copy / "loras")
    (run_copy / "lora.safetensors").unlink()
    cli("eval", "checkpoints", run_copy, "--clip", tiny_clip).error_line("--checkpoint-every")


def test_a_story_run_still_scores_as_eval_run(cli, tmp_path):
    assert cli("eval", tmp_path / "nowhere").error_line("no such run folder")
    assert cli("eval", "run", tmp_path / "nowhere").error_line("no such run folder")


def test_train_select_best_chooses_at_the_end(cli, tiny_model_path, style_train_folder, tiny_clip, tmp_path):
    out = tmp_path / "run"
    common = ["train", "--model", tiny_model_path("kolors"), "--data", style_train_folder, "--out", out,
              "--resolution", "64", "--rank", "4", "--max-steps", "2", "--batch-size", "2", "--no-gradient-checkpointing"]
    cli(*common, "--select-best").error_line("select_best needs validation_prompts")
    result = cli(*common, "--checkpoint-every", "1", "--select-best", "--eval-clip", tiny_clip, "--validation-steps", "2",
                 "--validation-prompt", PROMPTS[0], "--validation-style", "striped style 条纹")
    assert result.code == 0, result.err
    assert "best checkpoint: step " in result.out and (out / "best.safetensors").is_file()
    report = json.loads((out / "eval" / "checkpoints.json").read_text(encoding="utf-8"))
    assert [c["step"] for c in report["candidates"]] == [0, 1, 2] and report["clip"] == str(tiny_clip)
