"""Stories: a YAML of panels → PNG panels with parameters, a manifest and a storyboard.

Reads like a diffusers pipeline: check the story, load the model (and LoRA),
then for each group of panels that share settings: encode, denoise in
batches, decode, save. Every panel has its own seeded generator, so editing
one panel leaves the others' pixels as they were — unless the story's
``consistency`` ties the panels together (:mod:`lorastory.generate.consistency`):
then panels of one batch share self-attention tokens, and/or every panel is
conditioned on one reference image through an IP-Adapter.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lorastory import __version__
from lorastory.errors import ConfigError
from lorastory.fileio import (
    atomic_write_text,
    check_outputs_apart,
    display_path,
    file_sha256,
)
from lorastory.generate.checks import (
    check_lora_scale,
    check_panel_memory,
)
from lorastory.generate.consistency import load_reference_image
from lorastory.generate.consistency_settings import REFERENCE_FILE, ConsistencySettings
from lorastory.generate.grid import save_storyboard
from lorastory.generate.manifest import LoraRecord, PanelRecord, RunManifest
from lorastory.generate.pngmeta import (
    PNG_COMPRESS_LEVEL,
    GenerationParams,
    lora_short_hash,
    model_name,
    model_short_hash,
)
from lorastory.generate.rundir import (
    MANIFEST_FILE,
    STORY_FILE,
    STORYBOARD_FILE,
    commit_run,
    prepare_output,
    read_manifest,
    remove_staging,
    staging_dir,
    write_json,
)
from lorastory.generate.writer import PictureWriter
from lorastory.generate.render import PanelJob, RenderProgress, StepCallback, render_panels, render_reference_image
from lorastory.generate.speed import prepare_for_speed, story_compile_choice
from lorastory.generate.story_file import Story, reference_prompt, resolve_panels, run_files
from lorastory.generate.offload import OFFLOAD_DEVICES, offload_plan, prepare_offload
from lorastory.generate.guidance import check_true_cfg, guidance_parameters, uses_true_cfg
from lorastory.models.fp8 import check_base_dtype
from lorastory.models.ip_adapter import check_ip_adapter, resolve_ip_adapter
from lorastory.models.lora import apply_lora
from lorastory.models.prefetch import prefetch_weights
from lorastory.models.registry import family_of_pipeline, load_pipeline


@dataclass
class StoryResult:
    out: Path
    panels: list[Path]
    storyboard: Path
    manifest: Path
    seconds: float
    jobs: list[PanelJob] = field(default_factory=list)
    speed: str | None = None  # the fast path's levers and what was skipped, as in the manifest (None: not on it)


def _local_inputs(model: str, lora: Path | None, settings: ConsistencySettings) -> list[tuple[str, str | Path]]:
    """The inputs on this machine that a run's output may not reach: model, LoRA, reference image, IP-Adapter."""
    found: list[tuple[str, str | Path]] = [("--lora", lora)] if lora is not None else []
    for label, value in (("--model", model), ("consistency.reference_image", settings.reference_image),
                         ("consistency.ip_adapter", settings.ip_adapter)):
        if value and os.path.lexists(os.path.expanduser(str(value))):
            found.append((label, os.path.expanduser(str(value))))
    return found


def check_story_inputs(story: Story, model: str, out: str | Path, lora: str | None = None, lora_scale: float = 1.0,
                       batch_size: int | None = None, overwrite: bool = False,
                       inputs: Sequence[tuple[str, str | Path]] = ()) -> set[str]:
    """Everything ``generate_story`` checks before a model loads; return the earlier run's files it may replace.

    ``--out`` may not be, contain or lie inside an input (the story file and the others in
    ``inputs``, the model, LoRA, reference image and IP-Adapter on this machine), and an existing
    non-empty ``--out`` must be an earlier run with ``overwrite`` (:func:`~lorastory.generate.rundir.prepare_output`).
    """
    check_lora_scale(lora_scale, "--lora-scale")
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise ConfigError(f"--batch-size {batch_size!r}: use a whole number of 1 or more, or leave it out (auto)")
    lora_path = Path(lora) if lora else None
    if lora_path is not None and not lora_path.is_file():
        raise ConfigError(f"LoRA {display_path(lora_path)}: no such file")
    check_outputs_apart([("--out", out)], [*inputs, *_local_inputs(model, lora_path, story.consistency)])
    return prepare_output(out, run_files(story), overwrite)


