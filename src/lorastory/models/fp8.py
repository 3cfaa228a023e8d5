"""The frozen base model's Linear layers in fp8, through torchao: less memory, and fp8 matmuls on Hopper/Ada.

Two modes besides ``default`` (the run's own precision, bf16 on a GPU):

- ``fp8``: weights stored in float8 e4m3 scaled per output row, each input quantised per row (token)
  on the fly, one fp8 matmul (torchao ``Float8DynamicActivationFloat8WeightConfig(PerRow)``). Needs
  compute capability 8.9+ (Ada, Hopper). Half the weight memory, and faster GEMMs where the
  quantisation of the input does not eat the gain (bench/RESULTS.md).
- ``fp8-weights``: weights stored in float8 e4m3 and turned back into bf16 for each matmul (torchao
  ``Float8WeightOnlyConfig``), as kohya's ``--fp8_base`` does: a memory saver for any CUDA GPU.

Only Linear layers whose rows are tokens are converted: those inside the transformer blocks
(a UNet's ``Transformer2DModel``: attention, feed-forward, proj_in/out; the blocks a family names
in ``Family.fp8_blocks``, e.g. Flux's double and single blocks) and a text encoder's, with both
sides a multiple of 16 (fp8 GEMMs refuse other shapes). The time and class embeddings, the
ResNet blocks' time projections and other layers that see one row per picture stay as they were:
their few rows give cuBLAS nothing to gain and failed in fp8 (``CUBLAS_STATUS_NOT_SUPPORTED`` on a
small embedding Linear, issue 21); so do the Linear layers under a family's ``Family.fp8_skip``
module names (a DiT's adaptive-norm modulation, ``norm1.linear``: one row per picture). A LoRA's own layers are never converted; for training they stay
fp32 and compute in bf16 (``lorastory.train.speed``), and the gradient flows through the frozen fp8
layers (:func:`frozen_linear`) in bf16, since torchao's inference tensors have no input gradient
and its fp8 training Linear computes a weight gradient a frozen base does not need.

torchao is imported only when a mode other than ``default`` is used: ``pip install 'lorastory[fp8]'``.
"""

from __future__ import annotations

import functools
from typing import Any, Literal

from lorastory.errors import ConfigError

BaseDtype = Literal["default", "fp8", "fp8-weights"]
BASE_DTYPES: tuple[str, ...] = ("default", "fp8", "fp8-weights")
# Modules whose Linear layers see one row per token (many per picture); text encoders' are taken whole.
TOKEN_MODULES = ("Transformer2DModel", "TransformerSpatioTemporalModel")
FP8_MULTIPLE = 16
FP8_MIN_CAPABILITY = (8, 9)


def fp8_layer_names(model: Any, whole: bool = False, blocks: tuple[str, ...] = TOKEN_MODULES,
                    skip: tuple[str, ...] = ()) -> list[str]:
    """The names of ``model``'s Linear layers that a base dtype other than ``default`` converts.

    Those inside modules of the classes ``blocks`` (or anywhere, with ``whole``: a text encoder), both
    sides a multiple of 16, not a LoRA's own layers (a peft layer's frozen ``base_layer`` is converted)
    and not under a module called one of ``skip`` (a name part: ``norm1`` skips ``norm1.linear``).
    """
    import torch

    inside: set[str] = set()
    if whole:
        inside.add("")
    else:
        inside.update(name for name, module in model.named_modules() if type(module).__name__ in blocks)
    names = []
    for name, module in model.named_modules():
        parts = name.split(".")
        if (not isinstance(module, torch.nn.Linear) or any(part.startswith("lora_") for part in parts)
                or any(part in skip for part in parts)):
            continue
        if module.in_features % FP8_MULTIPLE or module.out_features % FP8_MULTIPLE:
            continue
        if any(name == prefix or name.startswith(prefix + ".") or prefix == "" for prefix in inside):
            names.append(name)
    return names


def check_base_dtype(base_dtype: str, device: Any, flag: str = "--base-dtype") -> None:
    """Refuse, in one line, a base dtype this machine cannot run (before any model loads)."""
    if base_dtype == "default":
        return
    if base_dtype not in BASE_DTYPES:
        raise ConfigError(f"{flag} must be one of {', '.join(BASE_DTYPES)}, not '{base_dtype}'")
    kind = getattr(device, "type", str(device))
    if kind != "cuda":
        raise ConfigError(f"{flag} {base_dtype} needs a CUDA GPU (this run is on the {kind}); leave it at default")
    try:
        import torchao  # noqa: F401
    except ImportError:
        raise ConfigError(f"{flag} {base_dtype} needs torchao: pip install 'lorastory[fp8]'") from None
    if base_dtype == "fp8":
        import torch

        capability = torch.cuda.get_device_capability(device)
        if capability < FP8_MIN_CAPABILITY:
            raise ConfigError(f"{flag} fp8 needs fp8 matmuls (compute capability 8.9+: Ada, Hopper); this GPU is "
                              f"{capability[0]}.{capability[1]}: use {flag} fp8-weights")


