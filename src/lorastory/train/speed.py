"""Faster LoRA training on a GPU: bf16 compute with fp32 master LoRA weights and regional compilation.

The diffusers example recipe keeps the LoRA parameters in fp32 and wraps the forward in autocast.
Autocast runs normalisations in fp32 and so turns the residual stream fp32 too: twice the
activation memory and traffic. Here the whole forward runs in bf16, as the frozen UNet is stored,
while the LoRA parameters (and the optimizer, gradient clipping, checkpoints and saved files)
stay fp32: each LoRA matmul casts its fp32 weight to bf16 on the way in, and the gradient comes
back to the fp32 weight. That is what autocast does for those matmuls, minus the fp32 detours.

Measured on an H100 (``bench/RESULTS.md``, 1024², rank 16, batch 8): the recipe 13-15 img/s at
64 GB; bf16 compute 1.12-1.17x at 48 GB; plus compiled transformer blocks 1.66x (21.6 img/s, 42 GB,
16 s warm-up). channels_last was slower and compiling the ResNet blocks too gained nothing, so both
are off by default. Loss curves match the recipe's to 0.15 % over 20 steps.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from lorastory.models.speed import TRANSFORMER_BLOCKS, compile_regions, to_channels_last

# Below this many optimizer steps a compile's warm-up (20-60 s) costs more than it saves.
COMPILE_MIN_STEPS = 200


class CastLinear(torch.nn.Linear):
    """An ``nn.Linear`` that computes in its input's dtype: fp32 master weight, bf16 matmul."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.to(input.dtype)
        return F.linear(input, self.weight.to(input.dtype), bias)


def _peft_layers(model: Any) -> list[Any]:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [m for m in model.modules() if isinstance(m, BaseTunerLayer)]


def lora_compute_in_input_dtype(*models: Any) -> int:
    """Make every LoRA layer of ``models`` compute in the dtype of its input; return how many layers.

    peft would otherwise cast the (bf16) input up to the (fp32) LoRA weight's dtype. Parameter
    names, dtypes and the state dict are unchanged: only the ``lora_A``/``lora_B`` linears' class
    changes to :class:`CastLinear`.
    """
    count = 0
    for model in models:
        if model is None:
            continue
        for layer in _peft_layers(model):
            layer.cast_input_dtype_enabled = False
            for name in ("lora_A", "lora_B"):
                for linear in getattr(layer, name, {}).values():
                    if type(linear) is torch.nn.Linear:
                        linear.__class__ = CastLinear
            count += 1
    return count


def auto_compile(device: torch.device, total_steps: int) -> bool:
    return device.type == "cuda" and total_steps >= COMPILE_MIN_STEPS


def prepare_for_training(
    unet: Any,
    text_encoders: list[Any] | tuple[Any, ...] = (),
    *,
    compile: bool = False,
    channels_last: bool = False,
    compile_classes: tuple[str, ...] = TRANSFORMER_BLOCKS,
) -> str:
    """Apply the training speed levers in place (after the LoRA is injected); return a line for the log."""
    done = [f"bf16 compute with fp32 LoRA weights ({lora_compute_in_input_dtype(unet, *text_encoders)} layers)"]
    if channels_last:
        to_channels_last(unet)
        done.append("channels_last")
    if compile:
        done.append(f"compiled {compile_regions(unet, compile_classes)} blocks (warm-up at the first steps)")
    return "speed: " + ", ".join(done)
