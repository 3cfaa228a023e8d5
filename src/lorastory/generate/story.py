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

import contextlib
import os
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from lorastory import __version__
from lorastory.config import YamlModel, format_validation_error
from lorastory.errors import ConfigError, DataError
from lorastory.fileio import (
    atomic_files,
    atomic_write_text,
    check_outputs_apart,
    clean_stale_temps,
    display_path,
    file_sha256,
    finish_commit,
)
from lorastory.generate.checks import (
    MAX_CFG,
    MAX_PANEL_PIXELS,
    MAX_PANEL_SIDE,
    MAX_SEED,
    ValidText,
    check_lora_scale,
    check_panel_memory,
    check_seed,
    check_text,
)
from lorastory.generate.consistency import REFERENCE_FILE, ConsistencySettings
from lorastory.generate.manifest import LoraRecord, PanelRecord, RunManifest
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
from lorastory.generate.samplers import check_sampler
from lorastory.generate.speed import auto_batch_size


class PanelDefaults(BaseModel):
    """Settings every panel uses unless it sets its own."""

    model_config = ConfigDict(extra="forbid")

    steps: int = Field(50, ge=1, le=1000)
    cfg: float = Field(4.0, ge=0, le=MAX_CFG, allow_inf_nan=False)
    width: int = Field(1024, ge=8, le=MAX_PANEL_SIDE)
    height: int = Field(1024, ge=8, le=MAX_PANEL_SIDE)
    seed: int = Field(0, ge=0, le=MAX_SEED)
    sampler: str = "Euler"

    @model_validator(mode="after")
    def _panel_size(self) -> PanelDefaults:
        if self.width * self.height > MAX_PANEL_PIXELS:
            raise ValueError(f"a {self.width}x{self.height} panel is over the limit of {MAX_PANEL_PIXELS:,} pixels "
                             "(4096x4096) per panel; render smaller and upscale")
        return self

    @field_validator("sampler")
    @classmethod
    def _known_sampler(cls, value: str) -> str:
        return check_sampler(value)

    @field_validator("width", "height")
    @classmethod
    def _multiple_of_8(cls, value: int) -> int:
        # Refused rather than rounded: a silently different size would not match the story file.
        if value % 8:
            raise ValueError(f"{value} is not a multiple of 8 (try {value - value % 8} or {value + 8 - value % 8})")
        return value


