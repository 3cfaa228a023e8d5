"""Tiny random captioners of every backend, built offline, for tests and ``bench/caption_gpu.py --tiny``.

Each has the real classes and files of its kind at a few hundred kilobytes:
BLIP (a WordPiece tokenizer), BLIP-2 with an OPT language model, Florence-2
(a BART tokenizer with its ``<image>`` token) and Qwen2.5-VL (byte-level BPE
tokenizers learned here from a small corpus), and a WD14 tagger (an ONNX
graph written with the ``onnx`` helper API plus ``selected_tags.csv``). Their
captions are gibberish; every code path that loads and runs them is real.
The same seed gives the same weights.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from lorastory.errors import ConfigError
from lorastory.fileio import atomic_dir
from lorastory.models.captioners.base import DEFAULT_PROMPTS
from lorastory.models.quiet import quiet_transformers
from lorastory.models.toy import toy_captions

TINY_KINDS = ("blip", "blip2", "florence2", "qwen2_5_vl", "wd14")
HIDDEN = 32
IMAGE = 32
QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                 "<|image_pad|>", "<|video_pad|>"]
WD14_TAGS = [("general", 9), ("sensitive", 9), ("1girl", 0), ("long_hair", 0), ("short_hair", 0), ("red_hair", 0),
             ("blue_shirt", 0), ("outdoors", 0), ("night", 0), ("tree", 0), ("^_^", 0), ("hatsune_miku", 4), ("toy_hero", 4)]


def _corpus() -> list[str]:

    return toy_captions(200) + list(DEFAULT_PROMPTS.values()) + ["What does the image describe?", "Question: Answer:"]


def _byte_bpe(specials: list[str], vocab_size: int = 500) -> Any:
    """A byte-level BPE tokenizer (GPT-2 / BART / Qwen style) learned from the corpus."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(_corpus(), trainer)
    return tokenizer


def _vision(**extra: Any) -> dict[str, Any]:
    return dict(hidden_size=HIDDEN, intermediate_size=37, num_hidden_layers=1, num_attention_heads=2,
                image_size=IMAGE, patch_size=8, **extra)


def _blip(folder: Path) -> None:
    import transformers as tf

    words = sorted({w for line in _corpus() for w in line.lower().replace(",", " ").split() if w.isascii() and w.isalpha()})
    letters = list("abcdefghijklmnopqrstuvwxyz")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *dict.fromkeys(words + letters), *("##" + c for c in letters), ",", "."]
    tokenizer = tf.BertTokenizer(vocab={t: i for i, t in enumerate(vocab)})
    config = tf.BlipConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=HIDDEN, intermediate_size=37, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=128, bos_token_id=2, sep_token_id=3,
                         pad_token_id=0, eos_token_id=3),
        vision_config=_vision(), projection_dim=16)
    tf.BlipForConditionalGeneration(config).save_pretrained(folder)
    tf.BlipProcessor(tf.BlipImageProcessor(size={"height": IMAGE, "width": IMAGE}), tokenizer).save_pretrained(folder)


def _blip2(folder: Path) -> None:
    import transformers as tf

    tokenizer = tf.PreTrainedTokenizerFast(tokenizer_object=_byte_bpe(["</s>", "<pad>"]), bos_token="</s>",
                                           eos_token="</s>", pad_token="<pad>", unk_token="</s>")
    tokenizer.add_tokens(["<image>"], special_tokens=True)
    tokenizer.image_token = "<image>"
    queries = 4
    config = tf.Blip2Config(
        vision_config=_vision(),
        qformer_config=dict(vocab_size=64, hidden_size=HIDDEN, intermediate_size=37, num_hidden_layers=1,
                            num_attention_heads=2, encoder_hidden_size=HIDDEN, max_position_embeddings=64),
        text_config=dict(model_type="opt", vocab_size=len(tokenizer), hidden_size=HIDDEN, ffn_dim=37, num_hidden_layers=1,
                         num_attention_heads=2, word_embed_proj_dim=HIDDEN, max_position_embeddings=256,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id),
        num_query_tokens=queries, image_token_index=tokenizer.convert_tokens_to_ids("<image>"))
    tf.Blip2ForConditionalGeneration(config).save_pretrained(folder)
    image_processor = tf.BlipImageProcessor(size={"height": IMAGE, "width": IMAGE})
    tf.Blip2Processor(image_processor, tokenizer, num_query_tokens=queries).save_pretrained(folder)


