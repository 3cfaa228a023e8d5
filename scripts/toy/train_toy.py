"""Train the toy model family from scratch on toy-world pictures (one GPU, minutes).

Two stages, each one call of a few minutes on an H100:

  autoencoders  render scenes in every style; train the VAE (L1 + MSE + edge + KL)
                and the toy Chinese CLIP (contrastive, both languages)
  diffusion     render flat-style scenes, encode them with the trained VAE, train the
                ChatGLM text encoder and the UNet together with the diffusion loss
                (epsilon, min-SNR-5, EMA); sample a grid and score it with the toy CLIP
                against a shuffled-caption control

  python scripts/toy/train_toy.py autoencoders --out toy-train --seed 0
  python scripts/toy/train_toy.py diffusion --out toy-train --seed 0

Everything is seeded (data, initialisation, batches, noise); GPU kernels are not
bitwise deterministic, so a rerun matches closely, not exactly. Each stage writes
its models as diffusers / transformers folders under --out, a metrics JSON, loss
curves and sample grids (PNG); ``--pack DIR`` also writes the model folders as one
tar split into 15 MiB parts (how they come back from the GPU machine).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import subprocess
import tarfile
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from lorastory.models.tiny_clip import CLIP_MEAN, CLIP_STD, LOGIT_SCALE
from lorastory.models.toy import CLIP_MAX_TOKENS, TOY_RESOLUTION, build_toy_clip, build_toy_kolors
from lorastory.toyworld import STYLES, caption, render, sample_scene

GLM_TOKENS = 256  # KolorsPipeline pads every prompt to 256 tokens; training must see the same
STYLE_NAMES = list(STYLES)
SAMPLE_PROMPTS = [
    "a girl with long red hair and a blue shirt on the left, a house on the right, on the grass, during the day",
    "一个红色长发、穿蓝色衣服的女孩在左边，右边有一座房子，草地上，白天",
    "a boy with short black hair and a yellow shirt on the right, in the snow, at night",
    "一个黑色短发、穿黄色衣服的男孩在右边，雪地里，夜晚",
    "a big red circle in the middle, on the sand, during the day",
    "一个大的红色圆形在中间，沙滩上，白天",
    "a small blue triangle on the left, a tree on the right, on the grass, at night",
    "一个小的蓝色三角形在左边，右边有一棵树，草地上，夜晚",
    "a big green star on the right, a house on the left, in the snow, during the day",
    "一个大的绿色星形在右边，左边有一座房子，雪地里，白天",
    "a big yellow heart in the middle, on the grass, at night",
    "一个大的黄色心形在中间，草地上，夜晚",
    "a girl with long pink hair and a green shirt in the middle, a tree on the left, on the sand, during the day",
    "一个粉色长发、穿绿色衣服的女孩在中间，左边有一棵树，沙滩上，白天",
    "a small purple square on the right, on the grass, during the day",
    "一个小的紫色方形在右边，草地上，白天",
]


# ---------------------------------------------------------------- data

_WORKER: dict[str, Any] = {}


def _init_worker(glm_vocab: str, clip_vocab: dict[str, int]) -> None:
    from diffusers.pipelines.kolors import ChatGLMTokenizer
    from transformers import BertTokenizer

    torch.set_num_threads(1)
    _WORKER["glm"] = ChatGLMTokenizer(vocab_file=glm_vocab)
    _WORKER["clip"] = BertTokenizer(vocab=dict(clip_vocab), model_max_length=CLIP_MAX_TOKENS)


def _tokenize(texts: list[str]) -> dict[str, np.ndarray]:
    glm = _WORKER["glm"](texts, padding="max_length", max_length=GLM_TOKENS, truncation=True, return_tensors="np")
    clip = _WORKER["clip"](texts, padding="max_length", max_length=CLIP_MAX_TOKENS, truncation=True, return_tensors="np")
    return {
        "glm_ids": glm["input_ids"].astype(np.int32), "glm_mask": glm["attention_mask"].astype(np.int8),
        "glm_pos": glm["position_ids"].astype(np.int16),
        "clip_ids": clip["input_ids"].astype(np.int32), "clip_mask": clip["attention_mask"].astype(np.int8),
    }


def _render_chunk(job: tuple[int, int, int, bool]) -> dict[str, np.ndarray]:
    """Scenes ``start .. start+count`` of the stream ``seed``: pictures, captions (en, zh) and tokens."""
    start, count, seed, all_styles = job
    images, styles, texts = [], [], []
    for index in range(start, start + count):
        rng = random.Random(seed * 1_000_003 + index)
        scene = sample_scene(rng)
        style = rng.choice(STYLE_NAMES) if all_styles else "flat"
        # Name the style most of the time for the learned styles, half of the time for flat.
        named = rng.random() < (0.5 if style == "flat" else 0.85)
        images.append(np.asarray(render(scene, style, TOY_RESOLUTION, seed=index)))
        styles.append(STYLE_NAMES.index(style))
        texts += [caption(scene, lang, style if named else None, rng) for lang in ("en", "zh")]
    tokens = _tokenize(texts)
    out = {key: value.reshape(count, 2, -1) for key, value in tokens.items()}
    out["images"] = np.stack(images)
    out["styles"] = np.asarray(styles, dtype=np.int8)
    return out


def render_dataset(count: int, seed: int, all_styles: bool, glm_vocab: Path, clip_vocab: dict[str, int], workers: int) -> dict[str, torch.Tensor]:
    """``count`` scenes rendered and tokenized in parallel, as CPU tensors."""
    chunk = 1000
    jobs = [(start, min(chunk, count - start), seed, all_styles) for start in range(0, count, chunk)]
    with ProcessPoolExecutor(workers, initializer=_init_worker, initargs=(str(glm_vocab), clip_vocab)) as pool:
        parts = list(pool.map(_render_chunk, jobs))
    return {key: torch.from_numpy(np.concatenate([p[key] for p in parts])) for key in parts[0]}


# ---------------------------------------------------------------- helpers


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def _report(message: str, step: int, total: int, start: float, budget: float) -> bool:
    """Log every 200 steps and the last; True once the stage's time budget is spent."""
    if step % 200 == 0 or step == total - 1:
        _log(f"{message} ({time.time() - start:.0f} s)")
    if time.time() - start > budget:
        _log(f"{message.split(' step')[0]}: time budget reached after {step + 1} steps")
        return True
    return False


