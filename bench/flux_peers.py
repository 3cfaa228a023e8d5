"""Flux.1 LoRA training side by side: ``lorastory train`` and kohya sd-scripts' ``flux_train_network.py``, one GPU.

Both tools train the same LoRA on the same model and data, one after the other in one run (issue 23):

- **model**: the real Flux.1 dev architecture with seeded random weights (transformer 11.9 B, CLIP-L, T5-XXL,
  16-channel VAE; bf16), written once in files both read (``bench/_flux_files.py``: a diffusers folder whose
  transformer, CLIP-L and T5 files kohya's ``--pretrained_model_name_or_path``/``--clip_l``/``--t5xxl`` take
  as they are, plus ``ae.safetensors`` in BFL's names for ``--ae``); about 34 GB of disk;
- **data**: ``--images`` seeded 1024² pictures (``bench/_folders.make_data``: ``.txt`` captions for kohya,
  ``metadata.csv`` for us);
- **job**: rank 16, alpha 16, batch 1, 1024², AdamW lr 1e-4, bf16, latents and text-encoder outputs cached (T5
  512 tokens, dev's guidance input at 1.0), SDPA attention, gradient checkpointing, eager (``--compile off``), the
  transformer only. kohya runs its documented Flux settings (``networks.lora_flux``; ``--timestep_sampling shift
  --discrete_flow_shift 3.1582 --model_prediction_type raw --guidance_scale 1.0 --highvram``); we target the
  modules kohya's LoRA does by default (``KOHYA_FLUX_TARGETS``: every Linear of the double and single blocks,
  their modulation included; kohya's fused qkv (and linear1) are our q, k, v (and proj_mlp), so our LoRA has 86.0 M parameters
  to kohya's 76.6 M);
- **fp8 rows**: kohya's ``--fp8_base`` (the whole transformer stored in float8 e4m3, upcast per layer) beside
  our ``--base-dtype fp8-weights`` (the blocks' attention and MLP Linears stored in float8 e4m3, dequantised to
  bf16 per matmul) and, optionally, ``fp8`` (fp8 matmuls);
- **cuDNN attention**: Flux's first backward has died in cuDNN's fused attention backward on the H200
  (torch 2.11, cuDNN 9.19); rows marked ``nocudnn`` run with ``LORASTORY_BENCH_NO_CUDNN_SDPA=1`` (the timer
  turns that SDPA backend off for the whole process), and ``kohya-bf16`` keeps PyTorch's default for comparison;
- **clock**: ``bench/_step_timer.py`` as in ``bench/peer_kohya.py`` (shared code): images/s over the optimizer
  steps after ``--warm`` (loading, caching and the first steps left out for both); peak memory
  (``torch.cuda.max_memory_allocated``) over the whole process (``peak_allocated_gb``: loading and caching
  included, each row encodes its own captions and latents) and over the steps after the first
  (``peak_training_gb``: training alone).

kohya is not part of this repository: ``bench/pack_kohya.py`` packs sd-scripts (the SDXL and Flux trainers) and
the packages it pins into ``.peers/kohya.tar.xz``; unpacked as ``/tmp/k`` it is ``--kohya /tmp/k/sd-scripts
--kohya-site /tmp/k/ksite``. ``--cleanup`` deletes the 34 GB model afterwards (the GPU machine's disk is shared
with the other benchmarks of the queue).

    PYTHONPATH=/tmp/site:src python bench/flux_peers.py --kohya /tmp/k/sd-scripts --kohya-site /tmp/k/ksite \\
        --work /tmp/fpeer --json $OUT/flux_peers.json --logs $OUT/flux_peers --cleanup   # 5 rows, ~7 min (estimate)
    .venv/bin/python bench/flux_peers.py --tiny                            # CPU smoke test of our side
    .venv/bin/python bench/flux_peers.py --tiny --kohya /tmp/k/sd-scripts --kohya-site /tmp/k/ksite:/tmp/extra \\
        --configs ours-bf16,kohya-bf16,kohya-fp8-nocudnn          # and kohya's (bench/_kohya_tiny.py; einops in /tmp/extra)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _flux_files import build_flux_folder, kohya_files, kohya_tokenizer_cache  # noqa: E402
from _folders import make_data  # noqa: E402
from _step_timer import NO_CUDNN_SDPA  # noqa: E402
from peer_kohya import Config, run_config  # noqa: E402

BENCH = Path(__file__).resolve().parent
# kohya's networks.lora_flux by default: every Linear in DoubleStreamBlock and SingleStreamBlock, by diffusers name.
KOHYA_FLUX_TARGETS = [
    "attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj",
    "attn.to_add_out", "ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2", "norm1.linear",
    "norm1_context.linear",  # the double blocks' img_mod / txt_mod
    "proj_mlp", "proj_out", "norm.linear",  # the single blocks' linear1 (with q, k, v), linear2 and modulation
]
RANK = 16


@dataclass
class FluxConfig(Config):
    """A row: ``Config`` plus whether cuDNN's SDPA backend stays available."""

    cudnn_sdpa: bool = True


