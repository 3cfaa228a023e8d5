"""Speed levers only the benchmarks use: the opt-in fp8 linear layers.

Moved out of ``lorastory.models.speed`` (issue 16): no command of lorastory turns them on, and
``bench/gpu_story.py --fp8`` measures them (``bench/RESULTS.md``). Import them the way the bench
scripts import ``_kolors_arch``, with ``bench/`` on ``sys.path``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from lorastory.models.speed import TRANSFORMER_BLOCKS


class Fp8Linear(torch.nn.Module):
    """A frozen linear layer in float8 (e4m3): the weight quantised once per output row, the input
    per token on the fly, one ``torch._scaled_mm`` in between (Hopper's fp8 tensor cores).

    Meant to run compiled, so that the input's quantisation fuses into the op before it.
    Inference only; on a CPU it computes the same quantised product with ordinary matmuls.
    """

    def __init__(self, linear: torch.nn.Linear) -> None:
        super().__init__()
        weight = linear.weight.detach().float()
        scale = weight.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / 448.0
        self.register_buffer("weight_fp8", (weight / scale).to(torch.float8_e4m3fn))
        self.register_buffer("weight_scale", scale.t().contiguous())  # [1, out]
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().clone())
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.out_dtype = linear.weight.dtype

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        x = input.reshape(-1, self.in_features).float()
        x_scale = x.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / 448.0
        x_fp8 = (x / x_scale).to(torch.float8_e4m3fn)
        if x.is_cuda:
            out = torch._scaled_mm(x_fp8, self.weight_fp8.t(), scale_a=x_scale, scale_b=self.weight_scale,
                                   out_dtype=self.out_dtype)
        else:
            out = ((x_fp8.float() * x_scale) @ (self.weight_fp8.float() * self.weight_scale.t()).t()).to(self.out_dtype)
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*input.shape[:-1], self.out_features)


def quantize_fp8(model: Any, classes: Iterable[str] = TRANSFORMER_BLOCKS) -> int:
    """Swap every ``nn.Linear`` inside the ``classes`` blocks of ``model`` for an fp8 one; return how many.

    Lossy (about 3 significant bits per value, scaled per row and per token): an opt-in mode whose
    image difference is reported separately. Fuse any LoRA first: LoRA layers are not quantised.
    """
    wanted = set(classes)
    count = 0
    for block in [m for m in model.modules() if type(m).__name__ in wanted]:
        for name, child in list(block.named_modules()):
            if type(child) is not torch.nn.Linear or child.in_features % 16 or child.out_features % 16:
                continue
            parent = block.get_submodule(name.rsplit(".", 1)[0]) if "." in name else block
            setattr(parent, name.rsplit(".", 1)[-1], Fp8Linear(child))
            count += 1
    return count


def apply_fp8(pipe: Any) -> int:
    """The fp8 mode on a pipeline prepared by ``prepare_for_speed``, as its old ``fp8=True`` did it.

    Call it after ``prepare_for_speed`` has fused the LoRA (LoRA layers are not quantised), then
    ``prepare_for_speed(..., compile=True)`` again to compile the new layers. Records the lever in
    the pipeline's speed report and drops compiled graphs, which assumed the old modules.
    """
    count = quantize_fp8(pipe.unet)
    report = getattr(pipe, "_lorastory_speed", None)
    if report is not None:
        report.levers.append("fp8")
        if report.compiled_modules:
            torch._dynamo.reset()
    return count
