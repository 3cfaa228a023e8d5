"""Validation pictures during training: the validation prompts rendered with the current LoRA into ``OUT/samples``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from lorastory.models.conditioning import encode_text
from lorastory.models.grad import no_grad
from lorastory.models.registry import family_of_pipeline
from lorastory.train.cache import TensorCache, text_key
from lorastory.train.config import TrainConfig

if TYPE_CHECKING:
    import torch


@no_grad
def render_validation_samples(
    pipe: Any, unet: Any, cache: TensorCache, config: TrainConfig, text_fp: str, out: Path, step: int,
    device: torch.device, accelerator: Any,
) -> list[Path]:
    """Render the validation prompts with the current LoRA into ``OUT/samples``."""
    import numpy as np
    import torch
    from PIL import Image

    was_training = unet.training
    unet.eval()
    family = family_of_pipeline(pipe)
    family.set_denoiser(pipe, unet)
    pipe.vae.to(device)
    pipe.set_progress_bar_config(disable=True)  # the run's own progress bar is the one to watch

    def embed(prompt: str) -> dict[str, torch.Tensor]:
        if pipe.text_encoder is not None:  # trained with the text encoder: its cached embeddings are stale
            return {k: v.to(device) for k, v in encode_text(pipe, [prompt], device).items()}
        return {k: v[None].to(device) for k, v in cache.load(text_key(text_fp, prompt)).items()}

    negative = embed("")
    paths = []
    for index, prompt in enumerate(config.validation_prompts):
        positive = embed(prompt)
        # prompt_embeds [, pooled_prompt_embeds] [, prompt_embeds_mask] and their negative_ twins
        kwargs = {**positive, **{f"negative_{name}": value for name, value in negative.items()}}
        # Eager: a few sampling steps would not repay compiling (and recording) the blocks' inference shapes.
        with torch.autocast(device.type, enabled=device.type == "cuda"), torch.compiler.set_stance("force_eager"):
            image = pipe(
                **kwargs, num_inference_steps=config.validation_steps, **{family.guidance_argument: config.validation_cfg},
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