def _pixels(images_uint8: torch.Tensor, device: torch.device) -> torch.Tensor:
    return images_uint8.to(device, non_blocking=True).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def _cosine_schedule(optimizer: torch.optim.Optimizer, warmup: int, total: int | list[int]) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up, then cosine to 5%; ``total`` may be a one-item list set once the speed is known."""
    length = total if isinstance(total, list) else [total]

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, length[0] - warmup)))) * 0.95 + 0.05

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _plot(curves: dict[str, list[float]], path: Path, title: str) -> None:
    """A small line plot of smoothed losses (Pillow only; the GPU machine has no matplotlib)."""
    width, height, pad = 640, 360, 40
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    draw.text((pad, 8), title, fill="black")
    colours = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"]
    smoothed = {}
    for name, values in curves.items():
        values = np.asarray(values, dtype=np.float64)
        if len(values) == 0:
            continue
        k = max(1, len(values) // 100)
        smoothed[name] = np.convolve(values, np.ones(k) / k, mode="valid")
    if not smoothed:
        return
    low = min(float(np.log10(v.min() + 1e-12)) for v in smoothed.values())
    high = max(float(np.log10(v.max() + 1e-12)) for v in smoothed.values())
    span = max(high - low, 1e-6)
    draw.rectangle([pad, pad, width - pad, height - pad], outline="black")
    for decade in range(math.floor(low), math.ceil(high) + 1):
        y = height - pad - (decade - low) / span * (height - 2 * pad)
        if pad <= y <= height - pad:
            draw.text((4, y - 6), f"1e{decade}", fill="gray")
    for (name, values), colour in zip(smoothed.items(), colours):
        xs = np.linspace(pad, width - pad, len(values))
        ys = height - pad - (np.log10(values + 1e-12) - low) / span * (height - 2 * pad)
        draw.line(list(zip(xs.tolist(), ys.tolist())), fill=colour, width=2)
        draw.text((width - pad - 150, pad + 6 + 14 * list(smoothed).index(name)), f"{name}: {values[-1]:.4g}", fill=colour)
    image.save(path)


def _grid(images: list[Image.Image], cols: int, path: Path) -> None:
    side = images[0].width
    rows = math.ceil(len(images) / cols)
    sheet = Image.new("RGB", (cols * side, rows * side), "white")
    for i, image in enumerate(images):
        sheet.paste(image, ((i % cols) * side, (i // cols) * side))
    sheet.save(path)


def _half(folder: Path) -> None:
    """Rewrite every safetensors file under ``folder`` in float16 (what ships; lorastory widens it again)."""
    from safetensors.torch import load_file, save_file

    for file in folder.rglob("*.safetensors"):
        tensors = {k: (v.half() if v.is_floating_point() else v) for k, v in load_file(file).items()}
        save_file(tensors, file, metadata={"format": "pt"})


def _pack(folders: list[Path], pack_dir: Path, name: str) -> None:
    """The folders as one tar in 15 MiB parts (the GPU machine returns files of up to 16 MiB)."""
    pack_dir.mkdir(parents=True, exist_ok=True)
    tar_path = Path(tempfile.mkdtemp()) / f"{name}.tar"
    with tarfile.open(tar_path, "w") as tar:
        for folder in folders:
            tar.add(folder, arcname=folder.name)
    subprocess.run(["split", "-b", "15M", "-d", str(tar_path), str(pack_dir / f"{name}.tar.part-")], check=True)


# ---------------------------------------------------------------- stage 1: VAE + CLIP


def train_vae(vae: Any, images: torch.Tensor, args: argparse.Namespace, device: torch.device) -> dict[str, list[float]]:
    generator = torch.Generator().manual_seed(args.seed + 1)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=args.vae_lr, weight_decay=0.0, betas=(0.9, 0.99))
    schedule = _cosine_schedule(optimizer, 200, args.vae_steps)
    curves: dict[str, list[float]] = {"reconstruction": [], "kl": []}
    vae.train()
    start = time.time()
    for step in range(args.vae_steps):
        index = torch.randint(len(images), (args.vae_batch,), generator=generator)
        x = _pixels(images[index], device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            posterior = vae.encode(x).latent_dist
            z = posterior.sample()
            y = vae.decode(z).sample.float()
        edges = F.l1_loss(y[..., 1:, :] - y[..., :-1, :], x[..., 1:, :] - x[..., :-1, :]) + F.l1_loss(
            y[..., 1:] - y[..., :-1], x[..., 1:] - x[..., :-1]
        )
        reconstruction = F.l1_loss(y, x) + F.mse_loss(y, x) + 0.5 * edges
        kl = posterior.kl().mean() / (z[0].numel())
        loss = reconstruction + args.vae_kl * kl
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        curves["reconstruction"].append(reconstruction.item())
        curves["kl"].append(kl.item())
        if _report(f"vae step {step}: reconstruction {curves['reconstruction'][-1]:.4f} kl {kl.item():.3f}", step, args.vae_steps, start, args.max_seconds_vae):
            break
    vae.eval()
    return curves


@torch.no_grad()
def latent_statistics(vae: Any, images: torch.Tensor, device: torch.device) -> tuple[float, float]:
    """Std of the latents' means and the reconstruction PSNR on 512 pictures."""
    x = _pixels(images[:512], device)
    z = vae.encode(x).latent_dist.mode()
    y = vae.decode(z).sample.clamp(-1, 1)
    mse = F.mse_loss((y + 1) / 2, (x + 1) / 2).item()
    return z.std().item(), 10 * math.log10(1 / max(mse, 1e-12))


