"""``--offload``: a story rendered within a small GPU (Kolors in 12 GB) without moving models for every batch.

The plan (:func:`plan_offload`, a pure function of model sizes and the GPU's budget): every panel's prompt and
negative prompt are encoded once, up front, with the text encoders on the GPU (stored in fp8 when bf16 does
not fit: Kolors' ChatGLM3-6B is 12.5 GB in bf16, 6.6 GB in fp8), then the text encoders go back to the CPU and
the denoiser and VAE stay on the GPU for every panel: in their own dtype when the weights and a batch's
activations fit, else with the denoiser's token-wise Linear layers stored in fp8 (``fp8-weights``). The batch is
the largest the budget holds. diffusers' model CPU offload, which the plan replaces, moved the 6.6 GB text
encoder and the UNet on and off the GPU for each pipeline call (an H200 capped at 12 GB: 81-89 s for the
8-panel Kolors story, 119 ms per panel-step; bench/RESULTS.md). A story the plan cannot serve (a reference
picture: its encoder and in-context pipeline read the picture at call time; text encoders larger than the
budget even in fp8) keeps diffusers' model offload, and the speed line says why.

Memory figures (:data:`ACTIVATION_BYTES_PER_IMAGE`): the 12 GB story on an H200 at batch 4 (fp8-weights UNet,
CFG: 8 UNet images of 1024²) peaked at 11.03 GB allocated with 3.0 + 0.17 GB of UNet and VAE weights resident:
(11.03 - 3.17) / 8 = 0.98 GB per UNet image per megapixel (a full-memory run at batch 8 had bounded it at 0.925,
6 % short). A batch decodes one picture at a time (VAE slicing, ~0.1 s a picture either way): in the same
story at batch 3 with a bf16 UNet the first batch rendered and the second ran out of memory in the decode of
three pictures at once, throwing its 50 denoising steps away. A DiT's activations are not measured here: the
UNet's figure stands in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from lorastory.generate.speed import unmerged_lora
from lorastory.memory import device_memory_budget
from lorastory.models.fp8 import family_selection, fp8_layer_names, quantize_base

GB = 1e9
# Derived above (per megapixel of 2**20 pixels): a UNet image's activations at the peak of a batch's denoising.
ACTIVATION_BYTES_PER_IMAGE = 0.98e9
# Text encoding: 16 prompts of 256 tokens through ChatGLM3-6B hold well under this (hidden 4096, MLP 13696).
TEXT_ACTIVATION_BYTES = 1.0e9
# Left free of the budget: cuBLAS workspaces and the allocator's fragmentation.
RESERVE_FRACTION = 0.05
MAX_PLAN_BATCH = 8  # as the batch without offload (lorastory.generate.speed.MAX_AUTO_BATCH)
# Devices the plan may run on. The user-facing rule stays "a CUDA GPU"; tests add the CPU to run the plan's code.
OFFLOAD_DEVICES = ("cuda",)


@dataclass(frozen=True)
class ModelSizes:
    """Bytes of a pipeline's parts on the GPU: the denoiser as loaded and with its fp8 layers stored in fp8
    (equal when none can be), the text encoders likewise (all of them: they encode together), the VAE."""

    denoiser: int
    denoiser_fp8: int
    text_encoders: int
    text_encoders_fp8: int
    vae: int


@dataclass(frozen=True)
class OffloadPlan:
    """What ``--offload`` does in a run: ``applies`` False keeps diffusers' model offload, for ``reason``."""

    applies: bool
    reason: str
    text_encoder_dtype: str = "default"  # "default" (as loaded) or "fp8-weights"
    denoiser_dtype: str = "default"  # "default", "fp8" or "fp8-weights"
    batch: int = 1
    notes: tuple[str, ...] = field(default=())

    @property
    def vae_slicing(self) -> bool:
        """A batch decodes one picture at a time: one picture's decode is within a panel's figure, while a
        batch's decode was seen running out of memory (the module docstring)."""
        return self.applies and self.batch > 1

    def __str__(self) -> str:
        return f"offload: {self.reason}" if not self.applies else f"offload: {'; '.join(self.notes)}"


