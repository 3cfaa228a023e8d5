"""Tiny random models of each family, built offline and deterministically.

They have the real classes and wiring of their family (a ChatGLM text encoder
with a sentencepiece tokenizer for Kolors, CLIP for SDXL/SD1.5, an SDXL-style
UNet, an 8x VAE) at a few hundred kilobytes, so every code path — loading,
LoRA, training, generation — runs in tests and on a laptop. The same seed
gives the same bytes.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

from lorastory.errors import ConfigError
from lorastory.fileio import atomic_dir
from lorastory.models.registry import FAMILIES, Family
from lorastory.models.tiny_clip import CLIP_FAMILIES, build_tiny_clip, bytes_to_unicode

TINY_FAMILIES = ("kolors", "sdxl", "sd15")  # the shipped ones; tiny_families() adds registered families

TEXT_HIDDEN = 32
# Kolors' noise schedule (num_train_timesteps, beta_end); SD1.5/SDXL use _euler's defaults (1000, 0.012).
KOLORS_SCHEDULE = (1100, 0.014)
TIME_EMBED = 8


def tiny_families() -> tuple[str, ...]:
    """The families a tiny model can be built for (those whose registry entry names a builder)."""
    return tuple(_tiny_builders())


def _tiny_builders() -> dict[str, tuple[Family, str]]:
    """Each tiny model by name (a family's, or a variant such as an Edit model) with its family and builder."""
    builders = {name: (family, family.tiny_builder) for name, family in FAMILIES.items() if family.tiny_builder}
    builders.update({name: (family, hook) for family in FAMILIES.values() for name, hook in family.tiny_variants})
    return builders


# A small bilingual corpus so the tokenizer has real pieces for prompts in both languages.
_WORDS_ZH = "二次元 少女 紫色 长发 短发 粉色 连衣裙 练习室 唱歌 话筒 演唱会 观众席 舞台 歌星 憧憬 神情 流星 许愿 黑色 礼服 试衣间 日系 动漫 丑陋 变形 嘈杂 模糊 低对比度 水彩 像素 漫画 圆形 方形 三角形 红色 蓝色 绿色 黄色 白天 夜晚 左边 右边 中间 大 小 天空 草地 房子 树 猫 狗".split()
_WORDS_EN = "anime girl purple long short hair pink dress practice room singing microphone concert audience stage singer longing expression shooting star wish black gown fitting room ugly deformed noisy blurry low contrast watercolor pixel comic circle square triangle red blue green yellow day night left right center big small sky grass house tree cat dog a the with in on of and".split()


def _corpus() -> list[str]:
    lines = []
    for i in range(len(_WORDS_ZH)):
        zh = [_WORDS_ZH[(i * k + k) % len(_WORDS_ZH)] for k in range(1, 9)]
        en = [_WORDS_EN[(i * k + 3 * k) % len(_WORDS_EN)] for k in range(1, 11)]
        lines.append("，".join(zh) + "。")
        lines.append(" ".join(en) + ".")
    return lines * 4


def corpus_words() -> list[str]:
    """The words of the tiny tokenizers' bilingual corpus (for vocabularies built from it)."""
    return [*_WORDS_ZH, *_WORDS_EN]


def clip_tokenizer(max_length: int = 77) -> Any:
    """The tiny models' CLIP tokenizer (public for family modules building their own tiny model)."""
    return _clip_tokenizer(max_length)


def clip_text_encoder(with_projection: bool, vocab_size: int) -> Any:
    """A tiny random CLIP text encoder (public for family modules building their own tiny model)."""
    return _clip_text_encoder(with_projection, vocab_size)


def _clip_tokenizer(max_length: int = 77) -> Any:
    """A byte-level CLIP BPE with a handful of merges: every string tokenizes, offline."""
    from transformers import CLIPTokenizer

    chars = list(bytes_to_unicode().values())
    merges = [("t", "h"), ("th", "e</w>"), ("a", "n"), ("i", "n"), ("e", "r"), ("o", "n")]
    tokens = chars + [c + "</w>" for c in chars] + [a + b for a, b in merges] + ["<|startoftext|>", "<|endoftext|>"]
    vocab = {t: i for i, t in enumerate(tokens)}
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=max_length)
    tokenizer._lorastory_files = (vocab, merges)  # also written as vocab.json/merges.txt for older transformers
    return tokenizer


