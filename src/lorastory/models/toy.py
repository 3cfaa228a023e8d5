"""The toy model family: a small Kolors and a small Chinese CLIP that know the toy world.

``build_toy_kolors`` and ``build_toy_clip`` make the untrained architectures
(the real Kolors classes: ChatGLM text encoder with a sentencepiece tokenizer
learned from toy-world captions, an SDXL-style UNet, an 8x VAE; and a
ChineseCLIP whose vocabulary covers the world's words in both languages).
``scripts/toy/train_toy.py`` trains them on the GPU; the trained weights ship
in ``models/assets/toy`` and ``write_toy_model`` writes them out as ordinary
diffusers / transformers folders.
"""

from __future__ import annotations

import io
import os
import random
import re
import shutil
from importlib import resources
from pathlib import Path
from typing import Any

from lorastory.errors import ConfigError
from lorastory.fileio import atomic_dir
from lorastory.models.tiny import KOLORS_SCHEDULE, _corpus, _euler, _init_chatglm_, _vae as tiny_vae
from lorastory.models.tiny_clip import CLIP_MEAN, CLIP_STD, LOGIT_SCALE, _PUNCT, _ZH_TEXT
from lorastory.toyworld import STYLES, caption, sample_scene

TOY_RESOLUTION = 128
TOY_COMPONENTS = ("kolors", "clip")
TEXT_HIDDEN = 256
TIME_EMBED = 32
CLIP_MAX_TOKENS = 64


def toy_captions(count: int = 6000, seed: int = 0) -> list[str]:
    """Captions of random scenes in both languages and all styles (the tokenizers' corpus)."""
    rng = random.Random(seed)
    styles = [None, *STYLES]
    lines = []
    for _ in range(count // 2):
        scene = sample_scene(rng)
        for lang in ("en", "zh"):
            lines.append(caption(scene, lang, rng.choice(styles), rng))
    return lines


# Between two CJK characters: pieces never span them, so Chinese is tokenized per character
# and a new combination of known words gets the same tokens as in training.
_BETWEEN_CJK = re.compile(r"(?<=[\u3000-\u9fff\uff00-\uffef])(?=[\u3000-\u9fff\uff00-\uffef])")


def _sentencepiece_model(vocab_size: int = 1000) -> bytes:
    import sentencepiece as spm

    lines = [_BETWEEN_CJK.sub("\t", line) for line in toy_captions() + _corpus()]
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=model, vocab_size=vocab_size, model_type="bpe",
        byte_fallback=True, character_coverage=1.0, unk_id=0, bos_id=1, eos_id=2, pad_id=-1, num_threads=1,
        hard_vocab_limit=False, minloglevel=2, pretokenization_delimiter="\t",
    )
    return model.getvalue()


def _unet() -> Any:
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=TOY_RESOLUTION // 8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(48, 96, 192),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 1, 1),
        attention_head_dim=(1, 2, 4),
        cross_attention_dim=TEXT_HIDDEN,
        norm_num_groups=16,
        use_linear_projection=True,
        encoder_hid_dim_type="text_proj",
        encoder_hid_dim=TEXT_HIDDEN,
        addition_embed_type="text_time",
        addition_time_embed_dim=TIME_EMBED,
        projection_class_embeddings_input_dim=TEXT_HIDDEN + 6 * TIME_EMBED,
    )


def _vae() -> Any:
    # scaling_factor is set from the latents' spread once the VAE is trained
    return tiny_vae(1.0, TOY_RESOLUTION, channels=(32, 64, 128, 128), groups=32, force_upcast=False)


