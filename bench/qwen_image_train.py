"""GPU benchmark: Qwen-Image LoRA training at 1024², images/s and peak memory, bf16 base vs fp8 base.

Full-size Qwen-Image transformer (60 dual-stream blocks, 3072 wide: about 20 B parameters) with random
weights, built directly on the GPU in bf16; a rank-16 LoRA (fp32 weights, as ``lorastory train`` keeps
them) on lorastory's default Qwen-Image targets; lorastory's flow-matching objective
(:class:`lorastory.models.objectives.FlowObjective` with Qwen-Image's scheduler shift) and its denoiser
call (``qwen_image_predict``: packed 2x2 latents, the image shape for RoPE, the text padding mask);
gradient checkpointing, AdamW. The inputs are what the cache would hold: random 16-channel latents
(128 x 128 at 1024²) and Qwen2.5-VL prompt embeddings (``--text-len`` tokens of 3584; the text encoder
is unloaded after caching, so it takes no memory here).

Bases (``--bases``): ``bf16``; ``fp8-weights`` and ``fp8``: the library's fp8 base (what ``lorastory train
--base-dtype`` does: torchao, on the Qwen-Image family's blocks, their modulation layers left in bf16).

    PYTHONPATH=src python bench/qwen_image_train.py --json $OUT/qwen_image_train.json   # est. 3-5 min on an H200
    .venv/bin/python bench/qwen_image_train.py --tiny                                     # CPU smoke test
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from _dit_train import DitKit, argument_parser, run  # noqa: E402
from _flux_arch import _building_on  # noqa: E402

from lorastory.models.families.qwen_image import qwen_image_predict  # noqa: E402
from lorastory.models.families.qwen_image_tiny import QWEN_IMAGE_SCHEDULER  # noqa: E402

# Qwen/Qwen-Image's transformer config (diffusers layout); TINY for the CPU smoke test.
FULL = {"num_layers": 60, "attention_head_dim": 128, "num_attention_heads": 24, "joint_attention_dim": 3584,
        "axes_dims_rope": (16, 56, 56)}
TINY = {"num_layers": 2, "attention_head_dim": 16, "num_attention_heads": 2, "joint_attention_dim": 32,
        "axes_dims_rope": (4, 6, 6)}


def build_transformer(device: str, dtype: torch.dtype, tiny: bool, seed: int = 0) -> Any:
    from diffusers import QwenImageTransformer2DModel

    torch.manual_seed(seed)
    with _building_on(device, dtype):
        model = QwenImageTransformer2DModel(patch_size=2, in_channels=64, out_channels=16, **(TINY if tiny else FULL))
    return model.eval().requires_grad_(False)


def qwen_image_pipeline(transformer: Any) -> Any:
    from diffusers import FlowMatchEulerDiscreteScheduler, QwenImagePipeline

    scheduler = FlowMatchEulerDiscreteScheduler(**QWEN_IMAGE_SCHEDULER)
    return QwenImagePipeline(scheduler=scheduler, vae=None, text_encoder=None, tokenizer=None, transformer=transformer)


def qwen_image_text(args: argparse.Namespace, g: torch.Generator, device: str, dtype: torch.dtype) -> dict[str, Any]:
    """One batch of cached Qwen2.5-VL prompt embeddings with their padding mask."""
    width = (TINY if args.tiny else FULL)["joint_attention_dim"]
    mask = torch.ones(args.batch, args.text_len, dtype=torch.long)
    mask[:, args.text_len * 3 // 4:] = 0  # a padded quarter, as a batch of captions of different lengths has
    return {"prompt_embeds": torch.randn(args.batch, args.text_len, width, generator=g).to(device, dtype),
            "prompt_embeds_mask": mask.to(device)}


QWEN_IMAGE = DitKit("qwen-image", "qwen-image ", build_transformer, qwen_image_pipeline, qwen_image_predict,
                    qwen_image_text)


def main() -> int:
    parser = argument_parser(__doc__.splitlines()[0])
    parser.add_argument("--text-len", type=int, default=128, help="prompt tokens per caption (a quarter padded)")
    args = parser.parse_args()
    if args.tiny:
        args.text_len = 16
    return run(QWEN_IMAGE, args)


if __name__ == "__main__":
    raise SystemExit(main())
