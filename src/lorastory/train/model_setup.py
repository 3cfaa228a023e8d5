"""Getting the model ready for a LoRA run: load it, check the run suits its family, put the LoRA in,
prepare the fast path (fp8 base, fused q/k/v, compilation) and pick the family's training objective."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from lorastory.errors import TrainingError
from lorastory.models.fp8 import describe as describe_fp8
from lorastory.models.fp8 import check_selection, family_selection, quantize_base
from lorastory.models.lora import inject_lora
from lorastory.models.objectives import training_objective
from lorastory.models.registry import Family, family_of_pipeline, load_pipeline
from lorastory.train.config import TrainConfig
from lorastory.train.encode import frozen_dtype
from lorastory.train.hooks import StageHooks
from lorastory.train.speed import compile_choice, prepare_for_training

if TYPE_CHECKING:
    import torch


def load_for_training(config: TrainConfig, planned: list[Any], hooks: StageHooks,
                      dtype: Any = None) -> tuple[Any, Family]:
    """The model's pipeline and family, its load reported as a stage (a stop asked meanwhile ends the run after
    it); the run is checked against the family before anything is cached. ``dtype``: :func:`load_dtypes`'."""
    hooks.report("loading the model", 0, 1)
    pipe = load_pipeline(config.model, config.family, dtype=dtype)
    hooks.report("loading the model", 1, 1)
    family = family_of_pipeline(pipe)
    check_run_fits(planned, family, config)
    return pipe, family


def load_dtypes(mixed_precision: str, device: torch.device) -> dict[str, Any] | None:
    """The dtypes the base loads in: on a GPU under bf16 or fp16 mixed precision, the frozen weights' dtype for
    every component but the VAE, which encodes the pictures in fp32; None (fp32, diffusers' default) otherwise.

    The text encoders and the denoiser are cast to that dtype before they run anyway; loaded in it, the CPU
    never holds an fp32 copy of the model (Kolors: 35 GB made from 16.6 GB of fp16 files, then cast again).
    The weights come out the same: fp16 to fp32 is exact, and both ways round once to the frozen dtype.
    """
    import torch

    frozen = frozen_dtype(mixed_precision)
    if device.type != "cuda" or frozen == torch.float32:
        return None
    return {"default": frozen, "vae": torch.float32}


def check_run_fits(planned: list[Any], family: Any, config: TrainConfig) -> None:
    """The run must suit the family: an adapter kind its files hold, sizes that pack into the denoiser's patches
    (a DiT's 2x2 latent patches: multiples of 16 px)."""
    networks = family.lora_networks
    if networks is not None and config.lora.network not in networks:
        raise TrainingError(f"{family.display} LoRAs can be {' or '.join(networks)} for now, not {config.lora.network}; "
                            f"pass --network {networks[0]}")
    if config.lora.train_text_encoder and not family.trainable_text_encoders:
        raise TrainingError(f"{family.display} trains no text-encoder LoRA yet; drop --train-text-encoder")
    step = 8 * family.latent_patch
    bad = next((p.placement.target for p in planned if p.placement.target[0] % step or p.placement.target[1] % step), None)
    if bad is not None:
        raise TrainingError(f"{family.display} trains on sizes that are multiples of {step} pixels, not {bad[0]}x{bad[1]}; "
                            "use a --resolution and --bucket-step that are")


def objective_for(family: Any, pipe: Any, config: TrainConfig, say: Callable[[str], None]) -> Any:
    """How the family's denoiser trains: noise prediction (epsilon / v) or flow matching, the family says."""
    objective = training_objective(family, pipe)
    if config.snr_gamma is not None and not objective.weights_by_snr:
        say(f"note: --snr-gamma does not apply to {family.display}'s {objective.name} objective; its loss is unweighted")
    return objective


def add_lora(pipe: Any, family: Any, config: TrainConfig, device: torch.device,
              weight_dtype: torch.dtype) -> tuple[Any, Any, dict[str, Any], list[torch.nn.Parameter]]:
    """Freeze the denoiser (and the text encoders that train), inject the LoRA, return its fp32 parameters.

    Returns the denoiser, the LoRA spec, the text encoders being trained (by name) and the parameters.
    """
    unet = family.denoiser_of(pipe)
    unet.requires_grad_(False)
    move_to(unet, device, weight_dtype, cast_first=config.base_dtype != "default")
    spec = config.lora.for_family(family)  # the family's default targets when the run names none
    text_encoders = {n: getattr(pipe, n) for n in family.trainable_text_encoders} if spec.train_text_encoder else {}
    for name in family.text_encoders if spec.train_text_encoder else ():  # all encode live, the frozen ones too
        getattr(pipe, name).requires_grad_(False)
        move_to(getattr(pipe, name), device, weight_dtype)
    for encoder in text_encoders.values():
        encoder.train()
    params = inject_lora(pipe, spec)
    for param in params:
        param.data = param.data.float()
    if config.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    return unet, spec, text_encoders, params


def move_to(module: Any, device: torch.device, dtype: torch.dtype, cast_first: bool = False) -> None:
    """Move to the device; cast only when needed (a diffusers model warns on every cast with a dtype).

    ``cast_first`` casts on the CPU before the move, so the GPU never holds the fp32 copy (12 GB cards).
    """
    if cast_first and module.dtype != dtype:
        module.to(dtype=dtype)
    module.to(device)
    if module.dtype != dtype:
        module.to(dtype=dtype)


def prepare_fast_path(config: TrainConfig, unet: Any, text_encoders: dict[str, Any], device: torch.device, total_steps: int,
               processes: int, samples: list[tuple[str, tuple[int, int]]], say: Callable[[str], None],
               bf16_compute: bool, family: Any = None) -> str:
    """Prepare the bf16 fast path (fused q/k/v, compilation as ``config.compile`` resolves); say and return the
    compile mode. Without the fast path (CPU, fp32/fp16, ``--no-fast``) nothing compiles, and that is said too.
    An fp8 base (``config.base_dtype``) is converted first, the LoRA left as it is; ``family`` says which of the
    denoiser's Linear layers (:func:`~lorastory.models.fp8.family_selection`; a UNet's when None)."""
    if config.base_dtype != "default":
        count = quantize_base(unet, config.base_dtype, training=True, **family_selection(family))
        say(describe_fp8(config.base_dtype, check_selection(count, config.base_dtype, family)))
    if family is not None and family.training_attention and device.type == "cuda":
        say(f"attention: {', '.join(family.training_attention)} (cuDNN's fused attention backward fails on "
            f"{family.display}'s joint attention)")
    if not bf16_compute:
        say("compile: off (the compiled fast path needs a CUDA GPU, bf16 and --fast)")
        return "off"
    shapes = {bucket for _, bucket in samples}
    pixels = max(width * height for width, height in shapes)
    choice = compile_choice(config.compile, device, total_steps, processes, config.gradient_checkpointing,
                            images_per_step=config.batch_size * config.gradient_accumulation,
                            megapixels=pixels / 2**20, shapes=len(shapes), base_dtype=config.base_dtype)
    say(str(choice))
    # Fused q/k/v stacks the frozen weights into one bf16 matrix: not with fp8 ones.
    say(prepare_for_training(unet, list(text_encoders.values()), compile=choice.mode,
                             fuse_qkv=config.base_dtype == "default"))
    return choice.mode
