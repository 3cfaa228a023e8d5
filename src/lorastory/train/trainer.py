"""The LoRA training loop, in small steps that read top to bottom.

1. read the training folder and plan every image's placement (crop or bucket);
2. load the model, fill the latent/text caches, free the VAE and text encoder;
3. inject LoRA into the UNet, build optimizer and lr schedule under accelerate;
4. resume from the newest checkpoint when asked;
5. loop: cached batch → noise → UNet → loss → step, with checkpoints,
   validation samples and TensorBoard logs;
6. save ``lora.safetensors`` (and kohya format when asked).
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from lorastory.errors import LorastoryError
from lorastory.models.conditioning import encode_text, time_ids, unet_kwargs
from lorastory.models.registry import family_of_pipeline, load_pipeline
from lorastory.train.buckets import assign_bucket, bucket_sizes, small_buckets
from lorastory.train.cache import TensorCache, component_fingerprint, fill_latents, fill_text, latent_key, text_key
from lorastory.train.checkpoint import CheckpointError, Position, list_checkpoints, load_checkpoint, save_checkpoint
from lorastory.train.config import TrainConfig
from lorastory.train.data import Placement, TrainItem, place, read_train_folder


class TrainingError(LorastoryError):
    """Training cannot go on (diverged loss, unusable settings)."""


@dataclass
class Progress:
    """What the loop reports after each optimizer step."""

    step: int
    total_steps: int
    epoch: int
    loss: float
    lr: float
    images_per_second: float


@dataclass
class TrainResult:
    out: Path
    lora_files: list[Path]
    steps: int
    losses: list[float] = field(default_factory=list)
    samples: list[Path] = field(default_factory=list)


@dataclass
class _Example:
    item: TrainItem
    placement: Placement
    latent_key: str
    text_key: str


def _plan(items: list[TrainItem], config: TrainConfig, say: Callable[[str], None]) -> list[tuple[TrainItem, Placement]]:
    """Each item's placement, once per flip variant; deterministic for the seed."""
    rng = random.Random(config.seed)
    buckets = bucket_sizes(config.resolution, config.bucket_step) if config.buckets else None
    planned = []
    for item in items:
        target = assign_bucket(item.size, buckets) if buckets else (config.resolution, config.resolution)
        for flip in (False, True) if config.random_flip else (False,):
            planned.append((item, place(item, target, config.center_crop or bool(buckets), flip, rng)))
    if buckets:
        for bucket, count in small_buckets([p.target for _, p in planned if not p.flip], config.batch_size).items():
            say(f"warning: bucket {bucket[0]}x{bucket[1]} has {count} image(s), fewer than the batch size {config.batch_size}")
    return planned


def _epoch_batches(examples: list[_Example], config: TrainConfig, epoch: int) -> list[list[int]]:
    """Batches of example indices for ``epoch``: one bucket per batch, seeded order.

    With random flip each image has two cached variants; an epoch uses one of
    them per image, chosen by the epoch's generator.
    """
    rng = random.Random(config.seed * 1_000_003 + epoch)
    variants: dict[str, list[int]] = {}
    for index, example in enumerate(examples):
        variants.setdefault(example.item.path, []).append(index)
    chosen = [rng.choice(group) for group in variants.values()]
    by_bucket: dict[tuple[int, int], list[int]] = {}
    for index in chosen:
        by_bucket.setdefault(examples[index].placement.target, []).append(index)
    batches = []
    for bucket in sorted(by_bucket):
        group = by_bucket[bucket]
        rng.shuffle(group)
        batches += [group[i : i + config.batch_size] for i in range(0, len(group), config.batch_size)]
    rng.shuffle(batches)
    return batches


def _precision(config: TrainConfig, device: torch.device) -> str:
    if config.precision != "auto":
        return config.precision
    if device.type != "cuda":
        return "no"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def _weight_dtype(mixed_precision: str) -> torch.dtype:
    return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(mixed_precision, torch.float32)


def _make_optimizer(params: list[torch.nn.Parameter], config: TrainConfig, say: Callable[[str], None]) -> Any:
    if config.optimizer == "adamw8bit":
        try:
            import bitsandbytes as bnb

            if torch.cuda.is_available():
                return bnb.optim.AdamW8bit(params, lr=config.lr, weight_decay=config.weight_decay)
        except ImportError:
            pass
        say("warning: 8-bit AdamW needs bitsandbytes and CUDA; using AdamW")
    return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)


