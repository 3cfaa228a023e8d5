"""Faster LoRA training on a GPU: bf16 compute with fp32 master LoRA weights, fused LoRA q/k/v, compilation.

The diffusers example recipe keeps the LoRA parameters in fp32 and wraps the forward in autocast.
Autocast runs normalisations in fp32 and so turns the residual stream fp32 too: twice the
activation memory and traffic. Here the whole forward runs in bf16, as the frozen UNet is stored,
while the LoRA parameters (and the optimizer, gradient clipping, checkpoints and saved files)
stay fp32: each LoRA matmul casts its fp32 weight to bf16 on the way in, and the gradient comes
back to the fp32 weight. That is what autocast does for those matmuls, minus the fp32 detours.

Measured on an H100 (``bench/RESULTS.md``, 1024², rank 16): the recipe 13.4 img/s at batch 8 (64 GB)
and 7.6 at batch 4 (35 GB); bf16 compute + compiled transformer blocks 21.7 img/s at batch 8 (42 GB);
with the self-attention q/k/v and their LoRA fused (``lora_qkv``) 22.2; with each compiled block
replayed as a CUDA graph 22.4 at batch 8 and 19.5 at batch 4 (24 GB), where the CPU was the bound.
The frozen UNet alone, with no LoRA, trains at 25 img/s: the rest is the UNet's own kernels.
channels_last was slower and compiling the ResNet blocks too gained nothing, so both are off.
"""

from __future__ import annotations

import functools
import math
from typing import TYPE_CHECKING, Any

from lorastory.models.speed import (
    TRANSFORMER_BLOCKS, CompileChoice, compile_cache_has_kernels, compile_regions, to_channels_last,
)
from lorastory.train.lora_qkv import fuse_lora_qkv

if TYPE_CHECKING:
    import torch

# What ``compile: auto`` weighs (train run 3 on an H100, bench/RESULTS.md; 1024², fused q/k/v): the warm-up of one
# batch shape with a cold kernel cache (CUDA graphs 28-30 s, compiled blocks 12-17 s), the share of it left when the
# kernels are read from the cache instead (dynamo still traces every block; an estimate), and the seconds a compiled
# step saves over an eager one, as fixed + per image-megapixel (batch 8: 548 -> 357 ms with graphs, 367 ms blocks;
# batch 4: 360 -> 205 ms with graphs, 297 ms blocks).
COMPILE_SECONDS = {"cudagraphs": 30.0, "blocks": 15.0}
WARM_CACHE_SHARE = 0.35
STEP_SAVING = {"cudagraphs": (0.12, 0.009), "blocks": (0.0, 0.022)}
# An fp8 base with fp8 matmuls (torchao's float8 training layers) under torch.compile: on an H200 the first
# compiled step had not come after 4 minutes (bench/RESULTS.md, 2026-12-02), so ``auto`` leaves it eager.
FP8_COMPILE_NOTE = "compiling fp8 training layers took over 4 minutes without finishing on an H200"
# Kept for callers of the old rule of thumb: a cold compile of batch 8 at 1024² pays from about this many steps.
COMPILE_MIN_STEPS = 200


@functools.cache
def cast_linear() -> type:
    """The ``CastLinear`` class, made on first use so that importing this module does not import torch."""
    import torch
    import torch.nn.functional as F

    class CastLinear(torch.nn.Linear):
        """An ``nn.Linear`` that computes in its input's dtype: fp32 master weight, bf16 matmul."""

        def forward(self, input: torch.Tensor) -> torch.Tensor:
            bias = None if self.bias is None else self.bias.to(input.dtype)
            return F.linear(input, self.weight.to(input.dtype), bias)

    return CastLinear


def _peft_layers(model: Any) -> list[Any]:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [m for m in model.modules() if isinstance(m, BaseTunerLayer)]


def lora_compute_in_input_dtype(*models: Any) -> int:
    """Make every LoRA layer of ``models`` compute in the dtype of its input; return how many layers.

    peft would otherwise cast the (bf16) input up to the (fp32) LoRA weight's dtype. Parameter
    names, dtypes and the state dict are unchanged: only the ``lora_A``/``lora_B`` linears' class
    changes to ``CastLinear`` (:func:`cast_linear`).
    """
    import torch

    count = 0
    for model in models:
        if model is None:
            continue
        for layer in _peft_layers(model):
            layer.cast_input_dtype_enabled = False
            for name in ("lora_A", "lora_B"):
                for linear in getattr(layer, name, {}).values():
                    if type(linear) is torch.nn.Linear:
                        linear.__class__ = cast_linear()
            count += 1
    return count