def _gb(n: float) -> str:
    return f"{n / GB:.1f} GB"


def plan_offload(sizes: ModelSizes, budget: float, *, panels: int, megapixels: float, images_per_panel: int,
                 batch_size: int | None = None, base_dtype: str = "default", fp8: bool = True,
                 denoiser_name: str = "UNet", loaded_dtype: str = "bf16", encoders: int = 1) -> OffloadPlan:
    """Choose the text encoders' and denoiser's storage and the batch for ``budget`` bytes of GPU memory.

    Text encoders: as loaded when they and their activations fit, else in fp8 (``fp8``: torchao is there).
    Denoiser: ``base_dtype`` when the user chose one; else as loaded when its weights, the VAE and at least one
    panel's activations (``images_per_panel`` images of ``megapixels``: 2 with CFG) fit, else fp8-weights.
    Batch: ``batch_size``, else the most panels the rest of the budget holds (up to :data:`MAX_PLAN_BATCH`),
    evened out over the calls that takes;
    the VAE decodes one picture at a time whenever the batch holds more than one.
    """
    usable = budget * (1 - RESERVE_FRACTION)
    if sizes.text_encoders + TEXT_ACTIVATION_BYTES <= usable:
        text_dtype, text_bytes = "default", sizes.text_encoders
    elif fp8 and sizes.text_encoders_fp8 + TEXT_ACTIVATION_BYTES <= usable:
        text_dtype, text_bytes = "fp8-weights", sizes.text_encoders_fp8
    else:
        need = sizes.text_encoders_fp8 if fp8 else sizes.text_encoders
        hint = "" if fp8 else " (fp8 storage needs torchao: pip install 'lorastory[fp8]')"
        return OffloadPlan(False, f"diffusers' model offload: the text encoders need {_gb(need)} of a "
                                  f"{_gb(budget)} budget{hint}")
    per_panel = ACTIVATION_BYTES_PER_IMAGE * megapixels * images_per_panel
    choices = [base_dtype] if base_dtype != "default" else ["default", *(["fp8-weights"] if fp8 else [])]
    options = []  # (dtype, weights on the GPU while rendering, panels the rest holds)
    for dtype in choices:
        weights = (sizes.denoiser if dtype == "default" else sizes.denoiser_fp8) + sizes.vae
        options.append((dtype, weights, max(0, math.floor((usable - weights) / per_panel))))
    wanted = batch_size or 1
    chosen = next((option for option in options if option[2] >= wanted), None)
    over = chosen is None
    if over:  # the user's batch over the estimate (an upper bound; a batch out of memory is halved) still runs
        chosen = max(options, key=lambda option: option[2])
        if chosen[2] < 1 and base_dtype == "default":
            return OffloadPlan(False, f"diffusers' model offload: the {denoiser_name} and VAE ({_gb(chosen[1])}) "
                                      f"and a panel ({_gb(per_panel)}) exceed the {_gb(budget)} budget")
    dtype, weights, fits = chosen
    most = max(1, min(fits, panels, MAX_PLAN_BATCH))
    batch = batch_size or math.ceil(panels / math.ceil(panels / most))  # as many calls, evened out: 4 + 4, not 5 + 3
    stored = {"default": loaded_dtype, "fp8": "fp8", "fp8-weights": "fp8-weights"}[dtype]
    why = ("as --base-dtype asks" if base_dtype != "default"
           else f"in {loaded_dtype} it and a panel exceed the budget" if dtype != "default" else "")
    notes = [f"prompts encoded once, then the text encoder{'s' if encoders > 1 else ''} off the GPU "
             f"({'stored in fp8, ' if text_dtype != 'default' else ''}{_gb(text_bytes)})",
             f"{denoiser_name} {stored} resident ({_gb(weights - sizes.vae)}{', ' + why if why else ''})",
             f"batch {batch} {'as --batch-size asks' if batch_size else 'by the ' + _gb(budget) + ' budget'}"
             f"{f' (the budget holds {fits})' if over else ''} "
             f"({_gb(per_panel)} a panel)"]
    if batch > 1:
        notes.append("VAE decodes one picture at a time")
    return OffloadPlan(True, "planned", text_dtype, dtype, batch, tuple(notes))