CONFIGS = {c.name: c for c in [
    FluxConfig("ours-bf16", "ours", 1, True, extra=["--compile", "off"]),
    FluxConfig("kohya-bf16-nocudnn", "kohya", 1, True, cudnn_sdpa=False),
    FluxConfig("ours-fp8w", "ours", 1, True, extra=["--compile", "off", "--base-dtype", "fp8-weights"]),
    FluxConfig("kohya-fp8-nocudnn", "kohya", 1, True, extra=["--fp8_base"], cudnn_sdpa=False),
    FluxConfig("kohya-bf16", "kohya", 1, True),  # PyTorch's SDPA choice, cuDNN included: does kohya meet the defect?
    FluxConfig("ours-fp8", "ours", 1, True, extra=["--compile", "off", "--base-dtype", "fp8"]),
    FluxConfig("kohya-fp8", "kohya", 1, True, extra=["--fp8_base"]),
    FluxConfig("ours-bf16-nocudnn", "ours", 1, True, extra=["--compile", "off"], cudnn_sdpa=False),
]}
DEFAULT_CONFIGS = "ours-bf16,kohya-bf16-nocudnn,ours-fp8w,kohya-fp8-nocudnn,kohya-bf16"


def ours_command(config: FluxConfig, args: argparse.Namespace, model: Path, data: Path) -> list[str]:
    cmd = ["-m", "lorastory", "train", "--model", str(model), "--data", str(data), "--out", str(args.row_out),
           "--family", "flux", "--rank", str(RANK), "--alpha", str(RANK), "--resolution", str(args.resolution),
           "--batch-size", str(config.batch), "--lr", "1e-4", "--max-steps", str(args.steps), "--seed", "0",
           "--precision", "no" if args.tiny else "bf16",  # the cache in OUT/cache: each row encodes, as kohya's
           "--gradient-checkpointing" if config.checkpointing else "--no-gradient-checkpointing"]
    for target in KOHYA_FLUX_TARGETS:
        cmd += ["--target-module", target]
    return cmd + config.extra


def kohya_command(config: FluxConfig, args: argparse.Namespace, model: Path, data: Path) -> list[str]:
    script = Path(args.kohya) / "flux_train_network.py"
    cmd = [str(BENCH / "_kohya_tiny.py"), str(script)] if args.tiny else [str(script)]
    for option, path in kohya_files(model).items():
        cmd += [f"--{option}", str(path)]
    cmd += ["--train_data_dir", str(data.parent), "--resolution", f"{args.resolution},{args.resolution}",
            "--output_dir", str(args.row_out), "--output_name", "lora", "--save_model_as", "safetensors",
            "--network_module", "networks.lora_flux", "--network_dim", str(RANK), "--network_alpha", str(RANK),
            "--network_train_unet_only", "--cache_latents", "--cache_text_encoder_outputs",
            "--mixed_precision", "bf16", "--save_precision", "bf16", "--sdpa",
            "--train_batch_size", str(config.batch), "--max_train_steps", str(args.steps), "--optimizer_type", "AdamW",
            "--learning_rate", "1e-4", "--lr_scheduler", "constant", "--caption_extension", ".txt",
            "--tokenizer_cache_dir", str(args.work / "tok"), "--max_data_loader_n_workers", "2",
            "--persistent_data_loader_workers", "--seed", "0", "--timestep_sampling", "shift",
            "--discrete_flow_shift", "3.1582", "--model_prediction_type", "raw", "--guidance_scale", "1.0",
            "--t5xxl_max_token_length", str(args.text_tokens), "--highvram"]
    if config.checkpointing:
        cmd.append("--gradient_checkpointing")
    return cmd + config.extra