class Panel(BaseModel):
    """One picture of the story."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(min_length=1)
    negative: ValidText | None = None
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    caption: ValidText | None = None
    steps: int | None = Field(None, ge=1, le=1000)
    cfg: float | None = Field(None, ge=0, le=MAX_CFG, allow_inf_nan=False)

    @field_validator("prompt")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("a panel needs a prompt")
        return check_text(value)


class Story(YamlModel):
    """A story file: who, in what style, and the panels."""

    title: ValidText = ""
    character: ValidText = ""
    style: ValidText = ""
    # Placed between character, panel prompt and style. "," reproduces the reference workflow's
    # prompts; "，" or ", " keep a prompt in the form a model was trained on.
    separator: ValidText = ","
    negative: ValidText = ""
    defaults: PanelDefaults = Field(default_factory=PanelDefaults)
    consistency: ConsistencySettings = Field(default_factory=ConsistencySettings)
    panels: list[Panel]

    @model_validator(mode="after")
    def _has_panels(self) -> Story:
        if not self.panels:
            raise ValueError("the story has no panels; add at least one under 'panels:'")
        # Panel i without a seed of its own uses defaults.seed + i - 1, which must stay a valid seed too.
        unseeded = [i for i, panel in enumerate(self.panels) if panel.seed is None]
        if unseeded and self.defaults.seed + unseeded[-1] > MAX_SEED:
            raise ValueError(f"defaults.seed {self.defaults.seed} + {unseeded[-1]} (panel {unseeded[-1] + 1} has no seed) "
                             f"passes the largest seed {MAX_SEED}; use a smaller defaults.seed")
        return self


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

    @property
    def file_name(self) -> str:
        return f"panel-{self.index:02d}.png"

    def group_key(self) -> tuple[Any, ...]:
        """Panels with the same key can share a batch."""
        return (self.steps, self.cfg, self.width, self.height, self.sampler)


def join_prompt(*parts: str, separator: str = ",") -> str:
    """Join non-empty prompt parts (by default with the comma the reference prompts use)."""
    return separator.join(p.strip().strip(",，") for p in parts if p and p.strip())


CHARACTER_SLOT = "{character}"


def panel_prompt(story: Story, panel: Panel) -> str:
    """The panel's full prompt: the character put where the prompt says ``{character}``
    (else in front), the style at the end."""
    if CHARACTER_SLOT in panel.prompt:
        return join_prompt(panel.prompt.replace(CHARACTER_SLOT, story.character.strip()), story.style, separator=story.separator)
    return join_prompt(story.character, panel.prompt, story.style, separator=story.separator)


def resolve_panels(story: Story) -> list[PanelJob]:
    """Every panel with the story's character, style and defaults applied."""
    d = story.defaults
    return [
        PanelJob(
            index=i,
            prompt=panel_prompt(story, panel),
            negative=panel.negative if panel.negative is not None else story.negative,
            seed=panel.seed if panel.seed is not None else d.seed + i - 1,
            steps=panel.steps or d.steps,
            cfg=panel.cfg if panel.cfg is not None else d.cfg,
            width=d.width,
            height=d.height,
            sampler=d.sampler,
            caption=panel.caption,
        )
        for i, panel in enumerate(story.panels, start=1)
    ]


@dataclass
class StoryResult:
    out: Path
    panels: list[Path]
    storyboard: Path
    manifest: Path
    seconds: float
    jobs: list[PanelJob] = field(default_factory=list)


StepCallback = Callable[[int, int], None]


def with_consistency(story: Story, **changes: Any) -> Story:
    """``story`` with its ``consistency`` settings changed (validated; a bad value is one :class:`ConfigError`)."""
    data = {**story.consistency.model_dump(), **changes}
    try:
        settings = ConsistencySettings.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, "consistency")) from None
    return story.model_copy(update={"consistency": settings})


def reference_prompt(story: Story, jobs: list[PanelJob]) -> str:
    """What a generated reference image shows: ``reference_prompt``, else the character and style, else panel 1."""
    settings = story.consistency
    if settings.reference_prompt:
        return settings.reference_prompt
    if story.character.strip():
        return join_prompt(story.character, story.style, separator=story.separator)
    return jobs[0].prompt


