"""Tiny random CLIP models, built offline and deterministically, for evaluation tests.

``build_tiny_clip`` writes a ``CLIPModel`` + ``CLIPProcessor`` folder that plain
``transformers`` loads (``CLIPModel.from_pretrained``, ``CLIPProcessor.from_pretrained``)
with no network. Its tokenizer is the real CLIP one: the 49408-token BPE
vocabulary built from ``bpe_simple_vocab_16e6.txt.gz`` exactly as OpenAI's
``clip/simple_tokenizer.py`` builds it (the file ships in this package, copied
from the MIT-licensed ``openai-clip`` sdist; see ``assets/LICENSE-openai-clip.txt``),
so prompts tokenize as they do for ``openai/clip-vit-base-patch32``. Only the
weights are random and small. ``logit_scale`` starts at ln(100), the value trained
CLIP models end at, so logits / 100 equal cosine similarities as they do for real
CLIP (Data-Juicer's ``image_text_similarity`` relies on that).

``build_tiny_chinese_clip`` does the same for ``ChineseCLIPModel`` (BERT tokenizer
over a small character vocabulary), to exercise the Chinese-CLIP code path.

The same seed gives the same bytes.
"""

from __future__ import annotations

import functools
import gzip
import json
import math
import os
from importlib import resources
from pathlib import Path
from typing import Any

from lorastory.errors import ConfigError
from lorastory.fileio import atomic_dir
from lorastory.models.quiet import quiet_transformers

CLIP_FAMILIES = ("clip", "chinese-clip")
CLIP_VOCAB_SIZE = 49408
BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"
HIDDEN = 32
PROJECTION = 16
# OpenAI CLIP's image normalisation (what openai/clip-vit-base-patch32 uses).
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
LOGIT_SCALE = math.log(100.0)


def bpe_vocab_path() -> Path:
    """The CLIP BPE merges file shipped in this package."""
    return Path(str(resources.files("lorastory.models") / "assets" / BPE_FILE))


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte → printable character table."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in codes)))


@functools.lru_cache(maxsize=1)
def clip_vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """CLIP's vocabulary (49408 tokens) and BPE merges, built as ``clip/simple_tokenizer.py`` does."""
    lines = gzip.open(bpe_vocab_path()).read().decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : 49152 - 256 - 2 + 1]]
    chars = list(bytes_to_unicode().values())
    tokens = chars + [c + "</w>" for c in chars] + ["".join(m) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    vocab = {token: index for index, token in enumerate(tokens)}
    if len(vocab) != CLIP_VOCAB_SIZE:
        raise RuntimeError(f"{bpe_vocab_path()}: built {len(vocab)} tokens, expected {CLIP_VOCAB_SIZE}")
    return vocab, [(a, b) for a, b in merges]


def clip_tokenizer(max_length: int = 77) -> Any:
    """The real CLIP tokenizer (same ids as ``openai/clip-vit-base-patch32``), offline."""
    from transformers import CLIPTokenizer

    vocab, merges = clip_vocab_and_merges()
    return CLIPTokenizer(vocab=dict(vocab), merges=list(merges), model_max_length=max_length)


def _clip_image_processor(image_size: int) -> Any:
    from transformers import CLIPImageProcessor

    return CLIPImageProcessor(
        do_resize=True, size={"shortest_edge": image_size}, resample=3, do_center_crop=True,
        crop_size={"height": image_size, "width": image_size}, do_rescale=True, rescale_factor=1 / 255,
        do_normalize=True, image_mean=CLIP_MEAN, image_std=CLIP_STD, do_convert_rgb=True,
    )


def _vision_config(image_size: int) -> dict[str, Any]:
    return dict(
        hidden_size=HIDDEN, intermediate_size=2 * HIDDEN, num_hidden_layers=2, num_attention_heads=2,
        image_size=image_size, patch_size=image_size // 4, projection_dim=PROJECTION,
    )


def _clip(image_size: int) -> tuple[Any, Any]:
    from transformers import CLIPConfig, CLIPModel, CLIPProcessor

    tokenizer = clip_tokenizer()
    config = CLIPConfig(
        text_config=dict(
            vocab_size=CLIP_VOCAB_SIZE, hidden_size=HIDDEN, intermediate_size=2 * HIDDEN, num_hidden_layers=2,
            num_attention_heads=2, max_position_embeddings=77, projection_dim=PROJECTION,
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        ),
        vision_config=_vision_config(image_size),
        projection_dim=PROJECTION,
        logit_scale_init_value=LOGIT_SCALE,
    )
    processor = CLIPProcessor(image_processor=_clip_image_processor(image_size), tokenizer=tokenizer)
    return CLIPModel(config), processor


# Characters for the tiny Chinese CLIP's BERT vocabulary: the prompts of the reference story and common words.
_ZH_TEXT = (
    "二次元一个紫色长发小女孩穿着粉色吊带漏肩连衣裙在练习室练习唱歌手持话筒坐演唱会观众席露出憧憬的神情"
    "夜晚的天空中流星划过许愿黑色礼服试衣间舞台上歌星日系动漫丑陋变形嘈杂模糊低对比度少女短发水彩像素漫画"
    "圆形方形三角形红蓝绿黄白天左右中间大树猫狗房子草地照片图风格画"
)
_PUNCT = "，。、；：？！（）《》“”‘’,.;:?!()-'\"/"


def _bert_vocab() -> list[str]:
    chars = sorted(set(_ZH_TEXT))
    ascii_chars = list("abcdefghijklmnopqrstuvwxyz0123456789")
    pieces = ["##" + c for c in ascii_chars]  # so any English word splits into characters, never [UNK]
    return ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *ascii_chars, *pieces, *sorted(set(_PUNCT)), *chars]