def generate_story(
    story: Story,
    model: str,
    out: str | Path,
    lora: str | None = None,
    lora_scale: float = 1.0,
    family: str | None = None,
    batch_size: int | None = None,
    device: str | None = None,
    on_step: StepCallback | None = None,
    pipe: Any = None,
    allow_pickle: bool = False,
    fast: bool | None = None,
    compile: bool | None = None,
    overwrite: bool = False,
    inputs: Sequence[tuple[str, str | Path]] = (),
    base_dtype: str = "default",
    offload: bool = False,
) -> StoryResult:
    """Render every panel of ``story`` into ``out`` with the manifest and storyboard.

    ``out`` must be new, empty, or (with ``overwrite``) an earlier run folder, whose own files
    alone are replaced; it may not reach the model, LoRA, reference image or any of ``inputs``
    (``(label, path)`` pairs, e.g. the story file). The run renders into a hidden staging folder
    and is moved into ``out`` when complete (:mod:`lorastory.generate.rundir`).

    ``fast`` (default: on CUDA) fuses the LoRA and the QKV projections into the weights
    (:func:`~lorastory.generate.speed.prepare_for_speed`; a ``pipe`` passed in is changed in place).
    ``compile`` also compiles the denoiser's and VAE's repeated blocks, with kernels cached across runs; by
    default on CUDA without ``consistency`` when the run saves more than the warm-up costs
    (:func:`~lorastory.generate.speed.compile_choice`; the result's ``speed`` says why). ``base_dtype``
    (``fp8``, ``fp8-weights``; CUDA and torchao) puts the denoiser's token-wise Linear layers in fp8
    (:mod:`lorastory.models.fp8`) and stores the text encoders' in fp8; it needs the fast path. ``offload``
    encodes every prompt first, then keeps the denoiser on the GPU with the largest batch the memory holds
    (:mod:`lorastory.generate.offload`; Kolors in 12 GB); the result's ``speed`` says what the plan chose.

    With ``story.consistency`` on: in ``attention`` mode a group of panels renders as one batch
    unless ``batch_size`` says otherwise (then the first batch anchors the later ones); in
    ``reference`` mode ``reference.png`` is made first (or copied from ``reference_image``) and
    every panel is conditioned on it. A ``pipe`` passed in gets its processors and IP-Adapter
    state back afterwards.
    """
    if pipe is None:
        prefetch_weights(model)  # the weights read from disk while torch imports and the GPU starts
    import torch

    # 1. check inputs and the output folder, resolve the panels
    jobs = resolve_panels(story)
    settings = story.consistency
    earlier = check_story_inputs(story, model, out, lora, lora_scale, batch_size, overwrite, inputs)
    lora_path = Path(lora) if lora else None
    if settings.uses_attention and compile:
        raise ConfigError(f"consistency mode '{settings.mode}' changes the attention every step and cannot run compiled; "
                          "leave compile off")
    user_reference = None
    if settings.uses_reference and settings.reference_image:
        user_reference = load_reference_image(settings.reference_image)
    target = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    check_base_dtype(base_dtype, target)
    if offload and target.type not in OFFLOAD_DEVICES:
        raise ConfigError("--offload moves models on and off a CUDA GPU; this run is on the CPU: leave it out")
    if base_dtype != "default" and fast is False:
        raise ConfigError(f"--base-dtype {base_dtype} runs on the fast path; drop --no-fast")
    check_panel_memory(story.defaults.width, story.defaults.height, target)

    # 2. a staging folder (so an unwritable --out fails now), the model and LoRA, then render and move in
    staging = staging_dir(out)
    try:
        if pipe is None:
            dtype = torch.bfloat16 if target.type == "cuda" else torch.float32
            # Straight onto the GPU (diffusers maps onto "cuda", not "cuda:N"; offload keeps the models on the CPU).
            onto = "cuda" if target.type == "cuda" and target.index is None and not offload else None
            pipe = load_pipeline(model, family, dtype=dtype, device=onto)
            pipe._lorastory_one_run = True  # no later run reuses it: --offload may drop its text encoders
            if not offload:
                pipe.to(target)
        result = _render_story(story, jobs, pipe, model, staging, target, lora_path, lora_scale, batch_size,
                               on_step, allow_pickle, fast, compile, user_reference, base_dtype, offload)
        commit_run(staging, out, earlier)
    finally:
        remove_staging(staging)
    out_dir = Path(out)
    return StoryResult(out_dir, [out_dir / p.name for p in result.panels], out_dir / result.storyboard.name,
                       out_dir / MANIFEST_FILE, result.seconds, jobs, result.speed)


