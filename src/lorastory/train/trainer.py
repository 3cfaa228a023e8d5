"""The LoRA training loop, in small steps that read top to bottom.

1. read the training folders (datasets) and plan every image's placement (crop or bucket);
2. load the model, fill the latent/text caches, free the VAE and text encoder;
3. inject LoRA into the denoiser (:mod:`lorastory.train.model_setup`), build optimizer and lr schedule under accelerate;
4. resume from the newest checkpoint when asked;
5. loop: cached batch → noise → denoiser → loss → step, with checkpoints,
   validation samples and TensorBoard logs;
6. save ``lora.safetensors`` (and kohya format when asked), and ``lora_ema.safetensors``
   when the run keeps a moving average of the weights (:mod:`lorastory.train.ema`).

The same code runs in one process or in several under ``accelerate launch`` / ``torchrun``
(data parallel, DDP through ``accelerator.prepare``): each process encodes its share of the
cache, trains on its slots of every global batch (:mod:`lorastory.train.order`), and only the
main process prints, logs, renders samples and writes checkpoints and the LoRA.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lorastory.errors import TrainingError
from lorastory.models.fp8 import check_base_dtype
from lorastory.models.lora import default_save_formats, save_lora
from lorastory.models.prefetch import prefetch_weights
from lorastory.models.speed import sdpa_allowed
from lorastory.train.checkpoint import (
    Checkpoint, CheckpointError, Position, apply_checkpoint, checkpoint_lora_path, clean_checkpoint_temps, list_checkpoints,
    newest_good_checkpoint, rng_state, save_checkpoint,
)
from lorastory.train.config import TrainConfig
from lorastory.train.ema import LoraEma, swapped_in
from lorastory.train.encode import build_caches, frozen_dtype
from lorastory.train.hooks import StageCallback, StageHooks
from lorastory.train.launch import use_cpu
from lorastory.train.model_setup import add_lora, load_dtypes, load_for_training, objective_for, prepare_fast_path
from lorastory.train.optimizers import make_optimizer, make_scheduler
from lorastory.train.order import batches_before, continued_history, epoch_batches, process_share
from lorastory.train.paths import check_run_paths
from lorastory.train.plan import order_samples, plan_training
from lorastory.train.step import StepInputs, denoiser_class, step_inputs, step_loss
from lorastory.train.validation import render_validation_samples

if TYPE_CHECKING:
    import torch


@dataclass
class Progress:
    """What the loop reports after each optimizer step (on the main process only)."""

    step: int
    total_steps: int
    epoch: int
    loss: float
    lr: float
    images_per_second: float


@dataclass
class TrainResult:
    out: Path
    lora_files: list[Path]
    steps: int
    losses: list[float] = field(default_factory=list)
    samples: list[Path] = field(default_factory=list)
    main_process: bool = True  # False in the other processes of a multi-process run: they write nothing
    processes: int = 1
    cache_seconds: float = 0.0
    stopped: bool = False  # ended early at ``stop``: a checkpoint and the LoRA of the last step were written


def _precision(config: TrainConfig, device: torch.device) -> str:
    import torch

    if config.precision != "auto":
        return config.precision
    if device.type != "cuda":
        return "no"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def _processes() -> Any:
    """accelerate's view of the processes; under a launcher this joins the process group and picks this process's GPU."""
    import torch
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available() or use_cpu())


def _accelerator(config: TrainConfig, out: Path, device: torch.device, unused_parameters: bool) -> tuple[Any, bool]:
    """The run's ``Accelerator`` and whether to use bf16 compute."""
    from accelerate import Accelerator
    from accelerate.utils import AutocastKwargs, DistributedDataParallelKwargs

    mixed_precision = _precision(config, device)
    # Fast path: bf16 compute with fp32 LoRA weights (train/speed.py) replaces autocast. Turned off
    # through the autocast handler, so accelerate's process-wide state keeps mixed_precision="bf16".
    bf16_compute = config.fast and device.type == "cuda" and mixed_precision == "bf16"
    handlers: list[Any] = [DistributedDataParallelKwargs(find_unused_parameters=unused_parameters)]
    if bf16_compute:
        handlers.append(AutocastKwargs(enabled=False))
    accelerator = Accelerator(
        mixed_precision=mixed_precision,
        kwargs_handlers=handlers,
        gradient_accumulation_steps=config.gradient_accumulation,
        log_with="tensorboard",
        project_dir=str(out / "logs"),
        cpu=device.type == "cpu",
    )
    return accelerator, bf16_compute