def _clip_pixels(images_uint8: torch.Tensor, device: torch.device, augment: torch.Generator | None = None) -> torch.Tensor:
    x = images_uint8.to(device).permute(0, 3, 1, 2).float() / 255.0
    if augment is not None:  # half the batch blurred, as generated pictures are softer than drawn ones
        blur = torch.rand(len(x), generator=augment).to(device) < 0.5
        soft = F.interpolate(F.interpolate(x, scale_factor=0.5, mode="bilinear", antialias=True), size=x.shape[-2:], mode="bilinear")
        x = torch.where(blur[:, None, None, None], soft, x)
    return _clip_normalize(x)


def _clip_normalize(x: torch.Tensor) -> torch.Tensor:
    """Pixels in [0, 1] (N, 3, H, W) as the CLIP image processor normalizes them."""
    mean = torch.tensor(CLIP_MEAN, device=x.device)[:, None, None]
    std = torch.tensor(CLIP_STD, device=x.device)[:, None, None]
    return (x - mean) / std


def train_clip(model: Any, data: dict[str, torch.Tensor], args: argparse.Namespace, device: torch.device) -> dict[str, list[float]]:
    generator = torch.Generator().manual_seed(args.seed + 2)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embeddings" not in n]
    rest = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embeddings" not in n)]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}], lr=args.clip_lr, betas=(0.9, 0.98))
    schedule = _cosine_schedule(optimizer, 300, args.clip_steps)
    with torch.no_grad():
        model.logit_scale.fill_(math.log(1 / 0.07))
    curves: dict[str, list[float]] = {"contrastive": [], "accuracy": []}
    model.train()
    start = time.time()
    n = len(data["images"])
    for step in range(args.clip_steps):
        index = torch.randint(n, (args.clip_batch,), generator=generator)
        lang = torch.randint(2, (args.clip_batch,), generator=generator)
        ids = data["clip_ids"][index, lang].to(device).long()
        mask = data["clip_mask"][index, lang].to(device).long()
        pixels = _clip_pixels(data["images"][index], device, generator)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            out = model(input_ids=ids, attention_mask=mask, pixel_values=pixels)
        logits = out.logits_per_image.float()
        target = torch.arange(len(ids), device=device)
        loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, LOGIT_SCALE)
        curves["contrastive"].append(loss.item())
        curves["accuracy"].append((logits.argmax(1) == target).float().mean().item())
        if _report(f"clip step {step}: loss {loss.item():.4f} in-batch top-1 {curves['accuracy'][-1]:.3f}", step, args.clip_steps, start, args.max_seconds_clip):
            break
    model.eval()
    with torch.no_grad():  # logits / 100 = cosine similarity, as for trained CLIP models
        model.logit_scale.fill_(LOGIT_SCALE)
    return curves


