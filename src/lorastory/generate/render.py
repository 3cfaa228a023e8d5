"""Rendering resolved panels: batched pipeline calls, the reference picture, and the panels saved with parameters."""

from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lorastory.fileio import atomic_open, file_sha256
from lorastory.generate.consistency import SharedAttention
from lorastory.generate.consistency_settings import REFERENCE_FILE, ConsistencySettings
from lorastory.generate.guidance import guidance_arguments
from lorastory.generate.pngmeta import png_info, save_png_with_info, save_png_with_parameters
from lorastory.generate.samplers import make_scheduler
from lorastory.generate.speed import auto_batch_size, speed_context
from lorastory.generate.writer import PictureWriter
from lorastory.models.ip_adapter import ip_adapter_loaded
from lorastory.models.registry import family_of_pipeline

StepCallback = Callable[[int, int], None]


@dataclass(frozen=True)
class PanelJob:
    """A panel with everything resolved: what the manifest records and the pipeline gets."""

    index: int
    prompt: str
    negative: str
    seed: int
    steps: int
    cfg: float
    width: int
    height: int
    sampler: str
    caption: str | None
    true_cfg: float | None = None  # a guidance-distilled family's true-CFG scale (lorastory.generate.guidance)

    @property
    def file_name(self) -> str:
        return f"panel-{self.index:02d}.png"

    def group_key(self) -> tuple[Any, ...]:
        """Panels with the same key can share a batch."""
        return (self.steps, self.cfg, self.width, self.height, self.sampler, self.true_cfg)


@dataclass
class RenderProgress:
    """Denoising steps done of the whole run, reported through ``on_step``."""

    on_step: StepCallback | None
    total: int
    done: int = 0

    def report(self, step: int) -> None:
        if self.on_step is not None:
            self.on_step(self.done + step, self.total)


def render_reference_image(pipe: Any, settings: ConsistencySettings, job: PanelJob | None, user_reference: Any, file: Path,
                     base_scheduler: Any, target: Any, params: Callable[..., Any],
                     progress: RenderProgress) -> tuple[Any, dict[str, Any]]:
    """The reference picture saved as ``file`` (rendered from ``job``, or the user's) and its manifest record."""
    if job is not None:
        [reference], seconds = render_batch(pipe, [job], base_scheduler, target, progress.report)
        progress.done += job.steps
        save_png_with_parameters(reference, file, params(job, {"Consistency": "reference image"}))
        record = {"file": REFERENCE_FILE, "source": "generated", "prompt": job.prompt, "seed": job.seed,
                  "seconds": round(seconds, 3)}
    else:
        reference = user_reference
        save_png(reference, file)
        record = {"file": REFERENCE_FILE, "source": str(settings.reference_image),
                  "sha256": file_sha256(settings.reference_image)}
    record["png_sha256"] = file_sha256(file)
    return reference, record


