"""VAE encode/decode with the fp16 fix: non-finite output falls back to fp32.

The SDXL VAE overflows in fp16 and returns NaN (black images, NaN latents).
Rather than asking users to know that, both directions check the result and
redo the work in fp32 with a warning when it is not finite.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

from lorastory.models.grad import no_grad

if TYPE_CHECKING:
    import torch


def _scale_shift(vae: Any) -> tuple[Any, Any]:
    """(scale, shift) with latents = (mode - shift) * scale: floats, or per-channel tensors for a video-style VAE."""
    config = vae.config
    if _is_video(vae):  # Qwen-Image's VAE: per-channel mean and std
        import torch

        mean = torch.tensor(config.latents_mean, dtype=torch.float32).view(1, -1, 1, 1)
        return 1.0 / torch.tensor(config.latents_std, dtype=torch.float32).view(1, -1, 1, 1), mean
    return float(config.scaling_factor), float(getattr(config, "shift_factor", None) or 0.0)


def _on(value: Any, like: torch.Tensor) -> Any:
    """A per-channel tensor on ``like``'s device; a float as is."""
    return value.to(like.device) if hasattr(value, "to") else value


def _is_video(vae: Any) -> bool:
    """A video-style VAE (Qwen-Image's, Wan's): 5-D (B, C, frames, H, W) in and out; images are one frame."""
    return getattr(vae.config, "z_dim", None) is not None and getattr(vae.config, "latents_mean", None) is not None


def _encode(vae: Any, pixels: torch.Tensor) -> torch.Tensor:
    if _is_video(vae):
        return vae.encode(pixels[:, :, None]).latent_dist.mode()[:, :, 0]
    return vae.encode(pixels).latent_dist.mode()


def _decode(vae: Any, latents: torch.Tensor) -> torch.Tensor:
    if _is_video(vae):
        return vae.decode(latents[:, :, None]).sample[:, :, 0]
    return vae.decode(latents).sample


@no_grad
def encode_latents(vae: Any, pixels: torch.Tensor) -> torch.Tensor:
    """Scaled latents (the distribution's mode) of pixels in [-1, 1], shape (B, 3, H, W)."""
    import torch

    scale, shift = _scale_shift(vae)
    dtype = next(vae.parameters()).dtype
    latents = _encode(vae, pixels.to(vae.device, dtype))
    if not torch.isfinite(latents).all() and dtype != torch.float32:
        warnings.warn("VAE encode overflowed in reduced precision; redoing it in fp32", stacklevel=2)
        with _fp32(vae):
            latents = _encode(vae, pixels.to(vae.device, torch.float32))
    return ((latents.float() - _on(shift, latents)) * _on(scale, latents)).contiguous()


@no_grad
def decode_latents(vae: Any, latents: torch.Tensor) -> torch.Tensor:
    """Images in [0, 1], shape (B, 3, H, W), float32 on the CPU."""
    import torch

    scale, shift = _scale_shift(vae)
    dtype = next(vae.parameters()).dtype
    scaled = latents / _on(scale, latents) + _on(shift, latents)
    images = _decode(vae, scaled.to(vae.device, dtype))
    if not torch.isfinite(images).all() and dtype != torch.float32:
        warnings.warn("VAE decode overflowed in reduced precision; redoing it in fp32", stacklevel=2)
        with _fp32(vae):
            images = _decode(vae, scaled.to(vae.device, torch.float32))
    return (images.float() / 2 + 0.5).clamp(0, 1).cpu()


class _fp32:
    """Temporarily run a module in fp32."""

    def __init__(self, module: Any) -> None:
        self.module = module
        self.dtype = next(module.parameters()).dtype

    def __enter__(self) -> None:
        import torch

        self.module.to(torch.float32)

    def __exit__(self, *exc: object) -> None:
        self.module.to(self.dtype)