def _chinese_clip(image_size: int) -> tuple[Any, Any]:
    from transformers import BertTokenizer, ChineseCLIPConfig, ChineseCLIPImageProcessor, ChineseCLIPModel, ChineseCLIPProcessor

    tokens = _bert_vocab()
    tokenizer = BertTokenizer(vocab={t: i for i, t in enumerate(tokens)}, model_max_length=52)
    config = ChineseCLIPConfig(
        text_config=dict(
            vocab_size=len(tokens), hidden_size=HIDDEN, intermediate_size=2 * HIDDEN, num_hidden_layers=2,
            num_attention_heads=2, max_position_embeddings=64, type_vocab_size=2, pad_token_id=0,
        ),
        vision_config=_vision_config(image_size),
        projection_dim=PROJECTION,
        logit_scale_init_value=LOGIT_SCALE,
    )
    image_processor = ChineseCLIPImageProcessor(
        do_resize=True, size={"height": image_size, "width": image_size}, resample=3, do_center_crop=False,
        do_rescale=True, rescale_factor=1 / 255, do_normalize=True, image_mean=CLIP_MEAN, image_std=CLIP_STD,
        do_convert_rgb=True,
    )
    processor = ChineseCLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)
    return ChineseCLIPModel(config), processor


def _write_clip_vocab_files(folder: Path) -> None:
    """vocab.json/merges.txt beside tokenizer.json, for tools that read the slow tokenizer files."""
    vocab, merges = clip_vocab_and_merges()
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")


def _portable_processor_files(folder: Path, class_name: str, processor_class: str) -> None:
    """Name the portable image-processor class and write ``preprocessor_config.json`` too.

    Without torchvision, transformers 5 saves its ``...Pil`` variant's name; and
    transformers 4 reads the image processor from ``preprocessor_config.json``,
    which transformers 5 no longer writes.
    """
    path = folder / "processor_config.json"
    data = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    image = data.get("image_processor")
    if image is None:
        return
    image["image_processor_type"] = class_name
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    legacy = {**image, "processor_class": processor_class}
    (folder / "preprocessor_config.json").write_text(json.dumps(legacy, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def build_tiny_clip(
    out_dir: str | os.PathLike[str], seed: int = 0, image_size: int = 32, family: str = "clip"
) -> Path:
    """Write a tiny random CLIP (``family="clip"``) or Chinese CLIP model + processor folder to ``out_dir``."""
    import torch

    if family not in CLIP_FAMILIES:
        raise ConfigError(f"unknown CLIP family '{family}'; choose one of {', '.join(CLIP_FAMILIES)}")
    if image_size < 8 or image_size % 4:
        raise ConfigError(f"CLIP image size {image_size} must be a multiple of 4, at least 8 (it is cut into 4x4 patches)")
    kind = family  # a CLIP kind (the model families are lorastory.models.registry's)
    out = Path(out_dir)
    with quiet_transformers(), atomic_dir(out) as tmp:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model, processor = (_clip if kind == "clip" else _chinese_clip)(image_size)
        model.save_pretrained(tmp, safe_serialization=True)
        processor.save_pretrained(tmp)
        if kind == "clip":
            _write_clip_vocab_files(tmp)
            _portable_processor_files(tmp, "CLIPImageProcessor", "CLIPProcessor")
        else:
            _portable_processor_files(tmp, "ChineseCLIPImageProcessor", "ChineseCLIPProcessor")
    return out