def run_files(story: Story) -> list[str]:
    """The files a run of ``story`` writes into its folder."""
    names = [job.file_name for job in resolve_panels(story)]
    if story.consistency.uses_reference:
        names.append(REFERENCE_FILE)
    return [*names, STORYBOARD_FILE, MANIFEST_FILE, STORY_FILE]


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
) -> StoryResult:
    """Render every panel of ``story`` into ``out`` with the manifest and storyboard.

    ``out`` must be new, empty, or (with ``overwrite``) an earlier run folder, whose own files
    alone are replaced; it may not reach the model, LoRA, reference image or any of ``inputs``
    (``(label, path)`` pairs, e.g. the story file). The run renders into a hidden staging folder
    and is moved into ``out`` when complete (:mod:`lorastory.generate.rundir`).

    ``fast`` (default: on CUDA) fuses the LoRA and the QKV projections into the weights
    (:func:`~lorastory.generate.speed.prepare_for_speed`; a ``pipe`` passed in is changed in place).
    ``compile`` (default: on CUDA for stories of 200+ image-steps without ``consistency``) also
    compiles the UNet's and VAE's repeated blocks, with kernels cached across runs.

    With ``story.consistency`` on: in ``attention`` mode a group of panels renders as one batch
    unless ``batch_size`` says otherwise (then the first batch anchors the later ones); in
    ``reference`` mode ``reference.png`` is made first (or copied from ``reference_image``) and
    every panel is conditioned on it. A ``pipe`` passed in gets its processors and IP-Adapter
    state back afterwards.
    """
    import torch

    from lorastory.models.registry import load_pipeline

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
        from lorastory.generate.consistency import load_reference_image

        user_reference = load_reference_image(settings.reference_image)
    target = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    check_panel_memory(story.defaults.width, story.defaults.height, target)

    # 2. a staging folder (so an unwritable --out fails now), the model and LoRA, then render and move in
    staging = staging_dir(out)
    try:
        if pipe is None:
            dtype = torch.bfloat16 if target.type == "cuda" else torch.float32
            pipe = load_pipeline(model, family, dtype=dtype)
            pipe.to(target)
        result = _render_story(story, jobs, pipe, model, staging, target, lora_path, lora_scale, batch_size,
                               on_step, allow_pickle, fast, compile, user_reference)
        commit_run(staging, out, earlier)
    finally:
        remove_staging(staging)
    out_dir = Path(out)
    return StoryResult(out_dir, [out_dir / p.name for p in result.panels], out_dir / result.storyboard.name,
                       out_dir / MANIFEST_FILE, result.seconds, jobs)