def train(
    config: TrainConfig,
    on_progress: Callable[[Progress], None] | None = None, say: Callable[[str], None] = print,
    on_stage: StageCallback | None = None, stop: Any = None,
) -> TrainResult:
    """Train a LoRA as ``config`` says; return where the files went. Under ``accelerate launch`` or
    ``torchrun`` every process calls this; ``config.batch_size`` is per process, ``say``,
    ``on_progress`` and ``on_stage`` (model load, cache filling) are called on the main process only.
    ``stop`` (a ``threading.Event``, one process) ends the run early (:mod:`lorastory.train.hooks`)."""
    prefetch_weights(config.model)  # the weights read from disk while accelerate sets up and the GPU starts
    from accelerate.utils import set_seed
    out = Path(config.out)
    check_run_paths(config)
    state = _processes()
    main, processes, rank = state.is_main_process, state.num_processes, state.process_index
    if not main:
        say = _quiet  # every process would print the same lines
    check_base_dtype(config.base_dtype, state.device)
    checkpoint = _open_run(out, config, state, say)
    hooks = StageHooks(on_stage if main else None, stop if processes == 1 else None)

    # 1. data
    datasets, planned = plan_training(config, say)

    # 2. model and caches
    set_seed(config.seed)  # LoRA initialisation and dropout draw from the global generators
    pipe, family = load_for_training(config, planned, hooks, load_dtypes(_precision(config, state.device), state.device))
    # SDXL's first text encoder feeds the UNet its penultimate layer: its last layer's LoRA gets no gradient.
    unused = config.lora.train_text_encoder and family.text_encoder_last_layer_unused
    accelerator, bf16_compute = _accelerator(config, out, state.device, unused_parameters=unused)
    device, mixed_precision = accelerator.device, accelerator.mixed_precision
    examples, cache, text_fp, cache_seconds = build_caches(config, out, accelerator, pipe, family, planned, datasets, say, hooks)

    # 3. LoRA, optimizer, schedule
    weight_dtype = frozen_dtype(mixed_precision)
    denoiser, spec, text_encoders, params = add_lora(pipe, family, config, device, weight_dtype)
    optimizer = make_optimizer(params, config, say)
    global_batch = config.batch_size * processes
    samples, repeats = order_samples(examples, datasets)
    position, history = _start_position(config, checkpoint, global_batch, processes)
    total_steps = _total_steps(config, samples, global_batch, position, history, repeats)
    lr_scheduler = make_scheduler(optimizer, config, total_steps)  # not prepared: accelerate steps it once per process
    compile_mode = prepare_fast_path(config, denoiser, text_encoders, device, total_steps, processes, samples, say, bf16_compute, family)
    objective = objective_for(family, pipe, config, say)
    model, optimizer = accelerator.prepare(
        denoiser_class()(denoiser, text_encoders, pipe if text_encoders else None, objective), optimizer)

    # 4. resume
    trainable = _trainable(accelerator.unwrap_model(model))
    ema = LoraEma(trainable, config.ema_decay, config.ema_start_step, config.ema_every) if config.ema else None
    if checkpoint is not None:
        _restore(checkpoint, trainable, optimizer, lr_scheduler, rank, ema)
        say(_resumed_note(checkpoint.folder.name, position, global_batch, processes, config.batch_size))

    # 5. loop
    accelerator.init_trackers("lorastory")
    result = TrainResult(out, [], position.global_step, main_process=main, processes=processes, cache_seconds=cache_seconds)
    epoch, done, seen_images, window_start = position.epoch, position.samples_done, 0, time.perf_counter()
    model.train()
    prefetch = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lorastory-prefetch")

    def prepare(order: list[list[int]], batch_index: int, epoch: int) -> Future[StepInputs]:
        # Compiled blocks see every batch at full size: a short last batch is padded at loss weight 0.
        indices, weights = process_share(order[batch_index], rank, processes, config.batch_size, compile_mode != "off")
        return prefetch.submit(step_inputs, indices, weights, processes / len(order[batch_index]), epoch, examples,
                               cache, objective, config, bool(text_encoders), device.type == "cuda")

    try:
        while result.steps < total_steps and not result.stopped:
            order = epoch_batches(samples, config.seed, epoch, global_batch, history, repeats)
            first = batches_before(order, done)
            upcoming = prepare(order, first, epoch) if first < len(order) else None
            for batch_index in range(first, len(order)):
                inputs = upcoming.result()  # type: ignore[union-attr]
                # The next step's inputs load from the cache while the GPU works on this one.
                upcoming = prepare(order, batch_index + 1, epoch) if batch_index + 1 < len(order) else None
                with sdpa_allowed(family.training_attention), accelerator.accumulate(model):
                    loss = step_loss(inputs, model, objective, config, device, weight_dtype,
                                     cudagraphs=compile_mode == "cudagraphs")
                    mean_loss = _optimize(loss, accelerator, optimizer, lr_scheduler, params, config.max_grad_norm)
                    if not math.isfinite(mean_loss):  # before any checkpoint or LoRA of this step is written
                        raise TrainingError(f"loss became {mean_loss} at step {result.steps + 1}: lower --lr or use bf16"
                                            f"{_last_good(out)}")
                done += len(order[batch_index])
                seen_images += len(order[batch_index])
                if not accelerator.sync_gradients:
                    continue
                result.steps += 1
                result.losses.append(mean_loss)
                if ema is not None:
                    ema.update(trainable, result.steps)
                lr = lr_scheduler.get_last_lr()[0]
                accelerator.log({"train/loss": mean_loss, "train/lr": lr}, step=result.steps)
                if on_progress is not None and main:
                    speed = seen_images / max(time.perf_counter() - window_start, 1e-9)
                    on_progress(Progress(result.steps, total_steps, epoch, mean_loss, lr, speed))
                result.stopped = hooks.stopping()  # stopping: this step's checkpoint and LoRA are written
                if result.stopped or (config.checkpoint_every and result.steps % config.checkpoint_every == 0):
                    here = _here(result.steps, epoch, done, batch_index + 1 == len(order), global_batch, history,
                                 position.fingerprint, processes)
                    _save_checkpoint(accelerator, out, here, trainable, optimizer, lr_scheduler, config.keep_checkpoints, ema,
                                     lambda path: _keep_lora(pipe, family, accelerator.unwrap_model(model), spec, config, path))
                if config.validation_every and result.steps % config.validation_every == 0 and main and not result.stopped:
                    result.samples += render_validation_samples(pipe, accelerator.unwrap_model(model).denoiser, cache, config,
                                                                text_fp, out, result.steps, device, accelerator)
                if result.steps >= total_steps or result.stopped:
                    break
            epoch, done, history = epoch + 1, 0, []
    finally:
        prefetch.shutdown(wait=True, cancel_futures=True)

    # 6. save
    _check_finite(trainable, result.steps, out)
    _check_in_sync(accelerator, trainable)
    if main:
        family.set_denoiser(pipe, accelerator.unwrap_model(model).denoiser)
        result.lora_files += _save_loras(pipe, family, spec, config, out, result.steps, trainable, ema)
    accelerator.wait_for_everyone()  # no process returns before the LoRA is on disk
    accelerator.end_training()
    return result