def _config(base_dtype: str) -> Any:
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, Float8WeightOnlyConfig, PerRow

    # torchao would otherwise change inductor's global settings (coordinate-descent tuning: minutes of warm-up,
    # and slower training steps here; bench/RESULTS.md).
    if base_dtype == "fp8":
        return Float8DynamicActivationFloat8WeightConfig(granularity=PerRow(), set_inductor_config=False)
    return Float8WeightOnlyConfig(set_inductor_config=False)


def family_selection(family: Any) -> dict[str, tuple[str, ...]]:
    """The keyword arguments of :func:`fp8_layer_names` / :func:`quantize_base` for a family's denoiser
    (``Family.fp8_blocks`` and ``Family.fp8_skip``); the UNet default for ``None``."""
    if family is None:
        return {"blocks": TOKEN_MODULES, "skip": ()}
    return {"blocks": tuple(family.fp8_blocks), "skip": tuple(family.fp8_skip)}


def check_selection(count: int, base_dtype: str, family: Any, flag: str = "--base-dtype") -> int:
    """Refuse, in one line, a base dtype that converted nothing (the family names no fp8 blocks); return ``count``."""
    if base_dtype != "default" and count == 0:
        name = getattr(family, "display", "this model's")
        denoiser = getattr(family, "denoiser", "denoiser")
        raise ConfigError(f"{flag} {base_dtype}: no Linear layer of the {name} {denoiser} can be stored in fp8 "
                          f"(its blocks hold none whose sides are multiples of {FP8_MULTIPLE}); leave it at default")
    return count


def quantize_base(model: Any, base_dtype: str, *, training: bool = False, whole: bool = False,
                  device: Any = None, offloaded: bool = False, blocks: tuple[str, ...] = TOKEN_MODULES,
                  skip: tuple[str, ...] = (), exclude: set[str] | frozenset[str] = frozenset()) -> int:
    """Convert ``model``'s chosen Linear layers (:func:`fp8_layer_names`) in place; return how many.

    ``training``: the converted layers pass the gradient to their input (:func:`frozen_linear`).
    ``device``: each layer moves there just before it is converted (faster than on the CPU), the largest
    first, so the conversion's temporaries (torchao's fp32 copies: about 14 bytes per weight, 3.7 GB for
    ChatGLM3-6B's output layer) come while little else is there. Then the rest of the model follows (a model
    larger than the GPU in bf16, ChatGLM3-6B on 12 GB, arrives converted), unless ``offloaded``: each
    converted layer goes back where it was and the model stays there (a model kept on the CPU for
    offloading: one layer at a time on the GPU, never the model).
    ``blocks``/``skip``: which layers (:func:`fp8_layer_names`; a family's: :func:`family_selection`);
    ``exclude``: layer names left as they are besides (the separate q/k/v whose rows a fused layer holds).
    Call after a LoRA is injected (its layers are left alone) and before compiling.
    """
    if base_dtype == "default" or model is None:
        return 0
    from torchao.quantization import quantize_

    config = _config(base_dtype)
    names = [name for name in fp8_layer_names(model, whole=whole, blocks=blocks, skip=skip) if name not in exclude]
    layers = sorted((model.get_submodule(name) for name in names), key=lambda layer: -layer.weight.numel())
    for layer in layers:
        home = layer.weight.device
        if device is not None:
            layer.to(device)
        # The layer itself (not torchao's device argument: that moves every module it walks through).
        quantize_(layer, config, filter_fn=lambda module, fqn: fqn == "")
        if offloaded:
            layer.to(home)
        if training:
            layer.__class__ = frozen_linear()
    if device is not None and not offloaded:
        model.to(device)
    return len(layers)


@functools.cache
def frozen_linear() -> type:
    """The ``FrozenQuantLinear`` class (made on first use, so importing this module does not import torch)."""
    import torch
    import torch.nn.functional as F

    class FrozenLinearFunction(torch.autograd.Function):
        """``F.linear`` on a torchao weight, with the input's gradient from the dequantised weight in bf16."""

        @staticmethod
        def forward(ctx: Any, input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
            ctx.save_for_backward(weight)
            return F.linear(input, weight, bias)

        @staticmethod
        def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
            (weight,) = ctx.saved_tensors
            return grad.matmul(weight.dequantize().to(grad.dtype)), None, None

    class FrozenQuantLinear(torch.nn.Linear):
        """A frozen ``nn.Linear`` with a torchao fp8 weight that passes the gradient back to its input."""

        def forward(self, input: torch.Tensor) -> torch.Tensor:
            return FrozenLinearFunction.apply(input, self.weight, self.bias)

    return FrozenQuantLinear


def describe(base_dtype: str, count: int) -> str:
    """The log's words for what :func:`quantize_base` did."""
    how = "fp8 matmuls, inputs quantised per row" if base_dtype == "fp8" else "fp8 storage, bf16 matmuls"
    return f"base weights: {count} Linear layers in float8 e4m3 ({how}); the others as loaded"
