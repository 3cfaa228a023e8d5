"""A tiny random Qwen-Image for tests and offline demos, built deterministically.

The real classes and wiring (``QwenImageTransformer2DModel`` with two blocks, a Qwen2.5-VL text
encoder of 32 dimensions with a tiny vision tower, a 16-channel 8x ``AutoencoderKLQwenImage``,
Qwen-Image's flow-matching scheduler) at about a megabyte. Its Qwen2 tokenizer is a byte-level
BPE trained here on the tiny models' bilingual corpus and Qwen-Image's prompt template, so every
string (any Chinese character included) tokenizes, and the template's system part is 34 tokens
as with the real tokenizer (the pipeline drops exactly that many). The tiny Qwen-Image-Edit is the same
model saved as a ``QwenImageEditPipeline`` folder with a Qwen2-VL processor (its image processor built
here, at a few vision tokens a picture), as the in-context reference reads it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lorastory.fileio import atomic_write_json
from lorastory.models.tiny import TEXT_HIDDEN, corpus_words

# Qwen-Image's scheduler config (its resolution-dependent shift; the last sigma kept above 0.02).
QWEN_IMAGE_SCHEDULER = {
    "num_train_timesteps": 1000, "shift": 1.0, "use_dynamic_shifting": True, "base_shift": 0.5, "max_shift": 0.9,
    "base_image_seq_len": 256, "max_image_seq_len": 8192, "shift_terminal": 0.02, "time_shift_type": "exponential",
}
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                  "<|image_pad|>")
# The prompt template QwenImagePipeline wraps every prompt in (its system part: 34 tokens of the real tokenizer).
TEMPLATE = ("<|im_start|>system\nDescribe the image by detailing the color, shape, size, texture, quantity, text, "
            "spatial relationships of the objects and background:<|im_end|>\n<|im_start|>user\n{}<|im_end|>\n"
            "<|im_start|>assistant\n")
LATENT_CHANNELS = 16
# The tiny Edit model's image processor: pictures scaled to 56² pixels at most (4x4 patches of 14, 4 vision tokens).
VISION_PIXELS = (28 * 28, 56 * 56)


def qwen_tokenizer() -> Any:
    """A byte-level BPE ``Qwen2Tokenizer`` over the bilingual corpus and the prompt template, built offline."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers
    from transformers import Qwen2Tokenizer
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    words = corpus_words()
    lines = [TEMPLATE.format("，".join(words[i:i + 6])) for i in range(0, len(words), 3)]
    lines += [" ".join(words), "，".join(words) + "。"]
    trainer = trainers.BpeTrainer(vocab_size=1200, min_frequency=1, special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    bpe.train_from_iterator(lines * 2, trainer)
    return Qwen2Tokenizer(vocab=bpe.get_vocab(), merges=_merges(bpe), extra_special_tokens=list(SPECIAL_TOKENS[1:]),
                          model_max_length=32768)


def _merges(bpe: Any) -> list[tuple[str, str]]:
    import json

    merges = json.loads(bpe.to_str())["model"]["merges"]
    return [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in merges]


def _text_encoder(vocab_size: int, tokenizer: Any) -> Any:
    """A tiny random Qwen2.5-VL (2 text layers of 32 dimensions, a 1-block vision tower)."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    ids = tokenizer.convert_tokens_to_ids
    config = Qwen2_5_VLConfig(
        text_config={
            "vocab_size": vocab_size, "hidden_size": TEXT_HIDDEN, "intermediate_size": 64, "num_hidden_layers": 2,
            "num_attention_heads": 2, "num_key_value_heads": 2, "max_position_embeddings": 2048,
            "rope_scaling": {"mrope_section": [2, 2, 4], "rope_type": "default", "type": "default"},
            "rope_theta": 1000000.0, "bos_token_id": ids("<|endoftext|>"), "eos_token_id": ids("<|im_end|>"),
            "pad_token_id": ids("<|endoftext|>"),
        },
        vision_config={"depth": 1, "hidden_size": 16, "intermediate_size": 16, "num_heads": 2,
                       "out_hidden_size": TEXT_HIDDEN},
        vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"),
        image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|image_pad|>"),
        bos_token_id=ids("<|endoftext|>"), eos_token_id=ids("<|im_end|>"), pad_token_id=ids("<|endoftext|>"),
    )
    return Qwen2_5_VLForConditionalGeneration(config)


def tiny_qwen_image(folder: Path, sample_size: int) -> tuple[Any, Path | None]:
    """A tiny random Qwen-Image: two transformer blocks, a Qwen2.5-VL text encoder of 32 dimensions,
    a 16-channel 8x video-style VAE (5-D latents with one frame)."""
    from diffusers import (
        AutoencoderKLQwenImage,
        FlowMatchEulerDiscreteScheduler,
        QwenImagePipeline,
        QwenImageTransformer2DModel,
    )

    tokenizer = qwen_tokenizer()
    transformer = QwenImageTransformer2DModel(
        patch_size=2, in_channels=LATENT_CHANNELS * 4, out_channels=LATENT_CHANNELS, num_layers=2,
        attention_head_dim=16, num_attention_heads=2, joint_attention_dim=TEXT_HIDDEN, axes_dims_rope=(4, 6, 6),
    )
    vae = AutoencoderKLQwenImage(
        base_dim=8, z_dim=LATENT_CHANNELS, dim_mult=[1, 2, 2, 2], num_res_blocks=1,
        temperal_downsample=[False, True, True],
        latents_mean=[0.1 * (i % 5) - 0.2 for i in range(LATENT_CHANNELS)],
        latents_std=[1.0 + 0.1 * (i % 3) for i in range(LATENT_CHANNELS)],
    )
    pipe = QwenImagePipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(**QWEN_IMAGE_SCHEDULER), vae=vae,
        text_encoder=_text_encoder(len(tokenizer), tokenizer), tokenizer=tokenizer, transformer=transformer,
    )
    return pipe, None


def tiny_qwen_image_edit(folder: Path, sample_size: int) -> tuple[Any, Path | None]:
    """The tiny Qwen-Image as a Qwen-Image-Edit model: a ``QwenImageEditPipeline`` whose processor is written
    after the pipeline is saved (diffusers cannot save a Qwen2-VL processor without its video part)."""
    import json

    from diffusers import QwenImageEditPipeline
    from transformers import Qwen2VLImageProcessor

    pipe, _ = tiny_qwen_image(folder, sample_size)
    edit = QwenImageEditPipeline(processor=None, **pipe.components)

    def write_processor(out: Path) -> None:
        Qwen2VLImageProcessor(min_pixels=VISION_PIXELS[0], max_pixels=VISION_PIXELS[1]).save_pretrained(out / "processor")
        pipe.tokenizer.save_pretrained(out / "processor")
        index = json.loads((out / "model_index.json").read_text(encoding="utf-8"))
        atomic_write_json(out / "model_index.json", {**index, "processor": ["transformers", "Qwen2VLProcessor"]})

    edit._lorastory_after_save = write_processor
    return edit, None
