"""GPU benchmark: seconds per checkpoint of ``lorastory eval checkpoints`` on a real-size Kolors, random weights, offline.

What one checkpoint costs, step by step, the way :class:`lorastory.eval.candidates.CandidateScorer` does it:

1. **LoRA**: ``apply_lora`` of a rank-16 LoRA file (to_q/to_k/to_v/to_out.0, written by ``save_lora``),
   fused into the weights;
2. **render**: the validation set (``--prompts`` × ``--seeds`` pictures at ``--size``², ``--steps`` Euler
   steps, CFG 4) in batches of ``--batch``, with random prompt embeddings of ChatGLM3's output shapes
   (no text encoder: it is the same for every checkpoint), then the VAE decode;
3. **score**: :func:`lorastory.eval.set_scores.score_set` with a CLIP ViT-L/14 of random weights (the real
   CLIP tokenizer) against ``--train-pictures`` training-picture embeddings (embedded once, not counted);
4. **unfuse** and delete the adapter.

The UNet and VAE are bench/_kolors_arch.py's (bf16 on the GPU), their output layers rescaled as in
bench/gpu_story.py. The first checkpoint is a warm-up (reported apart); the mean of the others is the
number. Nothing is downloaded.

    PYTHONPATH=src python bench/eval_checkpoints_gpu.py --json $OUT/eval_checkpoints.json
    PYTHONPATH=src python bench/eval_checkpoints_gpu.py --tiny          # CPU smoke test of the script itself
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from _kolors_arch import environment, peak_gb, sync  # noqa: E402
from gpu_story import Embeds, decode, make_pipe, normalise  # noqa: E402
from PIL import Image  # noqa: E402

from lorastory.eval.set_scores import TrainingPictures, score_set  # noqa: E402
from lorastory.eval.validation_set import ValidationSet  # noqa: E402
from lorastory.models.clip import ClipModel  # noqa: E402
from lorastory.models.lora import LoraSpec, apply_lora, inject_lora, save_lora, unfuse  # noqa: E402
from lorastory.models.tiny_clip import _clip_image_processor, clip_tokenizer  # noqa: E402

VIT_L14 = dict(vision=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                           image_size=224, patch_size=14),
               text=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12),
               projection=768, image_size=224)
TINY_CLIP = dict(vision=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                             image_size=32, patch_size=8),
                 text=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2),
                 projection=16, image_size=32)


def random_clip(device: str, dtype: torch.dtype, tiny: bool) -> ClipModel:
    """A CLIP of ViT-L/14's shapes (tiny: a small one) with random weights and the real tokenizer."""
    from transformers import CLIPConfig, CLIPModel, CLIPProcessor

    shape = TINY_CLIP if tiny else VIT_L14
    tokenizer = clip_tokenizer()
    config = CLIPConfig(
        text_config=dict(vocab_size=49408, max_position_embeddings=77, projection_dim=shape["projection"],
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, **shape["text"]),
        vision_config=dict(projection_dim=shape["projection"], **shape["vision"]),
        projection_dim=shape["projection"],
    )
    torch.manual_seed(5)
    model = CLIPModel(config).to(device, dtype).eval()
    processor = CLIPProcessor(image_processor=_clip_image_processor(shape["image_size"]), tokenizer=tokenizer)
    return ClipModel("random ViT-L/14" if not tiny else "random tiny CLIP", "clip", model, processor,
                     torch.device(device), 77)


