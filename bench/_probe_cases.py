"""The cases of bench/flux_backward_probe.py, in the order they run, with their expected seconds on an H200.

``cost`` orders the failing cases for the sanitizer (the cheapest one is rerun under memcheck); ``expected``
includes the child's start (torch, and diffusers for the model cases) and, for the full cases, building the
11.9 B-parameter transformer on the GPU.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from _probe_models import ContiguousGradRMSNorm, DecomposedRMSNorm, block_case, lorastory_step, plain_step
from _probe_ops import Setting, layernorm_case, rmsnorm_case, sdpa_case


@dataclass(frozen=True)
class Case:
    run: Callable[[Setting], dict[str, Any]]
    timeout: int  # seconds, at full size
    expected: int  # seconds, at full size, child start included
    cost: int  # rank for the sanitizer: lower is cheaper to rerun under memcheck
    about: str


def _block(kind: str, lora: bool, checkpoint: bool) -> Case:
    label = f"one {kind} block" + (", lorastory LoRA" if lora else "") + (", checkpointed" if checkpoint else "")
    return Case(partial(block_case, kind=kind, lora=lora, checkpoint=checkpoint), 60, 12, 20 + lora + 2 * checkpoint,
                label + ", forward+backward")


CASES: dict[str, Case] = {
    "full-lorastory": Case(lorastory_step, 100, 35, 40, "the control: bench/_dit_train.py bf16 path, one step"),
    "rmsnorm-contig": Case(partial(rmsnorm_case, layouts="contiguous"), 40, 6, 1,
                           "torch.nn.RMSNorm(128) at image/text/joint q-k shapes, contiguous"),
    "rmsnorm-strided": Case(partial(rmsnorm_case, layouts="strided"), 40, 6, 2,
                            "RMSNorm, qkv-chunk input, transposed / cat-sliced gradients"),
    "rmsnorm-autocast": Case(partial(rmsnorm_case, layouts="all", autocast=True), 40, 7, 3,
                             "RMSNorm, every layout, under torch.autocast bf16"),
    "layernorm": Case(layernorm_case, 40, 6, 4, "F.layer_norm(3072) without affine, sliced / transposed gradients"),
    **{f"sdpa-{b}": Case(partial(sdpa_case, backend=b), 40, 8, 5 + i, f"SDPA backward (1, 24, 4608, 128) bf16, {b} only")
       for i, b in enumerate(("flash", "efficient", "cudnn", "math"))},
    "block-double": _block("double", False, False),
    "block-single": _block("single", False, False),
    "block-double-lora": _block("double", True, False),
    "block-single-lora": _block("single", True, False),
    "block-double-lora-ckpt": _block("double", True, True),
    "block-single-lora-ckpt": _block("single", True, True),
    "full-decomposed-rmsnorm": Case(partial(lorastory_step, wrapper=DecomposedRMSNorm), 100, 35, 41,
                                    "the control with every RMSNorm written out in float32"),
    "full-plain-ckpt": Case(partial(plain_step, checkpointing=True), 100, 30, 30,
                            "diffusers alone (no LoRA, no lorastory), checkpointed; x_embedder trains"),
    "full-contiguous-grad": Case(partial(lorastory_step, wrapper=ContiguousGradRMSNorm), 100, 35, 42,
                                 "the control with the RMSNorms' incoming gradient made contiguous"),
    "full-plain": Case(partial(plain_step, checkpointing=False), 100, 30, 31,
                       "diffusers alone, not checkpointed (every block's activations kept)"),
}

GROUPS: dict[str, list[str]] = {
    "all": list(CASES),
    "rmsnorm-ops": ["rmsnorm-contig", "rmsnorm-strided", "rmsnorm-autocast", "layernorm"],
    "sdpa-bwd": [n for n in CASES if n.startswith("sdpa-")],
    "blocks": [n for n in CASES if n.startswith("block-")],
    "full": [n for n in CASES if n.startswith("full-")],
}


def run_case(name: str, setting: Setting) -> dict[str, Any]:
    return CASES[name].run(setting)
