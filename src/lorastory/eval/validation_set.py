"""The fixed validation set every checkpoint and LoRA scale is rendered on: prompts × seeds, batched.

Every candidate (the base model, each checkpoint, each scale) gets the same prompts, seeds,
sampler, steps and size, so the scores differ only by the LoRA. The set comes from the run's
``config.yaml`` (``validation_prompts``, ``validation_style``, ``validation_steps``,
``validation_cfg``, ``resolution``) or from a ``--prompts`` file: plain text (one prompt a line)
or YAML with this model's fields.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator

from lorastory.config import YamlModel, read_text
from lorastory.errors import ConfigError
from lorastory.generate.render import PanelJob, render_batch
from lorastory.generate.samplers import check_sampler
from lorastory.config import read_yaml


class ValidationSet(YamlModel):
    """Prompts × seeds and how to render them; ``style``/``trigger`` are taken out of the content prompts."""

    prompts: list[str] = Field(min_length=1)
    seeds: list[int] = Field(default_factory=lambda: [0, 1], min_length=1)
    style: str | None = None  # the style phrase: CLIP-T against it is the style-phrase score
    trigger: str | None = None  # a trigger word: removed from the content prompts, never scored
    character: str | None = None  # named: the set's character consistency is scored
    negative: str = ""
    steps: int = Field(20, ge=1, le=1000)
    cfg: float = Field(4.0, ge=0)
    width: int = Field(1024, ge=8)
    height: int = Field(1024, ge=8)
    sampler: str = "Euler"

    @field_validator("prompts")
    @classmethod
    def _no_blank_prompts(cls, value: list[str]) -> list[str]:
        if any(not p.strip() for p in value):
            raise ValueError("prompts must not be empty")
        return value

    @field_validator("sampler")
    @classmethod
    def _known_sampler(cls, value: str) -> str:
        return check_sampler(value)

    def jobs(self) -> list[PanelJob]:
        """Every (prompt, seed) pair as a render job, prompt-major."""
        pairs = [(p, s) for p in self.prompts for s in self.seeds]
        return [PanelJob(i, p, self.negative, s, self.steps, self.cfg, self.width, self.height, self.sampler, None)
                for i, (p, s) in enumerate(pairs, start=1)]

    def content_prompt(self, prompt: str) -> str:
        """The prompt without the style phrase and trigger word: what the picture shows, not how."""
        text = prompt
        for phrase in (self.style, self.trigger):
            if phrase and phrase.strip():
                text = text.replace(phrase.strip(), " ")
        parts = [p.strip() for p in text.replace("，", ",").split(",")]
        return ", ".join(p for p in parts if p) or prompt


def from_train_config(config: Any, seeds: int = 2) -> ValidationSet:
    """The run's validation set: its validation prompts at its validation settings, ``seeds`` seeds from its seed."""
    if not config.validation_prompts:
        raise ConfigError("the run's config has no validation_prompts; pass --prompts FILE (one prompt a line)")
    return ValidationSet(
        prompts=list(config.validation_prompts), seeds=[config.seed + i for i in range(seeds)],
        style=config.validation_style, steps=config.validation_steps, cfg=config.validation_cfg,
        width=config.resolution, height=config.resolution,
    )


def read_prompts_file(path: str | Path, base: ValidationSet | None = None) -> ValidationSet:
    """A ``--prompts`` file: YAML with :class:`ValidationSet` fields, or plain text with one prompt a line.

    Plain prompts keep ``base``'s other settings (the run's), when given.
    """
    file = Path(path)
    if file.suffix.lower() in (".yaml", ".yml"):
        if base is None:
            return ValidationSet.from_yaml(file)

        values = read_yaml(file)
        if not isinstance(values, dict):
            raise ConfigError(f"{file}: expected a mapping with 'prompts:' (and seeds, style, ...)")
        return ValidationSet.from_dict({**base.model_dump(), **values}, source=str(file))
    prompts = [line.strip() for line in read_text(file).splitlines() if line.strip() and not line.startswith("#")]
    if not prompts:
        raise ConfigError(f"{file}: no prompts (write one prompt a line)")
    return ValidationSet.from_dict({**(base.model_dump() if base else {}), "prompts": prompts}, source=str(file))


def render_set(pipe: Any, vset: ValidationSet, batch_size: int = 8,
               on_step: Callable[[int, int], None] | None = None) -> tuple[list[Any], float]:
    """Render the whole set with the pipeline as it is (LoRA applied or not); the images and the seconds."""
    jobs = vset.jobs()
    base_scheduler = pipe.scheduler
    images: list[Any] = []
    seconds = 0.0
    try:
        for start in range(0, len(jobs), max(1, batch_size)):
            chunk = jobs[start : start + batch_size]
            done = start * vset.steps
            report = (lambda step, n=len(chunk), d=done: on_step(d + step * n, len(jobs) * vset.steps)) if on_step else None
            batch, took = render_batch(pipe, chunk, base_scheduler.config, pipe.device, report)
            images += batch
            seconds += took
    finally:
        pipe.scheduler = base_scheduler  # render_batch swaps in the sampler's scheduler
    return images, seconds