def _save_clip_tokenizer(tokenizer: Any, folder: Path) -> None:
    tokenizer.save_pretrained(folder)
    vocab, merges = tokenizer._lorastory_files
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")


def _sentencepiece_model(vocab_size: int = 1000) -> bytes:
    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_corpus()),
        model_writer=model,
        vocab_size=vocab_size,
        model_type="bpe",
        byte_fallback=True,
        character_coverage=1.0,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        num_threads=1,
        hard_vocab_limit=False,
        minloglevel=2,
    )
    return model.getvalue()


def _init_chatglm_(model: Any, std: float = 0.02) -> None:
    """ChatGLM built with empty_init=False still leaves some tensors unset; initialise all."""
    import torch

    for module in model.modules():
        if isinstance(module, (torch.nn.Linear, torch.nn.Embedding)):
            torch.nn.init.normal_(module.weight, std=std)
            if getattr(module, "bias", None) is not None:
                torch.nn.init.zeros_(module.bias)
        elif type(module).__name__ == "RMSNorm":
            torch.nn.init.ones_(module.weight)


def _unet(cross_attention_dim: int, addition: dict[str, Any] | None, sample_size: int) -> Any:
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=sample_size,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        cross_attention_dim=cross_attention_dim,
        norm_num_groups=16,
        use_linear_projection=True,
        **(addition or {}),
    )


def _vae(scaling_factor: float, sample_size: int, channels: tuple[int, ...] = (8, 16, 16, 16), groups: int = 8,
         force_upcast: bool = True) -> Any:
    """An 8x AutoencoderKL with 4 latent channels (the SDXL/Kolors layout, small)."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * len(channels),
        up_block_types=("UpDecoderBlock2D",) * len(channels),
        block_out_channels=channels,
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=groups,
        sample_size=sample_size,
        scaling_factor=scaling_factor,
        force_upcast=force_upcast,
    )


def _euler(num_train_timesteps: int = 1000, beta_end: float = 0.012) -> Any:
    """A family's training noise schedule as an Euler scheduler (the defaults are SD1.5's and SDXL's)."""
    from diffusers import EulerDiscreteScheduler

    return EulerDiscreteScheduler(
        num_train_timesteps=num_train_timesteps, beta_start=0.00085, beta_end=beta_end, beta_schedule="scaled_linear",
        timestep_spacing="leading", steps_offset=1, prediction_type="epsilon",
    )


def _clip_text_encoder(with_projection: bool, vocab_size: int) -> Any:
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=TEXT_HIDDEN, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, max_position_embeddings=77, projection_dim=TEXT_HIDDEN,
        bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1, pad_token_id=vocab_size - 1,
    )
    return (CLIPTextModelWithProjection if with_projection else CLIPTextModel)(config)


