"""Folders on disk for the end-to-end benchmarks: a real-size Kolors model and training pictures.

``build_kolors_folder`` writes a diffusers ``KolorsPipeline`` folder in the hub's layout (``unet/``,
``vae/``, ``text_encoder/``, ``tokenizer/``, ``scheduler/``, fp16 safetensors) with seeded random weights
of the published sizes: the Kolors UNet (2.58 B), the SDXL VAE and ChatGLM3-6B (6.2 B, 12.5 GB in fp16).
``text_layers`` shrinks ChatGLM's depth (28 layers published) to save disk and build time; the
benchmarks say so in their output. The UNet's and VAE's output convolutions are rescaled once
(``gpu_story.normalise``) so that random weights give in-range pictures. The tokenizer is the shipped
toy model's ChatGLM tokenizer (ids within the real vocabulary). A folder already built with the same
settings is reused (``bench_folder.json`` records them).

``make_data`` writes seeded pictures with captions as a training folder (``metadata.csv``, and
``.txt`` files for kohya), shared with ``peer_kohya.py``.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

CHATGLM3_6B: dict[str, Any] = dict(
    num_layers=28, padded_vocab_size=65024, hidden_size=4096, ffn_hidden_size=13696, kv_channels=128,
    num_attention_heads=32, seq_length=32768, multi_query_attention=True, multi_query_group_num=2,
    add_qkv_bias=True, original_rope=True, rmsnorm=True, post_layer_norm=True,
)
TINY_CHATGLM: dict[str, Any] = dict(
    num_layers=2, padded_vocab_size=65024, hidden_size=64, ffn_hidden_size=128, kv_channels=16,
    num_attention_heads=4, seq_length=256, multi_query_attention=True, multi_query_group_num=2,
    add_qkv_bias=True, original_rope=True,
)
# The tiny ChatGLM's width must match _kolors_arch.TINY_UNET's text inputs (48).
TINY_TEXT_FOR_UNET: dict[str, Any] = dict(hidden_size=48, num_attention_heads=2, kv_channels=24, ffn_hidden_size=96)
MARKER = "bench_folder.json"


def build_chatglm(device: str, dtype: Any, tiny: bool, layers: int | None = None, **overrides: Any) -> Any:
    """ChatGLM3 with seeded random weights (N(0, 0.02)), the 6B config unless ``tiny``; ``layers`` shrinks its depth."""
    import torch
    from diffusers.pipelines.kolors import ChatGLMModel
    from diffusers.pipelines.kolors.text_encoder import ChatGLMConfig

    settings = {**(TINY_CHATGLM if tiny else CHATGLM3_6B), **overrides}
    if layers:
        settings["num_layers"] = layers
    torch.manual_seed(2)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            encoder = ChatGLMModel(ChatGLMConfig(**settings), empty_init=False)
    finally:
        torch.set_default_dtype(previous)
    with torch.no_grad():
        for param in encoder.parameters():
            param.normal_(0.0, 0.02)
    return encoder.eval().requires_grad_(False)


def build_kolors_folder(folder: Path, text_layers: int | None = None, tiny: bool = False) -> dict[str, Any]:
    """Write (or reuse) the random real-size Kolors folder; return what it holds and how long building took."""
    wanted = {"tiny": tiny, "text_layers": text_layers or (TINY_CHATGLM if tiny else CHATGLM3_6B)["num_layers"],
              "text_layers_published": CHATGLM3_6B["num_layers"]}
    marker = folder / MARKER
    if marker.exists() and {k: v for k, v in json.loads(marker.read_text()).items() if k in wanted} == wanted:
        return json.loads(marker.read_text())
    import torch
    from _kolors_arch import build_unet, build_vae
    from diffusers import EulerDiscreteScheduler, KolorsPipeline
    from diffusers.pipelines.kolors import ChatGLMTokenizer
    from gpu_story import Embeds, normalise

    from lorastory.models.toy import shipped_toy_dir

    started = time.perf_counter()
    shutil.rmtree(folder, ignore_errors=True)
    device = "cuda" if torch.cuda.is_available() and not tiny else "cpu"
    dtype = torch.float16 if device == "cuda" else torch.float32
    toy = shipped_toy_dir("kolors")
    pipe = KolorsPipeline(vae=build_vae(device, torch.bfloat16 if device == "cuda" else dtype, tiny),
                          text_encoder=build_chatglm(device, dtype, tiny, text_layers, **TINY_TEXT_FOR_UNET if tiny else {}),
                          tokenizer=ChatGLMTokenizer.from_pretrained(toy / "tokenizer"),
                          unet=build_unet(device, torch.bfloat16 if device == "cuda" else dtype, tiny),
                          scheduler=EulerDiscreteScheduler.from_pretrained(toy / "scheduler"),
                          force_zeros_for_empty_prompt=False)
    size = 64 if tiny else 1024
    scales = normalise(pipe, Embeds(1, device, pipe.unet.dtype, tiny), size, device)
    pipe.unet.to(dtype)
    pipe.vae.to(dtype)
    pipe.save_pretrained(folder, safe_serialization=True)
    params = {name: sum(p.numel() for p in getattr(pipe, name).parameters()) for name in ("unet", "vae", "text_encoder")}
    record = {**wanted, "parameters": params, "normalise": scales, "build_s": round(time.perf_counter() - started, 1),
              "disk_gb": round(sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 2**30, 2)}
    marker.write_text(json.dumps(record, indent=1))
    del pipe
    if device == "cuda":
        torch.cuda.empty_cache()
    return record


def make_data(folder: Path, count: int, size: int) -> None:
    """Seeded pictures (smooth colour fields plus noise) with captions in both tools' forms; kept when there."""
    if (folder / "metadata.csv").exists() and len(list(folder.glob("*.png"))) == count:
        return
    import csv

    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rows = []
    for index in range(count):
        yy, xx = np.mgrid[0:size, 0:size] / size
        colour = rng.random((3, 3))
        picture = sum(colour[:, k][None, None, :] * field[..., None] for k, field in enumerate((xx, yy, xx * yy)))
        picture = np.clip(picture / 2 + rng.normal(0, 0.05, (size, size, 3)), 0, 1)
        name = f"{index:04d}.png"
        Image.fromarray((picture * 255).astype(np.uint8)).save(folder / name)
        caption = f"a picture in the benchmark style, number {index}, soft colours"
        (folder / name).with_suffix(".txt").write_text(caption, encoding="utf-8")
        rows.append((name, caption))
    with open(folder / "metadata.csv", "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file_name", "text"])
        writer.writerows(rows)


def tiny_story(source: Path, target: Path, size: int = 64, steps: int = 2) -> Path:
    """A copy of a story file with small panels and few steps (the CPU smoke tests)."""
    from lorastory.config import read_yaml
    from lorastory.generate.story_file import Story

    data = read_yaml(source)
    data.setdefault("defaults", {}).update(width=size, height=size, steps=steps)
    for panel in data.get("panels", []):
        panel.pop("steps", None)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(Story.model_validate(data).to_yaml(), encoding="utf-8")
    return target
