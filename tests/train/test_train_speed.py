"""bf16 compute with fp32 LoRA weights: same parameters and names, fp32 gradients, outputs within bf16 rounding."""

from __future__ import annotations

import pytest
import torch

from lorastory.train.speed import cast_linear, lora_compute_in_input_dtype, prepare_for_training, resolve_compile


def _forward(unet, device="cpu"):
    g = torch.Generator().manual_seed(1)
    hidden = unet.config.encoder_hid_dim
    sample = torch.randn(2, 4, 8, 8, generator=g).to(device, torch.bfloat16)
    text = torch.randn(2, 8, hidden, generator=g).to(device, torch.bfloat16)
    pooled = torch.randn(2, hidden, generator=g).to(device, torch.bfloat16)
    time_ids = torch.tensor([[64, 64, 0, 0, 64, 64]] * 2, dtype=torch.bfloat16, device=device)
    return unet(sample, torch.tensor([10, 500], device=device), encoder_hidden_states=text,
                added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids}).sample


def test_lora_computes_in_bf16_with_fp32_weights_and_gradients(bf16_unet_with_lora):
    unet, params = bf16_unet_with_lora
    names = list(unet.state_dict())
    reference = _forward(unet).float()  # peft's own way: the LoRA branch in fp32
    assert lora_compute_in_input_dtype(unet) > 0
    assert list(unet.state_dict()) == names
    assert all(p.dtype == torch.float32 and p.requires_grad for p in params)
    assert any(type(m) is cast_linear() for m in unet.modules())
    out = _forward(unet)
    assert out.dtype == torch.bfloat16
    error = (out.float() - reference).norm() / reference.norm()
    assert error < 2e-2
    out.float().square().mean().backward()
    grads = [p.grad for p in params]
    assert all(g is not None and g.dtype == torch.float32 for g in grads)
    assert sum(g.abs().sum().item() for g in grads) > 0
    assert lora_compute_in_input_dtype(unet) == len([m for m in unet.modules() if hasattr(m, "cast_input_dtype_enabled")])


def test_prepare_for_training_reports_its_levers(bf16_unet_with_lora):
    unet, _ = bf16_unet_with_lora
    line = prepare_for_training(unet, compile=False)
    assert line.startswith("speed: bf16 compute with fp32 LoRA weights") and "channels_last" not in line
    assert "fused LoRA q/k/v in " in line and "fused LoRA q/k/v in 0 " not in line
    assert "compiled" not in line


def test_compile_auto_picks_by_device_length_processes_and_checkpointing():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_compile("auto", cpu, 10_000) == "off"
    assert resolve_compile("cudagraphs", cpu, 10_000) == "off"  # nothing to compile on the CPU
    assert resolve_compile("auto", cuda, 20) == "off"  # too short to repay the warm-up
    assert resolve_compile("auto", cuda, 1000) == "cudagraphs"
    assert resolve_compile("auto", cuda, 1000, processes=2) == "blocks"
    assert resolve_compile("auto", cuda, 1000, gradient_checkpointing=True) == "blocks"
    assert resolve_compile("blocks", cuda, 20) == "blocks"
    assert resolve_compile("cudagraphs", cuda, 20) == "cudagraphs"
    assert resolve_compile("cudagraphs", cuda, 1000, processes=4) == "blocks"  # graphs are for one process


def test_compile_setting_reads_old_booleans_and_refuses_cudagraphs_with_checkpointing():
    from lorastory.errors import ConfigError
    from lorastory.train.config import TrainConfig

    modes = {value: TrainConfig.from_dict({"model": "m", "data": "d", "out": "o", "compile": value}, source="t").compile
             for value in (None, True, False, "on")}
    assert modes == {None: "auto", True: "blocks", False: "off", "on": "blocks"}
    with pytest.raises(ConfigError, match="cudagraphs does not combine with gradient_checkpointing"):
        TrainConfig.from_dict({"model": "m", "data": "d", "out": "o", "compile": "cudagraphs"}, source="t")
    with pytest.raises(ConfigError, match="compile"):
        TrainConfig.from_dict({"model": "m", "data": "d", "out": "o", "compile": "fast"}, source="t")


def test_fast_and_compile_do_not_change_the_fingerprint():
    from lorastory.train.config import TrainConfig

    base = TrainConfig(model="m", data="d", out="o")
    assert base.fast is True and base.compile == "auto"
    assert TrainConfig(model="m", data="d", out="o", fast=False, compile="blocks").fingerprint() == base.fingerprint()


