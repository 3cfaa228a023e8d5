"""GPU benchmark: an 8-panel Flux.1 dev story (1024², 28 steps, guidance 3.5) with a LoRA, random weights.

Full-size Flux dev architecture (bench/_flux_arch.py: 11.9 B-parameter transformer, 16-channel VAE), bf16,
one GPU, random prompt embeddings of T5-XXL/CLIP-L shapes, a random rank-16 LoRA on lorastory's default
Flux targets (attention and MLP of the double and single blocks). Modes, each a row of the JSON:

1. ``single``: plain diffusers ``FluxPipeline``, one call per panel, LoRA unfused (peft), the reference;
2. ``batched``: plain diffusers, all panels in one call (a seeded generator per panel);
3. ``ours``: lorastory's story path, ``prepare_for_speed`` (LoRA fused into the weights) and one batched call;
4. opt-in, after ``ours``: ``shared`` (consistency mode attention on the joint attention, the story defaults),
   ``true-cfg`` (true CFG 4, a second pass per step), ``reference`` and ``both`` (consistency modes with XLabs'
   Flux IP-Adapter at scale 0.5: a real-size random one, with a random CLIP ViT-L/14 image encoder, written to a
   temporary folder and loaded through ``ip_adapter_loaded`` as stories load it), ``in-context`` (consistency
   reference_method in_context: ``FluxKontextPipeline`` over the same modules, the reference at the panel size:
   twice the image tokens; random weights stand in for Kontext's, the cost is the same), ``fp8-weights`` or ``fp8`` (``--base-dtype``: the
   family's fp8 selection through torchao; the first one named, last, as it converts the transformer);
   ``--transformer-levers`` also fuses the transformer's q/k/v and, with ``--compile``, compiles its
   blocks regionally (levers not yet wired into ``prepare_for_speed`` for DiTs; measured here first).

Per mode: seconds, ms per image-step (median, first step excluded), peak memory, PSNR per panel against
``single`` (8-bit quantised images, as PNGs are). Rows are written as they finish (``--json``).

    PYTHONPATH=src python bench/flux_story.py --json $OUT/flux_story.json                  # all three modes, ~5 min
    # or in two calls on the same (warm) machine, each under ~3 min:
    PYTHONPATH=src python bench/flux_story.py --modes single --save-reference /tmp/flux_ref.safetensors --json $OUT/a.json
    PYTHONPATH=src python bench/flux_story.py --modes batched,ours --reference /tmp/flux_ref.safetensors --json $OUT/b.json
    PYTHONPATH=src python bench/flux_story.py --modes shared,true-cfg,fp8 --reference /tmp/flux_ref.safetensors --json $OUT/c.json
    PYTHONPATH=src python bench/flux_story.py --modes ours,shared,reference,both,in-context --reference /tmp/flux_ref.safetensors --json $OUT/d.json
    .venv/bin/python bench/flux_story.py --tiny                                              # CPU smoke test
"""

from __future__ import annotations

import argparse
import contextlib
import math
import statistics
import sys
import time
import traceback
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from _flux_arch import Embeds, make_pipe, normalise  # noqa: E402
from _kolors_arch import Recorder, environment, peak_gb, reset_peak, timed_latents  # noqa: E402

from lorastory.generate.consistency import shared_attention  # noqa: E402
from lorastory.generate.consistency_settings import ConsistencySettings  # noqa: E402
from lorastory.generate.speed import fuse_qkv, prepare_for_speed  # noqa: E402
from lorastory.models.families.flux import unpack_latents  # noqa: E402
from lorastory.models.lora import LoraSpec, inject_lora  # noqa: E402
from lorastory.models.registry import get_family  # noqa: E402
from lorastory.models.speed import compile_regions, use_compile_cache  # noqa: E402

FLUX_BLOCKS = ("FluxTransformerBlock", "FluxSingleTransformerBlock")


def add_random_lora(pipe: Any, rank: int) -> int:
    """A rank-``rank`` LoRA on the default Flux targets with small random weights (B is zero at init)."""
    spec = LoraSpec(rank=rank, alpha=rank).for_family(get_family("flux"))
    params = inject_lora(pipe, spec)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in params:
            p.copy_((torch.randn(p.shape, generator=g) * 0.02).to(p.device, p.dtype))
    pipe.transformer.requires_grad_(False)
    return len(params)


@torch.no_grad()
def denoise(pipe: Any, emb: Embeds, panels: list[int], steps: int, size: int, guidance: float,
            **call: Any) -> tuple[torch.Tensor, float, list[float]]:
    """One pipeline call for ``panels`` (``call``: more pipeline arguments); packed latents, seconds, per-step seconds."""
    return timed_latents(pipe, panels, prompt_embeds=emb.pe[panels], pooled_prompt_embeds=emb.pp[panels],
                         num_inference_steps=steps, guidance_scale=guidance, width=size, height=size, **call)


