"""Build the tiny random models that the model-backed parity cases name (``{cases}/models/...``).

Data-Juicer's defaults for ``image_nsfw_filter``, ``image_watermark_filter``
(ViT image classifiers), ``image_text_matching_filter`` (BLIP ITM) and
``image_pair_similarity_filter`` (CLIP) are hub downloads; its ``hf_*``
parameters go to transformers' ``from_pretrained``, so a local folder works
offline for both Data-Juicer and lorastory. These folders are committed under
tests/data/dj_parity/cases/models/ (about 200 KB in all), so CI compares with the
very weights Data-Juicer ran; this script rebuilds them (CPU, fixed seeds, the
same bytes each time), after which scripts/dj_parity.py must re-record the cases.

    PYTHONPATH=src python scripts/dj_parity_models.py     # lorastory's venv (torch, transformers)
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from lorastory.models.tiny_clip import CLIP_MEAN, CLIP_STD, LOGIT_SCALE, bytes_to_unicode

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "tests" / "data" / "dj_parity" / "cases" / "models"
# initializer_range well above the usual 0.02, so random scores differ from image to image and text to text.
SMALL = {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 24,
         "initializer_range": 0.5}
WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *"abcdefghijklmnopqrstuvwxyz", "face", "faces", "noise",
         "grid", "photo", "one", "two", "a", "of", "and"]


def _fresh(name: str) -> Path:
    folder = MODELS / name
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder


def build_classifier(name: str, seed: int) -> Path:
    """A two-label ViT image classifier (the architecture of Falconsai/nsfw_image_detection)."""
    import torch
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    folder = _fresh(name)
    torch.manual_seed(seed)
    config = ViTConfig(image_size=32, patch_size=8, num_labels=2, **SMALL)
    ViTForImageClassification(config).save_pretrained(folder)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


def build_blip(seed: int) -> Path:
    """A BLIP image-text retrieval model (Salesforce/blip-itm-base-coco's architecture), small word vocabulary."""
    import torch
    from transformers import BertTokenizerFast, BlipConfig, BlipForImageTextRetrieval, BlipImageProcessor, BlipProcessor

    folder = _fresh("blip_itm")
    (folder / "vocab.txt").write_text("\n".join(WORDS) + "\n", encoding="utf-8")
    tokenizer = BertTokenizerFast(vocab_file=str(folder / "vocab.txt"))
    processor = BlipProcessor(image_processor=BlipImageProcessor(size={"height": 32, "width": 32}), tokenizer=tokenizer)
    processor.save_pretrained(folder)
    torch.manual_seed(seed)
    # A short position window (12), so a long caption shows how both sides truncate the text.
    config = BlipConfig(
        text_config={**SMALL, "vocab_size": len(WORDS), "max_position_embeddings": 12, "encoder_hidden_size": 16,
                     "bos_token_id": 2, "sep_token_id": 3, "pad_token_id": 0},
        vision_config={**SMALL, "image_size": 32, "patch_size": 8}, projection_dim=8, image_text_hidden_size=8,
        initializer_range=0.5)
    BlipForImageTextRetrieval(config).save_pretrained(folder)
    return folder


def build_clip(seed: int) -> Path:
    """A CLIP model (openai/clip-vit-base-patch32's architecture) whose tokenizer has only byte-level tokens."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    folder = _fresh("clip")
    chars = list(bytes_to_unicode().values())
    tokens = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(
        "{" + ",".join(f"{_json(t)}: {i}" for i, t in enumerate(tokens)) + "}", encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    tokenizer = CLIPTokenizer(vocab_file=str(folder / "vocab.json"), merges_file=str(folder / "merges.txt"))
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": 32}, resample=3, crop_size={"height": 32, "width": 32},
        image_mean=CLIP_MEAN, image_std=CLIP_STD)
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)
    torch.manual_seed(seed)
    config = CLIPConfig(
        text_config={**SMALL, "vocab_size": len(tokens), "max_position_embeddings": 16, "projection_dim": 8,
                     "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
                     "pad_token_id": tokenizer.pad_token_id},
        vision_config={**SMALL, "image_size": 32, "patch_size": 8, "projection_dim": 8},
        projection_dim=8, logit_scale_init_value=LOGIT_SCALE, initializer_factor=5.0)
    CLIPModel(config).save_pretrained(folder)
    return folder


def _json(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def main() -> int:
    built = [build_classifier("vit_nsfw", 1), build_classifier("vit_watermark", 2), build_blip(3), build_clip(4)]
    for folder in built:
        size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
        print(f"{folder.relative_to(ROOT)}: {size // 1024} KB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
