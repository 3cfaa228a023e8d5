"""Real-size Kolors parts with random weights, for the GPU benchmarks (shared by gpu_story.py and gpu_train.py).

The UNet config is Kwai-Kolors/Kolors-diffusers' (2.58 B parameters, same FLOPs as the real model);
the VAE is the SDXL architecture. No ChatGLM is built: callers feed random prompt embeddings of the
shapes it produces ([B, 256, 4096] and pooled [B, 4096]). ``tiny=True`` gives small stand-ins so the
scripts can be smoke-tested on a CPU.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))

KOLORS_UNET: dict[str, Any] = {
    "sample_size": 128,
    "in_channels": 4,
    "out_channels": 4,
    "act_fn": "silu",
    "center_input_sample": False,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "norm_eps": 1e-5,
    "block_out_channels": (320, 640, 1280),
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "transformer_layers_per_block": (1, 2, 10),
    "attention_head_dim": (5, 10, 20),
    "cross_attention_dim": 2048,
    "encoder_hid_dim": 4096,
    "encoder_hid_dim_type": "text_proj",
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 5632,
    "use_linear_projection": True,
}
SDXL_VAE: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "block_out_channels": (128, 256, 512, 512),
    "layers_per_block": 2,
    "latent_channels": 4,
    "norm_num_groups": 32,
    "sample_size": 1024,
    "scaling_factor": 0.13025,
    "force_upcast": True,
}
TEXT_LEN, TEXT_HIDDEN = 256, 4096

TINY_UNET: dict[str, Any] = {
    **KOLORS_UNET,
    "sample_size": 16,
    "block_out_channels": (32, 64, 64),
    "layers_per_block": 1,
    "norm_num_groups": 16,
    "transformer_layers_per_block": (1, 1, 2),
    "attention_head_dim": (2, 2, 4),
    "cross_attention_dim": 32,
    "encoder_hid_dim": 48,
    "addition_time_embed_dim": 8,
    "projection_class_embeddings_input_dim": 48 + 6 * 8,
}
TINY_VAE: dict[str, Any] = {**SDXL_VAE, "block_out_channels": (8, 16, 16, 16), "layers_per_block": 1,
                            "norm_num_groups": 8, "sample_size": 128}


def text_shape(tiny: bool) -> tuple[int, int]:
    return (8, 48) if tiny else (TEXT_LEN, TEXT_HIDDEN)


def build_unet(device: str, dtype: torch.dtype, tiny: bool = False, seed: int = 0) -> Any:
    """The Kolors UNet with seeded random weights, created directly on ``device`` in ``dtype``."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            unet = UNet2DConditionModel(**(TINY_UNET if tiny else KOLORS_UNET))
    finally:
        torch.set_default_dtype(previous)
    return unet.eval().requires_grad_(False)


def build_vae(device: str, dtype: torch.dtype, tiny: bool = False, seed: int = 1) -> Any:
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            vae = AutoencoderKL(**(TINY_VAE if tiny else SDXL_VAE))
    finally:
        torch.set_default_dtype(previous)
    return vae.eval().requires_grad_(False)


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed_latents(pipe: Any, panels: list[int], **call: Any) -> tuple[torch.Tensor, float, list[float]]:
    """One pipeline call for ``panels`` (a seeded CPU generator each, seed 1000 + panel), latents out, under the
    pipeline's speed context; the total and per-step seconds, CUDA-synchronised. ``call``: the pipeline's arguments."""
    from lorastory.generate.speed import speed_context

    generators = [torch.Generator("cpu").manual_seed(1000 + i) for i in panels]
    marks: list[float] = []

    def on_step(_pipe: Any, _i: int, _t: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        sync()
        marks.append(time.perf_counter())
        return kwargs

    sync()
    started = time.perf_counter()
    with speed_context(pipe):
        latents = pipe(generator=generators, output_type="latent", callback_on_step_end=on_step, **call).images
    sync()
    total = time.perf_counter() - started
    return latents, total, [b - a for a, b in zip([started, *marks], marks)]


def gb(n: float) -> float:
    return round(n / 2**30, 2)


def peak_gb() -> float:
    return gb(torch.cuda.max_memory_allocated()) if torch.cuda.is_available() else 0.0


def reset_peak() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def matmul_peak(n: int = 8192, repeat: int = 20) -> float | None:
    """Measured bf16 matmul rate in TFLOP/s (random data, after warm-up), the ceiling for our % figures."""
    if not torch.cuda.is_available():
        return None
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    sync()
    start = torch.cuda.Event(enable_timing=True)
    end = torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeat):
        a @ b
    end.record()
    sync()
    seconds = start.elapsed_time(end) / 1000 / repeat
    return round(2 * n**3 / seconds / 1e12, 1)


