"""``--compile auto`` weighs the compile warm-up against the run's length and says why; compiled runs pad short batches."""

from __future__ import annotations

import math

import pytest
import torch

from lorastory.train.order import process_share
from lorastory.train.speed import compile_choice

CUDA = torch.device("cuda")


def test_auto_compiles_only_when_the_run_repays_the_warm_up_and_says_why():
    short = compile_choice("auto", CUDA, 20, cache_warm=False)
    assert short.mode == "off"
    assert str(short).startswith("compile: off (auto: 20 steps save about ") and "--compile cudagraphs" in str(short)
    pays_from = int(str(short).split("pays from about ")[1].split()[0])
    assert compile_choice("auto", CUDA, pays_from - 1, cache_warm=False).mode == "off"
    assert compile_choice("auto", CUDA, pays_from, cache_warm=False).mode == "cudagraphs"
    # A filled kernel cache makes the warm-up cheaper, so shorter runs compile; every bucket shape compiles anew.
    assert compile_choice("auto", CUDA, pays_from - 1, cache_warm=True).mode == "cudagraphs"
    assert compile_choice("auto", CUDA, pays_from, cache_warm=False, shapes=3).mode == "off"
    assert compile_choice("auto", CUDA, 2000, gradient_checkpointing=True, cache_warm=False).mode == "blocks"
    assert compile_choice("auto", CUDA, 2000, processes=2, cache_warm=False).mode == "blocks"
    assert str(compile_choice("blocks", CUDA, 5)) == "compile: blocks (as set)"
    assert str(compile_choice("cudagraphs", torch.device("cpu"), 5000)) == "compile: off (not on a CUDA GPU)"


def test_auto_leaves_an_fp8_base_eager_and_says_why():
    # A long run would compile in bf16, but torchao's fp8 training layers did not finish compiling in 4 minutes.
    assert compile_choice("auto", CUDA, 5000, cache_warm=True).mode == "cudagraphs"
    fp8 = compile_choice("auto", CUDA, 5000, cache_warm=True, base_dtype="fp8")
    assert fp8.mode == "off"
    assert str(fp8).startswith("compile: off (auto: fp8 base; compiling fp8 training layers took over 4 minutes")
    assert compile_choice("auto", CUDA, 5000, cache_warm=True, base_dtype="fp8-weights").mode == "cudagraphs"
    # Asked for, it compiles, with the warning in the log line.
    asked = compile_choice("blocks", CUDA, 50, base_dtype="fp8")
    assert asked.mode == "blocks" and "note: compiling fp8 training layers took over 4 minutes" in str(asked)
    assert compile_choice("cudagraphs", CUDA, 50, processes=2, base_dtype="fp8").mode == "blocks"


def test_a_compiled_run_pads_a_short_batch_at_weight_zero():
    assert process_share([7, 3], 0, 1, 4, pad=True) == ([7, 3, 7, 7], [1.0, 1.0, 0.0, 0.0])
    assert process_share([7, 3], 0, 1, 4) == ([7, 3], [1.0, 1.0])  # eager runs take the short batch as it is
    assert process_share([7, 3, 5, 1], 0, 1, 4, pad=True) == ([7, 3, 5, 1], [1.0] * 4)


def test_train_says_its_compile_choice_and_trains_a_partial_batch_on_cpu(cli, tiny_model_path, style_train_folder,
                                                                         tmp_path):
    # 8 pictures at batch 3: the third step trains the short last batch of 2.
    result = cli("train", "--model", tiny_model_path("sd15"), "--data", style_train_folder, "--out", tmp_path / "run",
                 "--rank", "2", "--resolution", "64", "--batch-size", "3", "--max-steps", "3", "--compile", "auto",
                 "--no-gradient-checkpointing")
    assert result.code == 0, result.err
    assert "compile: off (the compiled fast path needs a CUDA GPU, bf16 and --fast)" in result.err
    assert "Trained 3 steps" in result.out and (tmp_path / "run" / "lora.safetensors").is_file()


@pytest.mark.gpu
def test_compiled_training_sees_only_full_batches_and_trains_as_eager(tmp_path, tiny_model_path, style_train_folder):
    from lorastory.train.config import TrainConfig
    from lorastory.train.trainer import train

    seen: list[int] = []

    def note_batch(module: torch.nn.Module, args: tuple) -> None:
        if type(module).__name__ == "UNet2DConditionModel":
            seen.append(args[0].shape[0])

    losses = {}
    for mode in ("off", "cudagraphs"):
        seen.clear()
        config = TrainConfig(model=str(tiny_model_path("kolors")), data=str(style_train_folder), out=str(tmp_path / mode),
                             resolution=64, rank=4, alpha=4.0, lr=1e-3, max_steps=6, batch_size=3, seed=3,
                             gradient_checkpointing=False, precision="bf16", compile=mode)
        handle = torch.nn.modules.module.register_module_forward_pre_hook(note_batch)
        try:
            result = train(config, say=lambda line: None)
        finally:
            handle.remove()
        assert result.steps == 6 and all(math.isfinite(x) for x in result.losses)
        assert sorted(seen) == ([2, 2, 3, 3, 3, 3] if mode == "off" else [3] * 6)  # 8 pictures: batches of 3, 3, 2
        losses[mode] = result.losses
    assert max(abs(a - b) / abs(b) for a, b in zip(losses["cudagraphs"], losses["off"])) < 0.02
