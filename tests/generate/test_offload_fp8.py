"""``--offload --base-dtype fp8-weights`` (the 12 GB preset's story): speed setup leaves nothing on the GPU.

On an H200 capped at 12 GiB the story ran out of memory in speed setup (issue 21): torchao's ``device``
argument moved the whole UNet and ChatGLM3-6B onto the GPU while converting them, before the offload
hooks took over. Here the real-size Kolors (UNet 2.58 B, ChatGLM3-6B, the SDXL VAE) is built on the meta
device, a stand-in for torchao converts each Linear as torchao 0.18 does (its ``device`` argument moves every
module it walks through; its fp8 conversion holds about 14 bytes per weight of temporaries: the bf16 ``abs``,
an fp32 copy, the scaled and the clamped fp32, the fp8 result), and the GPU is a ledger of ``.to()`` calls:
no byte moves, so it runs on a CPU in seconds.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest
import torch

from lorastory.generate.speed import PANEL_BYTES_PER_MEGAPIXEL, prepare_for_speed
from lorastory.models.fp8 import quantize_base

CAP = 12 * 2**30  # the 12 GB preset's cap (bench/mem12gb.py)
TEMPORARY_BYTES_PER_WEIGHT = 14


def _bytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


class Ledger:
    """What ``.to("cuda")`` would have put on the GPU, and the most it held (conversion temporaries included)."""

    def __init__(self) -> None:
        self.on_gpu = 0
        self.peak = 0

    def place(self, tensor: torch.Tensor, on_gpu: bool) -> None:
        if getattr(tensor, "_on_gpu", False) != on_gpu:
            self.on_gpu += _bytes(tensor) if on_gpu else -_bytes(tensor)
            tensor._on_gpu = on_gpu
        self.peak = max(self.peak, self.on_gpu)

    def convert(self, layer: torch.nn.Module) -> torch.nn.Module:
        weight = layer.weight
        on_gpu = getattr(weight, "_on_gpu", False)
        if on_gpu:
            self.peak = max(self.peak, self.on_gpu + TEMPORARY_BYTES_PER_WEIGHT * weight.numel())
        stored = torch.nn.Parameter(torch.empty_like(weight, dtype=torch.float8_e4m3fn), requires_grad=False)
        self.place(weight, False)
        layer.weight = stored
        self.place(stored, on_gpu)
        return layer


@pytest.fixture
def ledger(monkeypatch):
    """A GPU that is a ledger: ``Module.to(cuda)`` marks tensors, and a torchao whose ``quantize_`` converts into it."""
    # Imported before the stand-in: diffusers and peft look for torchao when their modules load.
    from diffusers import AutoencoderKL, KolorsPipeline, UNet2DConditionModel  # noqa: F401
    from peft.tuners.tuners_utils import BaseTunerLayer  # noqa: F401

    book = Ledger()
    real_to = torch.nn.Module.to

    def to(module, *args, **kwargs):
        device = kwargs.get("device", args[0] if args and isinstance(args[0], (str, torch.device)) else None)
        if device is None:
            return real_to(module, *args, **kwargs)
        for tensor in [*module.parameters(), *module.buffers()]:
            book.place(tensor, torch.device(device).type == "cuda")
        return module

    def walk(model, filter_fn, fqn, device):  # torchao 0.18's _replace_with_custom_fn_if_matches_filter
        if filter_fn(model, fqn[:-1]):
            if device is not None:
                model.to(device=device)
            return book.convert(model)
        for name, child in list(model.named_children()):
            walk(child, filter_fn, f"{fqn}{name}.", device)
        if device is not None:
            model.to(device=device)
        return model

    def quantize_(model, config, filter_fn=None, device=None):
        walk(model, filter_fn or (lambda module, fqn: isinstance(module, torch.nn.Linear)), "", device)

    quantization = types.ModuleType("torchao.quantization")
    quantization.quantize_ = quantize_
    quantization.PerRow = lambda: "row"
    quantization.Float8WeightOnlyConfig = quantization.Float8DynamicActivationFloat8WeightConfig = dict
    torchao = types.ModuleType("torchao")
    torchao.quantization = quantization
    monkeypatch.setitem(sys.modules, "torchao", torchao)
    monkeypatch.setitem(sys.modules, "torchao.quantization", quantization)
    monkeypatch.setattr(torch.nn.Module, "to", to)
    return book


def _real_size_kolors(monkeypatch):
    """KolorsPipeline of the published sizes (bench/_kolors_arch.py, bench/_folders.py) on the meta device, bf16."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, KolorsPipeline, UNet2DConditionModel
    from diffusers.pipelines.kolors import ChatGLMModel
    from diffusers.pipelines.kolors.text_encoder import ChatGLMConfig

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[2] / "bench"))
    from _folders import CHATGLM3_6B
    from _kolors_arch import KOLORS_UNET, SDXL_VAE

    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device("meta"):
            unet, vae = UNet2DConditionModel(**KOLORS_UNET), AutoencoderKL(**SDXL_VAE)
            text_encoder = ChatGLMModel(ChatGLMConfig(**CHATGLM3_6B), empty_init=True)
    finally:
        torch.set_default_dtype(previous)
    return KolorsPipeline(vae=vae, text_encoder=text_encoder, tokenizer=None, unet=unet,
                          scheduler=EulerDiscreteScheduler())


def _model_bytes(model: torch.nn.Module) -> int:
    return sum(_bytes(t) for t in [*model.parameters(), *model.buffers()])


@pytest.mark.slow
def test_offloaded_fp8_setup_converts_one_layer_at_a_time_and_leaves_the_gpu_empty(ledger, monkeypatch):
    pipe = _real_size_kolors(monkeypatch)
    largest = max((m for m in pipe.text_encoder.modules() if isinstance(m, torch.nn.Linear)),
                  key=lambda m: m.weight.numel())
    one_layer = _bytes(largest.weight) + TEMPORARY_BYTES_PER_WEIGHT * largest.weight.numel()

    report = prepare_for_speed(pipe, compile=False, base_dtype="fp8-weights", device=torch.device("cuda"),
                               offload=True)

    assert "text encoder: 113 Linear layers stored in float8 e4m3" in report.levers
    assert "fused QKV" in report.skipped  # a second copy of the attention weights on every move to the GPU
    assert ledger.on_gpu == 0  # the offload hooks find every model on the CPU
    assert ledger.peak <= one_layer  # ChatGLM's output layer and its conversion: 4.3 GB (before the fix: 14 GB)
    # What the hooks move at once fits the cap with the preset's batch of 2 panels at 1024² rendering beside it.
    unet, text_encoder = _model_bytes(pipe.unet), _model_bytes(pipe.text_encoder)
    assert unet + 2 * PANEL_BYTES_PER_MEGAPIXEL < CAP and text_encoder + one_layer < CAP


def test_a_model_converted_onto_the_gpu_costs_no_more_than_itself_on_the_way(ledger, monkeypatch):
    """The caption cache's ChatGLM3-6B (``lorastory train``, 12 GB preset): the largest layers convert first, while
    little else is there, so the conversion's temporaries never lift the peak above the converted model's size."""
    encoder = _real_size_kolors(monkeypatch).text_encoder

    assert quantize_base(encoder, "fp8-weights", whole=True, device="cuda") == 113

    assert ledger.on_gpu == _model_bytes(encoder)  # all of it there, converted (6.5 GB)
    assert ledger.peak <= ledger.on_gpu  # before the fix: 10.5 GB on the way (measured on the H200: 10.54)