def command(config: FluxConfig, args: argparse.Namespace, model: Path, data: Path, out: Path) -> tuple[list[str], dict]:
    """The tool's own command line for ``config`` (as ``peer_kohya.run_config`` takes it) and its environment."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if not config.cudnn_sdpa:
        env[NO_CUDNN_SDPA] = "1"
    args.row_out = out
    if config.tool == "ours":
        return ours_command(config, args, model, data), env
    if args.kohya is None:
        raise SystemExit(f"{config.name}: pass --kohya PATH (kohya-ss/sd-scripts with flux_train_network.py)")
    env["PYTHONPATH"] = os.pathsep.join([*([args.kohya_site] if args.kohya_site else []), str(args.kohya)])
    return kohya_command(config, args, model, data), env


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", default=None,
                        help=f"comma-separated, of: {', '.join(CONFIGS)} (default: {DEFAULT_CONFIGS}; --tiny: "
                             "ours-bf16, and kohya-bf16 with --kohya)")
    parser.add_argument("--kohya", default=None, help="kohya-ss/sd-scripts with flux_train_network.py (not shipped)")
    parser.add_argument("--kohya-site", default=None, help="folder(s) with the package versions kohya pins")
    parser.add_argument("--work", type=Path, default=Path("bench/out/flux-peer"))
    parser.add_argument("--json", default=None)
    parser.add_argument("--steps", type=int, default=10, help="optimizer steps per row")
    parser.add_argument("--warm", type=int, default=3, help="steps left out of the rate (the first ones)")
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--resolution", type=int, default=1024)
    parser.add_argument("--timeout", type=float, default=240, help="seconds per row")
    parser.add_argument("--logs", default=None, help="folder for each row's whole output (ROW.log)")
    parser.add_argument("--cleanup", action="store_true", help="delete the model folder afterwards (34 GB)")
    parser.add_argument("--tiny", action="store_true",
                        help="lorastory's tiny Flux on the CPU at 64²: a smoke test (kohya's through _kohya_tiny.py)")
    args = parser.parse_args(argv)
    if args.configs is None:
        args.configs = DEFAULT_CONFIGS if not args.tiny else "ours-bf16" + (",kohya-bf16" if args.kohya else "")
    unknown = [name for name in args.configs.split(",") if name not in CONFIGS]
    if unknown:
        parser.error(f"unknown configuration {', '.join(unknown)}; choose from {', '.join(CONFIGS)}")
    args.text_tokens = 512
    if args.tiny:  # the tiny T5 tokenizer stops at 32 tokens: kohya is told so, as lorastory reads it from the tokenizer
        args.resolution, args.steps, args.warm, args.text_tokens = 64, min(args.steps, 4), 1, 32
    args.torch_logs = None  # peer_kohya.run_config reads it
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    model, data = args.work / ("flux-tiny" if args.tiny else "flux"), args.work / "data" / "1_style"
    started = time.perf_counter()
    built = build_flux_folder(model, args.tiny)
    make_data(data, args.images, args.resolution)
    kohya_tokenizer_cache(args.work / "tok", model)
    prepared = round(time.perf_counter() - started, 1)
    rows: list[dict[str, Any]] = []
    # A queue's timeout (SIGTERM) still cleans up: the rows so far are in the JSON, the 34 GB folder goes.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        for name in args.configs.split(","):
            config = CONFIGS[name]
            row = run_config(config, args, model, data, make_command=command)
            row["cudnn_sdpa"] = config.cudnn_sdpa
            rows.append(row)
            if args.json:  # after every row
                Path(args.json).write_text(json.dumps({"prepare_s": prepared, "model": built, "rows": rows,
                                                       "steps": args.steps, "warm": args.warm, "images": args.images,
                                                       "resolution": args.resolution, "rank": RANK}, indent=2))
    finally:
        if args.cleanup:
            shutil.rmtree(model, ignore_errors=True)
    return 0 if all(row["rc"] == 0 for row in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
