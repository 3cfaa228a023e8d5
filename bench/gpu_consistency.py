"""GPU cost of consistent characters: the 8-panel 1024² story (50 steps, cfg 4) on the Kolors architecture, random weights.

Same setup as ``bench/gpu_story.py`` (real-size UNet and VAE in bf16, random prompt embeddings of ChatGLM3's
shapes, fused QKV as ``generate_story`` uses on CUDA, no compile: shared attention refuses compiled blocks), and
for each consistency mechanism the UNet time of the whole story against the same story without it:

1. smoke: ``generate_story`` end to end on the tiny model on CUDA in every mode (the library's GPU path);
2. ``none``: 8 panels batched (CFG batch 16), 50 steps;
3. ``attention`` with the defaults (up blocks, sample rate 0.5, first 50 % of steps), full story, with the
   per-step time of active and inactive steps; UNet FLOPs of one image-step with and without it;
4. variants, 6 steps each with sharing on in every step: rate 1.0, up+mid blocks, all blocks;
5. the two-batch fallback (4 + 4 panels: the first writes the token bank, the second reads it), full story;
6. ``reference``: one extra single-image render (the reference), then the story with a real-size
   IP-Adapter-Plus (CLIP ViT-L/14-336 encoder, 16-token resampler; random weights, written to a temporary
   folder and loaded through ``lorastory.models.ip_adapter.ip_adapter_loaded``); ``both``: that plus attention.

VAE decoding is the same for every mode and is left out (``bench/gpu_story.py`` measures it). Total ≤ 5 min on
an H100; optional parts are skipped past ``--budget``.

    PYTHONPATH=src python bench/gpu_consistency.py --json $OUT/gpu_consistency.json
    PYTHONPATH=src python bench/gpu_consistency.py --tiny     # CPU smoke test of the script itself
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from _kolors_arch import Recorder, environment, peak_gb, reset_peak, sync  # noqa: E402
from gpu_story import CFG, PANELS, SIZE, STEPS, Embeds, denoise, make_pipe, normalise  # noqa: E402

from lorastory.generate.consistency import SharedAttention  # noqa: E402
from lorastory.generate.consistency_settings import ConsistencySettings  # noqa: E402
from lorastory.generate.speed import prepare_for_speed  # noqa: E402

VARIANT_STEPS = 6


def per_step_ms(per_step: list[float], panels: int, steps: range) -> float | None:
    """Mean ms per image-step over ``steps`` (indices into ``per_step``)."""
    picked = [per_step[i] for i in steps if 0 <= i < len(per_step)]
    return round(statistics.mean(picked) * 1000 / panels, 2) if picked else None


def smoke(rec: Recorder, device: str) -> None:
    """``generate_story`` on the tiny model in every mode on ``device``: the library path, not the cost."""
    from lorastory.generate.story import generate_story
    from lorastory.generate.story_file import Story
    from lorastory.models.ip_adapter import build_tiny_ip_adapter
    from lorastory.models.tiny import build_tiny_model

    scratch = Path(tempfile.mkdtemp(prefix="gpu-consistency-"))
    for family in ("kolors", "sdxl"):
        try:
            model = build_tiny_model(family, scratch / family)
            adapter = build_tiny_ip_adapter(scratch / f"ipa-{family}", model)
        except Exception as err:  # e.g. no sentencepiece for the tiny Kolors tokenizer: try the next family
            rec.row(f"smoke {family}: build", error=repr(err)[:300])
            continue
        results = {}
        for mode in ("none", "attention", "reference", "both"):
            # attention at strength 0.7 takes the biased-attention path; both at 1 the unbiased one
            strength = 0.7 if mode == "attention" else 1.0
            story = Story.model_validate({"defaults": {"steps": 4, "width": 64, "height": 64},
                                          "consistency": {"mode": mode, "strength": strength, "ip_adapter": str(adapter)},
                                          "panels": [{"prompt": "a girl"}, {"prompt": "a cat"}, {"prompt": "a dog"}]})
            try:
                result = generate_story(story, str(model), scratch / f"{family}-{mode}", device=device)
                results[mode] = f"ok {result.seconds:.2f} s"
            except Exception:
                results[mode] = traceback.format_exc()[-800:]
        rec.row(f"smoke: generate_story on tiny {family}, {device}", **results)
        return


def write_ip_adapter(pipe: Any, folder: Path, tiny: bool) -> Any:
    """A real-size (or, with ``tiny``, small) random IP-Adapter-Plus for ``pipe.unet`` in Kolors' layout."""
    from safetensors.torch import save_file
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from lorastory.models.ip_adapter import DEFAULT_IP_ADAPTERS, IpAdapterSource, ip_adapter_state_dict

    spec = DEFAULT_IP_ADAPTERS["kolors"]
    vision = (dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32,
                   patch_size=8, projection_dim=32) if tiny else
              dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16, image_size=336,
                   patch_size=14, projection_dim=768))
    with torch.device(pipe.unet.device):
        encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(**vision)).to(pipe.unet.dtype)
    encoder.save_pretrained(folder / spec.image_encoder, safe_serialization=True)
    state = ip_adapter_state_dict(pipe.unet, vision["hidden_size"], num_tokens=4 if tiny else 16,
                                  hidden_dim=64 if tiny else 1280)
    save_file({k: v.to(pipe.unet.dtype) for k, v in state.items()}, str(folder / spec.weight), metadata={"format": "pt"})
    params = sum(p.numel() for p in encoder.parameters()) + sum(v.numel() for v in state.values())
    return IpAdapterSource(str(folder), spec.weight, spec.image_encoder), params