def _here(step: int, epoch: int, done: int, epoch_finished: bool, global_batch: int, history: list[tuple[int, int]],
          fingerprint: str, processes: int) -> Position:
    """Where the run is after ``step``: a finished epoch continues at the start of the next one."""
    if epoch_finished:
        return Position(step, epoch + 1, 0, global_batch, [], fingerprint, processes)
    return Position(step, epoch, done, global_batch, history, fingerprint, processes)


def _optimize(loss: torch.Tensor, accelerator: Any, optimizer: Any, lr_scheduler: Any, params: list[torch.nn.Parameter],
              max_grad_norm: float) -> float:
    """Backward, clip, step and zero the gradients; return the loss averaged over the processes.

    The loss is read once the whole step is queued, so the GPU is not left idle while the CPU queues
    the clipping and the optimizer; it is the same value on every process.
    """
    accelerator.backward(loss)
    mean_loss_tensor = accelerator.reduce(loss.detach(), reduction="mean")
    if accelerator.sync_gradients:
        accelerator.clip_grad_norm_(params, max_grad_norm)
    optimizer.step()
    mean_loss = mean_loss_tensor.item()
    if math.isfinite(mean_loss) and accelerator.sync_gradients and not optimizer.step_was_skipped:
        lr_scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return mean_loss