def _render_story(
    story: Story, jobs: list[PanelJob], pipe: Any, model: str, out_dir: Path, target: Any, lora_path: Path | None,
    lora_scale: float, batch_size: int | None, on_step: StepCallback | None, allow_pickle: bool,
    fast: bool | None, compile: bool | None, user_reference: Any,
) -> StoryResult:
    """Render the run into the (staging) folder ``out_dir``: panels, reference, storyboard, manifest, story.yaml."""
    import torch

    from lorastory.generate.consistency import SharedAttention
    from lorastory.generate.grid import save_storyboard
    from lorastory.generate.pngmeta import GenerationParams, lora_short_hash, save_png_with_parameters

    settings = story.consistency
    pipe.set_progress_bar_config(disable=True)
    if lora_path is not None:
        from lorastory.models.lora import apply_lora

        apply_lora(pipe, lora_path, scale=lora_scale, allow_pickle=allow_pickle)
    lora_name = lora_path.stem if lora_path else None
    lora_hash = lora_short_hash(lora_path) if lora_path else None
    speed = None
    if fast if fast is not None else target.type == "cuda":
        from lorastory.generate.speed import auto_compile, prepare_for_speed

        image_steps = sum(job.steps for job in jobs)
        if compile is None:
            compile = auto_compile(target, image_steps) and settings.mode == "none"
        speed = prepare_for_speed(pipe, compile=compile)

    adapter_spec = None
    if settings.uses_reference:  # before any rendering: a missing adapter fails now, not after the reference
        from lorastory.models.ip_adapter import check_ip_adapter, resolve_ip_adapter
        from lorastory.models.registry import family_of_pipeline

        adapter_spec = resolve_ip_adapter(family_of_pipeline(pipe).name, settings.ip_adapter, settings.ip_adapter_weight,
                                          settings.image_encoder)
        check_ip_adapter(adapter_spec)

    def params(job: PanelJob, extra: dict[str, str] | None = None) -> GenerationParams:
        return GenerationParams(
            prompt=job.prompt, negative_prompt=job.negative, steps=job.steps, sampler=job.sampler,
            cfg_scale=job.cfg, seed=job.seed, width=job.width, height=job.height, model=str(model),
            lora_name=lora_name, lora_scale=lora_scale if lora_name else None, lora_hash=lora_hash, extra=extra or {},
        )

    # 3. the reference image, if the story uses one: the user's, or rendered now with the plain pipeline
    started = time.perf_counter()
    base_scheduler = pipe.scheduler.config
    reference_job = None
    if settings.uses_reference and user_reference is None:
        first = jobs[0]
        reference_job = PanelJob(0, reference_prompt(story, jobs), story.negative, story.defaults.seed, first.steps,
                                 first.cfg, first.width, first.height, first.sampler, None)
    total_steps = sum(job.steps for job in jobs) + (reference_job.steps if reference_job else 0)
    done_steps = 0
    reference = reference_hash = None
    consistency_record: dict[str, Any] = {"settings": settings.model_dump(mode="json")}
    if settings.uses_reference:
        reference_file = out_dir / REFERENCE_FILE
        if reference_job is not None:
            [reference], seconds = _render(pipe, [reference_job], base_scheduler, target,
                                           lambda step: on_step(step, total_steps) if on_step else None)
            done_steps += reference_job.steps
            save_png_with_parameters(reference, reference_file, params(reference_job, {"Consistency": "reference image"}))
            consistency_record["reference"] = {"file": REFERENCE_FILE, "source": "generated", "prompt": reference_job.prompt,
                                               "seed": reference_job.seed, "seconds": round(seconds, 3)}
        else:
            reference = user_reference
            _save_png(reference, reference_file)
            consistency_record["reference"] = {"file": REFERENCE_FILE, "source": str(settings.reference_image),
                                               "sha256": file_sha256(settings.reference_image)}
        digest = file_sha256(reference_file)
        consistency_record["reference"]["png_sha256"] = digest
        reference_hash = digest[:10]
    describe = {"Consistency": settings.describe(reference_hash)} if settings.mode != "none" else None

    # 4. render group by group, in batches (with the IP-Adapter in the UNet while they render)
    shared = SharedAttention(settings) if settings.uses_attention else None
    groups: dict[tuple[Any, ...], list[PanelJob]] = {}
    for job in jobs:
        groups.setdefault(job.group_key(), []).append(job)
    timings: dict[int, float] = {}
    rendered = 0
    with contextlib.ExitStack() as stack:
        if adapter_spec is not None:
            from lorastory.models.ip_adapter import ip_adapter_loaded

            adapter = stack.enter_context(ip_adapter_loaded(pipe, adapter_spec, settings.ip_adapter_scale))
            consistency_record["ip_adapter"] = adapter.as_dict()
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
                    images, seconds = _render(pipe, chunk, base_scheduler, target,
                                              lambda step: on_step(done_steps + step * len(chunk), total_steps) if on_step else None,
                                              shared=shared, more_batches=rendered + len(chunk) < len(jobs), ip_image=reference)
                except torch.cuda.OutOfMemoryError:
                    if size == 1:
                        raise
                    size = max(1, size // 2)
                    torch.cuda.empty_cache()
                    warnings.warn(f"out of GPU memory; retrying with batch size {size}", stacklevel=2)
                    continue
                done_steps += chunk[0].steps * len(chunk)
                for job, image in zip(chunk, images):
                    save_png_with_parameters(image, out_dir / job.file_name, params(job, describe))
                    timings[job.index] = seconds / len(chunk)
                start += len(chunk)
                rendered += len(chunk)
    if shared is not None:
        consistency_record["attention"] = shared.summary()

    # 5. storyboard, manifest, resolved story
    panel_paths = [out_dir / job.file_name for job in jobs]
    storyboard = out_dir / STORYBOARD_FILE
    save_storyboard(panel_paths, storyboard, cols=2, title=story.title or None,
                    captions=[job.caption for job in jobs] if any(job.caption for job in jobs) else None)
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
        speed=str(speed) if speed else None,
        consistency={"mode": settings.mode, **consistency_record},
        seconds=round(seconds, 3),
        panels=[
            PanelRecord(file=job.file_name, prompt=job.prompt, negative=job.negative, seed=job.seed,
                        steps=job.steps, cfg=job.cfg, width=job.width, height=job.height,
                        sampler=job.sampler, caption=job.caption, seconds=round(timings[job.index], 3))
            for job in jobs
        ],
        storyboard=storyboard.name,
    ))
    atomic_write_text(out_dir / STORY_FILE, story.to_yaml())
    return StoryResult(out_dir, panel_paths, storyboard, manifest, seconds, jobs)


