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
from typing import TYPE_CHECKING, Any

from lorastory.models.speed import TRANSFORMER_BLOCKS, compile_regions, to_channels_last
from lorastory.train.lora_qkv import fuse_lora_qkv

if TYPE_CHECKING:
    import torch

# Below this many optimizer steps a compile's warm-up (20-60 s) costs more than it saves.
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


def resolve_compile(setting: str, device: torch.device, total_steps: int, processes: int = 1,
                    gradient_checkpointing: bool = False) -> str:
    """The compile mode a run uses: ``off``, ``blocks`` or ``cudagraphs`` (``setting`` as in ``TrainConfig``).

    ``auto`` compiles on CUDA for runs of 200+ steps, with CUDA graphs for one process without
    gradient checkpointing. Several processes get plain compiled blocks even when CUDA graphs are
    asked for: DDP's gradient hooks under replayed graphs are not tested here (the speed line says
    which ran). ``TrainConfig`` refuses CUDA graphs with gradient checkpointing.
    """
    if device.type != "cuda":
        return "off"
    if setting == "auto":
        if total_steps < COMPILE_MIN_STEPS:
            return "off"
        setting = "blocks" if gradient_checkpointing else "cudagraphs"
    return "blocks" if setting == "cudagraphs" and processes > 1 else setting


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