def _features(output: Any) -> torch.Tensor:
    return output if isinstance(output, torch.Tensor) else output.pooler_output


@torch.no_grad()
def clip_metrics(model: Any, data: dict[str, torch.Tensor], device: torch.device, count: int = 1024) -> dict[str, float]:
    """Held-out retrieval: top-1 among ``count`` captions per language, matched vs shuffled cosine, style words."""
    count = min(count, len(data["images"]) // 4)
    index = torch.arange(len(data["images"]) - count, len(data["images"]))
    pixels = _clip_pixels(data["images"][index], device)
    image = F.normalize(_features(model.get_image_features(pixel_values=pixels)).float(), dim=-1)
    metrics: dict[str, float] = {}
    for lang, name in ((0, "en"), (1, "zh")):
        text = F.normalize(
            _features(model.get_text_features(input_ids=data["clip_ids"][index, lang].to(device).long(),
                                              attention_mask=data["clip_mask"][index, lang].to(device).long())).float(),
            dim=-1,
        )
        similarity = image @ text.T
        target = torch.arange(count, device=device)
        metrics[f"top1_of_{count}_{name}"] = (similarity.argmax(1) == target).float().mean().item()
        metrics[f"cosine_matched_{name}"] = similarity.diag().mean().item()
        metrics[f"cosine_shuffled_{name}"] = similarity.roll(1, dims=1).diag().mean().item()
    return metrics


def stage_autoencoders(args: argparse.Namespace, device: torch.device, scratch: Path) -> None:
    out = Path(args.out)
    pipe = build_toy_kolors(scratch, seed=args.seed)
    clip, processor = build_toy_clip(seed=args.seed)
    _log("rendering")
    # The vocabulary as token -> id: the workers' tokenizers must give the ids the saved one gives.
    data = render_dataset(args.scenes, args.seed, True, scratch / "toy_spm.model", processor.tokenizer.get_vocab(), args.workers)
    _log(f"rendered {len(data['images'])} scenes in all styles")

    if args.skip_vae:
        _train_and_save_clip(clip, processor, data, args, device, out)
        return
    vae = pipe.vae.to(device)
    vae_curves = train_vae(vae, data["images"][: len(data["images"]) - 1024], args, device)
    spread, psnr = latent_statistics(vae, data["images"][len(data["images"]) - 1024 :], device)
    vae.register_to_config(scaling_factor=round(1.0 / spread, 5))
    _log(f"vae: latent std {spread:.4f} -> scaling_factor {vae.config.scaling_factor}; held-out PSNR {psnr:.2f} dB")
    with torch.no_grad():
        x = _pixels(data["images"][-8:], device)
        y = vae.decode(vae.encode(x).latent_dist.mode()).sample.clamp(-1, 1)
    pairs = [Image.fromarray(((t.permute(1, 2, 0).float().cpu().numpy() + 1) * 127.5).round().astype(np.uint8)) for t in torch.cat([x, y])]
    _grid(pairs, 8, out / "vae_reconstructions.png")
    vae.to("cpu").save_pretrained(out / "vae", safe_serialization=True)

    _plot({"vae reconstruction": vae_curves["reconstruction"]}, out / "vae_loss.png", "toy VAE: L1 + MSE + edge loss (log scale)")
    report = {
        "scenes": args.scenes, "vae_steps": len(vae_curves["reconstruction"]), "vae_psnr_db": psnr,
        "vae_scaling_factor": vae.config.scaling_factor, "vae_final_loss": float(np.mean(vae_curves["reconstruction"][-50:])),
    }
    (out / "vae.json").write_text(json.dumps(report, indent=2))
    _log(json.dumps(report))
    _half(out / "vae")
    _train_and_save_clip(clip, processor, data, args, device, out)


def _train_and_save_clip(clip: Any, processor: Any, data: dict[str, torch.Tensor], args: argparse.Namespace, device: torch.device, out: Path) -> None:
    clip = clip.to(device)
    clip_curves = train_clip(clip, {k: v[: len(v) - 1024] for k, v in data.items()}, args, device)
    metrics = clip_metrics(clip, data, device)
    _log(f"clip held-out: {json.dumps(metrics)}")
    clip.to("cpu").save_pretrained(out / "clip", safe_serialization=True)
    processor.save_pretrained(out / "clip")
    _half(out / "clip")
    _plot({"clip contrastive": clip_curves["contrastive"]}, out / "clip_loss.png", "toy CLIP: contrastive loss (log scale)")
    report = {"scenes": args.scenes, "clip_steps": len(clip_curves["contrastive"]), "clip": metrics,
              "clip_final_loss": float(np.mean(clip_curves["contrastive"][-50:]))}
    (out / "clip.json").write_text(json.dumps(report, indent=2))
    _log(json.dumps(report))
    if args.pack:
        _pack([out / "clip"] + ([] if args.skip_vae else [out / "vae"]), Path(args.pack), "autoencoders")


# ---------------------------------------------------------------- stage 2: text encoder + UNet


def encode_glm(text_encoder: Any, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """What KolorsPipeline.encode_prompt computes: penultimate hidden states and the last token's final state."""
    output = text_encoder(input_ids=ids, attention_mask=mask, position_ids=positions, output_hidden_states=True)
    return output.hidden_states[-2].permute(1, 0, 2), output.hidden_states[-1][-1, :, :]


@torch.no_grad()
def encode_latents(vae: Any, images: torch.Tensor, device: torch.device, batch: int = 512) -> torch.Tensor:
    parts = []
    for start in range(0, len(images), batch):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            z = vae.encode(_pixels(images[start : start + batch], device)).latent_dist.mode()
        parts.append((z.float() * vae.config.scaling_factor).to(torch.bfloat16))
    return torch.cat(parts)


def train_diffusion(pipe: Any, latents: torch.Tensor, data: dict[str, torch.Tensor], empty: dict[str, torch.Tensor], args: argparse.Namespace, device: torch.device) -> dict[str, list[float]]:
    from diffusers import DDPMScheduler
    from diffusers.training_utils import EMAModel, compute_snr

    unet, text_encoder = pipe.unet, pipe.text_encoder
    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    parameters = list(unet.parameters()) + list(text_encoder.parameters())
    optimizer = torch.optim.AdamW(parameters, lr=args.unet_lr, weight_decay=0.01, betas=(0.9, 0.99))
    # --unet-steps 0: run 50 steps, then fit the step count to --max-seconds-unet (it is logged, to rerun exactly).
    total = [args.unet_steps or 10**9]
    schedule = _cosine_schedule(optimizer, 500, total)
    ema = EMAModel(parameters, decay=args.ema, use_ema_warmup=True, power=3 / 4)
    ema.to(device)
    generator = torch.Generator().manual_seed(args.seed + 3)
    noise_generator = torch.Generator(device).manual_seed(args.seed + 4)
    size = TOY_RESOLUTION
    time_ids = torch.tensor([size, size, 0, 0, size, size], dtype=torch.float32, device=device).repeat(args.unet_batch, 1)
    curves: dict[str, list[float]] = {"diffusion": []}
    unet.train()
    text_encoder.train()
    start = time.time()
    n = len(latents)
    step = 0
    while step < total[0]:
        if step == 10:
            warm = time.time()  # the first steps include cuDNN autotuning
        if step == 300 and not args.unet_steps:
            total[0] = max(step + 1, int((args.max_seconds_unet - (warm - start)) * 290 / (time.time() - warm)))
            _log(f"diffusion: {total[0]} steps fit the time budget (rerun with --unet-steps {total[0]})")
        index = torch.randint(n, (args.unet_batch,), generator=generator)
        lang = torch.randint(2, (args.unet_batch,), generator=generator)
        drop = (torch.rand(args.unet_batch, generator=generator) < args.caption_dropout).to(device)
        ids = torch.where(drop[:, None], empty["glm_ids"], data["glm_ids"][index, lang].to(device)).long()
        mask = torch.where(drop[:, None], empty["glm_mask"], data["glm_mask"][index, lang].to(device)).long()
        positions = torch.where(drop[:, None], empty["glm_pos"], data["glm_pos"][index, lang].to(device)).long()
        z = latents[index].to(device).float()
        noise = torch.randn(z.shape, generator=noise_generator, device=device)
        timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (len(z),), generator=noise_generator, device=device)
        noisy = noise_scheduler.add_noise(z, noise, timesteps)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            prompt_embeds, pooled = encode_glm(text_encoder, ids, mask, positions)
            prediction = unet(noisy, timesteps, encoder_hidden_states=prompt_embeds,
                              added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids}).sample.float()
        snr = compute_snr(noise_scheduler, timesteps)
        weight = torch.clamp(snr, max=5.0) / snr
        loss = (F.mse_loss(prediction, noise, reduction="none").mean(dim=(1, 2, 3)) * weight).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        schedule.step()
        ema.step(parameters)
        curves["diffusion"].append(loss.item())
        if step % 250 == 0 or step == total[0] - 1:
            rate = (step + 1) * args.unet_batch / (time.time() - start)
            _log(f"diffusion step {step}: loss {np.mean(curves['diffusion'][-50:]):.4f} ({time.time() - start:.0f} s, {rate:.0f} img/s)")
        step += 1
        if time.time() - start > 1.1 * args.max_seconds_unet:
            _log(f"diffusion: time budget overrun, stopped after {step} steps")
            break
    ema.copy_to(parameters)
    unet.eval()
    text_encoder.eval()
    return curves