def tiny_kolors(folder: Path, sample_size: int) -> tuple[Any, Path | None]:
    from diffusers import KolorsPipeline
    from diffusers.pipelines.kolors import ChatGLMModel, ChatGLMTokenizer
    from diffusers.pipelines.kolors.text_encoder import ChatGLMConfig

    sp_file = folder / "_spm.model"
    sp_file.write_bytes(_sentencepiece_model())
    tokenizer = ChatGLMTokenizer(vocab_file=str(sp_file))
    config = ChatGLMConfig(
        num_layers=2, padded_vocab_size=1024, hidden_size=TEXT_HIDDEN, ffn_hidden_size=64, kv_channels=16,
        num_attention_heads=2, seq_length=256, multi_query_attention=True, multi_query_group_num=2,
        original_rope=True, torch_dtype="float32",
    )
    text_encoder = ChatGLMModel(config, empty_init=False)
    _init_chatglm_(text_encoder)
    addition = {
        "encoder_hid_dim_type": "text_proj",
        "encoder_hid_dim": TEXT_HIDDEN,
        "addition_embed_type": "text_time",
        "addition_time_embed_dim": TIME_EMBED,
        "projection_class_embeddings_input_dim": TEXT_HIDDEN + 6 * TIME_EMBED,
    }
    pipe = KolorsPipeline(
        vae=_vae(0.13025, sample_size * 8), text_encoder=text_encoder, tokenizer=tokenizer,
        unet=_unet(TEXT_HIDDEN, addition, sample_size), scheduler=_euler(*KOLORS_SCHEDULE), force_zeros_for_empty_prompt=False,
    )
    return pipe, sp_file


def tiny_sdxl(folder: Path, sample_size: int) -> tuple[Any, Path | None]:
    from diffusers import StableDiffusionXLPipeline

    tokenizer = _clip_tokenizer()
    addition = {
        "addition_embed_type": "text_time",
        "addition_time_embed_dim": TIME_EMBED,
        "projection_class_embeddings_input_dim": TEXT_HIDDEN + 6 * TIME_EMBED,
    }
    return _no_scratch(StableDiffusionXLPipeline(
        vae=_vae(0.13025, sample_size * 8),
        text_encoder=_clip_text_encoder(False, len(tokenizer)),
        text_encoder_2=_clip_text_encoder(True, len(tokenizer)),
        tokenizer=tokenizer,
        tokenizer_2=_clip_tokenizer(),
        unet=_unet(2 * TEXT_HIDDEN, addition, sample_size),
        scheduler=_euler(),
    ))


def tiny_sd15(folder: Path, sample_size: int) -> tuple[Any, Path | None]:
    from diffusers import StableDiffusionPipeline

    tokenizer = _clip_tokenizer()
    return _no_scratch(StableDiffusionPipeline(
        vae=_vae(0.18215, sample_size * 8),
        text_encoder=_clip_text_encoder(False, len(tokenizer)),
        tokenizer=tokenizer,
        unet=_unet(TEXT_HIDDEN, None, sample_size),
        scheduler=_euler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    ))


def _no_scratch(pipe: Any) -> tuple[Any, Path | None]:
    return pipe, None


def build_tiny_model(family: str, out_dir: str | os.PathLike[str], seed: int = 0, resolution: int = 64) -> Path:
    """Write a tiny random ``family`` model as a diffusers folder at ``out_dir``."""
    import torch

    if family in CLIP_FAMILIES:  # CLIP / Chinese CLIP for evaluation (lorastory.models.tiny_clip)
        return build_tiny_clip(out_dir, seed=seed, image_size=resolution, family=family)
    tiny = tiny_families()
    if family not in tiny:
        raise ConfigError(f"unknown family '{family}'; choose one of {', '.join(tiny + CLIP_FAMILIES)}")
    if resolution % 8:
        raise ConfigError(f"resolution {resolution} is not a multiple of 8")
    out = Path(out_dir)
    with atomic_dir(out) as tmp:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            sample_size = resolution // 8
            owner, builder = _tiny_builders()[family]
            pipe, scratch = owner.resolve(builder)(tmp, sample_size)
            pipe.save_pretrained(tmp, safe_serialization=True)
            if hasattr(pipe, "_lorastory_after_save"):  # a component diffusers cannot save (an Edit model's processor)
                pipe._lorastory_after_save(tmp)
        if scratch is not None:
            scratch.unlink()
        for component in ("tokenizer", "tokenizer_2"):
            tokenizer = getattr(pipe, component, None)
            if tokenizer is not None and hasattr(tokenizer, "_lorastory_files"):
                _save_clip_tokenizer(tokenizer, tmp / component)
    return out
