"""LoRA training end to end on tiny models: files, learning, caching, exact resume."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors import safe_open

from lorastory.train.config import TrainConfig
from lorastory.train.trainer import TrainingError, train


def _config(model, data, out, **overrides) -> TrainConfig:
    values = dict(model=str(model), data=str(data), out=str(out), resolution=64, rank=4, alpha=4.0,
                  lr=1e-3, max_steps=24, batch_size=2, seed=3, gradient_checkpointing=False)
    values.update(overrides)
    return TrainConfig(**values)


def _generate(pipe, seed=0):
    pipe.set_progress_bar_config(disable=True)
    return pipe("striped style 条纹", num_inference_steps=3, height=64, width=64, guidance_scale=4.0,
                generator=torch.Generator().manual_seed(seed), output_type="np").images[0]


def test_training_learns_and_writes_a_lora_plain_diffusers_loads(tiny_model_path, style_train_folder, tmp_path):
    from diffusers import KolorsPipeline

    out = tmp_path / "run"
    # A random tiny UNet learns little through attention alone; adapting its convolutions too
    # makes the drop in loss clear within a few dozen steps.
    config = _config(tiny_model_path("kolors"), style_train_folder, out, max_steps=40, lr=3e-3,
                     target_modules=["to_q", "to_k", "to_v", "to_out.0", "conv1", "conv2"],
                     validation_prompts=["striped style 条纹"], validation_every=20, validation_steps=2)
    messages: list[str] = []
    result = train(config, say=messages.append)
    assert result.steps == 40
    assert np.mean(result.losses[-10:]) < 0.9 * np.mean(result.losses[:10])
    assert (out / "lora.safetensors").is_file() and (out / "config.yaml").is_file()
    assert TrainConfig.from_yaml(out / "config.yaml") == config
    assert sorted(p.name for p in (out / "samples").iterdir()) == ["step-000020-00.png", "step-000040-00.png"]
    assert list((out / "logs").rglob("events.out.tfevents.*"))
    with safe_open(str(out / "lora.safetensors"), "pt") as handle:
        metadata = handle.metadata()
        assert all(key.startswith("lora_unet_") for key in handle.keys())  # the kohya layout: every client reads it
    assert metadata["lorastory.family"] == "kolors" and metadata["lorastory.rank"] == "4"

    pipe = KolorsPipeline.from_pretrained(tiny_model_path("kolors"))
    base = _generate(pipe)
    pipe.load_lora_weights(str(out), weight_name="lora.safetensors")
    assert np.abs(_generate(pipe) - base).max() > 1e-3


def test_cache_is_reused_and_invalidated_per_caption(tiny_model_path, style_train_folder, tmp_path):
    cache = tmp_path / "cache"
    first: list[str] = []
    train(_config(tiny_model_path("kolors"), style_train_folder, tmp_path / "a", max_steps=1, cache_dir=str(cache)),
          say=first.append)
    assert any("8 image(s) and 2 caption(s) encoded" in m for m in first)
    again: list[str] = []
    train(_config(tiny_model_path("kolors"), style_train_folder, tmp_path / "b", max_steps=1, cache_dir=str(cache)),
          say=again.append)
    assert any("0 image(s) and 0 caption(s) encoded" in m for m in again)


def test_buckets_and_flip_train_on_mixed_sizes(tiny_model_path, tmp_path):
    from PIL import Image

    folder = tmp_path / "data"
    (folder / "images").mkdir(parents=True)
    lines = ["file_name,text"]
    for index, size in enumerate([(128, 64), (128, 64), (64, 128), (64, 64), (96, 96)]):
        Image.new("RGB", size, (index * 40, 100, 200)).save(folder / "images" / f"{index}.png")
        lines.append(f"images/{index}.png,shape {index}")
    (folder / "metadata.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    messages: list[str] = []
    result = train(_config(tiny_model_path("sdxl"), folder, tmp_path / "run", buckets=True, random_flip=True,
                           bucket_step=32, max_steps=4), say=messages.append)
    assert result.steps == 4 and (tmp_path / "run" / "lora.safetensors").is_file()
    assert any("fewer than the batch size" in m for m in messages)


def test_existing_checkpoints_need_resume(tiny_model_path, style_train_folder, tmp_path):
    config = _config(tiny_model_path("sd15"), style_train_folder, tmp_path / "run", max_steps=2, checkpoint_every=1)
    train(config, say=lambda m: None)
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["step-000001", "step-000002"]
    with pytest.raises(TrainingError, match="--resume"):
        train(config, say=lambda m: None)


def test_cli_flags_override_the_config_file(tiny_model_path, style_train_folder, tmp_path, cli):
    config = tmp_path / "train.yaml"
    config.write_text(
        f"model: {tiny_model_path('sd15')}\ndata: {style_train_folder}\nout: {tmp_path / 'run'}\n"
        "rank: 8\nalpha: 2\nresolution: 64\nmax_steps: 5\nbatch_size: 2\n",
        encoding="utf-8",
    )
    result = cli("train", config, "--rank", "2", "--max-steps", "2", "--format", "diffusers", "--format", "kohya",
                 "--no-gradient-checkpointing")
    assert result.code == 0, result.err
    written = TrainConfig.from_yaml(tmp_path / "run" / "config.yaml")
    assert (written.lora.rank, written.lora.alpha, written.max_steps, written.gradient_checkpointing) == (2, 2.0, 2, False)
    assert (tmp_path / "run" / "lora.safetensors").is_file() and (tmp_path / "run" / "lora_kohya.safetensors").is_file()
    assert "Trained 2 steps" in result.out


def test_bad_training_settings_are_one_line_errors(tmp_path, cli, style_train_folder):
    result = cli("train", "--model", "m", "--data", str(style_train_folder), "--out", str(tmp_path), "--rank", "0")
    assert result.code == 1 and "rank" in result.err and "Traceback" not in result.err
    result = cli("train", "--model", "m", "--data", str(tmp_path / "nothing"), "--out", str(tmp_path / "o"))
    assert result.code == 1 and "no metadata.csv" in result.err


def test_diverging_loss_stops_and_keeps_the_last_good_checkpoint(tiny_model_path, style_train_folder, tmp_path):
    config = _config(tiny_model_path("sd15"), style_train_folder, tmp_path / "run", lr=1e30, max_steps=50,
                     checkpoint_every=1)
    with pytest.raises(TrainingError, match="(loss|weights) became"):
        train(config, say=lambda m: None)
    assert not (tmp_path / "run" / "lora.safetensors").exists()
    from safetensors.torch import load_file as load

    for folder in (tmp_path / "run" / "checkpoints").glob("step-*"):  # every checkpoint kept is a good one
        assert all(torch.isfinite(t).all() for t in load(str(folder / "lora_params.safetensors")).values())


@pytest.mark.parametrize("family", ["sd15", "kolors"])
def test_text_encoder_lora_trains_with_the_unet(tiny_model_path, style_train_folder, tmp_path, cli, family):
    from lorastory.models.lora import apply_lora
    from lorastory.models.registry import load_pipeline

    out = tmp_path / "run"
    result = cli("train", "--model", tiny_model_path(family), "--data", style_train_folder, "--out", out,
                 "--resolution", "64", "--rank", "4", "--max-steps", "3", "--batch-size", "2", "--lr", "1e-2",
                 "--train-text-encoder", "--no-gradient-checkpointing", "--checkpoint-every", "3",
                 "--validation-prompt", "striped style 条纹", "--validation-every", "3")
    assert result.code == 0, result.err
    with safe_open(str(out / "lora.safetensors"), "pt") as handle:
        keys = list(handle.keys())
        te_b = [k for k in keys if k.startswith("lora_te") and k.endswith(".lora_up.weight")]  # kohya text-encoder names
        assert te_b and any(handle.get_tensor(k).abs().max() > 0 for k in te_b)  # the text-encoder LoRA moved
    pipe = load_pipeline(tiny_model_path(family))
    info = apply_lora(pipe, out / "lora.safetensors")
    assert "text_encoder" in info.components
    assert (out / "samples" / "step-000003-00.png").is_file()


def test_accumulation_schedules_and_loss_options(tiny_model_path, style_train_folder, tmp_path, cli):
    out = tmp_path / "run"
    result = cli("train", "--model", tiny_model_path("sd15"), "--data", style_train_folder, "--out", out,
                 "--resolution", "64", "--rank", "2", "--max-steps", "2", "--batch-size", "2",
                 "--gradient-accumulation", "2", "--lr-scheduler", "cosine", "--lr-warmup-steps", "1",
                 "--snr-gamma", "5", "--noise-offset", "0.05", "--optimizer", "adamw8bit",
                 "--no-gradient-checkpointing")
    assert result.code == 0, result.err
    assert "8-bit AdamW needs bitsandbytes and CUDA" in result.err  # falls back on a CPU, and says so
    written = TrainConfig.from_yaml(out / "config.yaml")
    assert (written.gradient_accumulation, written.lr_scheduler, written.snr_gamma) == (2, "cosine", 5.0)
    assert "Trained 2 steps" in result.out