def _save_png(image: Any, path: Path) -> None:
    from lorastory.fileio import atomic_open

    with atomic_open(path, "wb") as handle:
        image.save(handle, format="PNG")


def _render(
    pipe: Any,
    chunk: list[PanelJob],
    base_scheduler: Any,
    device: Any,
    on_step: Callable[[int], None] | None,
    shared: Any = None,
    more_batches: bool = False,
    ip_image: Any = None,
) -> tuple[list[Any], float]:
    """One batched pipeline call: a generator per panel, so batching does not change a panel.

    ``shared`` (a :class:`~lorastory.generate.consistency.SharedAttention`) ties the batch's panels
    together for the call; ``ip_image`` is the reference image for a loaded IP-Adapter.
    """
    import torch

    from lorastory.generate.samplers import make_scheduler
    from lorastory.generate.speed import speed_context

    first = chunk[0]
    pipe.scheduler = make_scheduler(first.sampler, base_scheduler)
    generators = [torch.Generator("cpu").manual_seed(job.seed) for job in chunk]

    def step_end(_pipe: Any, step: int, _t: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        if on_step is not None:
            on_step(step + 1)
        return kwargs

    extra = {"ip_adapter_image": ip_image} if ip_image is not None else {}
    sharing = shared.render(pipe, len(chunk), first.seed, more_batches) if shared is not None else contextlib.nullcontext()
    started = time.perf_counter()
    with speed_context(pipe), sharing:
        images = pipe(
            prompt=[job.prompt for job in chunk],
            negative_prompt=[job.negative for job in chunk],
            num_inference_steps=first.steps,
            guidance_scale=first.cfg,
            width=first.width,
            height=first.height,
            generator=generators,
            callback_on_step_end=step_end,
            **extra,
        ).images
    return images, time.perf_counter() - started


def load_story(path: str | Path) -> Story:
    """Read and validate a story file; errors name the line and field."""
    return Story.from_yaml(path)


def manifest_panels(manifest: str | Path) -> list[PanelRecord]:
    """The panel records of a run's ``manifest.json`` (checked: a broken manifest is one :class:`DataError`)."""
    return read_manifest(manifest).panels


def _check_run(folder: Path, index: int) -> tuple[Story, RunManifest]:
    """The run's story and manifest, checked to match, with panel ``index`` in range and every panel file present."""
    if not folder.is_dir():
        raise ConfigError(f"{display_path(folder)}: no such run folder; pass a folder 'lorastory generate' wrote")
    finish_commit(folder / MANIFEST_FILE)  # an earlier regenerate killed while swapping its files in
    clean_stale_temps(folder)
    manifest_path = folder / MANIFEST_FILE
    manifest = read_manifest(manifest_path)
    story = load_story(folder / STORY_FILE)
    where = display_path(manifest_path)
    if len(manifest.panels) != len(story.panels):
        raise DataError(f"{where} lists {len(manifest.panels)} panels but {STORY_FILE} has {len(story.panels)}; "
                        "the run folder was changed by hand: generate the story again")
    if not 1 <= index <= len(story.panels):
        raise ConfigError(f"panel {index}: the story has panels 1 to {len(story.panels)}")
    for number, record in enumerate(manifest.panels, start=1):
        path = folder / record.file
        if not path.is_file():
            raise DataError(f"{display_path(path)}: panel {number} listed in {MANIFEST_FILE} is missing or not a file; "
                            "generate the story again")
    return story, manifest


def regenerate_panel(
    run_dir: str | Path,
    index: int,
    seed: int,
    model: str | None = None,
    lora: str | None = None,
    on_step: StepCallback | None = None,
    before_swap: Callable[[], None] | None = None,
    pipe: Any = None,
) -> Path:
    """Re-render panel ``index`` (1-based) of a run with a new ``seed``; the others stay byte for byte.

    The run folder is checked first (manifest, story.yaml and panel files agree). The panel is
    rendered as a one-panel story into a staging folder with the run's model, LoRA and settings
    (``model``/``lora`` override the manifest's paths); then the panel, storyboard, manifest and
    story.yaml are swapped in together (:func:`lorastory.fileio.atomic_files`: all or nothing).
    ``before_swap`` may raise to cancel with nothing changed.

    With shared attention on, a panel depends on its batch-mates, so the whole story is
    rendered again (with the new seed for this panel) and only this panel is kept. A
    reference-conditioned run reuses its ``reference.png``.
    """
    from lorastory.generate.grid import save_storyboard

    folder = Path(run_dir)
    seed = check_seed(seed, "--seed")
    story, manifest = _check_run(folder, index)
    recorded_lora = manifest.lora
    lora = lora or (recorded_lora.path if recorded_lora else None)
    scale = check_lora_scale(recorded_lora.scale if recorded_lora else 1.0, f"{MANIFEST_FILE} lora scale")
    model = model or manifest.model
    if not model:
        raise DataError(f"{display_path(folder / MANIFEST_FILE)}: no model recorded; pass --model")
    panel = story.panels[index - 1].model_copy(update={"seed": seed})
    panels = list(story.panels)
    panels[index - 1] = panel
    updated = story.model_copy(update={"panels": panels})
    panel_name = f"panel-{index:02d}.png"
    storyboard_name = manifest.storyboard or STORYBOARD_FILE
    targets = [MANIFEST_FILE, panel_name, storyboard_name, STORY_FILE]
    inputs = [(label, path) for label, path in (("--lora", lora), ("--model", model)) if path and os.path.lexists(path)]
    check_outputs_apart([(name, folder / name) for name in targets], inputs)
    whole = story.consistency.uses_attention
    render = updated.model_copy(update={"title": ""}) if whole else story.model_copy(update={"panels": [panel], "title": ""})
    if render.consistency.uses_reference and (folder / REFERENCE_FILE).is_file():
        render = with_consistency(render, reference_image=str(folder / REFERENCE_FILE), reference_prompt=None)
    work = Path(tempfile.mkdtemp(prefix=f".lorastory-regenerate.{os.getpid()}.", suffix=".tmp", dir=folder))
    try:
        generate_story(render, model, work / "render", lora=lora, lora_scale=scale, on_step=on_step, pipe=pipe)
        record = read_manifest(work / "render" / MANIFEST_FILE).panels[index - 1 if whole else 0]
        staged_panel = work / "render" / record.file
        records = list(manifest.panels)
        records[index - 1] = record.model_copy(update={"file": panel_name})
        updated_manifest = manifest.model_copy(update={"panels": records})
        captions = [p.caption for p in records]
        sources = [staged_panel if number == index else folder / p.file for number, p in enumerate(records, start=1)]
        save_storyboard(sources, work / storyboard_name, cols=2, title=updated.title or None,
                        captions=captions if any(captions) else None)
        write_json(work / MANIFEST_FILE, updated_manifest)
        atomic_write_text(work / STORY_FILE, updated.to_yaml())
        if before_swap is not None:
            before_swap()
        staged = {MANIFEST_FILE: work / MANIFEST_FILE, panel_name: staged_panel,
                  storyboard_name: work / storyboard_name, STORY_FILE: work / STORY_FILE}
        with atomic_files([folder / name for name in targets]) as temps:
            for name, temp in zip(targets, temps):
                os.replace(staged[name], temp)
    finally:
        remove_staging(work)
    return folder / panel_name