@pytest.mark.gpu
def test_compiled_bf16_compute_trains_on_cuda(bf16_unet_with_lora):
    unet, params = bf16_unet_with_lora
    unet.to("cuda")
    unet.train()
    reference = _forward(unet, "cuda").float()
    line = prepare_for_training(unet, compile=True)
    assert "compiled" in line
    for _ in range(2):  # the second call runs the compiled graphs
        out = _forward(unet, "cuda")
        loss = out.float().square().mean()
        loss.backward()
    assert ((out.float() - reference).norm() / reference.norm()).item() < 2e-2
    assert all(p.grad is not None and p.grad.dtype == torch.float32 and p.device.type == "cuda" for p in params)


@pytest.mark.gpu
@pytest.mark.parametrize("fast", [True, False])
def test_train_on_cuda_fast_path_matches_autocast(tmp_path, tiny_model_path, style_train_folder, fast):
    import math

    from lorastory.train.config import TrainConfig
    from lorastory.train.trainer import train

    lines: list[str] = []
    config = TrainConfig(model=str(tiny_model_path("kolors")), data=str(style_train_folder), out=str(tmp_path / "run"),
                         resolution=64, rank=4, alpha=4.0, lr=1e-3, max_steps=6, batch_size=2, seed=3,
                         gradient_checkpointing=False, precision="bf16", fast=fast, compile=fast)
    result = train(config, say=lines.append)
    speed = [line for line in lines if line.startswith("speed:")]
    assert bool(speed) == fast and (not fast or "compiled" in speed[0])
    assert result.steps == 6 and all(math.isfinite(x) for x in result.losses)
    assert (tmp_path / "run" / "lora.safetensors").is_file()
    (tmp_path.parent / f"losses-{fast}.txt").write_text(" ".join(f"{x:.6f}" for x in result.losses))
    other = tmp_path.parent / f"losses-{not fast}.txt"
    if other.is_file():  # the second of the two runs: same data, same seeds, curves within bf16 rounding
        mine, theirs = result.losses, [float(x) for x in other.read_text().split()]
        assert max(abs(a - b) / abs(b) for a, b in zip(mine, theirs)) < 0.02


@pytest.mark.gpu
def test_train_on_cuda_with_cuda_graphs_samples_and_matches_blocks(tmp_path, tiny_model_path, style_train_folder):
    import math

    from lorastory.train.config import TrainConfig
    from lorastory.train.trainer import train

    losses = {}
    for mode in ("blocks", "cudagraphs"):
        lines: list[str] = []
        out = tmp_path / mode
        config = TrainConfig(model=str(tiny_model_path("kolors")), data=str(style_train_folder), out=str(out),
                             resolution=64, rank=4, alpha=4.0, lr=1e-3, max_steps=6, batch_size=2, seed=3,
                             gradient_checkpointing=False, precision="bf16", compile=mode,
                             validation_prompts=["a girl"], validation_every=3, validation_steps=4)
        result = train(config, say=lines.append)
        speed = next(line for line in lines if line.startswith("speed:"))
        assert ("CUDA graphs" in speed) == (mode == "cudagraphs") and "fused LoRA q/k/v" in speed
        assert result.steps == 6 and all(math.isfinite(x) for x in result.losses)
        assert len(list((out / "samples").glob("*.png"))) == 2
        losses[mode] = result.losses
    assert max(abs(a - b) / abs(b) for a, b in zip(losses["cudagraphs"], losses["blocks"])) < 0.02


@pytest.mark.parametrize("name", ["train_kolors_style.yaml", "train_kolors_fast.yaml", "train_kolors_24gb.yaml", "train_kolors_12gb.yaml",
                                  "train_kolors_character.yaml"])
def test_shipped_training_presets_load(name):
    from importlib import resources

    from lorastory.config import read_yaml
    from lorastory.train.config import TrainConfig

    path = resources.files("lorastory") / "examples" / name
    config = TrainConfig.from_dict(read_yaml(path), source=name)
    assert config.lora.rank == 16 and config.resolution == 1024
    if name != "train_kolors_style.yaml":
        assert resolve_compile(config.compile, torch.device("cuda"), 1000, 1, config.gradient_checkpointing) == (
            "blocks" if config.gradient_checkpointing else "cudagraphs")
