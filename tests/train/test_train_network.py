"""``lorastory train --network``: a LoRA variant trained on a tiny model loads in ComfyUI's loader."""

from __future__ import annotations

import pytest
from clients.comfy_lora import comfy_patch
from clients.common import plain_pipeline
from safetensors import safe_open


@pytest.mark.slow
def test_train_loha_writes_a_file_comfyui_loads(tiny_model_path, style_train_folder, tmp_path, cli):
    out = tmp_path / "run"
    result = cli("train", "--model", str(tiny_model_path("sdxl")), "--data", str(style_train_folder), "--out", str(out),
                 "--network", "loha", "--conv-rank", "2", "--rank", "2", "--alpha", "1", "--resolution", "64",
                 "--max-steps", "2", "--lr", "1e-2", "--no-gradient-checkpointing")
    assert result.code == 0, result.err
    with safe_open(str(out / "lora.safetensors"), "pt") as handle:
        keys = list(handle.keys())
        assert handle.metadata()["lorastory.network"] == "loha"
    assert any(k.endswith(".hada_w1_a") for k in keys) and any("_resnets_" in k or "in_layers" in k for k in keys)
    pipe = plain_pipeline(tiny_model_path("sdxl"), "sdxl")
    base = {f"unet.{k}": v for k, v in pipe.unet.state_dict().items()}
    patched, total, not_loaded, errors = comfy_patch(pipe, out / "lora.safetensors")
    assert (not_loaded, errors) == ([], []) and len(patched) == total > 0
    assert any(float((patched[k] - base[k]).abs().max()) > 0 for k in patched)  # two steps moved the weights


def test_variant_settings_are_one_line_errors(tmp_path, cli, style_train_folder):
    result = cli("train", "--model", "m", "--data", str(style_train_folder), "--out", str(tmp_path / "r"),
                 "--network", "dora", "--conv-rank", "4")
    assert result.code == 1 and "conv_rank" in result.err and "Traceback" not in result.err
    result = cli("train", "--model", "m", "--data", str(style_train_folder), "--out", str(tmp_path / "r"),
                 "--network", "lokr", "--format", "diffusers")
    assert result.code == 1 and "kohya/LyCORIS layout" in result.err


@pytest.mark.slow
@pytest.mark.parametrize("network", ["loha", "dora"])
def test_variant_resume_is_bit_identical(tiny_model_path, style_train_folder, tmp_path, network):
    """3 steps straight, or 2 steps, a lost step-3 checkpoint and LoRA, and a resume: the same file bits."""
    import shutil

    import torch
    from safetensors.torch import load_file

    from lorastory.train.config import TrainConfig
    from lorastory.train.trainer import train

    extra = {"conv_rank": 2} if network == "loha" else {}
    config = TrainConfig(model=str(tiny_model_path("sd15")), data=str(style_train_folder), out=str(tmp_path / "a"),
                         resolution=64, rank=2, alpha=1.0, lr=1e-2, max_steps=3, batch_size=2, seed=5,
                         gradient_checkpointing=False, checkpoint_every=1, network=network, **extra)
    train(config, say=lambda m: None)
    resumed = tmp_path / "b"
    shutil.copytree(tmp_path / "a", resumed)
    (resumed / "lora.safetensors").unlink()
    shutil.rmtree(resumed / "checkpoints" / "step-000003")  # as if killed after step 2
    messages: list[str] = []
    train(config.model_copy(update={"out": str(resumed), "resume": True}), say=messages.append)
    assert any("resumed from step-000002" in m for m in messages), messages
    first, second = load_file(str(tmp_path / "a" / "lora.safetensors")), load_file(str(resumed / "lora.safetensors"))
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
    assert any(f".{'hada_w1_a' if network == 'loha' else 'dora_scale'}" in k for k in first)
