"""GPU benchmark: Qwen-Image LoRA training at 1024², images/s and peak memory, bf16 base vs fp8 base.

Full-size Qwen-Image transformer (60 dual-stream blocks, 3072 wide: about 20 B parameters) with random
weights, built directly on the GPU in bf16; a rank-16 LoRA (fp32 weights, as ``lorastory train`` keeps
them) on lorastory's default Qwen-Image targets; lorastory's flow-matching objective
(:class:`lorastory.models.objectives.FlowObjective` with Qwen-Image's scheduler shift) and its denoiser
call (``qwen_image_predict``: packed 2x2 latents, the image shape for RoPE, the text padding mask);
gradient checkpointing, AdamW. The inputs are what the cache would hold: random 16-channel latents
(128 x 128 at 1024²) and Qwen2.5-VL prompt embeddings (``--text-len`` tokens of 3584; the text encoder
is unloaded after caching, so it takes no memory here).

Bases (``--bases``): ``bf16``; ``fp8-weights`` and ``fp8``: the library's fp8 base (what ``lorastory train
--base-dtype`` does: torchao, on the Qwen-Image family's blocks, their modulation layers left in bf16).

    PYTHONPATH=src python bench/qwen_image_train.py --json $OUT/qwen_image_train.json   # est. 3-5 min on an H200
    .venv/bin/python bench/qwen_image_train.py --tiny                                     # CPU smoke test
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
import traceback
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from _flux_arch import _building_on  # noqa: E402
from _kolors_arch import Recorder, environment, gb, peak_gb, reset_peak, sync  # noqa: E402

from lorastory.models.families.qwen_image import qwen_image_predict  # noqa: E402
from lorastory.models.families.qwen_image_tiny import QWEN_IMAGE_SCHEDULER  # noqa: E402
from lorastory.models.fp8 import check_base_dtype, check_selection, family_selection, quantize_base  # noqa: E402
from lorastory.models.lora import LoraSpec, inject_lora  # noqa: E402
from lorastory.models.objectives import FlowObjective, flow_shift  # noqa: E402
from lorastory.models.registry import get_family  # noqa: E402

# Qwen/Qwen-Image's transformer config (diffusers layout); TINY for the CPU smoke test.
FULL = {"num_layers": 60, "attention_head_dim": 128, "num_attention_heads": 24, "joint_attention_dim": 3584,
        "axes_dims_rope": (16, 56, 56)}
TINY = {"num_layers": 2, "attention_head_dim": 16, "num_attention_heads": 2, "joint_attention_dim": 32,
        "axes_dims_rope": (4, 6, 6)}


def build_transformer(device: str, dtype: torch.dtype, tiny: bool, seed: int = 0) -> Any:
    from diffusers import QwenImageTransformer2DModel

    torch.manual_seed(seed)
    with _building_on(device, dtype):
        model = QwenImageTransformer2DModel(patch_size=2, in_channels=64, out_channels=16, **(TINY if tiny else FULL))
    return model.eval().requires_grad_(False)


def to_fp8(transformer: Any, base: str, device: str) -> int:
    """The library's fp8 base on the Qwen-Image family's blocks (as bench/flux_train.py does for Flux)."""
    if device == "cuda":  # the CPU smoke test (--tiny) converts too: torchao's fp8-weights run there
        check_base_dtype(base, torch.device(device))
    family = get_family("qwen-image")
    return check_selection(quantize_base(transformer, base, training=True, **family_selection(family)), base, family)


def train_steps(base: str, args: argparse.Namespace, device: str, dtype: torch.dtype) -> dict[str, Any]:
    from diffusers import FlowMatchEulerDiscreteScheduler, QwenImagePipeline

    reset_peak()
    transformer = build_transformer(device, dtype, args.tiny)
    scheduler = FlowMatchEulerDiscreteScheduler(**QWEN_IMAGE_SCHEDULER)
    pipe = QwenImagePipeline(scheduler=scheduler, vae=None, text_encoder=None, tokenizer=None, transformer=transformer)
    params = inject_lora(pipe, LoraSpec(rank=args.rank, alpha=args.rank).for_family(get_family("qwen-image")))
    for p in params:
        p.data = p.data.float()
    quantised = to_fp8(transformer, base, device) if base != "bf16" else 0
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
    weights_gb = gb(torch.cuda.memory_allocated()) if device == "cuda" else 0.0
    build_peak = peak_gb()
    reset_peak()  # peak_gb below: training only
    transformer.enable_gradient_checkpointing()
    transformer.train()
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    objective = FlowObjective(qwen_image_predict, flow_shift(scheduler.config))
    width = (TINY if args.tiny else FULL)["joint_attention_dim"]
    lat, g, times = args.size // 8, torch.Generator().manual_seed(0), []
    for step in range(args.warmup + args.steps):
        latents = torch.randn(args.batch, 16, lat, lat, generator=g)
        noise = torch.randn(latents.shape, generator=g)
        t = torch.stack([objective.draw_timestep(g, tuple(latents.shape[1:])) for _ in range(args.batch)])
        noisy, target = objective.noisy_and_target(latents, noise, t)
        mask = torch.ones(args.batch, args.text_len, dtype=torch.long)
        mask[:, args.text_len * 3 // 4:] = 0  # a padded quarter, as a batch of captions of different lengths has
        text = {"prompt_embeds": torch.randn(args.batch, args.text_len, width, generator=g).to(device, dtype),
                "prompt_embeds_mask": mask.to(device)}
        sync()
        started = time.perf_counter()
        with torch.autocast(device, dtype=dtype, enabled=device == "cuda"):
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--text-len", type=int, default=128, help="prompt tokens per caption (a quarter padded)")
    parser.add_argument("--steps", type=int, default=6, help="timed steps per base")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--bases", default="bf16,fp8-weights,fp8", help="comma-separated: bf16, fp8-weights, fp8")
    parser.add_argument("--tiny", action="store_true", help="tiny model on the CPU: a smoke test of this script")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    if args.tiny:
        args.size, args.steps, args.warmup, args.text_len = min(args.size, 64), min(args.steps, 2), 1, 16
    device = "cuda" if torch.cuda.is_available() and not args.tiny else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    rec = Recorder(args.json, time.perf_counter())
    rec.set("environment", environment())
    rec.set("settings", vars(args))
    failed = False
    for base in args.bases.split(","):
        try:
            rec.row(f"qwen-image train {base} base", **train_steps(base, args, device, dtype))
        except Exception as err:  # one base failing leaves the other's row
            traceback.print_exc()
            rec.row(f"qwen-image train {base} base", error=f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")
            failed = True
        if device == "cuda":
            torch.cuda.empty_cache()
    rec.set("seconds_total", round(rec.elapsed(), 1))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
