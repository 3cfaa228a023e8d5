"""Operator base classes and the registry that maps Data-Juicer op names to them.

As in Data-Juicer, a filter computes its stats (:meth:`Filter.compute_stats`)
separately from its keep decision (:meth:`Filter.keep`): the stats are what
the per-op report and ``*_stats.jsonl`` are made of. A deduplicator computes a
hash per sample; the executor keeps the first sample of each hash.
"""

from __future__ import annotations

import difflib
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from lorastory.config import format_validation_error
from lorastory.data.sample import Sample
from lorastory.errors import RecipeError

_REGISTRY: dict[str, type[Op]] = {}


class OpParams(BaseModel):
    """Parameters every Data-Juicer op accepts; each op subclasses this with its own.

    ``text_key``/``image_key`` override the recipe's keys for one op. The
    scheduling hints Data-Juicer takes (``num_proc``, ``batch_size``,
    ``accelerator``...) are accepted so recipes run unchanged; our executor
    schedules by the recipe's ``np``.
    """

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    text_key: str | None = None
    image_key: str | None = None
    batch_size: int | None = None
    num_proc: int | None = None
    accelerator: str | None = None
    cpu_required: float | None = None
    mem_required: float | str | None = None
    turbo: bool | None = None
    skip_op_error: bool | None = None
    work_dir: str | None = None
    index_key: str | None = None


AnyOrAll = Literal["any", "all"]


class Op:
    """A named operator built from validated parameters."""

    name: ClassVar[str] = ""
    Params: ClassVar[type[OpParams]] = OpParams

    def __init__(self, params: OpParams) -> None:
        self.params = params

    def describe(self) -> str:
        """The op name with the parameters that differ from the defaults."""
        changed = self.params.model_dump(exclude_defaults=True)
        inner = ", ".join(f"{k}={v!r}" for k, v in changed.items())
        return f"{self.name}({inner})"


class Filter(Op):
    """Keeps or drops samples by stats it computes first."""

    #: Stats keys this filter writes, in order (used by reports and histograms).
    stats_keys: ClassVar[tuple[str, ...]] = ()

    def compute_stats(self, sample: Sample) -> None:
        """Add this filter's values to ``sample.stats`` (skip keys already present)."""
        raise NotImplementedError

    def keep(self, stats: dict[str, Any]) -> bool:
        """Decide from the stats alone whether the sample stays."""
        raise NotImplementedError


class Deduplicator(Op):
    """Drops every sample whose hash was already seen, keeping the first."""

    def compute_hash(self, sample: Sample) -> str:
        """A string identifying the sample's content; an empty string is never a duplicate."""
        raise NotImplementedError


def register_op(name: str):
    """Class decorator: make an operator available to recipes under ``name``."""

    def decorate(cls: type[Op]) -> type[Op]:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"operator '{name}' registered twice")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return decorate


def registered_ops() -> dict[str, type[Op]]:
    """All operator classes by name (a copy)."""
    return dict(_REGISTRY)


def build_op(name: str, params: dict[str, Any] | None, where: str = "process") -> Op:
    """Instantiate op ``name``; unknown names and bad parameters are :class:`RecipeError`."""
    cls = _REGISTRY.get(name)
    if cls is None:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else f"; known ops: {', '.join(sorted(_REGISTRY))}"
        raise RecipeError(f"{where}: unknown op '{name}'{hint}")
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise RecipeError(f"{where}: parameters of '{name}' must be a mapping, got {params!r}")
    try:
        validated = cls.Params.model_validate(params)
    except ValidationError as err:
        raise RecipeError(format_validation_error(err, f"{where} ({name})")) from None
    return cls(validated)


def combine(results: list[bool], any_or_all: str) -> bool:
    """Data-Juicer's any/all reduction over per-image results; no images means keep."""
    if not results:
        return True
    return any(results) if any_or_all == "any" else all(results)