def _save_loras(pipe: Any, family: Any, spec: Any, config: TrainConfig, out: Path, steps: int,
                trainable: dict[str, torch.nn.Parameter], ema: LoraEma | None) -> list[Path]:
    """Write the trained LoRA in each of ``config.save_formats`` (default: :func:`default_save_formats`), the first
    as ``lora.safetensors``, the others as ``lora_<format>.safetensors``; and its moving average as
    ``lora_ema*.safetensors``: same writer and layouts, the average swapped into the weights. Return the files."""
    metadata = {"lorastory.train_config_hash": config.fingerprint(), "lorastory.steps": str(steps)}
    formats = config.save_formats or default_save_formats(family.name, spec)

    def write(stem: str, extra: dict[str, str]) -> list[Path]:
        names = [f"{stem}.safetensors" if i == 0 else f"{stem}_{fmt}.safetensors" for i, fmt in enumerate(formats)]
        for fmt, name in zip(formats, names):
            save_lora(pipe, out / name, spec, family.name, format=fmt, extra_metadata={**metadata, **extra})
        return [out / name for name in names]

    files = write("lora", {})
    if ema is not None:
        with swapped_in(trainable, ema.shadow):
            files += write("lora_ema", {"lorastory.ema_decay": str(config.ema_decay)})
    return files


def _keep_lora(pipe: Any, family: Any, model: Any, spec: Any, config: TrainConfig, path: Path) -> Path:
    """A checkpoint's LoRA in the run's first layout (the pipeline is given the trained denoiser first)."""
    family.set_denoiser(pipe, model.denoiser)
    fmt = (config.save_formats or default_save_formats(family.name, spec))[0]
    steps = int(path.stem.split("-")[-1])
    return save_lora(pipe, path, spec, family.name, format=fmt,
                     extra_metadata={"lorastory.train_config_hash": config.fingerprint(), "lorastory.steps": str(steps)})


def _start_position(config: TrainConfig, checkpoint: Checkpoint | None, global_batch: int,
                    processes: int) -> tuple[Position, list[tuple[int, int]]]:
    """Where the run starts (a checkpoint's position, or the beginning) and the epoch's cutting history."""
    if checkpoint is None:
        return Position(0, 0, 0, global_batch, [], config.resume_fingerprint(), processes), []
    position = checkpoint.position
    return position, continued_history(position.history, position.global_batch, position.samples_done, global_batch)


def _restore(checkpoint: Checkpoint, trainable: dict[str, torch.nn.Parameter], optimizer: Any, lr_scheduler: Any,
             rank: int, ema: LoraEma | None) -> None:
    """Put a checkpoint's LoRA weights, optimizer, schedule, random state and moving average back."""
    saved = checkpoint.lora
    if set(saved) != set(trainable) or any(saved[n].shape != trainable[n].shape for n in trainable):
        raise CheckpointError(f"{checkpoint.folder} holds a different set of LoRA weights than this run trains; "
                              "start a new --out folder")
    if ema is not None:
        try:
            ema.load(checkpoint.ema if checkpoint.ema is not None else {})
        except ValueError as err:
            raise CheckpointError(f"{checkpoint.folder}: {err}; start a new --out folder") from None
    apply_checkpoint(checkpoint, optimizer, lr_scheduler, rank)
    for name, tensor in saved.items():
        trainable[name].data.copy_(tensor)


def _open_run(out: Path, config: TrainConfig, state: Any, say: Callable[[str], None]) -> Checkpoint | None:
    """Make the run folder ready and find the checkpoint to resume from (``None``: start at the beginning).

    Checkpoints already there need ``resume``; every process must see the same ones.
    """
    if state.is_main_process:
        clean_checkpoint_temps(out)  # of a run killed while writing or pruning checkpoints
    existing = list_checkpoints(out)
    if state.num_processes > 1:
        _same_everywhere(existing[-1][1].name if existing else None, f"newest checkpoint in {out}",
                         "with several machines, --out must be a folder they all share")
    if existing and not config.resume:
        raise TrainingError(f"{out} already has checkpoints; pass --resume to continue or choose a new --out")
    if config.resume and not existing:
        say(f"note: no checkpoint in {out}; starting from the beginning")
    checkpoint = _resume_from(out, config, state, say) if config.resume and existing else None
    out.mkdir(parents=True, exist_ok=True)
    if state.is_main_process:
        config.save_yaml(out / "config.yaml")
    return checkpoint


def _resume_from(out: Path, config: TrainConfig, state: Any, say: Callable[[str], None]) -> Checkpoint | None:
    """The newest checkpoint that loads; damaged newer ones are moved aside by the main process
    (the others look after it, so all agree). ``None`` (with a warning) when none loads."""
    checkpoint = None
    if state.is_main_process:
        checkpoint = newest_good_checkpoint(out, config.resume_fingerprint(), say, move=True)
    state.wait_for_everyone()
    if not state.is_main_process:
        checkpoint = newest_good_checkpoint(out, config.resume_fingerprint(), _quiet, move=False)
    if state.num_processes > 1:
        _same_everywhere(checkpoint.folder.name if checkpoint else None, f"newest good checkpoint in {out}",
                         "with several machines, --out must be a folder they all share")
    if checkpoint is None:
        say(f"warning: no checkpoint in {out} could be read (moved aside); starting from the beginning")
    return checkpoint


