"""Speed levers shared by generation and training: regional compilation, its cache, SDPA backend, channels_last.

Nothing here changes what a model computes beyond rounding; each helper does one thing
and says what it did, so callers can report the levers they used. Measured on an H100
in ``bench/gpu_story.py`` and ``bench/gpu_train.py`` (see ``bench/RESULTS.md``).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Regional compilation: the blocks that repeat in a UNet. Compiling them one by one gives most of
# a whole-model compile's speed at a fraction of its warm-up, and one compiled graph serves every
# block of the same shape.
TRANSFORMER_BLOCKS = ("BasicTransformerBlock",)
UNET_REGIONS = ("BasicTransformerBlock", "ResnetBlock2D")

SDPA_BACKENDS = ("flash", "cudnn", "efficient", "math")
# What Flux trains on: every backend but cuDNN's, whose fused attention backward fails on its joint attention at
# 1024² (see ``Family.training_attention``). Qwen-Image's runs with cuDNN's at full size, and 13 % faster for it
# (H200, 2026-12-02: 0.983 vs 0.859 img/s), so it keeps torch's choice.
FLUX_TRAINING_ATTENTION = ("flash", "efficient", "math")
# Seconds a compiled UNet saves per image-step per megapixel (Kolors at 1024² on an H100: 35.4 -> 30.4 ms, eager with
# fused q/k/v against compiled blocks): what ``--compile auto`` weighs for a story where a family has no figure of its own.
UNET_COMPILE_STEP_SAVING = 0.005


@dataclass(frozen=True)
class CompileChoice:
    """What a run compiles (training: ``off``, ``blocks``, ``cudagraphs``; a story: ``off``, ``on``) and why, for the log."""

    mode: str
    reason: str

    @property
    def compiles(self) -> bool:
        return self.mode != "off"

    def __str__(self) -> str:
        return f"compile: {self.mode} ({self.reason})"


def compile_cache_dir() -> Path:
    """Where TorchInductor keeps compiled kernels between runs (set ``TORCHINDUCTOR_CACHE_DIR`` to move it)."""
    folder = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if folder:
        return Path(folder)
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "lorastory" / "torchinductor"


def compile_cache_has_kernels() -> bool:
    """Whether the kernel cache folder holds anything: a compile then reads kernels instead of building them."""
    folder = compile_cache_dir()
    return folder.is_dir() and any(folder.iterdir())


def use_compile_cache() -> Path:
    """Keep compiled kernels in a lasting folder, so the next run's warm-up reads them instead of compiling.

    Torch's own default is a folder under /tmp that a reboot empties. A folder the user set wins.
    """
    folder = compile_cache_dir()
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(folder))
    return folder


def compile_regions(
    model: Any,
    classes: Iterable[str] = UNET_REGIONS,
    *,
    fullgraph: bool = False,
    dynamic: bool | None = False,
    mode: str | None = None,
) -> int:
    """``torch.compile`` every submodule of ``model`` whose class name is in ``classes``; return how many.

    Parameter names and the state dict stay as they were (``nn.Module.compile`` compiles in place).
    Already compiled modules are left alone, so calling this twice is harmless. ``dynamic=False``
    compiles each block shape (UNet level, batch size) as its own static graph: more graphs to build
    on the first run, read from the kernel cache after that, and no dynamic-shape kernels.
    """
    import torch

    use_compile_cache()
    # Blocks come in many shapes (one per UNet level and batch size, train and eval) and all compiled
    # modules share Module._call_impl's code object: past the limit torch would silently run them eagerly.
    dynamo = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit", "accumulated_recompile_limit", "accumulated_cache_size_limit"):
        if hasattr(dynamo, name):
            setattr(dynamo, name, max(getattr(dynamo, name), 1024))
    wanted = set(classes)
    count = 0
    for module in model.modules():
        if type(module).__name__ in wanted and getattr(module, "_compiled_call_impl", None) is None:
            module.compile(fullgraph=fullgraph, dynamic=dynamic, mode=mode)
            count += 1
    return count


def repeated_blocks(model: Any) -> tuple[str, ...]:
    """The block classes diffusers names for regional compilation (``_repeated_blocks``: a DiT's double and single
    blocks); :func:`compile_regions` compiles them as ``compile_repeated_blocks`` would, with the kernel cache."""
    return tuple(getattr(model, "_repeated_blocks", None) or ())


def uncompile_regions(model: Any) -> int:
    """Undo :func:`compile_regions` (the modules run eagerly again); return how many were compiled."""
    count = 0
    for module in model.modules():
        if getattr(module, "_compiled_call_impl", None) is not None:
            module._compiled_call_impl = None
            count += 1
    return count


def to_channels_last(*models: Any) -> int:
    """Store the 4-D weights of ``models`` as NHWC, the layout cuDNN's fast bf16 convolutions use."""
    import torch

    count = 0
    for model in models:
        if model is not None:
            model.to(memory_format=torch.channels_last)
            count += 1
    return count


def _sdpa_backends(names: Iterable[str]) -> list[Any]:
    """torch's ``SDPBackend`` members for our names (``SDPA_BACKENDS``)."""
    from torch.nn.attention import SDPBackend

    every = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION,
             "efficient": SDPBackend.EFFICIENT_ATTENTION, "math": SDPBackend.MATH}
    unknown = [name for name in names if name not in every]
    if unknown:
        raise ValueError(f"unknown SDPA backend '{unknown[0]}'; choose one of {', '.join(SDPA_BACKENDS)}")
    return [every[name] for name in names]


@contextlib.contextmanager
def sdpa_backend(name: str | None) -> Iterator[None]:
    """Prefer one scaled-dot-product-attention backend, falling back to the others where it cannot run.

    ``None`` leaves torch's own choice. The VAE's single 512-wide head, for one, runs on no flash kernel.
    """
    if name is None:
        yield
        return
    from torch.nn.attention import sdpa_kernel

    order = _sdpa_backends([name, *(other for other in SDPA_BACKENDS if other != name)])
    with sdpa_kernel(order, set_priority=True):
        yield


@contextlib.contextmanager
def sdpa_allowed(names: Iterable[str] | None) -> Iterator[None]:
    """Let scaled-dot-product attention use only the named backends, in torch's order; ``None``: any.

    Held across a training step's backward too: gradient checkpointing runs the attention forward
    again there, and picks its backend anew.
    """
    if names is None:
        yield
        return
    from torch.nn.attention import sdpa_kernel

    with sdpa_kernel(_sdpa_backends(list(names))):
        yield