def lora_files(folder: Path, count: int, device: str, dtype: torch.dtype, tiny: bool) -> list[Path]:
    """``count`` rank-16 LoRA files for the Kolors UNet (random lora_B), written with a throwaway pipeline."""
    pipe = make_pipe(device, dtype, tiny)
    spec = LoraSpec(rank=16, alpha=4)
    torch.manual_seed(0)
    inject_lora(pipe, spec)
    files = []
    for index in range(count):
        generator = torch.Generator().manual_seed(100 + index)
        with torch.no_grad():
            for name, param in pipe.unet.named_parameters():
                if "lora_B" in name:
                    param.copy_((torch.randn(param.shape, generator=generator) * 0.01).to(param.device, param.dtype))
        files.append(save_lora(pipe, folder / f"step-{index:06d}.safetensors", spec, "kolors"))
    del pipe
    torch.cuda.empty_cache() if torch.cuda.is_available() else None
    return files


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    array = (images.float().permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype(np.uint8)
    return [Image.fromarray(a) for a in array]


def one_checkpoint(pipe: Any, file: Path, index: int, emb: Embeds, vset: ValidationSet, clip: ClipModel,
                   training: TrainingPictures, args: argparse.Namespace) -> dict[str, float]:
    """Seconds of each part of scoring one checkpoint."""
    times: dict[str, float] = {}
    sync()
    start = time.perf_counter()
    apply_lora(pipe, file, scale=1.0, adapter_name=f"c{index}", fuse=True)
    sync()
    times["lora"] = time.perf_counter() - start
    jobs = vset.jobs()
    latents, render_s, decode_s = [], 0.0, 0.0
    for first in range(0, len(jobs), args.batch):
        panels = list(range(first, min(first + args.batch, len(jobs))))
        generators = [torch.Generator("cpu").manual_seed(jobs[i].seed) for i in panels]
        sync()
        t0 = time.perf_counter()
        out = pipe(prompt_embeds=emb.pe[panels], pooled_prompt_embeds=emb.pp[panels],
                   negative_prompt_embeds=emb.ne[panels], negative_pooled_prompt_embeds=emb.np[panels],
                   num_inference_steps=args.steps, guidance_scale=4.0, width=args.size, height=args.size,
                   generator=generators, output_type="latent").images
        sync()
        render_s += time.perf_counter() - t0
        images, seconds = decode(pipe, out, args.batch)
        decode_s += seconds
        latents.append(images)
    times["render"], times["decode"] = render_s, decode_s
    t0 = time.perf_counter()
    pictures = to_pil(torch.cat(latents))
    scores = score_set(clip, pictures, vset, training, 0.95)
    sync()
    times["score"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    unfuse(pipe)
    pipe.delete_adapters(f"c{index}")
    sync()
    times["unload"] = time.perf_counter() - t0
    times["total"] = sum(times.values())
    times["content"] = scores.content
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny shapes on the CPU: a smoke test of the script")
    parser.add_argument("--checkpoints", type=int, default=4, help="checkpoints scored (the first is a warm-up)")
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--train-pictures", type=int, default=100)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    if args.tiny:
        args.size, args.steps, args.train_pictures = 64, 2, 8
    device = "cpu" if args.tiny or not torch.cuda.is_available() else "cuda"
    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    count = args.prompts * args.seeds
    vset = ValidationSet(prompts=[f"a picture of thing {i}, in the style" for i in range(args.prompts)],
                         seeds=list(range(args.seeds)), style="in the style", steps=args.steps, width=args.size,
                         height=args.size)
    with tempfile.TemporaryDirectory() as scratch:
        files = lora_files(Path(scratch), args.checkpoints, device, dtype, args.tiny)
        pipe = make_pipe(device, dtype, args.tiny)
        emb = Embeds(count, device, dtype, args.tiny)
        normalise(pipe, emb, args.size, device)
        clip = random_clip(device, dtype, args.tiny)
        rng = np.random.default_rng(0)
        noise = [Image.fromarray(rng.integers(0, 256, (args.size, args.size, 3), dtype=np.uint8))
                 for _ in range(args.train_pictures)]
        training = TrainingPictures([f"{i}.png" for i in range(len(noise))], clip.image_embeddings(noise, 32))
        rows = [one_checkpoint(pipe, f, i, emb, vset, clip, training, args) for i, f in enumerate(files)]
    measured = rows[1:] or rows
    result = {
        "environment": environment() if device == "cuda" else {"device": "cpu"},
        "settings": {k: getattr(args, k) for k in ("prompts", "seeds", "steps", "size", "batch", "train_pictures")},
        "images_per_checkpoint": count,
        "warm_up": {k: round(v, 3) for k, v in rows[0].items()},
        "seconds_per_checkpoint": {k: round(statistics.mean(r[k] for r in measured), 3)
                                   for k in ("lora", "render", "decode", "score", "unload", "total")},
        "peak_gb": round(peak_gb(), 2) if device == "cuda" else None,
    }
    print(json.dumps(result, indent=1))
    print(f"seconds per checkpoint: {result['seconds_per_checkpoint']['total']:.2f} "
          f"({count} pictures of {args.size}², {args.steps} steps)")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