def _quiet(message: str) -> None:
    """``say`` for the processes other than the main one."""


def _total_steps(config: TrainConfig, samples: list[tuple[str, tuple[int, int]]], global_batch: int,
                 position: Position, history: list[tuple[int, int]], repeats: list[int]) -> int:
    """Optimizer steps of the whole run. A resume with another global batch re-counts the steps left."""
    if config.max_steps:
        return config.max_steps
    per_epoch = len(epoch_batches(samples, config.seed, 0, global_batch, repeats=repeats))
    if position.global_batch == global_batch:
        return math.ceil(per_epoch / config.gradient_accumulation) * config.epochs
    order = epoch_batches(samples, config.seed, position.epoch, global_batch, history, repeats)
    left = len(order) - batches_before(order, position.samples_done) + per_epoch * (config.epochs - position.epoch - 1)
    return position.global_step + math.ceil(left / config.gradient_accumulation)


def _resumed_note(name: str, position: Position, global_batch: int, processes: int, batch_size: int) -> str:
    note = f"resumed from {name} (step {position.global_step}, epoch {position.epoch}, sample {position.samples_done})"
    if position.global_batch != global_batch:
        note += (f"; it was written with a global batch of {position.global_batch}, this run has {global_batch} "
                 f"({processes} process(es) x {batch_size}): the batches from here on hold the samples not yet seen "
                 "this epoch")
    return note


def _save_checkpoint(accelerator: Any, out: Path, position: Position, trainable: dict[str, torch.nn.Parameter],
                     optimizer: Any, lr_scheduler: Any, keep: int, ema: LoraEma | None,
                     keep_lora: Callable[[Path], Any]) -> None:
    """Write a checkpoint from the main process, with every process's generators, and ``keep_lora`` its LoRA
    file (``checkpoint.checkpoint_lora_path``: kept for selection after the checkpoint is pruned)."""
    from accelerate.utils import gather_object

    _check_finite(trainable, position.global_step, out)  # on every process: they hold the same weights
    states = gather_object([rng_state()])
    if accelerator.is_main_process:
        save_checkpoint(out, position, {n: p.detach() for n, p in trainable.items()}, optimizer, lr_scheduler,
                        states, keep, ema=ema.shadow if ema is not None else None)
        keep_lora(checkpoint_lora_path(out, position.global_step))


def _same_everywhere(value: Any, what: str, advice: str) -> None:
    """Stop every process at once when they see different values of something they must agree on."""
    from accelerate.utils import gather_object

    seen = gather_object([value])
    if len(set(seen)) > 1:
        raise TrainingError(f"the processes see a different {what} ({', '.join(map(str, seen))}): {advice}")


def _check_in_sync(accelerator: Any, trainable: dict[str, torch.nn.Parameter]) -> None:
    """Every process must end with the same LoRA weights (DDP's promise); compare checksums."""
    import torch

    if accelerator.num_processes == 1:
        return
    checksum = torch.stack([p.detach().double().sum() for p in trainable.values()]).sum()
    sums = accelerator.gather(checksum.reshape(1))
    if not torch.equal(sums, sums[:1].expand_as(sums)):
        raise RuntimeError(f"LoRA weights differ between processes after training (checksums {sums.tolist()})")


def _last_good(out: Path) -> str:
    last = list_checkpoints(out)
    return f"; the last good checkpoint is {last[-1][1]}" if last else ""


def _check_finite(params: dict[str, torch.Tensor], step: int, out: Path) -> None:
    """Never write a checkpoint or LoRA holding inf/NaN weights."""
    import torch

    if all(torch.isfinite(p).all() for p in params.values()):
        return
    raise TrainingError(f"LoRA weights became inf/NaN at step {step}: lower --lr or use bf16{_last_good(out)}")


def _trainable(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    """The LoRA parameters being trained, named "<component>.<parameter>"."""
    # "unet" names the denoiser whatever it is (a transformer too): checkpoints keep the names they always had.
    modules = {"unet": model.denoiser, **model.text_encoders}
    return {f"{c}.{n}": p for c, m in modules.items() for n, p in m.named_parameters() if p.requires_grad}