def _florence2(folder: Path) -> None:
    import transformers as tf

    tokenizer = tf.PreTrainedTokenizerFast(
        tokenizer_object=_byte_bpe(["<s>", "<pad>", "</s>", "<unk>"]), bos_token="<s>", eos_token="</s>",
        pad_token="<pad>", unk_token="<unk>", extra_special_tokens={"image_token": "<image>"})
    side = 64  # DaViT strides 4 then 2: an 8x8 grid, 64 image tokens plus one pooled token
    vision = dict(depths=[1, 1], patch_size=[7, 3], patch_stride=[4, 2], patch_padding=[3, 1],
                  patch_prenorm=[False, True], embed_dim=[16, HIDDEN], num_heads=[2, 2], num_groups=[2, 2],
                  window_size=2, projection_dim=HIDDEN, max_temporal_embeddings=4, max_position_embeddings=8,
                  drop_path_rate=0.0)
    text = dict(vocab_size=len(tokenizer), d_model=HIDDEN, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                decoder_attention_heads=2, encoder_ffn_dim=37, decoder_ffn_dim=37, max_position_embeddings=256,
                bos_token_id=0, pad_token_id=1, eos_token_id=2, decoder_start_token_id=2, forced_bos_token_id=0)
    config = tf.Florence2Config(vision_config=vision, text_config=text, image_token_id=tokenizer.image_token_id)
    tf.Florence2ForConditionalGeneration(config).save_pretrained(folder)
    image_processor = tf.CLIPImageProcessor(size={"height": side, "width": side}, crop_size={"height": side, "width": side},
                                            do_center_crop=False, image_seq_length=65)
    tf.Florence2Processor(image_processor, tokenizer).save_pretrained(folder)


def _qwen2_5_vl(folder: Path) -> None:
    import transformers as tf

    tokenizer = tf.PreTrainedTokenizerFast(tokenizer_object=_byte_bpe(QWEN_SPECIALS), eos_token="<|im_end|>",
                                           pad_token="<|endoftext|>")
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in QWEN_SPECIALS}
    mrope = {"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 10000.0}
    config = tf.Qwen2_5_VLConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=HIDDEN, intermediate_size=37, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=1024,
                         rope_parameters=mrope, eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"],
                         bos_token_id=ids["<|endoftext|>"]),
        vision_config=dict(depth=1, hidden_size=HIDDEN, intermediate_size=37, num_heads=2, out_hidden_size=HIDDEN,
                           patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=56,
                           fullatt_block_indexes=[0]),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])
    tf.Qwen2_5_VLForConditionalGeneration(config).save_pretrained(folder)
    tf.Qwen2VLImageProcessor(min_pixels=56 * 56, max_pixels=112 * 112).save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def wd14_graph(tags: int, side: int, seed: int) -> Any:
    """An ONNX tagger: NHWC BGR 0–255 → mean colour per channel → linear → sigmoid probabilities."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    weight = numpy_helper.from_array((rng.standard_normal((3, tags)) * 0.05).astype(np.float32), "weight")
    bias = numpy_helper.from_array((rng.standard_normal(tags) * 0.5).astype(np.float32), "bias")
    axes = numpy_helper.from_array(np.array([1, 2], dtype=np.int64), "axes")
    nodes = [helper.make_node("ReduceMean", ["input_1:0", "axes"], ["mean"], keepdims=0),
             helper.make_node("MatMul", ["mean", "weight"], ["logits0"]),
             helper.make_node("Add", ["logits0", "bias"], ["logits"]),
             helper.make_node("Sigmoid", ["logits"], ["predictions_sigmoid"])]
    graph = helper.make_graph(
        nodes, "tiny_wd14", [helper.make_tensor_value_info("input_1:0", TensorProto.FLOAT, ["batch", side, side, 3])],
        [helper.make_tensor_value_info("predictions_sigmoid", TensorProto.FLOAT, ["batch", tags])],
        initializer=[weight, bias, axes])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8)


def write_tag_table(folder: Path, tags: list[tuple[str, int]]) -> None:
    """``selected_tags.csv`` as the WD14 repositories ship it."""
    lines = ["tag_id,name,category,count"] + [f"{i},{name},{category},{1000 - i}" for i, (name, category) in enumerate(tags)]
    (folder / "selected_tags.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")


def _wd14(folder: Path, seed: int = 0) -> None:
    import onnx

    onnx.save(wd14_graph(len(WD14_TAGS), 64, seed), str(folder / "model.onnx"))
    write_tag_table(folder, WD14_TAGS)


_BUILDERS = {"blip": _blip, "blip2": _blip2, "florence2": _florence2, "qwen2_5_vl": _qwen2_5_vl}


def build_tiny_captioner(kind: str, out_dir: str | os.PathLike[str], seed: int = 0) -> Path:
    """Write a tiny random captioner of ``kind`` (one of :data:`TINY_KINDS`) to ``out_dir``."""
    import torch


    if kind not in TINY_KINDS:
        raise ConfigError(f"unknown captioner kind '{kind}'; choose one of {', '.join(TINY_KINDS)}")
    out = Path(out_dir)
    with quiet_transformers(), atomic_dir(out) as tmp:
        if kind == "wd14":
            _wd14(tmp, seed)
            return out
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            _BUILDERS[kind](tmp)
    return out