def _clip_text(clip: Any, processor: Any, texts: list[str], device: torch.device) -> torch.Tensor:
    tokens = processor.tokenizer(texts, padding="max_length", max_length=CLIP_MAX_TOKENS, truncation=True, return_tensors="pt")
    return F.normalize(_features(clip.get_text_features(input_ids=tokens["input_ids"].to(device), attention_mask=tokens["attention_mask"].to(device))).float(), dim=-1)


@torch.no_grad()
def prompt_following(pipe: Any, clip: Any, processor: Any, device: torch.device, count: int, cfgs: list[float], seed: int) -> dict[str, Any]:
    """Toy-CLIP cosine of generated pictures with their prompts vs a shuffled prompt, per language and cfg."""
    rng = random.Random(seed + 99)
    scenes = [sample_scene(rng) for _ in range(count)]
    results: dict[str, Any] = {}
    for lang in ("en", "zh"):
        prompts = [caption(s, lang) for s in scenes]
        text = _clip_text(clip, processor, prompts, device)
        for cfg in cfgs:
            images = []
            for start in range(0, count, 64):
                batch = prompts[start : start + 64]
                generator = [torch.Generator(device).manual_seed(seed + start + i) for i in range(len(batch))]
                images += pipe(batch, height=TOY_RESOLUTION, width=TOY_RESOLUTION, num_inference_steps=50, guidance_scale=cfg,
                               generator=generator, output_type="pt").images.float()
            pixels = _clip_normalize(torch.stack(images).to(device))
            image = F.normalize(_features(clip.get_image_features(pixel_values=pixels)).float(), dim=-1)
            similarity = image @ text.T
            target = torch.arange(count, device=device)
            results[f"{lang}_cfg{cfg:g}"] = {
                "matched": similarity.diag().mean().item(),
                "shuffled": similarity.roll(1, dims=1).diag().mean().item(),
                f"top1_of_{count}": (similarity.argmax(1) == target).float().mean().item(),
            }
    return results


