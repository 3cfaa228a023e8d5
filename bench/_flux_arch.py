"""Flux.1 dev at full size (or tiny, for a CPU smoke test) with random weights, for the Flux benchmarks.

The transformer (19 double + 38 single blocks, 3072 wide: 11.9 B parameters) and the 16-channel VAE
are built directly on the GPU in the target dtype (seconds, no 48 GB fp32 copy on the host). No text
encoder runs: prompt embeddings are random tensors of T5-XXL's (512 x 4096) and CLIP-L's pooled (768)
shapes. The output layers are rescaled once so that the random transformer predicts unit-variance
velocity and the decoder gives images in range, which keeps PSNR meaningful.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

# Flux.1 dev's transformer and VAE configs (black-forest-labs/FLUX.1-dev, diffusers layout)
FULL = {"num_layers": 19, "num_single_layers": 38, "attention_head_dim": 128, "num_attention_heads": 24,
        "joint_attention_dim": 4096, "pooled_projection_dim": 768, "axes_dims_rope": (16, 56, 56)}
TINY = {"num_layers": 1, "num_single_layers": 1, "attention_head_dim": 8, "num_attention_heads": 2,
        "joint_attention_dim": 32, "pooled_projection_dim": 32, "axes_dims_rope": (2, 2, 4)}
TEXT_LEN = {"full": 512, "tiny": 16}


@contextlib.contextmanager
def _building_on(device: str, dtype: torch.dtype) -> Iterator[None]:
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(previous)


def build_transformer(device: str, dtype: torch.dtype, tiny: bool, guidance: bool = True, seed: int = 0) -> Any:
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(seed)
    with _building_on(device, dtype):
        model = FluxTransformer2DModel(patch_size=1, in_channels=64, guidance_embeds=guidance, **(TINY if tiny else FULL))
    return model.eval().requires_grad_(False)


def build_vae(device: str, dtype: torch.dtype, tiny: bool, seed: int = 1) -> Any:
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    channels = (8, 16, 16, 16) if tiny else (128, 256, 512, 512)
    with _building_on(device, dtype):
        vae = AutoencoderKL(
            in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=channels, layers_per_block=1 if tiny else 2,
            latent_channels=16, norm_num_groups=8 if tiny else 32, scaling_factor=0.3611, shift_factor=0.1159,
            use_quant_conv=False, use_post_quant_conv=False,
        )
    return vae.eval().requires_grad_(False)


def scheduler() -> Any:
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, base_shift=0.5,
                                           max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096)


def make_pipe(device: str, dtype: torch.dtype, tiny: bool) -> Any:
    from diffusers import FluxPipeline

    pipe = FluxPipeline(scheduler=scheduler(), vae=build_vae(device, dtype, tiny), text_encoder=None, tokenizer=None,
                        text_encoder_2=None, tokenizer_2=None, transformer=build_transformer(device, dtype, tiny))
    pipe.set_progress_bar_config(disable=True)
    return pipe


class Embeds:
    """Random T5 sequence and CLIP pooled embeddings per panel."""

    def __init__(self, panels: int, device: str, dtype: torch.dtype, tiny: bool) -> None:
        config = TINY if tiny else FULL
        g = torch.Generator().manual_seed(1234)
        length = TEXT_LEN["tiny" if tiny else "full"]
        self.pe = torch.randn(panels, length, config["joint_attention_dim"], generator=g).to(device, dtype)
        self.pp = torch.randn(panels, config["pooled_projection_dim"], generator=g).to(device, dtype)


@torch.no_grad()
def normalise(pipe: Any, emb: Embeds, size: int, device: str) -> dict[str, float]:
    """Rescale the transformer's ``proj_out`` and the VAE's last conv: unit-variance velocity, in-range images."""
    from lorastory.models.families.flux import flux_predict

    transformer, vae = pipe.transformer, pipe.vae
    lat = size // 8
    g = torch.Generator().manual_seed(7)
    x = torch.randn(1, 16, lat, lat, generator=g).to(device, transformer.dtype)
    text = {"prompt_embeds": emb.pe[:1], "pooled_prompt_embeds": emb.pp[:1]}
    out = flux_predict(transformer, x, torch.tensor([0.5], device=device), text, transformer.dtype)
    std = out.float().std().item()
    if not torch.isfinite(out).all():
        raise RuntimeError("the random transformer's output is not finite; try another --seed")
    transformer.proj_out.weight.div_(std)
    transformer.proj_out.bias.div_(std)
    z = torch.randn(1, 16, lat, lat, generator=g).to(device, vae.dtype)
    img = vae.decode(z / vae.config.scaling_factor + vae.config.shift_factor).sample
    vae_std = img.float().std().item()
    vae.decoder.conv_out.weight.mul_(0.5 / vae_std)
    vae.decoder.conv_out.bias.mul_(0.5 / vae_std)
    return {"transformer_out_std_before": round(std, 4), "vae_out_std_before": round(vae_std, 4)}