@torch.no_grad()
def decode(pipe: Any, latents: torch.Tensor, size: int) -> torch.Tensor:
    vae, lat = pipe.vae, size // 8
    images = []
    for i in range(len(latents)):
        z = unpack_latents(latents[i : i + 1], lat, lat) / vae.config.scaling_factor + vae.config.shift_factor
        images.append((vae.decode(z.to(vae.dtype)).sample / 2 + 0.5).clamp(0, 1).float().cpu())
    return torch.cat(images)


def psnr(a: torch.Tensor, b: torch.Tensor) -> list[float]:
    qa, qb = (a * 255).round() / 255, (b * 255).round() / 255
    mse = ((qa - qb) ** 2).flatten(1).mean(1)
    return [round(10 * math.log10(1 / m), 2) if m > 0 else float("inf") for m in mse.tolist()]


def step_ms(per_step: list[float], images: int) -> float:
    tail = per_step[1:] if len(per_step) > 1 else per_step
    return round(statistics.median(tail) * 1000 / images, 2)


def run_mode(rec: Recorder, name: str, pipe: Any, emb: Embeds, args: argparse.Namespace, batches: list[list[int]],
             reference: torch.Tensor | None, call: dict[str, Any] | None = None, around: Any = None,
             **extra: Any) -> torch.Tensor:
    """``call``: more pipeline arguments; ``around(panels)``: a context manager around each call (shared attention)."""
    reset_peak()
    latents, seconds, per_step = [], 0.0, []
    for panels in batches:
        with around(panels) if around is not None else contextlib.nullcontext():
            out, s, steps = denoise(pipe, emb, panels, args.steps, args.size, args.guidance, **(call or {}))
        latents.append(out)
        seconds += s
        per_step += steps
    images = decode(pipe, torch.cat(latents), args.size)
    rec.row(name, seconds=round(seconds, 2), s_per_panel=round(seconds / args.panels, 2),
            ms_per_image_step=step_ms(per_step, len(batches[0])), peak_gb=peak_gb(),
            psnr_vs_single=psnr(images, reference) if reference is not None else None,
            image_mean=round(images.mean().item(), 3), **extra)
    return images


