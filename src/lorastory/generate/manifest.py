"""The typed ``manifest.json`` of a story run: what ``generate`` writes and regenerate, eval and the app read.

:class:`RunManifest` describes the file exactly as :func:`lorastory.generate.story.generate_story`
writes it (keys in the same order), so ``to_json()`` gives the same bytes as the dict it replaced.
Validation is as strict as the hand checks it replaced: file names plain (no folders, no ``..``),
numbers finite, seeds 0..2**64-1, text valid Unicode. Keys it does not know are kept (a newer or
older lorastory may add some), and fields a hand-written manifest leaves out stay out when it is
written back (``exclude_unset``). Errors are one line naming the file and the field.
"""

from __future__ import annotations

import math
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictFloat, StrictInt, StrictStr, ValidationError

from lorastory.errors import DataError
from lorastory.fileio import is_valid_text

_HINT = "; generate the story again"


def _text(value: str) -> str:
    if not is_valid_text(value):
        raise ValueError("not valid Unicode text")
    return value


def _plain_name(value: str) -> str:
    if value in ("", ".", "..") or "/" in value or "\\" in value or "\0" in value or not is_valid_text(value):
        raise ValueError("not a plain file name")
    return value


def _finite(value: float) -> float:
    if not math.isfinite(value):
        raise ValueError("not finite")
    return value


Text = Annotated[StrictStr, AfterValidator(_text)]
FileName = Annotated[StrictStr, AfterValidator(_plain_name)]
# StrictInt first: an int stays an int (and its JSON bytes the same); bool is refused by both.
Number = Annotated[StrictInt | StrictFloat, AfterValidator(_finite)]
Seed = Annotated[StrictInt, Field(ge=0, le=2**64 - 1)]
Pixels = Annotated[StrictInt, Field(ge=8)]


class _Record(BaseModel):
    """Unknown keys are kept; ``None`` is refused for fields whose type does not allow it."""

    model_config = ConfigDict(extra="allow")

    def to_json(self) -> dict[str, Any]:
        """The record as written: declared keys in order, then unknown ones; keys never set left out."""
        return self.model_dump(exclude_unset=True)


class PanelRecord(_Record):
    """One panel: its file in the run folder and the settings it was rendered with."""

    file: FileName
    prompt: Text
    negative: Text = ""
    seed: Seed | None = None
    steps: Annotated[StrictInt, Field(ge=1)] | None = None
    cfg: Number | None = None
    width: Pixels | None = None
    height: Pixels | None = None
    sampler: Any = None
    caption: Text | None = None
    seconds: Number | None = None
    true_cfg: Number | None = None  # a guidance-distilled model's true-CFG scale, when the panel used it


class LoraRecord(_Record):
    """The LoRA the run was rendered with: its path as given, its SHA-256 and scale."""

    path: Text
    sha256: Any = None
    scale: Number = 1.0


class RunManifest(_Record):
    """A run's ``manifest.json``: the model, LoRA, settings and every panel."""

    lorastory_version: Any = None
    title: Any = None
    style: Any = None
    model: Text | None = None
    family: Any = None
    lora: LoraRecord | None = None
    device: Any = None
    speed: Any = None
    consistency: Any = None
    seconds: Any = None
    panels: list[PanelRecord] = Field(min_length=1)
    storyboard: FileName | None = None

    @classmethod
    def from_data(cls, data: Any, source: str) -> RunManifest:
        """``data`` (parsed JSON) as a manifest, else one :class:`DataError` line naming ``source`` and the field."""
        if not isinstance(data, dict):
            raise DataError(f"{source}: expected a JSON object, got {type(data).__name__}{_HINT}")
        # "model" and "storyboard", when present, must be text (null was refused before types existed).
        for key in ("model", "storyboard"):
            if key in data and data[key] is None:
                raise DataError(f"{source}: '{key}' must be text, got None{_HINT}")
        panels = data.get("panels")
        if isinstance(panels, list):
            for number, record in enumerate(panels, start=1):
                if isinstance(record, dict):
                    for key in ("negative", "seed", "steps", "cfg", "width", "height", "seconds"):
                        if key in record and record[key] is None:
                            raise DataError(f"{source}: panel {number}: '{key}' must be {_WHAT[key]}, got None{_HINT}")
        try:
            return cls.model_validate(data)
        except ValidationError as err:
            raise DataError(manifest_error(err, data, source)) from None


_WHAT = {
    "file": "a file name in the run folder",
    "prompt": "text",
    "negative": "text",
    "caption": "text or null",
    "seed": "a whole number from 0 to 2**64 - 1",
    "steps": "a whole number of 1 or more",
    "width": "a whole number of pixels",
    "height": "a whole number of pixels",
    "cfg": "a finite number",
    "seconds": "a finite number",
}


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def manifest_error(err: ValidationError, data: dict[str, Any], source: str) -> str:
    """The first problem of ``err`` as one line, in the words the hand checks used (tests and users know them)."""
    item = err.errors()[0]
    loc = item["loc"]
    head = loc[0] if loc else ""
    if head == "panels" and len(loc) == 1:
        return f"{source}: 'panels' must be a non-empty list{_HINT}"
    if head == "panels":
        number = int(loc[1]) + 1
        if len(loc) == 2:
            return f"{source}: panel {number} must be an object{_HINT}"
        key = str(loc[2])
        if item["type"] == "missing":
            return f"{source}: panel {number} has no '{key}'{_HINT}"
        value = data["panels"][number - 1].get(key)
        if key == "file":
            return (f"{source}: panel {number}: 'file' {_short(value)} is not inside the run folder "
                    f"(it must be {_WHAT['file']}){_HINT}")
        return f"{source}: panel {number}: '{key}' must be {_WHAT.get(key, 'valid')}, got {_short(value)}{_HINT}"
    if head == "lora":
        return f"{source}: 'lora' must be null or an object with a 'path' and a finite 'scale'{_HINT}"
    if head == "storyboard":
        return f"{source}: 'storyboard' must be a file name in the run folder{_HINT}"
    if head == "model":
        return f"{source}: 'model' must be text, got {_short(data.get('model'))}{_HINT}"
    where = ".".join(str(part) for part in loc) or "(top level)"
    return f"{source}: {where}: {item['msg']}{_HINT}"