@torch.no_grad()
def unet_tflop(pipe: Any, emb: Embeds, size: int, shared: SharedAttention | None) -> float:
    """TFLOP of one UNet call on the 8 panels with CFG (batch 16), per image; sharing active when ``shared``."""
    from torch.utils.flop_counter import FlopCounterMode

    unet, lat = pipe.unet, size // 8
    batch = 2 * PANELS
    x = torch.randn(batch, 4, lat, lat, device=unet.device, dtype=unet.dtype)
    time_ids = torch.tensor([[size, size, 0, 0, size, size]] * batch, device=unet.device, dtype=unet.dtype)
    embeds = torch.cat([emb.ne, emb.pe])
    pooled = torch.cat([emb.np, emb.pp])
    with FlopCounterMode(display=False) as counter:
        if shared is None:
            unet(x, torch.full((batch,), 500, device=unet.device), encoder_hidden_states=embeds,
                 added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids})
        else:
            with shared.render(pipe, PANELS, seed=0):
                unet(x, torch.full((batch,), 500, device=unet.device), encoder_hidden_states=embeds,
                     added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids})
    return counter.get_total_flops() / 1e12 / PANELS


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", default=None)
    parser.add_argument("--tiny", action="store_true", help="small random model on the CPU: a smoke test of this script")
    parser.add_argument("--budget", type=float, default=280.0, help="seconds; optional parts are skipped past it")
    parser.add_argument("--no-smoke", dest="smoke", action="store_false", help="skip the tiny end-to-end check")
    args = parser.parse_args()

    started = time.perf_counter()
    tiny = args.tiny
    device = "cpu" if tiny else "cuda"
    dtype = torch.float32 if tiny else torch.bfloat16
    size = 128 if tiny else SIZE
    steps = 4 if tiny else STEPS
    variant_steps = 2 if tiny else VARIANT_STEPS
    rec = Recorder(args.json, started)
    rec.set("environment", environment())
    rec.set("setup", {"panels": PANELS, "steps": steps, "cfg": CFG, "size": size, "dtype": str(dtype),
                      "defaults": ConsistencySettings(mode="attention").model_dump(mode="json")})
    if args.smoke:
        smoke(rec, device)

    pipe = make_pipe(device, dtype, tiny)
    emb = Embeds(PANELS, device, dtype, tiny)
    rec.set("normalise", normalise(pipe, emb, size, device))
    rec.set("speed", str(prepare_for_speed(pipe, compile=False)))
    panels = list(range(PANELS))
    active = range(1, steps // 2)  # step 0 holds the warm-up of the call; the default range ends at 50 %
    inactive = range(steps // 2 + 1, steps)

    def story(name: str, settings: ConsistencySettings | None = None, n: int = steps, **extra: Any) -> dict[str, Any]:
        reset_peak()
        shared = SharedAttention(settings) if settings is not None else None
        context = shared.render(pipe, PANELS, seed=0) if shared is not None else contextlib.nullcontext()
        with context:
            _, total, per_step = denoise(pipe, emb, panels, n, size, **extra)
        row = {"unet_s": round(total, 2), "ms_per_image_step": round(total * 1000 / (PANELS * n), 2),
               "active_ms_per_image_step": per_step_ms(per_step, PANELS, active if n == steps else range(1, n)),
               "inactive_ms_per_image_step": per_step_ms(per_step, PANELS, inactive) if n == steps else None,
               "peak_gb": peak_gb()}
        if shared is not None:
            row["attention"] = shared.renders[-1].as_dict()
        if base:
            row["extra_vs_none"] = f"{100 * (total / (base['unet_s'] * n / steps) - 1):+.1f} %"
        return rec.row(name, **row)

    base: dict[str, Any] = {}
    denoise(pipe, emb, panels, 2, size)  # warm-up: cuDNN autotuning, handles
    base.update(story("none: 8 panels batched, fused QKV"))
    attention = ConsistencySettings(mode="attention")
    story("attention (defaults: up blocks, rate 0.5, steps 0-0.5)", attention)
    try:
        plain_tf = unet_tflop(pipe, emb, size, None)
        shared_tf = unet_tflop(pipe, emb, size, SharedAttention(attention))
        rec.set("flops", {"unet_tflop_per_image_step_cfg": round(plain_tf, 3),
                          "with_shared_attention": round(shared_tf, 3),
                          "extra_percent_in_active_steps": round(100 * (shared_tf / plain_tf - 1), 1)})
    except Exception:
        rec.row("flops", error=traceback.format_exc()[-600:])

    always = {"mode": "attention", "step_range": (0.0, 1.0)}
    for name, settings in (
        ("attention in every step (rate 0.5, up)", ConsistencySettings(**always)),
        ("attention in every step, rate 1.0", ConsistencySettings(**always, sample_rate=1.0)),
        ("attention in every step, up + mid", ConsistencySettings(**always, blocks=["up", "mid"])),
        ("attention in every step, all blocks", ConsistencySettings(**always, blocks=["up", "mid", "down"])),
    ):
        if rec.elapsed() > args.budget - 120:
            rec.row(name, skipped="budget")
            continue
        story(f"{name}, {variant_steps} steps", settings, n=variant_steps)

    # Two batches of 4: the first anchors (writes the bank), the second reads it.
    if rec.elapsed() < args.budget - 90:
        try:
            reset_peak()
            shared = SharedAttention(attention)
            total = 0.0
            for batch, more in ((panels[:4], True), (panels[4:], False)):
                with shared.render(pipe, len(batch), seed=batch[0], more_batches=more):
                    _, seconds, _ = denoise(pipe, emb, batch, steps, size)
                total += seconds
            rec.row("attention, 2 batches of 4 (token bank)", unet_s=round(total, 2),
                    extra_vs_none=f"{100 * (total / base['unet_s'] - 1):+.1f} %", peak_gb=peak_gb(), **shared.summary())
        except Exception:
            rec.row("attention, 2 batches of 4", error=traceback.format_exc()[-800:])

    # Reference: one single-image render first, then the story conditioned on it through the IP-Adapter.
    if rec.elapsed() < args.budget - 80:
        try:
            from PIL import Image

            from lorastory.models.ip_adapter import ip_adapter_loaded

            reset_peak()
            _, reference_s, _ = denoise(pipe, emb, [0], steps, size)
            rec.row(f"reference image: one panel alone, {steps} steps", unet_s=round(reference_s, 2),
                    extra_vs_none=f"{100 * reference_s / base['unet_s']:+.1f} %")
            folder = Path(tempfile.mkdtemp(prefix="ip-adapter-"))
            t0 = time.perf_counter()
            spec, params = write_ip_adapter(pipe, folder, tiny)
            written_s = time.perf_counter() - t0
            reference = Image.new("RGB", (size, size), (180, 120, 200))
            t0 = time.perf_counter()
            with ip_adapter_loaded(pipe, spec, scale=0.5):
                load_s = time.perf_counter() - t0
                sync()
                rec.set("ip_adapter", {"params_m": round(params / 1e6, 1), "write_s": round(written_s, 1),
                                       "load_s": round(load_s, 1)})
                story("reference: IP-Adapter-Plus, scale 0.5", ip_adapter_image=reference)
                if rec.elapsed() < args.budget - 30:
                    story("both: IP-Adapter + attention defaults", attention, ip_adapter_image=reference)
        except Exception:
            rec.row("reference", error=traceback.format_exc()[-1500:])
    if rec.elapsed() < args.budget - 20:
        story("none again (run-to-run noise)")

    print("\n| what | UNet s (8 panels) | ms/image-step | active / inactive ms | extra vs none | peak GB |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for row in rec.data["rows"]:
        if "unet_s" in row:
            print(f"| {row['name']} | {row['unet_s']} | {row.get('ms_per_image_step', '-')} | "
                  f"{row.get('active_ms_per_image_step', '-')} / {row.get('inactive_ms_per_image_step', '-')} | "
                  f"{row.get('extra_vs_none', '-')} | {row.get('peak_gb', '-')} |")
    print(f"\nflops: {rec.data.get('flops')}\nelapsed {rec.elapsed():.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
