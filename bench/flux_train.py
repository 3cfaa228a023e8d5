"""GPU benchmark: Flux.1 dev LoRA training at 1024², images/s and peak memory, bf16 base vs fp8 base.

Full-size Flux dev transformer with random weights (bench/_flux_arch.py), a rank-16 LoRA (fp32 weights,
as ``lorastory train`` keeps them) on lorastory's default Flux targets, lorastory's flow-matching objective
(:class:`lorastory.models.objectives.FlowObjective`: shifted logit-normal noise levels with Flux's
resolution-dependent shift, velocity target, the guidance input at 1.0) and its denoiser call
(``flux_predict``: packed latents, latent image ids), gradient checkpointing, AdamW. The inputs are what
the cache would hold: random 16-channel latents (128 x 128 at 1024²) and T5/CLIP embeddings (the text
encoders are unloaded after caching, so they take no memory here either).

Bases (``--bases``), the library's ``--base-dtype`` path (:mod:`lorastory.models.fp8`, torchao; the Flux
family's selection: the double/single blocks' attention and MLP Linears, not the adaptive norms or
embedders): ``bf16``; ``fp8-weights``: those weights stored in float8 e4m3 and dequantised to bf16 per
matmul, gradient through the input (the LoRA trains on top), about 12 GB of weights instead of 24 GB;
``fp8``: fp8 matmuls with inputs quantised per row (compute capability 8.9+). A base that fails (no
torchao: ``pip install 'lorastory[fp8]'``) leaves an error row.

    PYTHONPATH=src python bench/flux_train.py --json $OUT/flux_train.json       # ~2-3 min on an H200
    .venv/bin/python bench/flux_train.py --tiny                                  # CPU smoke test
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
from _flux_arch import FULL, TEXT_LEN, TINY, build_transformer, scheduler  # noqa: E402
from _kolors_arch import Recorder, environment, gb, peak_gb, reset_peak, sync  # noqa: E402

from lorastory.models.families.flux import flux_predict  # noqa: E402
from lorastory.models.fp8 import check_base_dtype, check_selection, family_selection, quantize_base  # noqa: E402
from lorastory.models.lora import LoraSpec, inject_lora  # noqa: E402
from lorastory.models.objectives import FlowObjective, flow_shift  # noqa: E402
from lorastory.models.registry import get_family  # noqa: E402

def to_fp8(transformer: Any, base: str, device: str) -> int:
    """The library's fp8 base (what ``lorastory train --base-dtype`` does): torchao, on the Flux family's blocks."""
    if device == "cuda":  # the CPU smoke test (--tiny) converts too: torchao's fp8-weights run there
        check_base_dtype(base, torch.device(device))
    selection = family_selection(get_family("flux"))
    return check_selection(quantize_base(transformer, base, training=True, **selection), base, get_family("flux"))


def train_steps(base: str, args: argparse.Namespace, device: str, dtype: torch.dtype) -> dict[str, Any]:
    from diffusers import FluxPipeline

    reset_peak()
    transformer = build_transformer(device, dtype, args.tiny)
    pipe = FluxPipeline(scheduler=scheduler(), vae=None, text_encoder=None, tokenizer=None, text_encoder_2=None,
                        tokenizer_2=None, transformer=transformer)
    spec = LoraSpec(rank=args.rank, alpha=args.rank).for_family(get_family("flux"))
    params = inject_lora(pipe, spec)
    for p in params:
        p.data = p.data.float()
    quantised = to_fp8(transformer, base, device) if base != "bf16" else 0
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
    weights_gb = gb(torch.cuda.memory_allocated()) if device == "cuda" else 0.0
    build_peak = peak_gb()  # the bf16 weights existed before quantising: a real loader would quantise while loading
    reset_peak()  # peak_gb below: training only
    transformer.enable_gradient_checkpointing()
    transformer.train()
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    objective = FlowObjective(flux_predict, flow_shift(pipe.scheduler.config))
    config = TINY if args.tiny else FULL
    lat = args.size // 8
    g = torch.Generator().manual_seed(0)
    text_len = TEXT_LEN["tiny" if args.tiny else "full"]
    times = []
    for step in range(args.warmup + args.steps):
        latents = torch.randn(args.batch, 16, lat, lat, generator=g)
        noise = torch.randn(latents.shape, generator=g)
        t = torch.stack([objective.draw_timestep(g, tuple(latents.shape[1:])) for _ in range(args.batch)])
        noisy, target = objective.noisy_and_target(latents, noise, t)
        text = {"prompt_embeds": torch.randn(args.batch, text_len, config["joint_attention_dim"], generator=g).to(device, dtype),
                "pooled_prompt_embeds": torch.randn(args.batch, config["pooled_projection_dim"], generator=g).to(device, dtype)}
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
              "peak_gb": peak_gb(),
              "s_per_step": round(sum(times) / len(times), 3), "images_per_s": round(args.batch * len(times) / sum(times), 3),
              "loss": round(loss.item(), 4), "lora_params_m": round(sum(p.numel() for p in params) / 1e6, 2)}
    del pipe, transformer, optimizer, params
    gc.collect()
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--steps", type=int, default=6, help="timed steps per base")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--bases", default="bf16,fp8-weights,fp8", help="comma-separated: bf16, fp8-weights, fp8")
    parser.add_argument("--tiny", action="store_true", help="tiny model on the CPU: a smoke test of this script")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    if args.tiny:
        args.size, args.steps, args.warmup = min(args.size, 64), min(args.steps, 2), 1
    device = "cuda" if torch.cuda.is_available() and not args.tiny else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    rec = Recorder(args.json, time.perf_counter())
    rec.set("environment", environment())
    rec.set("settings", vars(args))
    failed = False
    for base in args.bases.split(","):
        try:
            rec.row(f"train {base} base", **train_steps(base, args, device, dtype))
        except Exception as err:  # one base failing (e.g. torchao's backward) leaves the others' rows
            traceback.print_exc()
            rec.row(f"train {base} base", error=f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")
            failed = True
        if device == "cuda":
            torch.cuda.empty_cache()
    rec.set("seconds_total", round(rec.elapsed(), 1))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
