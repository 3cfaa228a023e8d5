"""Filling the cache before training: latents and caption embeddings encoded once, shared by all processes."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lorastory.errors import TrainingError
from lorastory.fileio import display_path
from lorastory.models.fp8 import quantize_base
from lorastory.train.cache import (
    TensorCache,
    clean_cache_temps,
    component_fingerprint,
    fill_latents,
    fill_text,
    latent_key,
    missing_share,
    text_key,
)
from lorastory.train.config import TrainConfig
from lorastory.train.captions import caption_texts
from lorastory.train.datasets import Dataset
from lorastory.train.hooks import StageHooks
from lorastory.train.plan import Planned
from lorastory.train.step import Example

if TYPE_CHECKING:
    import torch


def frozen_dtype(mixed_precision: str) -> torch.dtype:
    """The dtype frozen weights are held in under ``mixed_precision``."""
    import torch

    return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(mixed_precision, torch.float32)


def make_example(planned: Planned, dataset: Dataset, vae_fp: str, text_fp: str, seed: int) -> Example:
    """A sample with its cache keys: one per training text of its caption (see :mod:`lorastory.train.captions`)."""
    texts = tuple(caption_texts(planned.item.caption, dataset.captions, seed))
    keys = tuple(text_key(text_fp, text) for text in texts)
    return Example(planned.item, planned.placement, latent_key(vae_fp, planned.item, planned.placement), keys[0],
                   texts, keys, text_key(text_fp, ""), dataset.captions, dataset.loss_weight, planned.dataset)


def build_caches(config: TrainConfig, out: Path, accelerator: Any, pipe: Any, family: Any,
                 planned: list[Planned], datasets: list[Dataset],
                 say: Callable[[str], None],
                 hooks: StageHooks | None = None) -> tuple[list[Example], TensorCache, str, float]:
    """Encode what the cache lacks (latents and captions), then free the text encoders unless they train.

    ``hooks`` hear the counts of pictures and captions encoded, and may stop the filling between batches.

    Returns the examples with their cache keys, the cache, the text encoders' fingerprint (for the
    validation prompts' keys) and the seconds it took.
    """
    import torch

    model_dir = config.model if Path(config.model).is_dir() else None
    vae_fp = component_fingerprint(model_dir, "vae")
    text_fp = component_fingerprint(model_dir, "text_encoder") + component_fingerprint(model_dir, "text_encoder_2")
    if config.base_dtype != "default":  # captions encoded with fp8-stored weights are cached apart from bf16 ones
        text_fp += "-fp8w"
    examples = [make_example(p, datasets[p.dataset], vae_fp, text_fp, config.seed) for p in planned]
    cache = TensorCache(Path(config.cache_dir) if config.cache_dir else out / "cache")
    validation = [(text_key(text_fp, p), p) for p in [*config.validation_prompts, ""]] if config.validation_prompts else []
    started = time.perf_counter()
    encoded, encoded_text = _fill_caches(accelerator, pipe, family.text_encoders, examples, validation, cache,
                                         hooks or StageHooks(), fp8_text=config.base_dtype != "default")
    cache_seconds = time.perf_counter() - started
    if not config.lora.train_text_encoder:
        for name in family.text_encoders:
            setattr(pipe, name, None)  # a 6B text encoder must not sit in memory while the UNet trains
    if accelerator.device.type == "cuda":
        torch.cuda.empty_cache()
    by = f" by {accelerator.num_processes} processes" if accelerator.num_processes > 1 else ""
    say(f"cache: {encoded} image(s) and {encoded_text} caption(s) encoded{by}, the rest reused ({cache_seconds:.1f} s)")
    if cache.damaged:
        say(f"note: {len(cache.damaged)} damaged cache entr{'y was' if len(cache.damaged) == 1 else 'ies were'} "
            f"re-encoded (a killed run or a full disk leaves them), e.g. {display_path(cache.path(min(cache.damaged)))}")
    return examples, cache, text_fp, cache_seconds


def _fill_caches(accelerator: Any, pipe: Any, text_encoders: tuple[str, ...], examples: list[Example],
                 validation: list[tuple[str, str]], cache: TensorCache, hooks: StageHooks,
                 fp8_text: bool = False) -> tuple[int, int]:
    """Encode the missing latents and caption embeddings, each process its share; return the counts over all.

    ``fp8_text``: the text encoders' Linear layers are stored in fp8 on the way to the GPU (Kolors'
    ChatGLM3-6B: 6.6 GB instead of 12.5), for GPUs of 12 GB.

    Afterwards every process can read every entry; with several machines that needs a cache
    folder they all share, which is checked.
    """
    import torch

    device = accelerator.device
    clean_cache_temps(cache)  # of writers that were killed
    latent_jobs = {e.latent_key: (e.item, e.placement) for e in examples}
    text_jobs = {key: text for e in examples for key, text in zip(e.text_keys, e.texts)}
    text_jobs.update({e.empty_key: "" for e in examples if e.captions.dropout})  # caption dropout's empty prompt
    text_jobs.update(validation)
    mine = missing_share(cache, latent_jobs, accelerator)
    if mine:
        pipe.vae.to(device)
        # 12 GB cards (an fp8 base): one picture at a time; the fp32 VAE's 1024² activations take about 3 GB each.
        fill_latents(cache, pipe.vae, [(key, *job) for key, job in latent_jobs.items()], only=mine,
                     on_step=_counter(hooks, "encoding pictures", len(mine)),
                     **({"batch_size": 1} if fp8_text else {}))
        pipe.vae.to("cpu")
    mine_text = missing_share(cache, text_jobs, accelerator)
    if mine_text:
        dtype = frozen_dtype(accelerator.mixed_precision) if device.type == "cuda" else torch.float32
        for name in text_encoders:
            encoder = getattr(pipe, name).to(dtype)
            if fp8_text:
                quantize_base(encoder, "fp8-weights", whole=True, device=device)
            encoder.to(device)
        fill_text(cache, pipe, list(text_jobs.items()), device, only=mine_text,
                  on_step=_counter(hooks, "encoding captions", len(mine_text)))
    accelerator.wait_for_everyone()
    counts = accelerator.reduce(torch.tensor([len(mine), len(mine_text)], device=device), reduction="sum")
    if accelerator.num_processes > 1:  # every process must see every entry; all stop together if one does not
        absent = sum(not cache.has(key) for key in [*latent_jobs, *text_jobs])
        absent_anywhere = int(accelerator.gather(torch.tensor([absent], device=device)).max())
        if absent_anywhere:
            raise TrainingError(f"{absent_anywhere} cache entries written by other processes are not in {cache.root} "
                                "for all of them: with several machines, --cache-dir must be a folder they all share")
    return int(counts[0]), int(counts[1])


def _counter(hooks: StageHooks, stage: str, total: int) -> Callable[[int], None]:
    """A fill's ``on_step``: adds up the entries written and reports ``stage`` as done of ``total``."""
    done = [0]
    hooks.report(stage, 0, total)

    def step(written: int) -> None:
        done[0] += written
        hooks.report(stage, done[0], total)

    return step
