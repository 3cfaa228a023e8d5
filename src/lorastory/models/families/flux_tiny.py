"""A tiny random Flux.1 (dev or schnell layout) for tests and offline demos, built deterministically.

The real classes and wiring (``FluxTransformer2DModel`` with one double and one single block,
CLIP and T5 text encoders of 32 dimensions, a 16-channel 8x VAE, Flux dev's flow-matching
scheduler) at a few hundred kilobytes. Named by the family's ``tiny_builder`` hook, so importing
the registry does not import it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lorastory.models.families.flux import BASE_SEQ_LEN, BASE_SHIFT, MAX_SEQ_LEN, MAX_SHIFT
from lorastory.models.tiny import TEXT_HIDDEN, clip_text_encoder, clip_tokenizer, corpus_words


def _t5_tokenizer(max_length: int) -> Any:
    """A Unigram T5 tokenizer over a small bilingual vocabulary: every string tokenizes, offline."""
    from transformers import T5TokenizerFast

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    words = sorted(set(corpus_words()))
    pieces += [("▁" + word, -3.0 - i / len(words)) for i, word in enumerate(words)]
    chars = sorted({ch for word in words for ch in word})
    pieces += [(ch, -10.0) for ch in chars]
    return T5TokenizerFast(vocab=pieces, extra_ids=0, model_max_length=max_length)


def tiny_flux(folder: Path, sample_size: int, guidance_embeds: bool = True) -> tuple[Any, Path | None]:
    """A tiny random Flux (dev layout; ``guidance_embeds=False``: schnell): one double and one single block,
    CLIP and T5 text encoders of 32 dimensions, a 16-channel 8x VAE."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import T5Config, T5EncoderModel

    tokenizer = clip_tokenizer()
    tokenizer_2 = _t5_tokenizer(32)
    t5 = T5EncoderModel(T5Config(
        vocab_size=len(tokenizer_2), d_model=TEXT_HIDDEN, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, feed_forward_proj="gated-gelu", decoder_start_token_id=0,
    ))
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=64, num_layers=1, num_single_layers=1, attention_head_dim=8,
        num_attention_heads=2, joint_attention_dim=TEXT_HIDDEN, pooled_projection_dim=TEXT_HIDDEN,
        guidance_embeds=guidance_embeds, axes_dims_rope=(2, 2, 4),
    )
    channels = (8, 16, 16, 16)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=channels, layers_per_block=1, latent_channels=16, norm_num_groups=8, sample_size=sample_size * 8,
        scaling_factor=0.3611, shift_factor=0.1159, use_quant_conv=False, use_post_quant_conv=False, force_upcast=False,
    )
    shift = {"shift": 3.0, "use_dynamic_shifting": True, "base_shift": BASE_SHIFT, "max_shift": MAX_SHIFT,
             "base_image_seq_len": BASE_SEQ_LEN, "max_image_seq_len": MAX_SEQ_LEN} if guidance_embeds else {"shift": 1.0}
    pipe = FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, **shift), vae=vae,
        text_encoder=clip_text_encoder(False, len(tokenizer)), tokenizer=tokenizer, text_encoder_2=t5,
        tokenizer_2=tokenizer_2, transformer=transformer,
    )
    return pipe, None


def tiny_flux_schnell(folder: Path, sample_size: int) -> tuple[Any, Path | None]:
    """The tiny Flux in the schnell layout (no guidance input, no resolution-dependent shift)."""
    return tiny_flux(folder, sample_size, guidance_embeds=False)
