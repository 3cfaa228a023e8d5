"""Shuffled captions: encode each step's captions live, or read K cached shuffles? (CPU, no downloads).

Times, per caption, a frozen text encoder's forward (random weights built from the real configs: SD1.5's
CLIP ViT-L text tower, SDXL's second encoder OpenCLIP bigG) against reading one cache entry of that
family's embedding size from disk (``lorastory.train.cache.TensorCache``), and prints the disk a cache
of K shuffles per caption takes. Run: ``python bench/caption_cache.py [--threads 2]``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import torch

from lorastory.train.cache import TensorCache

# name: (hidden, layers, heads, intermediate, tokens, embedding shapes the cache stores)
ENCODERS = {
    "sd15 CLIP-L (123M)": (768, 12, 12, 3072, 77, {"prompt_embeds": (77, 768)}),
    "sdxl bigG (695M; + CLIP-L)": (1280, 32, 20, 5120, 77, {"prompt_embeds": (77, 2048), "pooled_prompt_embeds": (1280,)}),
}
KOLORS = {"prompt_embeds": (256, 4096), "pooled_prompt_embeds": (4096,)}  # ChatGLM3-6B: not built here


def _encode_seconds(hidden: int, layers: int, heads: int, inter: int, tokens: int, batch: int, repeat: int) -> float:
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                            intermediate_size=inter, max_position_embeddings=tokens)
    model = CLIPTextModel(config).eval()
    ids = torch.randint(0, config.vocab_size, (batch, tokens))
    with torch.inference_mode():
        model(ids)  # warm-up
        start = time.perf_counter()
        for _ in range(repeat):
            model(ids)
    return (time.perf_counter() - start) / repeat / batch


def _load_seconds(shapes: dict[str, tuple[int, ...]], repeat: int) -> tuple[float, int]:
    with tempfile.TemporaryDirectory() as root:
        cache = TensorCache(root)
        cache.save("ab" * 32, {k: torch.randn(s, dtype=torch.bfloat16) for k, s in shapes.items()})
        size = cache.path("ab" * 32).stat().st_size
        start = time.perf_counter()
        for _ in range(repeat):
            cache.load("ab" * 32)
    return (time.perf_counter() - start) / repeat, size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=4)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for name, (hidden, layers, heads, inter, tokens, shapes) in ENCODERS.items():
        encode = _encode_seconds(hidden, layers, heads, inter, tokens, args.batch, repeat=3)
        load, size = _load_seconds(shapes, repeat=50)
        rows.append({"encoder": name, "encode_ms_per_caption": round(encode * 1e3, 2),
                     "cache_load_ms": round(load * 1e3, 3), "entry_kib_bf16": round(size / 1024, 1)})
    load, size = _load_seconds(KOLORS, repeat=50)
    rows.append({"encoder": "kolors ChatGLM3-6B (not built)", "cache_load_ms": round(load * 1e3, 3),
                 "entry_kib_bf16": round(size / 1024, 1)})
    print(json.dumps({"threads": args.threads, "batch": args.batch, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