def _loss(model_pred: torch.Tensor, target: torch.Tensor, timesteps: torch.Tensor, noise_scheduler: Any, config: TrainConfig) -> torch.Tensor:
    per_sample = F.mse_loss(model_pred.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
    if config.snr_gamma is not None:
        from diffusers.training_utils import compute_snr

        snr = compute_snr(noise_scheduler, timesteps)
        weight = torch.clamp(snr, max=config.snr_gamma) / snr
        if noise_scheduler.config.prediction_type == "v_prediction":
            weight = torch.clamp(snr, max=config.snr_gamma) / (snr + 1)
        per_sample = per_sample * weight
    return per_sample.mean()


def train(
    config: TrainConfig,
    on_progress: Callable[[Progress], None] | None = None,
    say: Callable[[str], None] = print,
) -> TrainResult:
    """Train a LoRA as ``config`` says; return where the files went."""
    from accelerate import Accelerator
    from accelerate.utils import AutocastKwargs, set_seed
    from diffusers import DDPMScheduler
    from diffusers.optimization import get_scheduler

    from lorastory.models.lora import LoraSpec, inject_lora, save_lora

    out = Path(config.out)
    existing = list_checkpoints(out)
    if existing and not config.resume:
        raise TrainingError(f"{out} already has checkpoints; pass --resume to continue or choose a new --out")
    if config.resume and not existing:
        say(f"note: no checkpoint in {out}; starting from the beginning")
    out.mkdir(parents=True, exist_ok=True)
    config.save_yaml(out / "config.yaml")

    # 1. data
    items, problems = read_train_folder(config.data)
    for problem in problems:
        say(f"skipped {problem}")
    planned = _plan(items, config, say)

    # 2. model and caches
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    mixed_precision = _precision(config, device)
    # Fast path: bf16 compute with fp32 LoRA weights (train/speed.py) replaces autocast. Turned off
    # through the autocast handler, so accelerate's process-wide state keeps mixed_precision="bf16".
    bf16_compute = config.fast and device.type == "cuda" and mixed_precision == "bf16"
    accelerator = Accelerator(
        mixed_precision=mixed_precision,
        kwargs_handlers=[AutocastKwargs(enabled=False)] if bf16_compute else None,
        gradient_accumulation_steps=config.gradient_accumulation,
        log_with="tensorboard",
        project_dir=str(out / "logs"),
        cpu=device.type == "cpu",
    )
    set_seed(config.seed)  # LoRA initialisation and dropout draw from the global generators
    pipe = load_pipeline(config.model, config.family)
    family = family_of_pipeline(pipe)
    model_dir = config.model if Path(config.model).is_dir() else None
    vae_fp = component_fingerprint(model_dir, "vae")
    text_fp = component_fingerprint(model_dir, "text_encoder") + component_fingerprint(model_dir, "text_encoder_2")
    examples = [
        _Example(item, placement, latent_key(vae_fp, item, placement), text_key(text_fp, item.caption))
        for item, placement in planned
    ]
    cache = TensorCache(Path(config.cache_dir) if config.cache_dir else out / "cache")
    started = time.perf_counter()
    pipe.vae.to(device)
    encoded = fill_latents(cache, pipe.vae, [(e.latent_key, e.item, e.placement) for e in examples])
    pipe.vae.to("cpu")
    for name in family.text_encoders:
        getattr(pipe, name).to(device, _weight_dtype(mixed_precision) if device.type == "cuda" else torch.float32)
    captions = [(e.text_key, e.item.caption) for e in examples]
    validation = [(text_key(text_fp, p), p) for p in [*config.validation_prompts, ""]] if config.validation_prompts else []
    encoded_text = fill_text(cache, pipe, captions + validation, device)
    if not config.train_text_encoder:
        for name in family.text_encoders:
            setattr(pipe, name, None)  # a 6B text encoder must not sit in memory while the UNet trains
    if device.type == "cuda":
        torch.cuda.empty_cache()
    say(f"cache: {encoded} image(s) and {encoded_text} caption(s) encoded, the rest reused "
        f"({time.perf_counter() - started:.1f} s)")

    # 3. LoRA, optimizer, schedule
    unet = pipe.unet
    unet.requires_grad_(False)
    weight_dtype = _weight_dtype(mixed_precision)
    unet.to(device, dtype=weight_dtype)
    spec = LoraSpec(rank=config.rank, alpha=config.alpha, dropout=config.lora_dropout,
                    target_modules=config.target_modules, train_text_encoder=config.train_text_encoder)
    # Text encoders being trained encode every batch live (their cached embeddings would be stale).
    text_encoders = {n: getattr(pipe, n) for n in family.text_encoders} if config.train_text_encoder else {}
    for encoder in text_encoders.values():
        encoder.requires_grad_(False)
        encoder.to(device, dtype=weight_dtype)
    params = inject_lora(pipe, spec)
    for param in params:
        param.data = param.data.float()
    if config.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    optimizer = _make_optimizer(params, config, say)
    batches_per_epoch = len(_epoch_batches(examples, config, 0))
    steps_per_epoch = math.ceil(batches_per_epoch / config.gradient_accumulation)
    total_steps = config.max_steps or steps_per_epoch * config.epochs
    lr_scheduler = get_scheduler(config.lr_scheduler, optimizer, num_warmup_steps=config.lr_warmup_steps,
                                 num_training_steps=total_steps)
    if bf16_compute:
        from lorastory.train.speed import auto_compile, prepare_for_training

        compile_unet = auto_compile(device, total_steps) if config.compile is None else config.compile
        say(prepare_for_training(unet, list(text_encoders.values()), compile=compile_unet))
    unet, optimizer, lr_scheduler = accelerator.prepare(unet, optimizer, lr_scheduler)
    for encoder in text_encoders.values():
        encoder.train()
    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    generator = torch.Generator().manual_seed(config.seed)

    # 4. resume
    position = Position(0, 0, 0, config.fingerprint())
    if config.resume and existing:
        position, saved = load_checkpoint(existing[-1][1], config.fingerprint(), optimizer, lr_scheduler, generator)
        named = _trainable(accelerator.unwrap_model(unet), text_encoders)
        if set(saved) != set(named) or any(saved[n].shape != named[n].shape for n in named):
            raise CheckpointError(f"{existing[-1][1]} holds a different set of LoRA weights than this run trains; "
                                  "start a new --out folder")
        for name, tensor in saved.items():
            named[name].data.copy_(tensor)
        say(f"resumed from {existing[-1][1].name} (step {position.global_step})")

    # 5. loop
    accelerator.init_trackers("lorastory")
    result = TrainResult(out, [], position.global_step)
    trainable = _trainable(accelerator.unwrap_model(unet), text_encoders)
    epoch, done = position.epoch, position.batches_done
    seen_images, window_start = 0, time.perf_counter()
    unet.train()
    while result.steps < total_steps:
        batches = _epoch_batches(examples, config, epoch)
        for batch_index in range(done, len(batches)):
            batch = [examples[i] for i in batches[batch_index]]
            with accelerator.accumulate(unet):
                texts = _batch_text(batch, cache, pipe if text_encoders else None, device)
                loss = _training_step(batch, texts, cache, unet, noise_scheduler, generator, config, device, weight_dtype)
                if not torch.isfinite(loss):
                    last = list_checkpoints(out)
                    where = f"; the last good checkpoint is {last[-1][1]}" if last else ""
                    raise TrainingError(f"loss became {loss.item()} at step {result.steps + 1}: lower --lr or use bf16{where}")
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(params, config.max_grad_norm)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            seen_images += len(batch)
            if not accelerator.sync_gradients:
                continue
            result.steps += 1
            loss_value = loss.item()
            result.losses.append(loss_value)
            lr = lr_scheduler.get_last_lr()[0]
            accelerator.log({"train/loss": loss_value, "train/lr": lr}, step=result.steps)
            elapsed = time.perf_counter() - window_start
            if on_progress is not None:
                on_progress(Progress(result.steps, total_steps, epoch, loss_value, lr, seen_images / max(elapsed, 1e-9)))
            finished_epoch = batch_index + 1 == len(batches)
            next_position = Position(result.steps, epoch + 1 if finished_epoch else epoch,
                                     0 if finished_epoch else batch_index + 1, config.fingerprint())
            if config.checkpoint_every and result.steps % config.checkpoint_every == 0 and accelerator.is_main_process:
                _check_finite(trainable, result.steps, out)
                save_checkpoint(out, next_position, {n: p.detach() for n, p in trainable.items()},
                                optimizer, lr_scheduler, generator, config.keep_checkpoints)
            if config.validation_every and result.steps % config.validation_every == 0 and accelerator.is_main_process:
                result.samples += _validate(pipe, accelerator.unwrap_model(unet), cache, config, text_fp, out,
                                            result.steps, device, accelerator)
            if result.steps >= total_steps:
                break
        epoch, done = epoch + 1, 0

    # 6. save
    _check_finite(trainable, result.steps, out)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        pipe.unet = accelerator.unwrap_model(unet)
        for fmt in config.save_formats:
            name = "lora.safetensors" if fmt == "diffusers" else f"lora_{fmt}.safetensors"
            save_lora(pipe, out / name, spec, family.name, format=fmt,
                      extra_metadata={"lorastory.train_config_hash": config.fingerprint(),
                                      "lorastory.steps": str(result.steps)})
            result.lora_files.append(out / name)
    accelerator.end_training()
    return result


def _check_finite(params: dict[str, torch.Tensor], step: int, out: Path) -> None:
    """Never write a checkpoint or LoRA holding inf/NaN weights."""
    if all(torch.isfinite(p).all() for p in params.values()):
        return
    last = list_checkpoints(out)
    where = f"; the last good checkpoint is {last[-1][1]}" if last else ""
    raise TrainingError(f"LoRA weights became inf/NaN at step {step}: lower --lr or use bf16{where}")


def _trainable(unet: Any, text_encoders: dict[str, Any]) -> dict[str, torch.nn.Parameter]:
    """The LoRA parameters being trained, named "<component>.<parameter>"."""
    modules = {"unet": unet, **text_encoders}
    return {f"{c}.{n}": p for c, m in modules.items() for n, p in m.named_parameters() if p.requires_grad}


def _batch_text(batch: list[_Example], cache: TensorCache, pipe: Any, device: torch.device) -> dict[str, torch.Tensor]:
    """Caption embeddings for a batch: from the cache, or live (with gradients) when ``pipe`` is given."""
    if pipe is not None:
        return encode_text(pipe, [e.item.caption for e in batch], device, grad=True)
    texts = [cache.load(e.text_key) for e in batch]
    return {name: torch.stack([t[name] for t in texts]).to(device) for name in texts[0]}


def _training_step(
    batch: list[_Example], text: dict[str, torch.Tensor], cache: TensorCache, unet: Any, noise_scheduler: Any,
    generator: torch.Generator, config: TrainConfig, device: torch.device, weight_dtype: torch.dtype,
) -> torch.Tensor:
    latents = torch.stack([cache.load(e.latent_key)["latents"] for e in batch])
    noise = torch.randn(latents.shape, generator=generator)
    if config.noise_offset:
        noise += config.noise_offset * torch.randn((latents.shape[0], latents.shape[1], 1, 1), generator=generator)
    timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (latents.shape[0],), generator=generator)
    noisy = noise_scheduler.add_noise(latents, noise, timesteps)
    if noise_scheduler.config.prediction_type == "v_prediction":
        target = noise_scheduler.get_velocity(latents, noise, timesteps)
    else:
        target = noise
    add_time_ids = None
    if "pooled_prompt_embeds" in text:
        add_time_ids = torch.stack([
            time_ids(e.item.size[::-1], e.placement.crop_top_left, e.placement.target[::-1]) for e in batch
        ]).to(device)
    model_pred = unet(noisy.to(device, weight_dtype), timesteps.to(device), **unet_kwargs(text, add_time_ids, weight_dtype)).sample
    return _loss(model_pred, target.to(device), timesteps, noise_scheduler, config)