def _bytes(model: Any, fp8_names: list[str] = ()) -> tuple[int, int]:
    """``model``'s bytes as it is and with the weights of the Linear layers ``fp8_names`` at one byte each."""
    if model is None:
        return 0, 0
    size = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    saved = 0
    for name in fp8_names:
        weight = model.get_submodule(name).weight
        saved += weight.numel() * max(0, weight.element_size() - 1)
    return size, size - saved


def model_sizes(pipe: Any, family: Any) -> ModelSizes:
    """The bytes of ``pipe``'s denoiser, text encoders and VAE, as loaded and in fp8 where it would convert."""
    denoiser = family.denoiser_of(pipe)
    denoiser_bytes, denoiser_fp8 = _bytes(denoiser, fp8_layer_names(denoiser, **family_selection(family)))
    text, text_fp8 = 0, 0
    for encoder in _text_encoders(pipe, family):
        size, stored = _bytes(encoder, fp8_layer_names(encoder, whole=True))
        text, text_fp8 = text + size, text_fp8 + stored
    return ModelSizes(denoiser_bytes, denoiser_fp8, text, text_fp8, _bytes(getattr(pipe, "vae", None))[0])


def _text_encoders(pipe: Any, family: Any) -> list[Any]:
    return [encoder for name in family.text_encoders if (encoder := getattr(pipe, name, None)) is not None]


def _on(model: Any, device: Any) -> int:
    """Bytes of ``model`` already on ``device`` (the budget's own: a pipeline kept from an earlier run)."""
    if model is None:
        return 0
    kind = getattr(device, "type", str(device))
    return sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()] if t.device.type == kind)


def _torchao_available() -> bool:
    try:
        import torchao  # noqa: F401
    except ImportError:
        return False
    return True


def offload_plan(pipe: Any, family: Any, jobs: list[Any], *, uses_reference: bool, batch_size: int | None,
                 base_dtype: str, device: Any, fast: bool, budget: float | None = None) -> OffloadPlan:
    """The plan for this run of ``pipe`` on ``device`` (:func:`plan_offload` with the pipeline's sizes and
    the device's free memory, or ``budget``); a story with a reference picture keeps diffusers' model offload."""
    if uses_reference:
        return OffloadPlan(False, "diffusers' model offload: the reference picture is encoded in every pipeline call")
    if budget is None:
        free = device_memory_budget(device)
        if free is None:
            return OffloadPlan(False, "diffusers' model offload: this device does not say how much memory is free")
        modules = [family.denoiser_of(pipe), getattr(pipe, "vae", None), *_text_encoders(pipe, family)]
        budget = free + sum(_on(module, device) for module in modules)
    denoiser = family.denoiser_of(pipe)
    loaded = str(next(denoiser.parameters()).dtype).removeprefix("torch.").replace("bfloat16", "bf16")
    megapixels = max(job.width * job.height for job in jobs) / 2**20
    cfg = family.denoiser == "unet" and any(job.cfg > 1 for job in jobs)  # a UNet's CFG doubles its batch
    return plan_offload(model_sizes(pipe, family), budget, panels=len(jobs), megapixels=megapixels,
                        images_per_panel=2 if cfg else 1, batch_size=batch_size, base_dtype=base_dtype,
                        fp8=fast and _torchao_available() and getattr(device, "type", str(device)) == "cuda",
                        denoiser_name="UNet" if family.denoiser == "unet" else family.display + " transformer",
                        loaded_dtype=loaded, encoders=len(_text_encoders(pipe, family)))


