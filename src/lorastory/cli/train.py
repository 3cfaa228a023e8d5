"""``lorastory train``: a LoRA from a training folder, on one or several GPUs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from lorastory.cli.common import Options, app, console, err_console
from lorastory.fileio import display_text


@app.command("train")
def train_cmd(
    ctx: typer.Context,
    config_file: Annotated[Optional[Path], typer.Argument(help="Training config YAML (flags override it).")] = None,
    model: Annotated[Optional[str], typer.Option(help="Diffusers folder, hub id or .safetensors.")] = None,
    data: Annotated[Optional[str], typer.Option(help="Training folder (metadata.csv or metadata.jsonl).")] = None,
    out: Annotated[Optional[str], typer.Option(help="Run folder.")] = None,
    family: Annotated[Optional[str], typer.Option(help="kolors, sdxl or sd15 (default: detected).")] = None,
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
    optimizer: Annotated[Optional[str], typer.Option(help="adamw or adamw8bit (bitsandbytes + CUDA).")] = None,
    snr_gamma: Annotated[Optional[float], typer.Option(help="Min-SNR-gamma loss weighting (e.g. 5).")] = None,
    noise_offset: Annotated[Optional[float], typer.Option(help="Noise offset (e.g. 0.05) for darker/brighter images.")] = None,
    keep_checkpoints: Annotated[Optional[int], typer.Option(help="Checkpoints to keep (newest).")] = None,
    validation_prompt: Annotated[Optional[list[str]], typer.Option(help="Prompt to sample during training (repeatable).")] = None,
    validation_every: Annotated[Optional[int], typer.Option(help="Sample every N steps.")] = None,
    format: Annotated[Optional[list[str]], typer.Option("--format", help="diffusers and/or kohya (repeatable).")] = None,
    cache_dir: Annotated[Optional[str], typer.Option(help="Latent/text cache folder (default OUT/cache).")] = None,
    compile: Annotated[Optional[str], typer.Option(
        help="GPU compilation: auto (runs of 200+ steps), off, blocks, or cudagraphs (blocks replayed as CUDA graphs).")
    ] = None,
    lora_dropout: Annotated[Optional[float], typer.Option(help="Dropout on the LoRA's input (0 to <1).")] = None,
    target_module: Annotated[Optional[list[str]], typer.Option(
        help="Module name the LoRA adapts (repeatable; default to_q, to_k, to_v, to_out.0).")] = None,
    bucket_step: Annotated[Optional[int], typer.Option(help="--buckets: side step of the buckets in pixels (default 64).")] = None,
    max_grad_norm: Annotated[Optional[float], typer.Option(help="Gradient clipping norm (default 1).")] = None,
    weight_decay: Annotated[Optional[float], typer.Option(help="AdamW weight decay (default 0.01).")] = None,
    validation_steps: Annotated[Optional[int], typer.Option(help="Sampling steps of the validation pictures.")] = None,
    validation_cfg: Annotated[Optional[float], typer.Option(help="CFG scale of the validation pictures.")] = None,
    validation_style: Annotated[Optional[str], typer.Option(help="Style phrase of the captions (checkpoint selection).")] = None,
    select_best: Annotated[Optional[bool], typer.Option("--select-best", help="Then score every checkpoint: OUT/best.safetensors.")] = None,
    eval_clip: Annotated[Optional[str], typer.Option(help="--select-best: the CLIP that scores (folder or hub id).")] = None,
    fast: Annotated[Optional[bool], typer.Option(
        "--fast/--no-fast", help="GPU fast path: fused LoRA q/k/v and prefetched inputs (default on).")] = None,
    gpus: Annotated[
        Optional[int], typer.Option(min=1, help="Train data-parallel on N GPUs of this machine (runs accelerate launch; "
                                                "--batch-size is per GPU).")
    ] = None,
) -> None:
    """Train a LoRA: OUT/lora.safetensors, checkpoints, samples, TensorBoard logs."""
    from lorastory.config import read_yaml
    from lorastory.train.config import TrainConfig

    values = read_yaml(config_file) if config_file else {}
    if not isinstance(values, dict):
        from lorastory.errors import ConfigError

        raise ConfigError(f"{config_file}: expected a mapping of settings")
    flags = dict(
        model=model, data=data, out=out, family=family, rank=rank, alpha=alpha, resolution=resolution,
        batch_size=batch_size, lr=lr, epochs=epochs, max_steps=max_steps, seed=seed,
        checkpoint_every=checkpoint_every, resume=resume, center_crop=center_crop, random_flip=random_flip,
        buckets=buckets, train_text_encoder=train_text_encoder, gradient_checkpointing=gradient_checkpointing, precision=precision,
        gradient_accumulation=gradient_accumulation, lr_scheduler=lr_scheduler, lr_warmup_steps=lr_warmup_steps,
        optimizer=optimizer, snr_gamma=snr_gamma, noise_offset=noise_offset, keep_checkpoints=keep_checkpoints,
        validation_prompts=validation_prompt, validation_every=validation_every, save_formats=format,
        cache_dir=cache_dir, compile=compile, lora_dropout=lora_dropout, target_modules=target_module,
        bucket_step=bucket_step, max_grad_norm=max_grad_norm, weight_decay=weight_decay,
        validation_steps=validation_steps, validation_cfg=validation_cfg, fast=fast,
        validation_style=validation_style, select_best=select_best, eval_clip=eval_clip,
    )
    values.update({k: v for k, v in flags.items() if v is not None})
    config = TrainConfig.from_dict(values, source=str(config_file or "options"))
    # Imported once the settings are valid: a bad one is reported before torch loads.
    from lorastory.train.launch import is_main_process, run_on_gpus
    from lorastory.train.paths import check_run_paths
    from lorastory.train.trainer import train

    check_run_paths(config)  # before any process starts or any model loads
    debug = isinstance(ctx.obj, Options) and ctx.obj.debug

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
    _select_best(result.out) if config.select_best else None


def _select_best(out: Path) -> None:
    """``--select-best``: the end-of-training checkpoint selection (``lorastory eval checkpoints``)."""
    from lorastory.eval.checkpoints import evaluate_checkpoints

    report = evaluate_checkpoints(out)
    console.print(f"  best checkpoint: {report.choice.reason}", markup=False)
    console.print(f"  best LoRA: {report.best} (scores and plot in {Path(report.plot).parent})", markup=False)
