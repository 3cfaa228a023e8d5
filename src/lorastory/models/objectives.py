"""Training objectives: how a family's denoiser is trained and called, chosen by ``Family.objective``.

* ``"noise"`` — DDPM-style diffusion (Kolors, SDXL, SD1.5): integer timesteps drawn uniformly,
  ``noisy = scheduler.add_noise``, the target is the noise (epsilon) or the velocity (v-prediction)
  as the scheduler config says; Min-SNR weighting when asked; the UNet call.
* ``"flow"`` — rectified flow matching (Flux, SD3, Qwen-Image): a noise level ``t`` in (0, 1)
  drawn logit-normal (``sigmoid`` of a standard normal), shifted toward noise by the scheduler's
  shift — resolution-dependent (``exp(mu)``, ``mu`` linear in the token count) when it uses dynamic
  shifting, as kohya's ``flux_shift`` and diffusers' Flux scripts do; ``noisy = (1 - t) x0 + t noise``,
  the target is the velocity ``noise - x0``; the family's own ``predict`` call.

An objective draws each sample's timestep from that sample's generator (so resume stays
bit-exact), builds the noisy input and target, weights the loss and calls the denoiser. The
trainer asks :func:`training_objective` and never looks at a family's name.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from lorastory.models.conditioning import unet_kwargs
from lorastory.models.registry import Family

if TYPE_CHECKING:
    import torch


class NoiseObjective:
    """Epsilon / v-prediction diffusion training on a DDPM noise schedule."""

    name = "noise"
    weights_by_snr = True  # --snr-gamma applies

    def __init__(self, scheduler: Any) -> None:
        self.scheduler = scheduler

    def draw_timestep(self, generator: torch.Generator, latent_shape: tuple[int, ...]) -> torch.Tensor:
        import torch

        return torch.randint(0, self.scheduler.config.num_train_timesteps, (), generator=generator)

    def noisy_and_target(self, latents: torch.Tensor, noise: torch.Tensor,
                         timesteps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        noisy = self.scheduler.add_noise(latents, noise, timesteps)
        if self.scheduler.config.prediction_type == "v_prediction":
            return noisy, self.scheduler.get_velocity(latents, noise, timesteps)
        return noisy, noise

    def loss_weights(self, timesteps: torch.Tensor, snr_gamma: float | None) -> torch.Tensor | None:
        """Min-SNR-gamma weights per sample (None: unweighted)."""
        if snr_gamma is None:
            return None
        import torch
        from diffusers.training_utils import compute_snr

        snr = compute_snr(self.scheduler, timesteps)
        if self.scheduler.config.prediction_type == "v_prediction":
            return torch.clamp(snr, max=snr_gamma) / (snr + 1)
        return torch.clamp(snr, max=snr_gamma) / snr

    def predict(self, denoiser: Any, noisy: torch.Tensor, timesteps: torch.Tensor, text: dict[str, torch.Tensor],
                add_time_ids: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return denoiser(noisy, timesteps, **unet_kwargs(text, add_time_ids, dtype)).sample


class FlowObjective:
    """Rectified flow matching: velocity target, shifted logit-normal noise levels, the family's denoiser call."""

    name = "flow"
    weights_by_snr = False

    def __init__(self, predict: Callable[..., Any], shift: Callable[[int, int], float], sigmoid_scale: float = 1.0) -> None:
        self._predict = predict
        self.shift = shift  # (latent height, latent width) -> shift
        self.sigmoid_scale = sigmoid_scale

    def draw_timestep(self, generator: torch.Generator, latent_shape: tuple[int, ...]) -> torch.Tensor:
        import torch

        t = torch.sigmoid(torch.randn((), generator=generator) * self.sigmoid_scale)
        shift = self.shift(latent_shape[-2], latent_shape[-1])
        return shift * t / (1 + (shift - 1) * t)

    def noisy_and_target(self, latents: torch.Tensor, noise: torch.Tensor,
                         timesteps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = timesteps.to(latents.dtype).view(-1, *[1] * (latents.dim() - 1))
        return (1 - t) * latents + t * noise, noise - latents

    def loss_weights(self, timesteps: torch.Tensor, snr_gamma: float | None) -> torch.Tensor | None:
        return None  # uniform, as kohya's and diffusers' Flux scripts train by default

    def predict(self, denoiser: Any, noisy: torch.Tensor, timesteps: torch.Tensor, text: dict[str, torch.Tensor],
                add_time_ids: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return self._predict(denoiser, noisy, timesteps, text, dtype)  # type: ignore[no-any-return]


def flow_shift(scheduler_config: Any) -> Callable[[int, int], float]:
    """The timestep shift for a latent size, from a flow-matching scheduler's config: ``exp(mu)`` with ``mu``
    linear in the token count (2x2 patches) when it shifts dynamically, else its fixed ``shift``."""
    config = dict(scheduler_config)
    if not config.get("use_dynamic_shifting"):
        fixed = float(config.get("shift", 1.0))
        return lambda height, width: fixed
    base_len, max_len = config.get("base_image_seq_len", 256), config.get("max_image_seq_len", 4096)
    base, top = config.get("base_shift", 0.5), config.get("max_shift", 1.15)
    slope = (top - base) / (max_len - base_len)

    def shift(height: int, width: int) -> float:
        return math.exp(base + slope * ((height // 2) * (width // 2) - base_len))

    return shift


def training_objective(family: Family, pipe: Any) -> NoiseObjective | FlowObjective:
    """The objective ``family``'s denoiser trains with, configured from ``pipe``'s scheduler."""
    if family.objective == "flow":
        if family.predict is None:
            raise ValueError(f"family {family.name} trains by flow matching but names no predict function")
        return FlowObjective(family.resolve(family.predict), flow_shift(pipe.scheduler.config))
    from diffusers import DDPMScheduler

    return NoiseObjective(DDPMScheduler.from_config(pipe.scheduler.config))


def as_objective(objective_or_scheduler: Any) -> NoiseObjective | FlowObjective:
    """An objective as is; a bare noise scheduler (older callers) as its :class:`NoiseObjective`."""
    if isinstance(objective_or_scheduler, (NoiseObjective, FlowObjective)):
        return objective_or_scheduler
    return NoiseObjective(objective_or_scheduler)
