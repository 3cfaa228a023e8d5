"""GPU benchmark: Flux.1 dev LoRA training at 1024², images/s and peak memory, bf16 base vs fp8 base.

Full-size Flux dev transformer with random weights (bench/_flux_arch.py), a rank-16 LoRA (fp32 weights,
as ``lorastory train`` keeps them) on lorastory's default Flux targets, lorastory's flow-matching objective
(:class:`lorastory.models.objectives.FlowObjective`: shifted logit-normal noise levels with Flux's
resolution-dependent shift, velocity target, the guidance input at 1.0) and its denoiser call
(``flux_predict``: packed latents, latent image ids), gradient checkpointing, AdamW. The inputs are what
the cache would hold: random 16-channel latents (128 x 128 at 1024²) and T5/CLIP embeddings (the text
encoders are unloaded after caching, so they take no memory here either).

Bases (``--bases``), the library's ``--base-dtype`` path (:mod:`lorastory.models.fp8`, torchao; the Flux
family's selection: the double/single blocks' attention and MLP Linears, not the adaptive norms or
embedders): ``bf16``; ``fp8-weights``: those weights stored in float8 e4m3 and dequantised to bf16 per
matmul, gradient through the input (the LoRA trains on top), about 12 GB of weights instead of 24 GB;
``fp8``: fp8 matmuls with inputs quantised per row (compute capability 8.9+). A base that fails (no
torchao: ``pip install 'lorastory[fp8]'``) leaves an error row.

    PYTHONPATH=src python bench/flux_train.py --json $OUT/flux_train.json       # ~2-3 min on an H200
    .venv/bin/python bench/flux_train.py --tiny                                  # CPU smoke test
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from _dit_train import DitKit, argument_parser, run  # noqa: E402
from _flux_arch import FULL, TEXT_LEN, TINY, build_transformer, scheduler  # noqa: E402

from lorastory.models.families.flux import flux_predict  # noqa: E402


def flux_pipeline(transformer: Any) -> Any:
    from diffusers import FluxPipeline

    return FluxPipeline(scheduler=scheduler(), vae=None, text_encoder=None, tokenizer=None, text_encoder_2=None,
                        tokenizer_2=None, transformer=transformer)


def flux_text(args: argparse.Namespace, g: torch.Generator, device: str, dtype: torch.dtype) -> dict[str, Any]:
    """One batch of cached T5 sequence and CLIP pooled embeddings."""
    config, text_len = (TINY, TEXT_LEN["tiny"]) if args.tiny else (FULL, TEXT_LEN["full"])
    return {"prompt_embeds": torch.randn(args.batch, text_len, config["joint_attention_dim"], generator=g).to(device, dtype),
            "pooled_prompt_embeds": torch.randn(args.batch, config["pooled_projection_dim"], generator=g).to(device, dtype)}


FLUX = DitKit("flux", "", build_transformer, flux_pipeline, flux_predict, flux_text)


def main() -> int:
    return run(FLUX, argument_parser(__doc__.splitlines()[0]).parse_args())


if __name__ == "__main__":
    raise SystemExit(main())
