"""GPU benchmark: building the training cache at Kolors size (ChatGLM3-6B text encoder + SDXL VAE encoder).

What ``lorastory train`` does before its first step, timed through the library's own functions
(``lorastory.train.cache.fill_latents`` and ``fill_text``) on real files:

- **latents**: N PNG pictures at 1024² on disk → decode, resize/crop, VAE encode (bf16), one
  safetensors file per picture; img/s end to end, plus the VAE encode alone on a batch in memory.
- **text**: N captions → ChatGLM3-6B (the published config: 28 layers, 4096 wide, 13,696 FFN,
  multi-query attention with 2 groups) with seeded random bf16 weights, 256 tokens each, Kolors'
  penultimate hidden state and pooled output, one file per caption; captions/s end to end, plus the
  encoder alone at batch 8 and 32.

The tokenizer is the shipped toy model's ChatGLM tokenizer: its ids are a subset of the 65,024 the
6B embedding takes, and every prompt is padded to 256 tokens as Kolors does, so the work is the same.

    PYTHONPATH=src python bench/gpu_cache.py --json $OUT/cache.json
    .venv/bin/python bench/gpu_cache.py --tiny     # CPU smoke test of the script itself
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from _folders import build_chatglm  # noqa: E402
from _kolors_arch import Recorder, build_vae, environment, peak_gb, reset_peak, sync  # noqa: E402
from PIL import Image  # noqa: E402

from lorastory.models.conditioning import encode_text  # noqa: E402
from lorastory.models.toy import shipped_toy_dir  # noqa: E402
from lorastory.models.vae import encode_latents  # noqa: E402
from lorastory.train.cache import TensorCache, fill_latents, fill_text  # noqa: E402
from lorastory.train.data import TrainItem, place  # noqa: E402

def build_text_pipeline(device: str, dtype: torch.dtype, tiny: bool) -> Any:
    """A KolorsPipeline holding only the tokenizer and a seeded random ChatGLM3 (6B config unless tiny)."""
    from diffusers import KolorsPipeline
    from diffusers.pipelines.kolors import ChatGLMTokenizer

    encoder = build_chatglm(device, dtype, tiny)
    tokenizer = ChatGLMTokenizer.from_pretrained(shipped_toy_dir("kolors") / "tokenizer")
    pipe = KolorsPipeline(vae=None, text_encoder=encoder, tokenizer=tokenizer,
                          unet=None, scheduler=None, force_zeros_for_empty_prompt=False)
    return pipe, sum(p.numel() for p in encoder.parameters())


def write_pictures(folder: Path, count: int, size: int) -> list[TrainItem]:
    """Smooth random pictures (PNG, like a curated training folder), each with its own caption."""
    rng = np.random.default_rng(0)
    items = []
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    for index in range(count):
        a, b, c = rng.uniform(0, 6.28, 3)
        pixels = np.stack([np.sin(xx * 7 + a), np.cos(yy * 5 + b), np.sin((xx + yy) * 3 + c)], -1)
        pixels = ((pixels * 0.4 + 0.5) * 255 + rng.normal(0, 6, pixels.shape)).clip(0, 255).astype(np.uint8)
        path = folder / f"{index:04d}.png"
        Image.fromarray(pixels).save(path, compress_level=1)
        items.append(TrainItem(str(path), f"二次元，一个女孩，第{index}张图，a girl in picture {index}", (size, size)))
    return items


def timed(fn: Any) -> tuple[Any, float]:
    sync()
    started = time.perf_counter()
    result = fn()
    sync()
    return result, time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", default=None)
    parser.add_argument("--tiny", action="store_true", help="small random models on the CPU: a smoke test")
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--captions", type=int, default=256)
    args = parser.parse_args()

    started = time.perf_counter()
    tiny = args.tiny
    device, dtype = ("cpu", torch.float32) if tiny else ("cuda", torch.bfloat16)
    size = 64 if tiny else 1024
    images, captions = (4, 8) if tiny else (args.images, args.captions)
    rec = Recorder(args.json, started)
    rec.set("environment", environment())
    with tempfile.TemporaryDirectory(prefix="lorastory-cache-bench-") as tmp:
        root = Path(tmp)
        (root / "pictures").mkdir()
        items, write_s = timed(lambda: write_pictures(root / "pictures", images, size))
        rng = random.Random(0)
        jobs = [(f"latent-{i}", item, place(item, (size, size), True, False, rng)) for i, item in enumerate(items)]

        reset_peak()
        vae = build_vae(device, dtype, tiny)
        pixels = torch.rand(8, 3, size, size, device=device) * 2 - 1
        with torch.no_grad():
            encode_latents(vae, pixels[:2])  # cuDNN picks its kernels once
            _, alone_s = timed(lambda: encode_latents(vae, pixels))
        for batch in (4, 8):
            cache = TensorCache(root / f"cache-latents-{batch}")
            with torch.no_grad():
                done, seconds = timed(lambda: fill_latents(cache, vae, jobs, batch_size=batch))
            rec.row(f"latents: fill_latents, batch {batch}", images=done, seconds=round(seconds, 2),
                    img_s=round(done / seconds, 1), peak_gb=peak_gb())
        rec.row("latents: VAE encode alone, 8 pictures in memory", img_s=round(8 / alone_s, 1), peak_gb=peak_gb())
        del vae
        if device == "cuda":
            torch.cuda.empty_cache()

        reset_peak()
        (pipe, params), build_s = timed(lambda: build_text_pipeline(device, dtype, tiny))
        rec.set("text_encoder_parameters", params)
        rec.set("text_encoder_build_s", round(build_s, 1))
        texts = [f"二次元，一个黑色长发的女孩，第{i}个场景，a girl with long black hair, scene {i}" for i in range(captions)]
        encode_text(pipe, texts[:8], device)
        for batch in (8, 32):
            _, seconds = timed(lambda: encode_text(pipe, texts[:batch], device))
            rec.row(f"text: ChatGLM encode alone, batch {batch}", captions_s=round(batch / seconds, 1),
                    peak_gb=peak_gb())
        for batch in (8, 32):
            cache = TensorCache(root / f"cache-text-{batch}")
            text_jobs = [(f"text-{i}", caption) for i, caption in enumerate(texts)]
            done, seconds = timed(lambda: fill_text(cache, pipe, text_jobs, device, batch_size=batch))
            rec.row(f"text: fill_text, batch {batch}", captions=done, seconds=round(seconds, 2),
                    captions_s=round(done / seconds, 1), peak_gb=peak_gb())
    rec.set("pictures_written_s", round(write_s, 1))
    print(f"\nelapsed {rec.elapsed():.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
