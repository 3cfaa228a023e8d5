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


def _scale_shift(vae: Any) -> tuple[float, float]:
    config = vae.config
    return float(config.scaling_factor), float(getattr(config, "shift_factor", None) or 0.0)


@no_grad
def encode_latents(vae: Any, pixels: torch.Tensor) -> torch.Tensor:
    """Scaled latents (the distribution's mode) of pixels in [-1, 1], shape (B, 3, H, W)."""
    import torch

    scale, shift = _scale_shift(vae)
    dtype = next(vae.parameters()).dtype
    latents = vae.encode(pixels.to(vae.device, dtype)).latent_dist.mode()
    if not torch.isfinite(latents).all() and dtype != torch.float32:
        warnings.warn("VAE encode overflowed in reduced precision; redoing it in fp32", stacklevel=2)
        with _fp32(vae):
            latents = vae.encode(pixels.to(vae.device, torch.float32)).latent_dist.mode()
    return ((latents.float() - shift) * scale).contiguous()


@no_grad
def decode_latents(vae: Any, latents: torch.Tensor) -> torch.Tensor:
    """Images in [0, 1], shape (B, 3, H, W), float32 on the CPU."""
    import torch

    scale, shift = _scale_shift(vae)
    dtype = next(vae.parameters()).dtype
    scaled = latents / scale + shift
    images = vae.decode(scaled.to(vae.device, dtype)).sample
    if not torch.isfinite(images).all() and dtype != torch.float32:
        warnings.warn("VAE decode overflowed in reduced precision; redoing it in fp32", stacklevel=2)
        with _fp32(vae):
            images = vae.decode(scaled.to(vae.device, torch.float32)).sample
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
