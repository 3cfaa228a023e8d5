"""What the DiT training benchmarks share (bench/flux_train.py, bench/qwen_image_train.py): the timed
LoRA training steps on a random transformer with a bf16 or fp8 base, and the command line.

A benchmark gives a :class:`DitKit`: how to build its family's transformer and pipeline, and the
cached text inputs of one batch; the loop, the fp8 base, the figures and the rows are the same for both.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from _kolors_arch import Recorder, environment, gb, peak_gb, reset_peak, sync

from lorastory.models.fp8 import check_base_dtype, check_selection, family_selection, quantize_base
from lorastory.models.lora import LoraSpec, inject_lora
from lorastory.models.objectives import FlowObjective, flow_shift
from lorastory.models.registry import get_family
from lorastory.models.speed import SDPA_BACKENDS, sdpa_allowed
from lorastory.train.speed import lora_compute_in_input_dtype


@dataclass(frozen=True)
class DitKit:
    """One DiT family's part of the benchmark."""

    family: str  # the registry's name: its LoRA targets and fp8 blocks
    label: str  # the rows' prefix ("train bf16 base" follows)
    transformer: Callable[[str, torch.dtype, bool], Any]  # (device, dtype, tiny) -> a random transformer
    pipeline: Callable[[Any], Any]  # transformer -> a pipeline around it (no text encoders, no VAE)
    predict: Callable[..., Any]  # the family's denoiser call for FlowObjective
    text: Callable[[argparse.Namespace, torch.Generator, str, torch.dtype], dict[str, Any]]  # one batch's cached text


def to_fp8(transformer: Any, base: str, device: str, family_name: str) -> int:
    """The library's fp8 base (what ``lorastory train --base-dtype`` does): torchao, on the family's blocks."""
    if device == "cuda":  # the CPU smoke test (--tiny) converts too: torchao's fp8-weights run there
        check_base_dtype(base, torch.device(device))
    family = get_family(family_name)
    return check_selection(quantize_base(transformer, base, training=True, **family_selection(family)), base, family)


def attention_backend(name: str | None, family: str) -> Any:
    """SDPA for the step: pinned to one backend (``--sdpa``), torch's own choice (``torch``: cuDNN's backward
    included, which fails on Flux at 1024²), or by default what ``lorastory train`` allows the family."""
    if name == "torch":
        return contextlib.nullcontext()
    return sdpa_allowed([name] if name else get_family(family).training_attention)


def train_steps(kit: DitKit, base: str, args: argparse.Namespace, device: str, dtype: torch.dtype) -> dict[str, Any]:
    reset_peak()
    transformer = kit.transformer(device, dtype, args.tiny)
    pipe = kit.pipeline(transformer)
    params = inject_lora(pipe, LoraSpec(rank=args.rank, alpha=args.rank).for_family(get_family(kit.family)))
    for p in params:
        p.data = p.data.float()
    quantised = to_fp8(transformer, base, device, kit.family) if base != "bf16" else 0
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
    weights_gb = gb(torch.cuda.memory_allocated()) if device == "cuda" else 0.0
    build_peak = peak_gb()  # the bf16 weights existed before quantising: a real loader would quantise while loading
    reset_peak()  # peak_gb below: training only
    if not args.autocast:  # lorastory train's path: bf16 compute, the fp32 LoRA weights cast per matmul, no autocast
        lora_compute_in_input_dtype(transformer)
    if args.checkpointing:
        transformer.enable_gradient_checkpointing()
    transformer.train()
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    objective = FlowObjective(kit.predict, flow_shift(pipe.scheduler.config))
    lat, g, times = args.size // 8, torch.Generator().manual_seed(0), []
    for step in range(args.warmup + args.steps):
        latents = torch.randn(args.batch, 16, lat, lat, generator=g)
        noise = torch.randn(latents.shape, generator=g)
        t = torch.stack([objective.draw_timestep(g, tuple(latents.shape[1:])) for _ in range(args.batch)])
        noisy, target = objective.noisy_and_target(latents, noise, t)
        text = kit.text(args, g, device, dtype)
        sync()
        started = time.perf_counter()
        with torch.autocast(device, dtype=dtype, enabled=device == "cuda" and args.autocast), attention_backend(args.sdpa, kit.family):
            pred = objective.predict(transformer, noisy.to(device, dtype), t.to(device), text, None, dtype)
            loss = torch.nn.functional.mse_loss(pred.float(), target.to(device).float())
            loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync()
        if step >= args.warmup:
            times.append(time.perf_counter() - started)
    result = {"base": base, "quantised_linears": quantised, "weights_gb": weights_gb, "build_peak_gb": build_peak,
              "peak_gb": peak_gb(), "s_per_step": round(sum(times) / len(times), 3),
              "images_per_s": round(args.batch * len(times) / sum(times), 3), "loss": round(loss.item(), 4),
              "lora_params_m": round(sum(p.numel() for p in params) / 1e6, 2)}
    del pipe, transformer, optimizer, params
    gc.collect()
    return result


def argument_parser(description: str) -> argparse.ArgumentParser:
    """The options both benchmarks take (a benchmark may add its own before parsing)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--steps", type=int, default=6, help="timed steps per base")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--bases", default="bf16,fp8-weights,fp8", help="comma-separated: bf16, fp8-weights, fp8")
    parser.add_argument("--no-checkpointing", dest="checkpointing", action="store_false",
                        help="train without gradient checkpointing (more memory; isolates the recompute)")
    parser.add_argument("--autocast", action="store_true",
                        help="the diffusers example's path (autocast around fp32 LoRA weights) instead of lorastory train's")
    parser.add_argument("--sdpa", choices=[*SDPA_BACKENDS, "torch"], default=None,
                        help="pin scaled_dot_product_attention to one backend, or 'torch' for PyTorch's own choice "
                             "(default: the backends lorastory train allows the family)")
    parser.add_argument("--tiny", action="store_true", help="tiny model on the CPU: a smoke test of this script")
    parser.add_argument("--json", default=None)
    return parser


def run(kit: DitKit, args: argparse.Namespace) -> int:
    """One row per base; a base that fails (e.g. no torchao, or its backward) leaves an error row and exit 1."""
    if args.tiny:
        args.size, args.steps, args.warmup = min(args.size, 64), min(args.steps, 2), 1
    device = "cuda" if torch.cuda.is_available() and not args.tiny else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    rec = Recorder(args.json, time.perf_counter())
    rec.set("environment", environment())
    rec.set("settings", vars(args))
    failed = False
    for base in args.bases.split(","):
        name = f"{kit.label}train {base} base"
        try:
            rec.row(name, **train_steps(kit, base, args, device, dtype))
        except Exception as err:  # one base failing leaves the others' rows
            traceback.print_exc()
            rec.row(name, error=f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")
            failed = True
            if "illegal memory access" in str(err):  # the CUDA context is lost: later bases cannot run here
                break
        if device == "cuda":
            torch.cuda.empty_cache()
    rec.set("seconds_total", round(rec.elapsed(), 1))
    return 1 if failed else 0