class PromptCache:
    """Every panel's prompt and negative prompt encoded once (the family's ``encode_prompt``): the pipeline
    arguments of a batch (``prompt_embeds``, ``negative_prompt_embeds`` and their pooled embeddings or masks)."""

    ENCODE_BATCH = 16

    def __init__(self, pipe: Any, family: Any, texts: list[str], device: Any) -> None:
        import torch

        self.embeds: dict[str, dict[str, Any]] = {}
        unique = list(dict.fromkeys(texts))
        with torch.no_grad():
            for start in range(0, len(unique), self.ENCODE_BATCH):
                part = unique[start:start + self.ENCODE_BATCH]
                encoded = family.encode_prompt(pipe, part, device)
                for i, text in enumerate(part):
                    self.embeds[text] = {key: value[i:i + 1] for key, value in encoded.items()}

    def arguments(self, chunk: list[Any]) -> dict[str, Any]:
        """The pipeline's embedding arguments for the panels ``chunk`` in place of their prompts."""
        found: dict[str, Any] = {}
        for prefix, texts in (("", [job.prompt for job in chunk]), ("negative_", [job.negative for job in chunk])):
            for key in self.embeds[texts[0]]:
                found[prefix + key] = _stack([self.embeds[text][key] for text in texts])
        return found


def _stack(parts: list[Any]) -> Any:
    """``parts`` as one batch, sequences (a padded mask too) right-padded with zeros to the longest (Qwen-Image
    pads its prompts to the longest of each encoding call; its mask keeps the padding out of attention)."""
    import torch

    if parts[0].ndim >= 2:
        longest = max(part.shape[1] for part in parts)
        parts = [torch.nn.functional.pad(part, (0, 0) * (part.ndim - 2) + (0, longest - part.shape[1]))
                 if part.shape[1] < longest else part for part in parts]
    return torch.cat(parts)


def _drop_weights(model: Any) -> None:
    """Replace every weight of ``model`` by an empty CPU tensor of its dtype: the module stays (the pipeline
    reads its dtype and device) but holds no memory; it cannot run again."""
    import torch

    for module in model.modules():
        for name, tensor in list(module._parameters.items()):
            if tensor is not None:
                module._parameters[name] = torch.nn.Parameter(torch.empty(0, dtype=tensor.dtype), requires_grad=False)
        for name, tensor in list(module._buffers.items()):
            if tensor is not None:
                module._buffers[name] = torch.empty(0, dtype=tensor.dtype)


def prepare_offload(pipe: Any, family: Any, plan: OffloadPlan, jobs: list[Any], device: Any) -> PromptCache:
    """Carry out ``plan`` up to the rendering: the text encoders on ``device`` (converted to fp8 there when the
    plan says), every prompt encoded, the text encoders back on the CPU (or dropped, from a pipeline loaded for
    this run alone), the VAE on ``device`` and the denoiser too (an fp8 one is converted onto it by the fast path)."""
    import torch

    encoders = _text_encoders(pipe, family)
    unmerged = [name for name in family.text_encoders if unmerged_lora(getattr(pipe, name, None))]
    if unmerged:  # merged now: a LoRA cannot merge into fp8 weights, nor later into dropped ones
        pipe.fuse_lora(components=unmerged, lora_scale=1.0)
    for encoder in encoders:
        if plan.text_encoder_dtype != "default" and not getattr(encoder, "_lorastory_fp8", False):
            quantize_base(encoder, plan.text_encoder_dtype, whole=True, device=device)  # converted onto the GPU
            encoder._lorastory_fp8 = True
        encoder.to(device)
    prompts = PromptCache(pipe, family, [text for job in jobs for text in (job.prompt, job.negative)], device)
    one_run = getattr(pipe, "_lorastory_one_run", False)
    for encoder in encoders:  # a pipeline loaded for this run alone drops them (no 6.6 GB copy back to the CPU)
        if one_run:
            _drop_weights(encoder)
        else:
            encoder.to("cpu")
    if getattr(device, "type", str(device)) == "cuda":
        torch.cuda.empty_cache()
    vae = getattr(pipe, "vae", None)
    if vae is not None:
        vae.to(device)
        if plan.vae_slicing:
            vae.enable_slicing()
    if plan.denoiser_dtype == "default":
        family.denoiser_of(pipe).to(device)
    return prompts