@torch.no_grad()
def _validate(
    pipe: Any, unet: Any, cache: TensorCache, config: TrainConfig, text_fp: str, out: Path, step: int,
    device: torch.device, accelerator: Any,
) -> list[Path]:
    """Render the validation prompts with the current LoRA into ``OUT/samples``."""
    import numpy as np
    from PIL import Image

    was_training = unet.training
    unet.eval()
    pipe.unet = unet
    pipe.vae.to(device)

    def embed(prompt: str) -> dict[str, torch.Tensor]:
        if pipe.text_encoder is not None:  # trained with the text encoder: its cached embeddings are stale
            return {k: v.to(device) for k, v in encode_text(pipe, [prompt], device).items()}
        return {k: v[None].to(device) for k, v in cache.load(text_key(text_fp, prompt)).items()}

    negative = embed("")
    paths = []
    for index, prompt in enumerate(config.validation_prompts):
        positive = embed(prompt)
        kwargs = {"prompt_embeds": positive["prompt_embeds"], "negative_prompt_embeds": negative["prompt_embeds"]}
        if "pooled_prompt_embeds" in positive:
            kwargs["pooled_prompt_embeds"] = positive["pooled_prompt_embeds"]
            kwargs["negative_pooled_prompt_embeds"] = negative["pooled_prompt_embeds"]
        with torch.autocast(device.type, enabled=device.type == "cuda"):
            image = pipe(
                **kwargs, num_inference_steps=config.validation_steps, guidance_scale=config.validation_cfg,
                height=config.resolution, width=config.resolution, output_type="np",
                generator=torch.Generator().manual_seed(config.seed + index),
            ).images[0]
        path = out / "samples" / f"step-{step:06d}-{index:02d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray((np.clip(image, 0, 1) * 255).round().astype("uint8")).save(path)
        paths.append(path)
        for tracker in accelerator.trackers:
            if tracker.name == "tensorboard":
                tracker.writer.add_image(f"samples/{index}", image, step, dataformats="HWC")
    pipe.vae.to("cpu")
    if was_training:
        unet.train()
    return paths
