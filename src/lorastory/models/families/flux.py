"""Flux.1 (dev and schnell): a diffusion transformer trained by flow matching, as one registered family.

diffusers' ``FluxPipeline``: a ``FluxTransformer2DModel`` denoiser (19 double-stream and 38
single-stream blocks at full size), CLIP-L (pooled) and T5-XXL (sequence) text encoders, a
16-channel VAE and ``FlowMatchEulerDiscreteScheduler``. dev is guidance-distilled (the
transformer takes the guidance scale as an input: ``guidance_embeds``); schnell is not.

Besides the :class:`~lorastory.models.registry.Family` entry this module holds what only Flux
needs: its ``encode_prompt`` call, how latents are packed into 2x2 patches with their position
ids and the denoiser call training makes; its tiny random model is in :mod:`.flux_tiny`, its
shared attention in :mod:`.flux_attention` and its IP-Adapter (XLabs' layout, the reference
consistency mode) in :mod:`.flux_ip_adapter`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lorastory.errors import ConfigError
from lorastory.models.speed import FLUX_TRAINING_ATTENTION
from lorastory.models.registry import CLIP_TE_TARGETS, Family, IpAdapterSource, register_family

if TYPE_CHECKING:
    import torch

# The transformer modules a Flux LoRA adapts by default: attention and MLP of the double-stream
# blocks (image and text streams) and of the single-stream blocks, as kohya, ai-toolkit and diffusers' scripts do.
FLUX_LORA_TARGETS = (
    "attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0",
    "attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj", "attn.to_add_out",
    "ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2",
    "proj_mlp", "proj_out",  # proj_out: the single blocks' and the final layer's
)
# Every Linear module of FluxTransformer2DModel by its diffusers name ("N": a block index): the table kohya-style
# names over diffusers modules (ai-toolkit's older lora_transformer_..., lora_unet_transformer_blocks_0_attn_to_q) and
# ComfyUI's diffusion_model.<diffusers name> keys are read back through (models/lora/dit_names.py).
FLUX_MODULES = (
    *(f"transformer_blocks.N.{m}" for m in (
        "attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "norm1.linear", "norm1_context.linear",
        "attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj", "attn.to_add_out",
        "ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2")),
    *(f"single_transformer_blocks.N.{m}" for m in ("norm.linear", "attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp", "proj_out")),
    "x_embedder", "context_embedder", "proj_out", "norm_out.linear",
    *(f"time_text_embed.{e}.linear_{i}" for e in ("timestep_embedder", "text_embedder", "guidance_embedder") for i in (1, 2)),
)
# An fp8 base converts the double and single blocks' attention and MLP Linear layers; their adaptive norms'
# modulation Linears (norm1.linear, norm1_context.linear, norm.linear) see one row per picture (the time
# embedding) and stay, as do the embedders, x_embedder and the final layer outside the blocks.
FLUX_FP8_BLOCKS = ("FluxTransformerBlock", "FluxSingleTransformerBlock")
FLUX_FP8_SKIP = ("norm1", "norm1_context", "norm")
# The guidance a guidance-distilled model (dev) is trained with: kohya's and ai-toolkit's default.
TRAIN_GUIDANCE = 1.0
# XLabs' IP-Adapter for Flux dev, in the layout diffusers' FluxIPAdapterMixin reads (.flux_ip_adapter); published
# without its image encoder, which is CLIP ViT-L/14 (its projected image embedding), read from OpenAI's repository
# unless the adapter's folder has an image_encoder/ of its own.
FLUX_IP_ADAPTER = IpAdapterSource("XLabs-AI/flux-ip-adapter", "ip_adapter.safetensors", "image_encoder",
                                  encoder_repo="openai/clip-vit-large-patch14")
# Flux dev's resolution-dependent timestep shift (its scheduler config): mu linear in the token count, from 0.5 to 1.15.
BASE_SEQ_LEN, MAX_SEQ_LEN, BASE_SHIFT, MAX_SHIFT = 256, 4096, 0.5, 1.15


def encode_flux_prompt(pipe: Any, prompts: list[str], device: Any) -> dict[str, Any]:
    """T5 sequence embeddings and the pooled CLIP-L embedding (the text ids are all zeros, rebuilt when used)."""
    prompt_embeds, pooled, _ = pipe.encode_prompt(prompts, None, device=device, num_images_per_prompt=1,
                                                  max_sequence_length=_max_sequence_length(pipe))
    return {"prompt_embeds": prompt_embeds, "pooled_prompt_embeds": pooled}


def _max_sequence_length(pipe: Any) -> int:
    # dev reads 512 T5 tokens, schnell 256; a tokenizer that allows fewer (a tiny test model) caps it.
    limit = getattr(pipe.tokenizer_2, "model_max_length", 512) if pipe.tokenizer_2 is not None else 512
    return int(min(512, limit))


def pack_latents(latents: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) latents as Flux's token sequence of 2x2 patches: (B, H/2 * W/2, 4C)."""
    b, c, h, w = latents.shape
    patches = latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return patches.reshape(b, (h // 2) * (w // 2), c * 4)


def unpack_latents(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The inverse of :func:`pack_latents` for latents of ``height`` x ``width``."""
    b, _, packed = tokens.shape
    c = packed // 4
    patches = tokens.view(b, height // 2, width // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return patches.reshape(b, c, height, width)


def image_ids(height: int, width: int, device: Any, dtype: Any) -> torch.Tensor:
    """Position ids (0, row, column) of the packed latent tokens, as ``FluxPipeline`` builds them."""
    import torch

    ids = torch.zeros(height // 2, width // 2, 3)
    ids[..., 1] += torch.arange(height // 2)[:, None]
    ids[..., 2] += torch.arange(width // 2)[None, :]
    return ids.reshape(-1, 3).to(device=device, dtype=dtype)


def flux_predict(transformer: Any, noisy: torch.Tensor, sigmas: torch.Tensor, text: dict[str, torch.Tensor],
                 dtype: Any) -> torch.Tensor:
    """The transformer's velocity prediction for (B, C, H, W) latents at noise levels ``sigmas`` in [0, 1]."""
    import torch

    b, _, h, w = noisy.shape
    if h % 2 or w % 2:  # 2x2 patches: an odd latent side cannot be packed
        raise ConfigError(f"Flux trains on sizes that are multiples of 16 pixels, not {w * 8}x{h * 8}; "
                          "use a --resolution and --bucket-step that are")
    guidance = None
    if transformer.config.guidance_embeds:  # dev: the guidance-distilled input, at the scale LoRAs train with
        guidance = torch.full((b,), TRAIN_GUIDANCE, device=noisy.device, dtype=torch.float32)
    prompt = text["prompt_embeds"].to(dtype)
    out = transformer(
        hidden_states=pack_latents(noisy.to(dtype)), timestep=sigmas.to(dtype), guidance=guidance,
        pooled_projections=text["pooled_prompt_embeds"].to(dtype), encoder_hidden_states=prompt,
        txt_ids=torch.zeros(prompt.shape[1], 3, device=noisy.device, dtype=dtype),
        img_ids=image_ids(h, w, noisy.device, dtype), return_dict=False,
    )[0]
    return unpack_latents(out, h, w)


FLUX = register_family(Family(
    "flux", "FluxPipeline", ("text_encoder", "text_encoder_2"), 1024, True, label="Flux.1", article="a",
    denoiser="transformer", encode_prompt=encode_flux_prompt, text_encoder_targets=CLIP_TE_TARGETS,
    kohya_unet_names="bfl", objective="flow", predict="lorastory.models.families.flux:flux_predict",
    lora_targets=FLUX_LORA_TARGETS, lora_modules=FLUX_MODULES, lora_formats=("kohya", "diffusers"), lora_text_encoders=("text_encoder",),
    latent_patch=2, lora_networks=("lora", "loha", "lokr", "dora"),  # variants: on diffusers names (lycoris.py)
    tiny_builder="lorastory.models.families.flux_tiny:tiny_flux", fp8_blocks=FLUX_FP8_BLOCKS, fp8_skip=FLUX_FP8_SKIP,
    ip_adapter=FLUX_IP_ADAPTER, ip_adapter_state="lorastory.models.families.flux_ip_adapter:flux_ip_adapter_state_dict",
    ip_adapter_check="lorastory.models.families.flux_ip_adapter:check_flux_ip_adapter",
    in_context_pipeline="FluxKontextPipeline",  # FLUX.1 Kontext: the reference's latents appended to the image tokens
    true_cfg_argument="true_cfg_scale", shared_attention="lorastory.models.families.flux_attention:FluxSharedAttnProcessor",
    training_attention=FLUX_TRAINING_ATTENTION,
    compile_repeated=True,  # fused QKV: FluxAttention reads to_qkv once fused, shared attention included
    # compile_step_saving: not measured on a GPU yet (the story benchmark's 1.11x over batched diffusers was eager:
    # LoRA and q/k/v fused); the default (a UNet's) makes auto compile only long runs
), "black-forest-labs/FLUX.1-dev", "black-forest-labs/FLUX.1-schnell", "black-forest-labs/FLUX.1-Kontext-dev")