def environment() -> dict[str, Any]:
    import diffusers

    info: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "diffusers": diffusers.__version__,
    }
    try:
        import peft

        info["peft"] = peft.__version__
    except ImportError:
        pass
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info["gpu"] = props.name
        info["gpu_memory_gb"] = gb(props.total_memory)
        info["sms"] = props.multi_processor_count
        try:
            info["nvidia_smi"] = subprocess.run(
                ["nvidia-smi", "--query-gpu=name,memory.total,driver_version,clocks.max.sm,power.limit",
                 "--format=csv,noheader"], capture_output=True, text=True, timeout=20).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            pass
    try:
        info["sdp_priority"] = [str(b) for b in torch._C._get_sdp_priority_order()]
    except Exception:  # private API; only informative
        pass
    return info


class Recorder:
    """Collects results, prints each as it comes, rewrites the JSON after each so a cut-off run keeps them."""

    def __init__(self, path: str | None, started: float) -> None:
        self.path = Path(path) if path else None
        self.started = started
        self.data: dict[str, Any] = {"rows": []}

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def set(self, key: str, value: Any) -> None:
        self.data[key] = value
        self.flush()

    def row(self, name: str, **values: Any) -> dict[str, Any]:
        entry = {"name": name, **values, "at_s": round(self.elapsed(), 1)}
        self.data["rows"].append(entry)
        print(json.dumps(entry), flush=True)
        self.flush()
        return entry

    def flush(self) -> None:
        if self.path:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.data, indent=1, default=str))
            os.replace(tmp, self.path)


def kernel_profile(fn: Any, top: int = 25, cpu: bool = False) -> dict[str, Any]:
    """Run ``fn`` once under the profiler: GPU time by kernel category and the top kernels (and CPU ops)."""
    from torch.profiler import ProfilerActivity, profile

    sync()
    started = time.perf_counter()
    activities = [ProfilerActivity.CUDA, *([ProfilerActivity.CPU] if cpu else [])]
    with profile(activities=activities) as prof:
        fn()
        sync()
    wall_ms = (time.perf_counter() - started) * 1000
    rows = []
    cpu_rows = []
    for event in prof.key_averages():
        total = getattr(event, "self_device_time_total", None) or getattr(event, "self_cuda_time_total", 0)
        if total and event.device_type == torch.autograd.DeviceType.CUDA:
            rows.append((event.key, total / 1000, event.count))
        if cpu and event.self_cpu_time_total:
            cpu_rows.append((event.key, event.self_cpu_time_total / 1000, event.count))
    rows = [r for r in rows if not r[0].startswith(("ProfilerStep", "cudaDeviceSynchronize"))]
    categories: dict[str, float] = {}

    def category(name: str) -> str:
        low = name.lower()
        if any(k in low for k in ("flash", "fmha", "attention", "sdpa", "cudnn_attn", "attn")):
            return "attention"
        if any(k in low for k in ("gemm", "cutlass", "sm90_xmma", "nvjet", "matmul", "_mm_", "wgmma")) and "conv" not in low:
            return "matmul"
        if any(k in low for k in ("conv", "implicit", "winograd", "dgrad", "wgrad", "fprop")):
            return "conv"
        if "norm" in low or "welford" in low or "reduce" in low or "red_fused" in low:
            return "norm/reduce"
        if low.startswith("triton"):
            return "triton fused"
        return "elementwise/other"

    for name, ms, _ in rows:
        categories[category(name)] = categories.get(category(name), 0.0) + ms
    rows.sort(key=lambda r: -r[1])
    cpu_rows.sort(key=lambda r: -r[1])
    extra = {"cpu_self_ms_total": round(sum(r[1] for r in cpu_rows), 1),
             "cpu_top": [{"op": n[:80], "ms": round(ms, 2), "calls": c} for n, ms, c in cpu_rows[:15]]} if cpu else {}
    return {
        "wall_ms_profiled": round(wall_ms, 1),
        **extra,
        "total_ms": round(sum(r[1] for r in rows), 1),
        "by_category_ms": {k: round(v, 1) for k, v in sorted(categories.items(), key=lambda kv: -kv[1])},
        "top": [{"kernel": name[:120], "ms": round(ms, 2), "calls": count} for name, ms, count in rows[:top]],
    }