def random_flux_ip_adapter(folder: Path, pipe: Any, tiny: bool) -> Path:
    """A random XLabs-layout IP-Adapter for ``pipe``'s transformer with a random CLIP ViT-L/14 encoder in ``folder``."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from lorastory.models.families.flux_ip_adapter import flux_ip_adapter_state_dict
    from lorastory.models.ip_adapter import tiny_image_encoder

    encoder = tiny_image_encoder() if tiny else CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16, image_size=224,
        patch_size=14, projection_dim=768))  # openai/clip-vit-large-patch14's vision tower
    state = flux_ip_adapter_state_dict(pipe.transformer, encoder, seed=3)
    save_file({k: v.to(pipe.transformer.dtype).contiguous() for k, v in state.items()}, str(folder / "ip_adapter.safetensors"))
    encoder.to(pipe.transformer.dtype).save_pretrained(folder / "image_encoder", safe_serialization=True)
    return folder


def reference_modes(rec: Recorder, pipe: Any, emb: Embeds, args: argparse.Namespace, modes: list[str], every: list[int],
                    reference: torch.Tensor | None) -> None:
    """Consistency modes reference and both: the story with the IP-Adapter loaded (the reference render not counted)."""
    import tempfile

    import numpy as np
    from PIL import Image

    from lorastory.models.ip_adapter import ip_adapter_loaded, resolve_ip_adapter

    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (args.size, args.size, 3), dtype=np.uint8))
    with tempfile.TemporaryDirectory(prefix="flux-ipa-") as scratch:
        spec = resolve_ip_adapter("flux", str(random_flux_ip_adapter(Path(scratch), pipe, args.tiny)))
        started = time.perf_counter()
        with ip_adapter_loaded(pipe, spec, scale=0.5):
            loaded = round(time.perf_counter() - started, 2)
            call = {"ip_adapter_image": image}
            if "reference" in modes:
                run_mode(rec, "ours + IP-Adapter reference (XLabs layout, scale 0.5)", pipe, emb, args, [every], reference,
                         call=call, load_seconds=loaded)
            if "both" in modes:
                settings = ConsistencySettings(mode="both")

                @contextlib.contextmanager
                def around(panels: list[int]) -> Any:
                    with shared_attention(pipe, settings, panels=len(panels), seed=0):
                        yield

                run_mode(rec, "ours + both (IP-Adapter and shared attention)", pipe, emb, args, [every], reference,
                         call=call, around=around)


def more_modes(rec: Recorder, pipe: Any, emb: Embeds, args: argparse.Namespace, modes: list[str], every: list[int],
               reference: torch.Tensor | None) -> None:
    """The story options on top of ``ours`` (LoRA fused): shared attention, true CFG, an fp8 base (last: it stays)."""
    prepare_for_speed(pipe)  # LoRA fused, as ours (a no-op after it)
    if "shared" in modes:  # consistency mode attention, the story defaults: rate 0.5, the first half of the steps
        settings = ConsistencySettings(mode="attention")
        stats: list[Any] = []

        @contextlib.contextmanager
        def around(panels: list[int]) -> Any:
            with shared_attention(pipe, settings, panels=len(panels), seed=0) as render:
                yield
            stats.append(render.as_dict())

        run_mode(rec, "ours + shared attention (rate 0.5, steps 0-0.5)", pipe, emb, args, [every], reference,
                 around=around, attention=stats)
    if "reference" in modes or "both" in modes:
        reference_modes(rec, pipe, emb, args, modes, every, reference)
    if "in-context" in modes:  # the reference picture read as more image tokens (FLUX.1 Kontext's way)
        import numpy as np
        from PIL import Image

        kontext = get_family("flux").in_context_pipe(pipe)
        kontext.set_progress_bar_config(disable=True)
        kontext._lorastory_speed = getattr(pipe, "_lorastory_speed", None)
        image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (args.size, args.size, 3), dtype=np.uint8))
        run_mode(rec, "ours + in-context reference (FluxKontextPipeline)", kontext, emb, args, [every], reference,
                 call={"image": image, "max_area": args.size ** 2, "_auto_resize": False})
    if "true-cfg" in modes:  # a second pass per step on a negative prompt (the next panel's embeddings)
        negative = [(i + 1) % args.panels for i in every]
        call = {"true_cfg_scale": 4.0, "negative_prompt_embeds": emb.pe[negative],
                "negative_pooled_prompt_embeds": emb.pp[negative]}
        run_mode(rec, "ours + true CFG 4", pipe, emb, args, [every], reference, call=call)
    for base_dtype in [m for m in modes if m in ("fp8-weights", "fp8")][:1]:  # converts the transformer for good
        report = prepare_for_speed(pipe, base_dtype=base_dtype, device=pipe.transformer.device)
        run_mode(rec, f"ours + --base-dtype {base_dtype}", pipe, emb, args, [every], reference, levers=str(report))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--panels", type=int, default=8)
    parser.add_argument("--steps", type=int, default=28)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--guidance", type=float, default=3.5)
    parser.add_argument("--rank", type=int, default=16, help="random LoRA rank (0: no LoRA)")
    parser.add_argument("--modes", default="single,batched,ours",
                        help="comma-separated: single, batched, ours; also shared, true-cfg, reference, both, in-context, fp8-weights or fp8")
    parser.add_argument("--compile", action="store_true", help="ours: compile (VAE regions; with --transformer-levers the blocks)")
    parser.add_argument("--transformer-levers", action="store_true", help="ours: fused q/k/v (and compiled blocks) in the transformer")
    parser.add_argument("--tiny", action="store_true", help="tiny model on the CPU: a smoke test of this script")
    parser.add_argument("--save-reference", default=None, help="write the single mode's images here (.safetensors)")
    parser.add_argument("--reference", default=None, help="PSNR against these images (a --save-reference file of an "
                        "earlier run with the same settings) instead of running the single mode")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    if args.tiny:
        args.size, args.steps, args.panels = min(args.size, 64), min(args.steps, 2), min(args.panels, 2)
    device = "cuda" if torch.cuda.is_available() and not args.tiny else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    rec = Recorder(args.json, time.perf_counter())
    rec.set("environment", environment())
    rec.set("settings", vars(args))
    use_compile_cache()
    pipe = make_pipe(device, dtype, args.tiny)
    emb = Embeds(args.panels, device, dtype, args.tiny)
    rec.set("normalise", normalise(pipe, emb, args.size, device))
    rec.set("lora_modules", add_random_lora(pipe, args.rank) // 2 if args.rank else 0)
    modes = args.modes.split(",")
    every = list(range(args.panels))
    reference = load_file(args.reference)["images"] if args.reference else None
    try:
        if "single" in modes:
            reference = run_mode(rec, "single (plain diffusers, one panel a call)", pipe, emb, args, [[i] for i in every], None)
            if args.save_reference:
                save_file({"images": reference.contiguous()}, args.save_reference)
        if "batched" in modes:
            run_mode(rec, "batched (plain diffusers, one call)", pipe, emb, args, [every], reference)
        if "ours" in modes:
            report = prepare_for_speed(pipe, compile=args.compile)
            extra = {"levers": str(report)}
            if args.transformer_levers:
                extra["transformer_qkv_fused"] = fuse_qkv(pipe.transformer)
                if args.compile:
                    extra["transformer_compiled"] = compile_regions(pipe.transformer, FLUX_BLOCKS)
            if args.compile:
                run_mode(rec, "ours warm-up (compiles)", pipe, emb, args, [every], reference, **extra)
            run_mode(rec, "ours (lorastory: LoRA fused, batched)", pipe, emb, args, [every], reference, **extra)
        more_modes(rec, pipe, emb, args, modes, every, reference)
    except Exception as err:  # keep the rows already written; say what failed
        traceback.print_exc()
        rec.set("error", f"{type(err).__name__}: {err}")
        return 1
    rec.set("seconds_total", round(rec.elapsed(), 1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