def render_panels(pipe: Any, jobs: list[PanelJob], settings: ConsistencySettings, adapter_spec: Any, reference: Any,
                   batch_size: int | None, base_scheduler: Any, target: Any, out_dir: Path,
                   params: Callable[[PanelJob], Any], progress: RenderProgress,
                   record: dict[str, Any], prompts: Any = None,
                   writer: PictureWriter | None = None) -> tuple[dict[int, float], dict[int, Any]]:
    """Render and save every panel, group by group in batches; return seconds and the picture per panel index
    (the storyboard is made from the pictures in memory, not from the files read back). ``prompts``: the
    panels' prompts encoded up front (:class:`~lorastory.generate.offload.PromptCache`), passed as embeddings.

    With a ``writer``, a batch's panels are written on its threads while the next batch renders
    (the caller waits for them); without, here, one after another."""
    import torch

    shared = SharedAttention(settings) if settings.uses_attention else None
    groups: dict[tuple[Any, ...], list[PanelJob]] = {}
    for job in jobs:
        groups.setdefault(job.group_key(), []).append(job)
    timings: dict[int, float] = {}
    pictures: dict[int, Any] = {}
    rendered = 0
    call_pipe, reference_args = pipe, {"ip_adapter_image": reference} if reference is not None else {}
    if settings.uses_reference and not settings.uses_ip_adapter:  # in context: the family's pipeline reads the picture
        call_pipe, reference_args = in_context_call(pipe, reference, jobs[0])
        shown = reference_args["image"][0] if isinstance(reference_args["image"], list) else reference_args["image"]
        record["in_context"] = {"pipeline": type(call_pipe).__name__, "reference_size": list(shown.size)}
    with contextlib.ExitStack() as stack:
        if adapter_spec is not None:
            adapter = stack.enter_context(ip_adapter_loaded(pipe, adapter_spec, settings.ip_adapter_scale))
            record["ip_adapter"] = adapter.as_dict()
        for group in groups.values():
            # Shared attention reaches only batch-mates: a whole group is one batch unless told otherwise.
            if batch_size or shared:
                size = batch_size or len(group)
            else:
                size = auto_batch_size(target, group[0].width, group[0].height, len(group))
            start = 0
            while start < len(group):
                chunk = group[start : start + size]
                try:
                    images, seconds = render_batch(call_pipe, chunk, base_scheduler, target,
                                              lambda step, n=len(chunk): progress.report(step * n),
                                              shared=shared, more_batches=rendered + len(chunk) < len(jobs),
                                              reference_args=reference_args, prompts=prompts)
                except torch.cuda.OutOfMemoryError:
                    if size == 1:
                        raise
                    size = max(1, size // 2)
                    torch.cuda.empty_cache()
                    warnings.warn(f"out of GPU memory; retrying with batch size {size}", stacklevel=2)
                    continue
                progress.done += chunk[0].steps * len(chunk)
                for job, image in zip(chunk, images):
                    info = png_info(params(job))  # formatted (and warned about) here, written on a thread
                    if writer is None:
                        save_png_with_info(image, out_dir / job.file_name, info)
                    else:
                        writer.submit(save_png_with_info, image, out_dir / job.file_name, info)
                    timings[job.index] = seconds / len(chunk)
                    pictures[job.index] = image
                start += len(chunk)
                rendered += len(chunk)
    if shared is not None:
        record["attention"] = shared.summary()
    return timings, pictures


def in_context_call(pipe: Any, reference: Any, job: PanelJob) -> tuple[Any, dict[str, Any]]:
    """The family's in-context pipeline over ``pipe``'s modules and its reference arguments: the picture at the
    panel size (so it adds as many tokens as a panel has) and the panel size kept as it is (no auto-resize)."""
    family = family_of_pipeline(pipe)
    call_pipe = family.in_context_pipe(pipe)
    call_pipe.set_progress_bar_config(disable=True)
    call_pipe._lorastory_speed = getattr(pipe, "_lorastory_speed", None)  # the attention backend the fast path chose
    image = reference.convert("RGB").resize((job.width, job.height))
    if family.in_context_args is not None:  # the family's own (a list: one reference per prompt of a batch)
        return call_pipe, family.resolve(family.in_context_args)(image, job.width, job.height)
    return call_pipe, {"image": image, "max_area": job.width * job.height, "_auto_resize": False}


def save_png(image: Any, path: Path) -> None:
    with atomic_open(path, "wb") as handle:
        image.save(handle, format="PNG")


def render_batch(
    pipe: Any,
    chunk: list[PanelJob],
    base_scheduler: Any,
    device: Any,
    on_step: Callable[[int], None] | None,
    shared: Any = None,
    more_batches: bool = False,
    reference_args: dict[str, Any] | None = None,
    prompts: Any = None,
) -> tuple[list[Any], float]:
    """One batched pipeline call: a generator per panel, so batching does not change a panel.

    ``shared`` (a :class:`~lorastory.generate.consistency.SharedAttention`) ties the batch's panels
    together for the call; ``reference_args`` hand the reference picture to the pipeline (``ip_adapter_image``
    for a loaded IP-Adapter, or the in-context pipeline's ``image``); ``prompts`` the encoded prompts in place of the texts.
    """
    import torch

    first = chunk[0]
    pipe.scheduler = make_scheduler(first.sampler, base_scheduler)
    generators = [torch.Generator("cpu").manual_seed(job.seed) for job in chunk]

    def step_end(_pipe: Any, step: int, _t: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        if on_step is not None:
            on_step(step + 1)
        return kwargs

    extra = dict(reference_args or {})
    if isinstance(extra.get("image"), list):  # one reference per prompt (Qwen-Image-Edit): as many as the batch
        extra["image"] = extra["image"][:1] * len(chunk)
    if first.true_cfg is not None:  # the family's true-CFG argument (a stand-in pipeline never gets here)
        extra.update(guidance_arguments(family_of_pipeline(pipe), first.true_cfg))
    texts = {"prompt": [job.prompt for job in chunk], "negative_prompt": [job.negative for job in chunk]}
    extra.update(prompts.arguments(chunk) if prompts is not None else texts)
    sharing = shared.render(pipe, len(chunk), first.seed, more_batches) if shared is not None else contextlib.nullcontext()
    started = time.perf_counter()
    with speed_context(pipe), sharing:
        images = pipe(
            num_inference_steps=first.steps,
            **{family_of_pipeline(pipe).guidance_argument: first.cfg},
            width=first.width,
            height=first.height,
            generator=generators,
            callback_on_step_end=step_end,
            **extra,
        ).images
    return images, time.perf_counter() - started
