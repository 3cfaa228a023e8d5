"""Qwen-Image: a diffusion transformer for Chinese and English prompts, trained by flow matching, as one family.

diffusers' ``QwenImagePipeline``: a ``QwenImageTransformer2DModel`` denoiser (60 dual-stream
MMDiT blocks at full size), the Qwen2.5-VL language model as its one text encoder (the last
hidden state of the prompt wrapped in a chat template, the template's system part dropped), a
16-channel video-style VAE (``AutoencoderKLQwenImage``: 5-D latents with one frame, normalised
by per-channel ``latents_mean`` / ``latents_std``) and ``FlowMatchEulerDiscreteScheduler``.
Not guidance-distilled: stories use true classifier-free guidance (``true_cfg_scale`` with a
negative prompt).

Besides the :class:`~lorastory.models.registry.Family` entry this module holds what only
Qwen-Image needs: its ``encode_prompt`` call (embeddings and their padding mask) and the denoiser
call training makes (latents packed in 2x2 patches as Flux's, the image shape for its RoPE) and its
transformer's module names, which its LoRA files in musubi-tuner's and ComfyUI's layouts are read with
(:mod:`lorastory.models.lora.dit_names`); its tiny random models (an Edit one too) are in :mod:`.qwen_image_tiny`,
its in-context reference, a Qwen-Image-Edit model, in :mod:`.qwen_image_edit`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lorastory.errors import ConfigError
# The module, not its names: importing flux first runs the registry, which imports this module mid-way through flux.
from lorastory.models.families import flux
from lorastory.models.registry import Family, register_family

if TYPE_CHECKING:
    import torch

# The transformer modules a Qwen-Image LoRA adapts by default: the joint attention's image and text
# projections and both streams' MLPs, as diffusers' train_dreambooth_lora_qwen_image.py and ai-toolkit do.
QWEN_IMAGE_LORA_TARGETS = (
    "attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0",
    "attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj", "attn.to_add_out",
    "img_mlp.net.0.proj", "img_mlp.net.2", "txt_mlp.net.0.proj", "txt_mlp.net.2",
)
# Every Linear module of the transformer ("N": a block index), as diffusers, ComfyUI and musubi-tuner all name them:
# how the kohya names musubi-tuner writes (lora_unet_transformer_blocks_0_img_mlp_net_0_proj) are read back.
QWEN_IMAGE_MODULES = (
    "img_in", "txt_in", "proj_out", "norm_out.linear",
    "time_text_embed.timestep_embedder.linear_1", "time_text_embed.timestep_embedder.linear_2",
    *(f"transformer_blocks.N.{m}" for m in (*QWEN_IMAGE_LORA_TARGETS, "img_mod.1", "txt_mod.1")),
)
# Qwen2.5-VL's attention and MLP projections, for a text-encoder LoRA.
QWEN_TE_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")
# The prompt length the pipeline reads by default (its ``max_sequence_length``).
MAX_SEQUENCE_LENGTH = 512


def encode_qwen_image_prompt(pipe: Any, prompts: list[str], device: Any) -> dict[str, Any]:
    """Qwen2.5-VL's last hidden states of the templated prompts and their padding mask (1: a token, 0: padding).

    The mask is always returned (the pipeline drops an all-ones mask), so cached captions of different
    lengths can be padded to one batch and still attend only to their own tokens.
    """
    import torch

    embeds, mask = pipe.encode_prompt(prompts, device=device, num_images_per_prompt=1,
                                      max_sequence_length=MAX_SEQUENCE_LENGTH)
    if mask is None:
        mask = torch.ones(embeds.shape[:2], dtype=torch.long, device=embeds.device)
    return {"prompt_embeds": embeds, "prompt_embeds_mask": mask}


def qwen_image_predict(transformer: Any, noisy: torch.Tensor, sigmas: torch.Tensor, text: dict[str, torch.Tensor],
                       dtype: Any) -> torch.Tensor:
    """The transformer's velocity prediction for (B, C, H, W) latents at noise levels ``sigmas`` in [0, 1]."""
    b, _, h, w = noisy.shape
    if h % 2 or w % 2:  # 2x2 patches: an odd latent side cannot be packed
        raise ConfigError(f"Qwen-Image trains on sizes that are multiples of 16 pixels, not {w * 8}x{h * 8}; "
                          "use a --resolution and --bucket-step that are")
    out = transformer(
        hidden_states=flux.pack_latents(noisy.to(dtype)), timestep=sigmas.to(dtype),
        encoder_hidden_states=text["prompt_embeds"].to(dtype), encoder_hidden_states_mask=text["prompt_embeds_mask"],
        img_shapes=[[(1, h // 2, w // 2)]] * b, return_dict=False,
    )[0]
    return flux.unpack_latents(out, h, w)


# An fp8 base: the blocks' attention and MLP Linear layers convert; their modulation (img_mod, txt_mod) sees one
# row per picture, like Flux's AdaLayerNorm Linear layers, and stays.
QWEN_IMAGE_FP8_BLOCKS = ("QwenImageTransformerBlock",)
QWEN_IMAGE_FP8_SKIP = ("img_mod", "txt_mod")

QWEN_IMAGE = register_family(Family(
    "qwen-image", "QwenImagePipeline", ("text_encoder",), 1328, False, label="Qwen-Image", article="a",
    denoiser="transformer", encode_prompt=encode_qwen_image_prompt, text_encoder_targets=QWEN_TE_TARGETS,
    objective="flow", predict="lorastory.models.families.qwen_image:qwen_image_predict",
    # kohya first: the musubi-tuner names with an alpha per module load in ComfyUI, musubi-tuner and diffusers alike;
    # ComfyUI reads the diffusers file's transformer. keys but not the alpha in its header (scale 1, not alpha/rank).
    # LoHa, LoKr and DoRA: LyCORIS tensors on the same musubi-tuner names, which ComfyUI maps (no locon: no convolutions).
    lora_targets=QWEN_IMAGE_LORA_TARGETS, lora_formats=("kohya", "diffusers"), lora_networks=("lora", "loha", "lokr", "dora"),
    lora_modules=QWEN_IMAGE_MODULES,
    # training_attention: torch's choice, cuDNN's fused attention included (measured at full size: it runs, and is
    # the fastest there); the rule Flux needs would cost 13 %.
    speed_qkv=False, compile_repeated=True,  # its attention processor reads to_q, to_k, to_v apart
    # compile_step_saving: not measured on a GPU yet; the default (a UNet's) makes auto compile only long runs
    lora_text_encoders=(),  # a 7B Qwen2.5-VL LoRA: no reader for it in diffusers' Qwen-Image loader
    latent_patch=2, guidance_argument="true_cfg_scale", fp8_blocks=QWEN_IMAGE_FP8_BLOCKS, fp8_skip=QWEN_IMAGE_FP8_SKIP,
    tiny_builder="lorastory.models.families.qwen_image_tiny:tiny_qwen_image",
    shared_attention="lorastory.models.families.qwen_image_attention:QwenImageSharedAttnProcessor",
    # The in-context reference: a Qwen-Image-Edit model (.qwen_image_edit), which draws the panels too.
    in_context_pipeline="QwenImageEditPipeline", in_context_models=("QwenImageEditPipeline",),
    in_context_components="lorastory.models.families.qwen_image_edit:edit_components",
    in_context_model="a Qwen-Image-Edit model (QwenImageEditPipeline, e.g. Qwen/Qwen-Image-Edit)",
    in_context_args="lorastory.models.families.qwen_image_edit:edit_reference_args",
    tiny_variants=(("qwen-image-edit", "lorastory.models.families.qwen_image_tiny:tiny_qwen_image_edit"),),
), "Qwen/Qwen-Image", "Qwen/Qwen-Image-Edit")
