"""``lorastory train``: a LoRA from a training folder, on one or several GPUs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from lorastory.cli.common import Options, app, console, err_console
from lorastory.config import read_yaml
from lorastory.eval.checkpoints import evaluate_checkpoints
from lorastory.errors import ConfigError
from lorastory.fileio import display_text
from lorastory.train.config import TrainConfig, with_overrides
from lorastory.train.datasets import parse_dataset_options
from lorastory.train.launch import is_main_process, run_on_gpus
from lorastory.train.paths import check_run_paths
from lorastory.train.trainer import train

# Flags named otherwise than their TrainConfig key (the repeatable ones in the singular).
_RENAMED = {"format": "save_formats", "validation_prompt": "validation_prompts", "target_module": "target_modules",
            "text_encoder_target": "text_encoder_targets"}
# Parameters of the command that are not training settings.
_NOT_SETTINGS = {"ctx", "config_file", "gpus"}


@app.command("train")
def train_cmd(
    ctx: typer.Context,
    config_file: Annotated[Optional[Path], typer.Argument(help="Training config YAML (flags override it).")] = None,
    model: Annotated[Optional[str], typer.Option(help="Diffusers folder, hub id or .safetensors.")] = None,
    data: Annotated[Optional[str], typer.Option(help="Training folder (metadata.csv or metadata.jsonl).")] = None,
    out: Annotated[Optional[str], typer.Option(help="Run folder.")] = None,
    family: Annotated[Optional[str], typer.Option(help="kolors, sdxl, sd15, flux or qwen-image (default: detected).")] = None,
    rank: Annotated[Optional[int], typer.Option(help="LoRA rank (default 16).")] = None,
    alpha: Annotated[Optional[float], typer.Option(help="LoRA alpha (default 4; strength = alpha/rank).")] = None,
    resolution: Annotated[Optional[int], typer.Option(help="Training size (default 1024).")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Images per step.")] = None,
    lr: Annotated[Optional[float], typer.Option(help="Learning rate (default 1e-4).")] = None,
    epochs: Annotated[Optional[int], typer.Option(help="Passes over the data (default 1).")] = None,
    max_steps: Annotated[Optional[int], typer.Option(help="Stop after this many steps (overrides epochs).")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed for order, noise and crops.")] = None,
    checkpoint_every: Annotated[Optional[int], typer.Option(help="Save a checkpoint (and its LoRA in OUT/loras/) every N steps.")] = None,
    resume: Annotated[Optional[bool], typer.Option("--resume", help="Continue from the newest checkpoint in --out.")] = None,
    center_crop: Annotated[Optional[bool], typer.Option("--center-crop/--random-crop", help="Crop placement.")] = None,
    random_flip: Annotated[Optional[bool], typer.Option("--random-flip", help="Flip images horizontally at random.")] = None,
    buckets: Annotated[Optional[bool], typer.Option("--buckets", help="Aspect-ratio buckets instead of square crops.")] = None,
    train_text_encoder: Annotated[
        Optional[bool], typer.Option("--train-text-encoder", help="Also train a LoRA on the text encoder(s).")
    ] = None,
    gradient_checkpointing: Annotated[
        Optional[bool], typer.Option("--gradient-checkpointing/--no-gradient-checkpointing", help="Trade compute for memory.")
    ] = None,
    precision: Annotated[Optional[str], typer.Option(help="auto, no, fp16 or bf16.")] = None,
    gradient_accumulation: Annotated[Optional[int], typer.Option(help="Batches per optimizer step.")] = None,
    lr_scheduler: Annotated[Optional[str], typer.Option(help="constant, constant_with_warmup, linear, cosine...")] = None,
    lr_warmup_steps: Annotated[Optional[int], typer.Option(help="Warm-up steps of the lr schedule.")] = None,
    optimizer: Annotated[Optional[str], typer.Option(
        help="adamw, adamw8bit (bitsandbytes + CUDA), prodigy (with --lr 1) or adafactor.")] = None,
    snr_gamma: Annotated[Optional[float], typer.Option(help="Min-SNR-gamma loss weighting (e.g. 5).")] = None,
    noise_offset: Annotated[Optional[float], typer.Option(help="Noise offset (e.g. 0.05) for darker/brighter images.")] = None,
    keep_checkpoints: Annotated[Optional[int], typer.Option(help="Checkpoints to keep (newest).")] = None,
    validation_prompt: Annotated[Optional[list[str]], typer.Option(help="Prompt to sample during training (repeatable).")] = None,
    validation_every: Annotated[Optional[int], typer.Option(help="Sample every N steps.")] = None,
    format: Annotated[Optional[list[str]], typer.Option("--format", help="kohya and/or diffusers (repeatable; the first is lora.safetensors; default kohya).")] = None,
    cache_dir: Annotated[Optional[str], typer.Option(help="Latent/text cache folder (default OUT/cache).")] = None,
    compile: Annotated[Optional[str], typer.Option(
        help="GPU compilation: auto (when the run is long enough to repay the warm-up; the log says why), off, blocks, or cudagraphs.")
    ] = None,
    base_dtype: Annotated[Optional[str], typer.Option(
        help="Frozen denoiser's Linear layers (its family's blocks): default, fp8 (fp8 matmuls; Ada/Hopper) or fp8-weights (stored in fp8; "
             "any CUDA GPU). Needs torchao (the fp8 extra).")] = None,
    lora_dropout: Annotated[Optional[float], typer.Option(help="Dropout on the LoRA's input (0 to <1).")] = None,
    target_module: Annotated[Optional[list[str]], typer.Option(
        help="Module name the LoRA adapts (repeatable; default to_q, to_k, to_v, to_out.0).")] = None,
    text_encoder_target: Annotated[Optional[list[str]], typer.Option(
        help="--train-text-encoder: text-encoder module the LoRA adapts (repeatable; default: the family's).")] = None,
    network: Annotated[Optional[str], typer.Option(help="lora, locon (+ResNet convolutions), loha, lokr or dora.")] = None,
    conv_rank: Annotated[Optional[int], typer.Option(help="locon/loha/lokr: rank on the convolutions (default: --rank).")] = None,
    conv_alpha: Annotated[Optional[float], typer.Option(help="locon/loha/lokr: alpha on the convolutions (default: --alpha).")] = None,
    lokr_factor: Annotated[Optional[int], typer.Option(help="lokr: Kronecker factor (-1: as square as possible).")] = None,
    lokr_decompose_both: Annotated[Optional[bool], typer.Option("--lokr-decompose-both", help="lokr: both factors low-rank.")] = None,
    bucket_step: Annotated[Optional[int], typer.Option(help="--buckets: side step of the buckets in pixels (default 64).")] = None,
    max_grad_norm: Annotated[Optional[float], typer.Option(help="Gradient clipping norm (default 1).")] = None,
    weight_decay: Annotated[Optional[float], typer.Option(help="Weight decay of every optimizer (default 0.01).")] = None,
    prodigy_d_coef: Annotated[Optional[float], typer.Option(help="Prodigy: scale of its estimated step (default 1).")] = None,
    prodigy_use_bias_correction: Annotated[Optional[bool], typer.Option(
        "--prodigy-use-bias-correction/--no-prodigy-use-bias-correction", help="Prodigy: Adam's bias correction (default on).")
    ] = None,
    prodigy_safeguard_warmup: Annotated[Optional[bool], typer.Option(
        "--prodigy-safeguard-warmup/--no-prodigy-safeguard-warmup", help="Prodigy: steady estimate in warm-up (default on).")
    ] = None,
    prodigy_growth_rate: Annotated[Optional[float], typer.Option(
        help="Prodigy: cap on its estimate's growth per step, e.g. 1.02 (default none).")] = None,
    adafactor_relative_step: Annotated[Optional[bool], typer.Option(
        "--adafactor-relative-step/--no-adafactor-relative-step", help="Adafactor: its own step size, lr unused (default off).")
    ] = None,
    adafactor_scale_parameter: Annotated[Optional[bool], typer.Option(
        "--adafactor-scale-parameter/--no-adafactor-scale-parameter", help="Adafactor: scale steps by weight RMS (default off).")
    ] = None,
    adafactor_warmup_init: Annotated[Optional[bool], typer.Option(
        "--adafactor-warmup-init/--no-adafactor-warmup-init", help="Adafactor: relative-step warm-up (default off).")
    ] = None,
    ema: Annotated[Optional[bool], typer.Option(
        "--ema/--no-ema", help="Keep an fp32 moving average of the LoRA; also writes lora_ema.safetensors.")] = None,
    ema_decay: Annotated[Optional[float], typer.Option(help="--ema: decay per update (default 0.999).")] = None,
    ema_start_step: Annotated[Optional[int], typer.Option(help="--ema: average from this step on (default 0).")] = None,
    ema_every: Annotated[Optional[int], typer.Option(help="--ema: update every N optimizer steps (default 1).")] = None,
    validation_steps: Annotated[Optional[int], typer.Option(help="Sampling steps of the validation pictures.")] = None,
    validation_cfg: Annotated[Optional[float], typer.Option(help="CFG scale of the validation pictures.")] = None,
    validation_style: Annotated[Optional[str], typer.Option(help="Style phrase of the captions (checkpoint selection).")] = None,
    select_best: Annotated[Optional[bool], typer.Option("--select-best", help="Then score every checkpoint: OUT/best.safetensors.")] = None,
    eval_clip: Annotated[Optional[str], typer.Option(help="--select-best: the CLIP that scores (folder or hub id).")] = None,
    fast: Annotated[Optional[bool], typer.Option(
        "--fast/--no-fast", help="GPU fast path: fused LoRA q/k/v and prefetched inputs (default on).")] = None,
    trigger_word: Annotated[Optional[str], typer.Option(help="Word put first in every caption (not of regularization data).")] = None,
    caption_dropout: Annotated[Optional[float], typer.Option(help="Share of draws trained on the empty caption (e.g. 0.05).")] = None,
    shuffle_tags: Annotated[Optional[bool], typer.Option(
        "--shuffle-tags/--no-shuffle-tags", help="Shuffle each caption's comma-separated tags.")] = None,
    keep_tags: Annotated[Optional[int], typer.Option(help="--shuffle-tags: leading tags kept in place.")] = None,
    caption_variants: Annotated[Optional[int], typer.Option(help="--shuffle-tags: shuffles cached per caption (default 4).")] = None,
    repeats: Annotated[Optional[int], typer.Option(help="Times each picture is drawn per epoch (default 1).")] = None,
    datasets: Annotated[Optional[list[str]], typer.Option("--dataset", help=(
        "Training folder FOLDER[:REPEATS] (repeatable, instead of --data), or a YAML/JSON file listing datasets "
        "with all their settings."))] = None,
    prior_loss_weight: Annotated[Optional[float], typer.Option(help="Loss weight of regularization datasets (default 1).")] = None,
    gpus: Annotated[
        Optional[int], typer.Option(min=1, help="Train data-parallel on N GPUs of this machine (runs accelerate launch; "
                                                "--batch-size is per GPU).")
    ] = None,
) -> None:
    """Train a LoRA: OUT/lora.safetensors, checkpoints, samples, TensorBoard logs."""
    # Every other parameter is a setting, named as TrainConfig's flat keys (tests/test_cli.py checks it).
    flags = {_RENAMED.get(k, k): v for k, v in locals().items() if k not in _NOT_SETTINGS and v is not None}
    if "datasets" in flags:
        flags["datasets"] = parse_dataset_options(flags["datasets"])
    config = _config(config_file, flags)
    _run(config, gpus, debug=isinstance(ctx.obj, Options) and ctx.obj.debug)


def _run(config: Any, gpus: int | None, debug: bool) -> None:
    """Train (here, or on ``gpus`` GPUs through accelerate launch) with a progress bar; print the files."""
    check_run_paths(config)  # before any process starts or any model loads

    def say(message: str) -> None:  # plain text (file names may hold [brackets]), one line per message
        err_console.print(display_text(message), highlight=False, markup=False, soft_wrap=True)

    if gpus and run_on_gpus(config, gpus, debug=debug, say=say):
        return

    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (TextColumn("step {task.completed}/{task.total}"), BarColumn(),
               TextColumn("loss {task.fields[loss]:.4f}  {task.fields[ips]:.2f} img/s"), TimeRemainingColumn())
    show_bar = err_console.is_terminal and is_main_process()
    with Progress(*columns, console=err_console, disable=not show_bar) as progress:
        task = progress.add_task("train", total=None, loss=float("nan"), ips=0.0)

        def show(p) -> None:
            progress.update(task, completed=p.step, total=p.total_steps, loss=p.loss, ips=p.images_per_second)

        result = train(config, on_progress=show, say=say)
    if not result.main_process:
        return
    last = f", final loss {result.losses[-1]:.4f}" if result.losses else ""
    on = f" on {result.processes} processes" if result.processes > 1 else ""
    console.print(f"Trained {result.steps} steps{on}{last}.")
    for file in result.lora_files:
        console.print(f"  LoRA: {file}")
    console.print(f"  run folder: {result.out} (config.yaml, checkpoints/, samples/, logs/)")
    if config.select_best:  # on several GPUs, the main process of the launched run gets here
        _select_best(result.out)


def _select_best(out: Path) -> None:
    """``--select-best``: the end-of-training checkpoint selection (``lorastory eval checkpoints``)."""
    report = evaluate_checkpoints(out)
    console.print(f"  best checkpoint: {report.choice.reason}", markup=False)
    console.print(f"  best LoRA: {report.best} (scores and plot in {Path(report.plot).parent})", markup=False)


def _config(config_file: Path | None, flags: dict[str, Any]) -> Any:
    """The validated TrainConfig: the YAML file's settings with the flags on top."""
    source = str(config_file or "options")
    values = read_yaml(config_file) if config_file else {}
    if not isinstance(values, dict):
        raise ConfigError(f"{config_file}: expected a mapping of settings")
    if "datasets" in flags and "data" not in flags:
        values.pop("data", None)  # --dataset replaces the config file's data
    if "data" in flags and "datasets" not in flags:
        values.pop("datasets", None)  # and --data its datasets
    return TrainConfig.from_dict(with_overrides(values, flags), source=source)