def build_toy_kolors(scratch: Path, seed: int = 0) -> Any:
    """An untrained toy KolorsPipeline; ``scratch`` holds the tokenizer's model file."""
    import torch
    from diffusers import KolorsPipeline
    from diffusers.pipelines.kolors import ChatGLMModel, ChatGLMTokenizer
    from diffusers.pipelines.kolors.text_encoder import ChatGLMConfig

    sp_file = Path(scratch) / "toy_spm.model"
    sp_file.write_bytes(_sentencepiece_model())
    tokenizer = ChatGLMTokenizer(vocab_file=str(sp_file))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        config = ChatGLMConfig(
            num_layers=3, padded_vocab_size=1024, hidden_size=TEXT_HIDDEN, ffn_hidden_size=768, kv_channels=64,
            num_attention_heads=4, seq_length=256, multi_query_attention=True, multi_query_group_num=2,
            original_rope=True, torch_dtype="float32",
        )
        text_encoder = ChatGLMModel(config, empty_init=False)
        _init_chatglm_(text_encoder)
        return KolorsPipeline(
            vae=_vae(), text_encoder=text_encoder, tokenizer=tokenizer, unet=_unet(), scheduler=_euler(*KOLORS_SCHEDULE),
            force_zeros_for_empty_prompt=False,
        )


def _clip_vocab() -> list[str]:
    words, chars = set(), set(_ZH_TEXT)
    for line in toy_captions(2000):
        for piece in line.replace(",", " ").replace("，", " ").split():
            if piece.isascii():
                words.add(piece.lower())
            else:
                chars.update(piece)
    letters = list("abcdefghijklmnopqrstuvwxyz0123456789")
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tokens = [*specials, *sorted(words - set(letters)), *letters, *("##" + c for c in letters), *sorted(set(_PUNCT)), *sorted(chars)]
    return list(dict.fromkeys(tokens))  # "a" is both a word and a letter: one id each


def build_toy_clip(seed: int = 0) -> tuple[Any, Any]:
    """An untrained toy ChineseCLIP model and its processor (both languages, 128 px)."""
    import torch
    from transformers import BertTokenizer, ChineseCLIPConfig, ChineseCLIPImageProcessor, ChineseCLIPModel, ChineseCLIPProcessor

    tokens = _clip_vocab()
    tokenizer = BertTokenizer(vocab={t: i for i, t in enumerate(tokens)}, model_max_length=CLIP_MAX_TOKENS)
    width = 192
    config = ChineseCLIPConfig(
        text_config=dict(
            vocab_size=len(tokens), hidden_size=width, intermediate_size=4 * width, num_hidden_layers=3,
            num_attention_heads=4, max_position_embeddings=CLIP_MAX_TOKENS, type_vocab_size=2, pad_token_id=0,
        ),
        vision_config=dict(
            hidden_size=width, intermediate_size=4 * width, num_hidden_layers=4, num_attention_heads=4,
            image_size=TOY_RESOLUTION, patch_size=16, projection_dim=128,
        ),
        projection_dim=128,
        logit_scale_init_value=LOGIT_SCALE,
    )
    image_processor = ChineseCLIPImageProcessor(
        do_resize=True, size={"height": TOY_RESOLUTION, "width": TOY_RESOLUTION}, resample=3, do_center_crop=False,
        do_rescale=True, rescale_factor=1 / 255, do_normalize=True, image_mean=CLIP_MEAN, image_std=CLIP_STD,
        do_convert_rgb=True,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ChineseCLIPModel(config)
    return model, ChineseCLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)


def shipped_toy_dir(component: str) -> Path:
    """Where the trained toy ``component`` ships inside the package."""
    return Path(str(resources.files("lorastory.models") / "assets" / "toy" / component))


def write_toy_model(out_dir: str | os.PathLike[str], component: str = "kolors") -> Path:
    """Write the trained toy ``component`` (kolors or clip) as a normal model folder at ``out_dir``."""
    if component not in TOY_COMPONENTS:
        raise ConfigError(f"unknown toy component '{component}'; choose one of {', '.join(TOY_COMPONENTS)}")
    source = shipped_toy_dir(component)
    if not source.is_dir():
        raise ConfigError(f"this lorastory install has no trained toy {component} (missing {source})")
    out = Path(out_dir)
    with atomic_dir(out) as tmp:
        shutil.copytree(source, tmp, dirs_exist_ok=True)
        for weights in tmp.rglob("*.safetensors"):
            _widen_to_float32(weights)
    return out


def _widen_to_float32(path: Path) -> None:
    """The package ships float16 weights (half the size); written out, they are float32 like any
    checkpoint a CPU run loads without a dtype argument."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    widened = {key: (t.float() if t.dtype == torch.float16 else t) for key, t in tensors.items()}
    save_file(widened, str(path), metadata=metadata)