def stage_diffusion(args: argparse.Namespace, device: torch.device, scratch: Path) -> None:
    from diffusers import AutoencoderKL
    from transformers import ChineseCLIPModel, ChineseCLIPProcessor

    out = Path(args.out)
    torch.manual_seed(args.seed)
    if args.init:  # continue training a toy Kolors folder (its tokenizer, text encoder, UNet and VAE)
        from diffusers import KolorsPipeline

        pipe = KolorsPipeline.from_pretrained(args.init, torch_dtype=torch.float32)
        shutil.copy(Path(args.init) / "tokenizer" / "tokenizer.model", scratch / "toy_spm.model")
    else:
        pipe = build_toy_kolors(scratch, seed=args.seed)
        pipe.vae = AutoencoderKL.from_pretrained(out / "vae", torch_dtype=torch.float32)
    processor = ChineseCLIPProcessor.from_pretrained(out / "clip")
    _log("rendering")
    data = render_dataset(args.scenes, args.seed + 17, False, scratch / "toy_spm.model", processor.tokenizer.get_vocab(), args.workers)
    _log(f"rendered {len(data['images'])} flat scenes")
    pipe.to(device)
    latents = encode_latents(pipe.vae, data["images"], device)
    _log(f"encoded latents {tuple(latents.shape)}, std {latents.float().std().item():.3f}")
    empty_tokens = pipe.tokenizer([""], padding="max_length", max_length=GLM_TOKENS, truncation=True, return_tensors="pt")
    empty = {"glm_ids": empty_tokens["input_ids"].to(device), "glm_mask": empty_tokens["attention_mask"].to(device),
             "glm_pos": empty_tokens["position_ids"].to(device)}
    del data["images"]
    curves = train_diffusion(pipe, latents, data, empty, args, device)
    _plot({"diffusion (min-SNR weighted)": curves["diffusion"]}, out / "diffusion_loss.png", "toy Kolors: text encoder + UNet diffusion loss (log scale)")
    report: dict[str, Any] = {"scenes": args.scenes, "steps": len(curves["diffusion"]), "batch": args.unet_batch,
                              "final_loss": float(np.mean(curves["diffusion"][-100:])), "sample_prompts": SAMPLE_PROMPTS}
    kolors = out / "kolors"
    pipe.save_pretrained(kolors, safe_serialization=True)  # saved (and packed) before anything else can fail
    _half(kolors)
    if args.pack:
        _pack([kolors], Path(args.pack), "kolors")
    (out / "diffusion.json").write_text(json.dumps(report, indent=2, ensure_ascii=False))

    pipe.set_progress_bar_config(disable=True)
    samples = []
    for cfg in (3.0, 5.0):
        generator = [torch.Generator(device).manual_seed(args.seed + i) for i in range(len(SAMPLE_PROMPTS))]
        samples += pipe(SAMPLE_PROMPTS, height=TOY_RESOLUTION, width=TOY_RESOLUTION, num_inference_steps=50, guidance_scale=cfg, generator=generator).images
    _grid(samples, 8, out / "diffusion_samples.png")
    # Loaded only now: the CLIP may be trained beside this stage (autoencoders --skip-vae).
    waited = time.time()
    while args.wait_for_clip and not (out / "clip.json").is_file() and time.time() - waited < 600:
        time.sleep(5)
    clip = ChineseCLIPModel.from_pretrained(out / "clip", dtype=torch.float32).to(device).eval()
    processor = ChineseCLIPProcessor.from_pretrained(out / "clip")
    report["prompt_following"] = prompt_following(pipe, clip, processor, device, args.eval_count, [3.0, 5.0], args.seed)
    _log(f"prompt following: {json.dumps(report['prompt_following'])}")
    (out / "diffusion.json").write_text(json.dumps(report, indent=2, ensure_ascii=False))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stage", choices=("autoencoders", "diffusion"))
    parser.add_argument("--out", required=True)
    parser.add_argument("--pack", help="also write the trained folders here as a tar in 15 MiB parts")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scenes", type=int, default=120_000)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--skip-vae", action="store_true", help="autoencoders stage: train only the CLIP")
    parser.add_argument("--vae-steps", type=int, default=4000)
    parser.add_argument("--vae-batch", type=int, default=64)
    parser.add_argument("--vae-lr", type=float, default=5e-4)
    parser.add_argument("--vae-kl", type=float, default=1e-4)
    parser.add_argument("--clip-steps", type=int, default=3000)
    parser.add_argument("--clip-batch", type=int, default=1024)
    parser.add_argument("--clip-lr", type=float, default=5e-4)
    parser.add_argument("--unet-steps", type=int, default=0, help="0: as many as fit --max-seconds-unet")
    parser.add_argument("--unet-batch", type=int, default=256)
    parser.add_argument("--unet-lr", type=float, default=4e-4)
    parser.add_argument("--init", help="diffusion: continue from this toy Kolors folder instead of random weights")
    parser.add_argument("--ema", type=float, default=0.999)
    parser.add_argument("--caption-dropout", type=float, default=0.1)
    parser.add_argument("--eval-count", type=int, default=256)
    parser.add_argument("--max-seconds-vae", type=float, default=float("inf"), help="stop early (steps done are recorded)")
    parser.add_argument("--max-seconds-clip", type=float, default=float("inf"))
    parser.add_argument("--max-seconds-unet", type=float, default=420.0)
    parser.add_argument("--wait-for-clip", action="store_true", help="diffusion: wait for a CLIP trained beside it (clip.json)")
    parser.add_argument("--cpu", action="store_true", help="run on the CPU (for a smoke test at tiny sizes)")
    args = parser.parse_args()

    device = torch.device("cpu" if args.cpu or not torch.cuda.is_available() else "cuda")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        started = time.time()
        if args.stage == "autoencoders":
            stage_autoencoders(args, device, Path(scratch))
        else:
            stage_diffusion(args, device, Path(scratch))
        _log(f"stage {args.stage} done in {time.time() - started:.0f} s on {torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}")


if __name__ == "__main__":
    main()
