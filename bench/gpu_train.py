"""GPU benchmark: LoRA r16 (to_q/k/v/out.0) training of the Kolors UNet at 1024², cached (random) inputs.

One process, one GPU, baselines first. Each configuration builds the same seeded UNet (bf16, on the
GPU), adds the same seeded LoRA, and trains on the same seeded batches: latents [B, 4, 128, 128],
prompt embeddings [B, 256, 4096] + pooled [B, 4096] and time ids, as the trainer's cache gives them.
A step is: noise + timesteps → noisy latents → UNet → MSE in fp32 → backward → clip 1.0 → AdamW
(lr 1e-4, weight decay 1e-2, the library's defaults) → zero_grad.

- **recipe**: the diffusers-example recipe, LoRA parameters in fp32 and the forward under bf16 autocast
  (what ``lorastory train`` did before; accelerate's ``mixed_precision="bf16"`` is this autocast).
- **bf16**: LoRA parameters in bf16, no autocast (fast, but bf16 weights drop small Adam updates).
- **fast**: ``lorastory.train.speed.prepare_for_training``: fp32 LoRA parameters computed in bf16,
  no autocast; then channels_last and regional compilation, larger and smaller batches.
- **nolora** (``--plan v3``): the frozen UNet without any LoRA, trained back to its input: the ceiling
  that no LoRA-side lever can pass. v3 also measures fused LoRA q/k/v (``lorastory.train.lora_qkv``),
  transformer blocks replayed as CUDA graphs, and the whole UNet compiled.

Loss curves of recipe / bf16 / fast (eager and compiled) at batch 4 over the same 20 batches, and the
final LoRA weights' distance from the recipe's, show whether the fast path trains the same.

    PYTHONPATH=src python bench/gpu_train.py --json $OUT/train.json
    .venv/bin/python bench/gpu_train.py --tiny     # CPU smoke test of the script itself
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import sys
import time
import traceback
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from _kolors_arch import (  # noqa: E402
    Recorder, build_unet, environment, kernel_profile, matmul_peak, peak_gb, reset_peak, sync, text_shape,
)

from lorastory.models.speed import compile_regions, sdpa_backend, use_compile_cache  # noqa: E402
from lorastory.train.speed import prepare_for_training  # noqa: E402

TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
WEIGHTS: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # name -> (LoRA weights at the start, at the end)


class Data:
    """Seeded batches, made on the device from the step number: every configuration sees the same data."""

    def __init__(self, device: str, dtype: torch.dtype, tiny: bool) -> None:
        self.device, self.dtype, self.tiny = device, dtype, tiny
        self.length, self.hidden = text_shape(tiny)
        self.lat = 16 if tiny else 128
        betas = torch.linspace(0.00085**0.5, 0.014**0.5, 1100, dtype=torch.float64) ** 2
        self.alphas = torch.cumprod(1 - betas, 0).to(device, torch.float32)
        self.time_ids: dict[int, torch.Tensor] = {}  # made once: a copy from host memory each step would sync

    def batch(self, step: int, size: int) -> dict[str, torch.Tensor]:
        g = torch.Generator(self.device).manual_seed(10_000 + step)
        d, t = self.device, self.dtype
        latents = torch.randn(size, 4, self.lat, self.lat, generator=g, device=d)
        noise = torch.randn(size, 4, self.lat, self.lat, generator=g, device=d)
        timesteps = torch.randint(0, 1100, (size,), generator=g, device=d)
        a = self.alphas[timesteps].view(-1, 1, 1, 1)
        px = self.lat * 8
        return {
            "noisy": (a.sqrt() * latents + (1 - a).sqrt() * noise).to(t),
            "noise": noise,
            "timesteps": timesteps,
            "emb": torch.randn(size, self.length, self.hidden, generator=g, device=d).to(t),
            "pooled": torch.randn(size, self.hidden, generator=g, device=d).to(t),
            "time_ids": self.time_ids.setdefault(size, torch.tensor([[px, px, 0, 0, px, px]] * size, device=d, dtype=t)),
        }


def lora_params(unet: Any) -> list[torch.nn.Parameter]:
    return [p for n, p in unet.named_parameters() if ".lora_A." in n or ".lora_B." in n]


def run(rec: Recorder, data: Data, name: str, *, mode: str, batch: int, steps: int, warm: int = 2,
        channels_last: bool = False, compile_classes: tuple[str, ...] = (), checkpointing: bool = False,
        keep_weights: bool = False, flops_per_image: float | None = None, peak: float | None = None,
        profile: bool = False, fused_adamw: bool = False, sync_each_step: bool = False, fuse_qkv: bool = False,
        whole: str | None = None, compile_mode: str | None = None, sdpa: str | None = None,
        coordinate_descent: bool = False) -> dict[str, Any]:
    """Build, train ``warm`` + ``steps`` steps, record img/s, peak memory and losses."""
    from peft import LoraConfig

    reset_peak()
    device = data.device
    import torch._inductor.config as inductor_config

    inductor_config.coordinate_descent_tuning = coordinate_descent  # tunes each Triton kernel's block sizes
    torch._dynamo.reset()  # each configuration compiles its own graphs (backend choice, kernel tuning)
    if device == "cuda":  # the baselines run as diffusers' example does (cuDNN autotuning off)
        torch.backends.cudnn.benchmark = mode == "fast"
    unet = build_unet(device, data.dtype, data.tiny)
    torch.manual_seed(42)
    if mode != "nolora":  # "nolora": the frozen UNet alone, backward to its input (what LoRA's own cost sits on)
        unet.add_adapter(LoraConfig(r=16, lora_alpha=4, target_modules=TARGETS, init_lora_weights="gaussian"))
    if mode == "nolora":
        unet.requires_grad_(False)
    params = lora_params(unet)
    for p in params:
        p.data = p.data.to(torch.bfloat16 if mode == "bf16" else torch.float32)
        p.requires_grad_(True)
    start_weights = torch.cat([p.detach().float().flatten() for p in params]).cpu() if keep_weights else None
    note = ""
    if mode == "fast":
        note = prepare_for_training(unet, compile=bool(compile_classes) and not compile_mode,
                                    channels_last=channels_last, compile_classes=compile_classes, fuse_qkv=fuse_qkv)
        if compile_mode:  # e.g. "reduce-overhead": each compiled block replayed as a CUDA graph
            note += f", compiled {compile_regions(unet, compile_classes, mode=compile_mode)} blocks ({compile_mode})"
    else:
        if channels_last:
            unet.to(memory_format=torch.channels_last)
        if compile_classes:
            compile_regions(unet, compile_classes)
    if checkpointing:
        unet.enable_gradient_checkpointing()
    unet.train()
    if whole:  # the whole UNet as one compiled graph; "reduce-overhead" replays it as CUDA graphs
        unet.compile(mode=None if whole == "default" else whole, dynamic=False)
        note += f", whole UNet compiled ({whole})"
    optimizer = torch.optim.AdamW(params or [torch.zeros(1, requires_grad=True)], lr=1e-4, weight_decay=1e-2,
                                  **({"fused": True} if fused_adamw else {}))
    autocast = torch.autocast(device, dtype=torch.bfloat16) if mode == "recipe" and device == "cuda" else contextlib.nullcontext()

    def step(i: int) -> torch.Tensor:
        b = data.batch(i, batch)
        if mode == "nolora":
            b["noisy"].requires_grad_(True)
        if "reduce-overhead" in (whole, compile_mode):
            torch.compiler.cudagraph_mark_step_begin()
        with autocast, sdpa_backend(sdpa):
            pred = unet(b["noisy"], b["timesteps"], encoder_hidden_states=b["emb"],
                        added_cond_kwargs={"text_embeds": b["pooled"], "time_ids": b["time_ids"]}).sample
        loss = F.mse_loss(pred.float(), b["noise"].float())
        loss.backward()
        if params:
            torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if sync_each_step:  # what a loop that reads loss.item() every step does
            loss.item()
        return loss.detach()

    losses = []
    sync()
    t0 = time.perf_counter()
    for i in range(warm):
        losses.append(step(i))
    sync()
    warm_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for i in range(warm, warm + steps):
        losses.append(step(i))
    sync()
    seconds = time.perf_counter() - t0
    issue = []  # CPU time to queue one step when the GPU starts idle (≈ the CPU overhead when below the step time)
    for i in range(2):
        sync()
        t1 = time.perf_counter()
        losses.append(step(warm + steps + i))
        issue.append(time.perf_counter() - t1)
    sync()
    img_s = batch * steps / seconds
    result: dict[str, Any] = {
        "mode": mode, "batch": batch, "img_s": round(img_s, 2), "ms_per_step": round(1000 * seconds / steps, 1),
        "warmup_s": round(warm_s - warm * seconds / steps, 1), "peak_gb": peak_gb(),
        "cpu_issue_ms": round(1000 * min(issue), 1),
        "losses": [round(x, 5) for x in torch.stack(losses).float().cpu().tolist()],
    }
    if note:
        result["levers"] = note
    if flops_per_image and peak:
        tflops = flops_per_image * img_s
        result.update(tflops=round(tflops, 1), pct_of_matmul_peak=round(100 * tflops / peak, 1))
    if profile and device == "cuda":
        try:
            result["profile_one_step"] = kernel_profile(lambda: step(warm + steps + 2), cpu=True)
        except Exception:
            result["profile_error"] = traceback.format_exc()[-400:]
    row = rec.row(name, **result)
    if keep_weights:
        WEIGHTS[name] = (start_weights, torch.cat([p.detach().float().flatten() for p in params]).cpu())
    del unet, optimizer, params
    gc.collect()
    reset_peak()
    return row


def flops_per_image(data: Data) -> float:
    """TFLOP of one training image (forward + backward through the frozen UNet to the LoRA weights), batch 1."""
    from peft import LoraConfig
    from torch.utils.flop_counter import FlopCounterMode

    unet = build_unet(data.device, data.dtype, data.tiny)
    unet.add_adapter(LoraConfig(r=16, lora_alpha=4, target_modules=TARGETS))
    params = lora_params(unet)
    for p in params:
        p.data = p.data.to(data.dtype)
        p.requires_grad_(True)
    b = data.batch(0, 1)
    with FlopCounterMode(display=False) as counter:
        pred = unet(b["noisy"], b["timesteps"], encoder_hidden_states=b["emb"],
                    added_cond_kwargs={"text_embeds": b["pooled"], "time_ids": b["time_ids"]}).sample
        F.mse_loss(pred.float(), b["noise"]).backward()
    del unet, params
    gc.collect()
    return counter.get_total_flops() / 1e12


def compare(ref: dict[str, Any], other: dict[str, Any]) -> dict[str, Any]:
    """How far ``other``'s training went from ``ref``'s: loss curves and the LoRA weights' updates."""
    la, lb = torch.tensor(ref["losses"]), torch.tensor(other["losses"])
    (start, ref_end), (_, end) = WEIGHTS[ref["name"]], WEIGHTS[other["name"]]
    ref_update = (ref_end - start).norm().item()
    return {
        "vs": ref["name"],
        "loss_max_rel_diff": round(((la - lb).abs() / la.abs()).max().item(), 5),
        "loss_mean_ref": round(la.mean().item(), 5),
        "loss_mean": round(lb.mean().item(), 5),
        "update_rel_diff": round((end - ref_end).norm().item() / max(ref_update, 1e-30), 4),
        "update_norm_ratio": round((end - start).norm().item() / max(ref_update, 1e-30), 4),
        "unchanged_weight_fraction": round(((end - start) == 0).float().mean().item(), 4),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", default=None)
    parser.add_argument("--tiny", action="store_true", help="small random model on the CPU: a smoke test of this script")
    parser.add_argument("--budget", type=float, default=280.0, help="seconds; later configurations are skipped past it")
    parser.add_argument("--curve-steps", type=int, default=20)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--plan", choices=["full", "v2", "v3", "v4"], default="full", help="which set of configurations")
    args = parser.parse_args()

    started = time.perf_counter()
    use_compile_cache()
    tiny = args.tiny
    device = "cpu" if tiny else "cuda"
    dtype = torch.float32 if tiny else torch.bfloat16
    rec = Recorder(args.json, started)
    rec.set("environment", environment())
    peak = matmul_peak()
    rec.set("matmul_peak_tflops", peak)
    data = Data(device, dtype, tiny)
    fpi = flops_per_image(data)
    rec.set("tflop_per_training_image", round(fpi, 2))
    common = {"flops_per_image": fpi, "peak": peak}
    curve, steps = args.curve_steps, args.steps
    big = 2 if tiny else 8
    small = 1 if tiny else 4
    blocks = ("BasicTransformerBlock",)
    regions = ("BasicTransformerBlock", "ResnetBlock2D")

    def attempt(name: str, **kw: Any) -> dict[str, Any] | None:
        if rec.elapsed() > args.budget:
            rec.row(name, skipped="time budget")
            return None
        try:
            return run(rec, data, name, **common, **kw)
        except torch.cuda.OutOfMemoryError:
            gc.collect()
            reset_peak()
            rec.row(name, error="out of memory")
        except Exception:
            gc.collect()
            reset_peak()
            rec.row(name, error=traceback.format_exc()[-1500:])
        return None

    comparisons = []
    if args.no_compile and args.plan == "v2":
        blocks = regions = ()
    if args.plan == "v4":  # fourth round: attention backend and Triton kernel tuning under the CUDA graphs
        recipe8 = attempt(f"recipe (fp32 LoRA + autocast), batch {big}", mode="recipe", batch=big, steps=steps)
        graphs = dict(mode="fast", batch=big, steps=steps, compile_classes=blocks, fuse_qkv=True,
                      compile_mode="reduce-overhead")
        attempt(f"fast + fused LoRA q/k/v + blocks as CUDA graphs, batch {big}", **graphs)
        attempt(f"the same, SDPA prefers flash, batch {big}", **graphs, sdpa="flash")
        attempt(f"the same, coordinate-descent tuning of the Triton kernels, batch {big}", **graphs,
                coordinate_descent=True, profile=True)
        recipe4 = fast4c = bf16_4 = fast4 = None
    elif args.plan == "v3":  # third round: LoRA's own cost, fused LoRA q/k/v, whole-model graphs, CUDA graphs
        recipe4, fast4c, recipe8 = plan_v3(attempt, tiny, small, big, curve, steps, blocks)
        bf16_4 = fast4 = None
    elif args.plan == "v2":  # second round: no channels_last, where the CPU time goes, bigger batches
        recipe8 = attempt(f"recipe (fp32 LoRA + autocast), batch {big}", mode="recipe", batch=big, steps=steps)
        attempt(f"fast eager, batch {big}", mode="fast", batch=big, steps=steps)
        attempt(f"fast + compiled transformer blocks, batch {big}", mode="fast", batch=big, steps=steps,
                compile_classes=blocks, profile=True)
        attempt(f"fast + compiled transformer blocks + loss.item() every step, batch {big}", mode="fast", batch=big,
                steps=steps, compile_classes=blocks, sync_each_step=True)
        attempt(f"fast + compiled transformer blocks + fused AdamW, batch {big}", mode="fast", batch=big, steps=steps,
                compile_classes=blocks, fused_adamw=True)
        attempt(f"bf16 LoRA + compiled transformer blocks, batch {big}", mode="bf16", batch=big, steps=steps,
                compile_classes=blocks)
        attempt(f"fast + compiled transformer + ResNet blocks (NCHW), batch {big}", mode="fast", batch=big,
                steps=steps, compile_classes=regions, profile=True)
        attempt("fast + compiled transformer blocks, batch 12" if not tiny else "fast compiled batch 3",
                mode="fast", batch=12 if not tiny else 3, steps=steps, compile_classes=blocks)
        attempt(f"fast + compiled transformer blocks + gradient checkpointing, batch {big}", mode="fast", batch=big,
                steps=steps, compile_classes=blocks, checkpointing=True)
        attempt("fast + compiled transformer blocks + gradient checkpointing, batch 16" if not tiny else "ckpt batch 4",
                mode="fast", batch=16 if not tiny else 4, steps=steps, compile_classes=blocks, checkpointing=True)
        recipe4 = attempt(f"recipe (fp32 LoRA + autocast), batch {small}", mode="recipe", batch=small, steps=curve,
                          keep_weights=True)
        fast4c = attempt(f"fast + compiled transformer blocks, batch {small}", mode="fast", batch=small, steps=curve,
                         compile_classes=blocks, keep_weights=True)
        bf16_4 = fast4 = None
    else:
        recipe4, bf16_4, fast4, fast4c, recipe8 = plan_full(attempt, args, tiny, small, big, curve, steps, blocks, regions)
    if recipe4:
        for other in (bf16_4, fast4, fast4c):
            if other:
                comparisons.append({"name": other["name"], **compare(recipe4, other)})
        rec.set("training_equivalence", comparisons)

    base = recipe8["img_s"] if recipe8 else None
    print("\n| configuration | img/s | vs recipe b8 | peak GB | warm-up s | ms/step | CPU issue ms |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for row in rec.data["rows"]:
        if "img_s" in row:
            ratio = f"{row['img_s'] / base:.2f}x" if base else "-"
            print(f"| {row['name']} | {row['img_s']} | {ratio} | {row['peak_gb']} | {row['warmup_s']} | {row['ms_per_step']} | {row.get('cpu_issue_ms')} |")
    for c in comparisons:
        print(c)
    print(f"\nelapsed {rec.elapsed():.0f} s")
    return 0


def plan_v3(attempt: Any, tiny: bool, small: int, big: int, curve: int, steps: int,
            blocks: tuple[str, ...]) -> tuple[Any, ...]:
    """The third round: where LoRA's cost goes and the levers against it and against the CPU."""
    recipe8 = attempt(f"recipe (fp32 LoRA + autocast), batch {big}", mode="recipe", batch=big, steps=steps)
    attempt(f"fast + compiled transformer blocks, batch {big}", mode="fast", batch=big, steps=steps,
            compile_classes=blocks)
    attempt(f"no LoRA (frozen UNet, backward to its input) + compiled blocks, batch {big}", mode="nolora", batch=big,
            steps=steps, compile_classes=blocks)
    attempt(f"fast + fused LoRA q/k/v + compiled blocks, batch {big}", mode="fast", batch=big, steps=steps,
            compile_classes=blocks, fuse_qkv=True, profile=True)
    attempt("fast + fused LoRA q/k/v + compiled blocks, batch 12" if not tiny else "fused qkv batch 3", mode="fast",
            batch=12 if not tiny else 3, steps=steps, compile_classes=blocks, fuse_qkv=True)
    recipe4 = attempt(f"recipe (fp32 LoRA + autocast), batch {small}", mode="recipe", batch=small, steps=curve,
                      keep_weights=True)
    fast4c = attempt(f"fast + fused LoRA q/k/v + compiled blocks, batch {small}", mode="fast", batch=small,
                     steps=curve, compile_classes=blocks, fuse_qkv=True, keep_weights=True)
    attempt(f"fast + fused LoRA q/k/v + blocks as CUDA graphs, batch {small}", mode="fast", batch=small,
            steps=steps, compile_classes=blocks, fuse_qkv=True, compile_mode="reduce-overhead")
    attempt(f"fast + fused LoRA q/k/v + blocks as CUDA graphs, batch {big}", mode="fast", batch=big,
            steps=steps, compile_classes=blocks, fuse_qkv=True, compile_mode="reduce-overhead", profile=True)
    attempt(f"fast + fused LoRA q/k/v + whole UNet compiled, batch {big}", mode="fast", batch=big, steps=steps,
            fuse_qkv=True, whole="default")
    return recipe4, fast4c, recipe8


def plan_full(attempt: Any, args: Any, tiny: bool, small: int, big: int, curve: int, steps: int,
              blocks: tuple[str, ...], regions: tuple[str, ...]) -> tuple[Any, ...]:
    """The first round (bench/RESULTS.md, run 1)."""
    recipe4 = attempt(f"recipe (fp32 LoRA + autocast), batch {small}", mode="recipe", batch=small, steps=curve, keep_weights=True)
    bf16_4 = attempt(f"bf16 LoRA, no autocast, batch {small}", mode="bf16", batch=small, steps=curve, keep_weights=True)
    fast4 = attempt(f"fast eager (fp32 LoRA computed in bf16), batch {small}", mode="fast", batch=small, steps=curve, keep_weights=True)
    recipe8 = attempt(f"recipe (fp32 LoRA + autocast), batch {big}", mode="recipe", batch=big, steps=steps)
    attempt(f"bf16 LoRA, no autocast, batch {big}", mode="bf16", batch=big, steps=steps)
    attempt(f"fast eager, batch {big}", mode="fast", batch=big, steps=steps)
    attempt(f"fast eager + channels_last, batch {big}", mode="fast", batch=big, steps=steps, channels_last=True)
    if not args.no_compile:
        attempt(f"fast + compiled transformer blocks, batch {big}", mode="fast", batch=big, steps=steps,
                compile_classes=blocks)
        attempt(f"fast + compiled transformer blocks + channels_last, batch {big}", mode="fast", batch=big,
                steps=steps, channels_last=True, compile_classes=blocks)
        attempt(f"fast + compiled transformer + ResNet blocks + channels_last, batch {big}", mode="fast", batch=big,
                steps=steps, channels_last=True, compile_classes=regions, profile=True)
        fast4c = attempt(f"fast + compiled (all regions) + channels_last, batch {small}", mode="fast", batch=small,
                         steps=curve, channels_last=True, compile_classes=regions, keep_weights=True)
        attempt("fast + compiled (all regions) + channels_last, batch 2" if not tiny else "fast compiled batch 1",
                mode="fast", batch=2 if not tiny else 1, steps=steps, channels_last=True, compile_classes=regions)
        attempt("fast + compiled (all regions) + channels_last, batch 12" if not tiny else "fast compiled batch 3",
                mode="fast", batch=12 if not tiny else 3, steps=steps, channels_last=True, compile_classes=regions)
        attempt(f"fast + compiled + channels_last + gradient checkpointing, batch {big}", mode="fast", batch=big,
                steps=steps, channels_last=True, compile_classes=regions, checkpointing=True)
    else:
        fast4c = None
    return recipe4, bf16_4, fast4, fast4c, recipe8


if __name__ == "__main__":
    raise SystemExit(main())