def _check_panel_size(story: Story, family: Any) -> None:
    """A DiT draws in patches of its latent (Flux: multiples of 16 px); another size would be resized silently."""
    step = 8 * family.latent_patch
    width, height = story.defaults.width, story.defaults.height
    if width % step or height % step:
        raise ConfigError(f"{family.display} draws sizes that are multiples of {step} pixels, not {width}x{height}; "
                          f"set the story's width and height to multiples of {step}")


def _render_story(
    story: Story, jobs: list[PanelJob], pipe: Any, model: str, out_dir: Path, target: Any, lora_path: Path | None,
    lora_scale: float, batch_size: int | None, on_step: StepCallback | None, allow_pickle: bool,
    fast: bool | None, compile: bool | None, user_reference: Any, base_dtype: str = "default", offload: bool = False,
) -> StoryResult:
    """Render the run into the (staging) folder ``out_dir``: panels, reference, storyboard, manifest, story.yaml."""
    settings = story.consistency
    pipe.set_progress_bar_config(disable=True)
    family = family_of_pipeline(pipe)
    _check_panel_size(story, family)
    check_true_cfg(story.defaults.true_cfg, family)
    if lora_path is not None:
        apply_lora(pipe, lora_path, scale=lora_scale, allow_pickle=allow_pickle)
    lora_name = lora_tag_name(lora_path) if lora_path else None
    lora_hash = lora_short_hash(lora_path) if lora_path else None
    shown_model, model_hash = model_name(str(model)), model_short_hash(model)
    speed, on_fast_path = None, bool(fast if fast is not None else target.type == "cuda")
    # --offload: prompts encoded now, then the denoiser resident (lorastory.generate.offload); else diffusers' offload.
    plan = offload_plan(pipe, family, jobs, uses_reference=settings.uses_reference, batch_size=batch_size,
                        base_dtype=base_dtype, device=target, fast=on_fast_path) if offload else None
    planned = plan is not None and plan.applies
    prompts = prepare_offload(pipe, family, plan, jobs, target) if planned else None
    if on_fast_path:
        choice = None
        # Off the GPU nothing compiles; the attention modes change every step, so they never do.
        if compile is None and settings.mode == "none" and target.type == "cuda":
            choice = story_compile_choice(pipe, family, jobs, target)
            compile = choice.compiles
        speed = prepare_for_speed(pipe, compile=bool(compile), base_dtype=plan.denoiser_dtype if planned else base_dtype,
                                  device=target, offload=offload and not planned, text_encoders=not planned)
        if choice is not None and not choice.compiles:
            speed.skipped["compile"] = choice.reason
    if planned:
        family.denoiser_of(pipe).to(target)  # an fp8 one: the layers left in bf16 (the converted ones are there)
        batch_size = plan.batch
    elif offload:  # after the LoRA is fused and the weights converted, on the CPU
        pipe.enable_model_cpu_offload(device=target)
    speed_line = "; ".join(str(part) for part in (plan, speed) if part) or None

    adapter_spec = None
    if settings.uses_ip_adapter:  # before any rendering: a missing adapter fails now, not after the reference
        adapter_spec = resolve_ip_adapter(family_of_pipeline(pipe).name, settings.ip_adapter, settings.ip_adapter_weight,
                                          settings.image_encoder)
        check_ip_adapter(adapter_spec)
    elif settings.uses_reference:
        family.check_in_context(pipe)  # the one-line refusal, before any rendering

    def params(job: PanelJob, extra: dict[str, str] | None = None) -> GenerationParams:
        return GenerationParams(
            prompt=job.prompt, negative_prompt=job.negative, steps=job.steps, sampler=job.sampler,
            cfg_scale=job.cfg, seed=job.seed, width=job.width, height=job.height, model=shown_model,
            model_hash=model_hash, lora_name=lora_name, lora_scale=lora_scale if lora_name else None, lora_hash=lora_hash,
            extra={**guidance_parameters(family, job.true_cfg), **(extra or {})},
        )

    # 3. the reference image, if the story uses one: the user's, or rendered now with the plain pipeline
    started = time.perf_counter()
    base_scheduler = pipe.scheduler.config
    reference_job = None
    if settings.uses_reference and user_reference is None:
        first = jobs[0]
        reference_job = PanelJob(0, reference_prompt(story, jobs), story.negative, story.defaults.seed, first.steps,
                                 first.cfg, first.width, first.height, first.sampler, None, first.true_cfg)
    progress = RenderProgress(on_step, sum(job.steps for job in jobs) + (reference_job.steps if reference_job else 0))
    consistency_record: dict[str, Any] = {"settings": settings.model_dump(mode="json")}
    reference = reference_hash = None
    if settings.uses_reference:
        reference, consistency_record["reference"] = render_reference_image(
            pipe, settings, reference_job, user_reference, out_dir / REFERENCE_FILE, base_scheduler, target, params, progress)
        reference_hash = consistency_record["reference"]["png_sha256"][:10]
    dit = family.denoiser != "unet"
    describe = {"Consistency": settings.describe(reference_hash, dit)} if settings.mode != "none" else None

    # 4. render group by group, in batches (with the IP-Adapter in the UNet while they render); each batch's
    # panels are written on the writer's threads while the next one renders
    storyboard = out_dir / STORYBOARD_FILE
    with PictureWriter() as writer:
        timings, pictures = render_panels(pipe, jobs, settings, adapter_spec, reference, batch_size, base_scheduler,
                                          target, out_dir, lambda job: params(job, describe), progress,
                                          consistency_record, prompts, writer)

        # 5. storyboard (from the pictures in memory: the same pixels as the files), beside the last panels
        captions = [job.caption for job in jobs] if any(job.caption for job in jobs) else None
        writer.submit(save_storyboard, [pictures[job.index] for job in jobs], storyboard, cols=2,
                      title=story.title or None, captions=captions, compress_level=PNG_COMPRESS_LEVEL)

    # 6. every picture is on disk (the writer waited for them): the manifest and the resolved story
    panel_paths = [out_dir / job.file_name for job in jobs]
    seconds = time.perf_counter() - started
    manifest = out_dir / MANIFEST_FILE
    write_json(manifest, RunManifest(
        lorastory_version=__version__,
        title=story.title,
        style=story.style,
        model=str(model),
        family=type(pipe).__name__,
        lora=LoraRecord(path=str(lora_path), sha256=file_sha256(lora_path), scale=lora_scale) if lora_path else None,
        device=str(target),
        speed=speed_line,
        consistency={"mode": settings.mode, **consistency_record},
        seconds=round(seconds, 3),
        panels=[
            PanelRecord(file=job.file_name, prompt=job.prompt, negative=job.negative, seed=job.seed,
                        steps=job.steps, cfg=job.cfg, width=job.width, height=job.height,
                        sampler=job.sampler, caption=job.caption, seconds=round(timings[job.index], 3),
                        **({"true_cfg": job.true_cfg} if uses_true_cfg(job.true_cfg) else {}))
            for job in jobs
        ],
        storyboard=storyboard.name,
    ))
    atomic_write_text(out_dir / STORY_FILE, story.to_yaml())
    return StoryResult(out_dir, panel_paths, storyboard, manifest, seconds, jobs, speed_line)


def lora_tag_name(path: Path) -> str:
    """The LoRA's name in PNG parameters: its file name, or for a trainer's ``lora*.safetensors``
    (``runs/NAME/lora.safetensors``) the run's folder name, and for a checkpoint's
    (``runs/NAME/<folder>/step-N.safetensors``) ``NAME-step-N``, so two runs' LoRAs are told apart."""
    stem, where = path.stem, path.resolve()
    name = None
    if stem == "lora" or stem.startswith(("lora_", "lora-")):
        name = where.parent.name + stem[len("lora"):]
    elif stem.startswith("step-"):
        name = f"{where.parent.parent.name}-{stem}"
    return name if name and not any(ch in name for ch in ":<>,\n") else stem


def manifest_panels(manifest: str | Path) -> list[PanelRecord]:
    """The panel records of a run's ``manifest.json`` (checked: a broken manifest is one :class:`DataError`)."""
    return read_manifest(manifest).panels