def _estimate(mode: str, images: int, megapixels: float, shapes: int, cache_warm: bool) -> tuple[float, float]:
    """Seconds of compiling up front and seconds saved per step by ``mode`` (estimates; see the constants)."""
    per_shape = COMPILE_SECONDS[mode] * (WARM_CACHE_SHARE if cache_warm else 1.0)
    fixed, per_image = STEP_SAVING[mode]
    return per_shape * max(1, shapes), fixed + per_image * images * megapixels


def compile_choice(setting: str, device: torch.device, total_steps: int, processes: int = 1,
                   gradient_checkpointing: bool = False, *, images_per_step: int = 8, megapixels: float = 1.0,
                   shapes: int = 1, cache_warm: bool | None = None, base_dtype: str = "default") -> CompileChoice:
    """The compile mode a run uses (``setting`` as in ``TrainConfig``), with the reason said in the log.

    ``auto`` compiles on CUDA when the estimated time saved over the run's ``total_steps`` (of
    ``images_per_step`` pictures of ``megapixels`` each) beats the estimated compile time of its
    ``shapes`` distinct batch shapes (buckets), which is lower with a kernel cache already filled
    (``cache_warm``, default: whether the cache folder holds anything). CUDA graphs for one process
    without gradient checkpointing, plain compiled blocks otherwise. Several processes get plain
    compiled blocks even when CUDA graphs are asked for: DDP's gradient hooks under replayed graphs
    are not tested here. ``TrainConfig`` refuses CUDA graphs with gradient checkpointing. An fp8 base with fp8
    matmuls (``base_dtype`` "fp8") stays eager under ``auto`` (:data:`FP8_COMPILE_NOTE`).
    """
    if device.type != "cuda":
        return CompileChoice("off", "not on a CUDA GPU")
    if base_dtype == "fp8" and setting != "off":
        if setting == "auto":
            return CompileChoice("off", f"auto: fp8 base; {FP8_COMPILE_NOTE}; --compile blocks compiles anyway")
        mode = "blocks" if setting == "cudagraphs" and processes > 1 else setting
        return CompileChoice(mode, f"as set; note: {FP8_COMPILE_NOTE}")
    if setting == "auto":
        mode = "blocks" if gradient_checkpointing or processes > 1 else "cudagraphs"
        warm = compile_cache_has_kernels() if cache_warm is None else cache_warm
        cost, saving = _estimate(mode, images_per_step, megapixels, shapes, warm)
        pays_from = math.ceil(cost / saving)
        cache = "kernel cache warm" if warm else "kernel cache cold"
        summary = (f"{total_steps} steps save about {saving * total_steps:.0f} s for about {cost:.0f} s of compiling "
                   f"({shapes} batch shape(s), {cache}); it pays from about {pays_from} steps")
        if total_steps < pays_from:
            return CompileChoice("off", f"auto: {summary}; --compile {mode} compiles anyway, for the steady-state speed")
        return CompileChoice(mode, f"auto: {summary}")
    if setting == "cudagraphs" and processes > 1:
        return CompileChoice("blocks", "CUDA graphs are for one process; several get compiled blocks")
    return CompileChoice(setting, "as set")


def resolve_compile(setting: str, device: torch.device, total_steps: int, processes: int = 1,
                    gradient_checkpointing: bool = False) -> str:
    """The mode of :func:`compile_choice` for a run of batch 8 at 1024², one shape, cold kernel cache."""
    return compile_choice(setting, device, total_steps, processes, gradient_checkpointing, cache_warm=False).mode


def prepare_for_training(
    unet: Any,
    text_encoders: list[Any] | tuple[Any, ...] = (),
    *,
    compile: bool | str = False,
    channels_last: bool = False,
    compile_classes: tuple[str, ...] = TRANSFORMER_BLOCKS,
    fuse_qkv: bool = True,
) -> str:
    """Apply the training speed levers in place (after the LoRA is injected); return a line for the log.

    ``compile``: False/"off", True/"blocks", or "cudagraphs" (each compiled block replayed as a CUDA
    graph; the training loop then calls ``torch.compiler.cudagraph_mark_step_begin()`` before each forward).
    """
    done = [f"bf16 compute with fp32 LoRA weights ({lora_compute_in_input_dtype(unet, *text_encoders)} layers)"]
    if fuse_qkv:
        done.append(f"fused LoRA q/k/v in {fuse_lora_qkv(unet)} self-attention layers")
    if channels_last:
        to_channels_last(unet)
        done.append("channels_last")
    mode = ("blocks" if compile else "off") if isinstance(compile, bool) else compile
    if mode == "cudagraphs":
        count = compile_regions(unet, compile_classes, mode="reduce-overhead")
        done.append(f"compiled {count} blocks as CUDA graphs (warm-up at the first steps)")
    elif mode == "blocks":
        done.append(f"compiled {compile_regions(unet, compile_classes)} blocks (warm-up at the first steps)")
    return "speed: " + ", ".join(done)
