"""The story file: who, in what style, the panels and their defaults, and the prompts they resolve to.

A story is a YAML document (:class:`Story`, validated by pydantic: a bad value is one line naming the field);
:func:`resolve_panels` turns it into one :class:`~lorastory.generate.render.PanelJob` per panel, with the
character, style and defaults applied. :mod:`lorastory.generate.story` renders it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from lorastory.config import YamlModel, format_validation_error
from lorastory.errors import ConfigError
from lorastory.generate.checks import MAX_CFG, MAX_PANEL_PIXELS, MAX_PANEL_SIDE, MAX_SEED, ValidText, check_text
from lorastory.generate.consistency_settings import REFERENCE_FILE, ConsistencySettings
from lorastory.generate.render import PanelJob
from lorastory.generate.rundir import MANIFEST_FILE, STORY_FILE, STORYBOARD_FILE
from lorastory.generate.samplers import check_sampler


class PanelDefaults(BaseModel):
    """Settings every panel uses unless it sets its own."""

    model_config = ConfigDict(extra="forbid")

    steps: int = Field(50, ge=1, le=1000)
    cfg: float = Field(4.0, ge=0, le=MAX_CFG, allow_inf_nan=False)
    width: int = Field(1024, ge=8, le=MAX_PANEL_SIDE)
    height: int = Field(1024, ge=8, le=MAX_PANEL_SIDE)
    seed: int = Field(0, ge=0, le=MAX_SEED)
    sampler: str = "Euler"
    # Guidance-distilled models (Flux dev) only: true classifier-free guidance with the negative prompt at this
    # scale (> 1), a second denoiser pass per step; cfg stays their guidance input (lorastory.generate.guidance).
    true_cfg: float | None = Field(None, ge=1, le=MAX_CFG, allow_inf_nan=False)

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
            true_cfg=d.true_cfg,
        )
        for i, panel in enumerate(story.panels, start=1)
    ]


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


def load_story(path: str | Path) -> Story:
    """Read and validate a story file; errors name the line and field."""
    return Story.from_yaml(path)
