"""Operator base classes and the registry that maps Data-Juicer op names to them.

As in Data-Juicer, a filter computes its stats (:meth:`Filter.compute_stats`)
separately from its keep decision (:meth:`Filter.keep`): the stats are what
the per-op report and ``*_stats.jsonl`` are made of. A deduplicator computes a
hash per sample; the executor keeps the first sample of each hash. A mapper
rewrites the sample (its text) for the ops after it and for the export, or turns it into several rows
(:meth:`Mapper.process`).
"""

from __future__ import annotations

import difflib
import math
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from lorastory.config import format_validation_error
from lorastory.data.ops.dj_names import DJ_OP_NAMES, DJ_VERSION
from lorastory.data.sample import Sample
from lorastory.errors import LorastoryError, RecipeError, first_line

_REGISTRY: dict[str, type[Op]] = {}


class OpParams(BaseModel):
    """Parameters every Data-Juicer op accepts; each op subclasses this with its own.

    ``text_key``/``image_key`` override the recipe's keys for one op. The
    scheduling hints Data-Juicer takes (``num_proc``, ``batch_size``,
    ``accelerator``...) are accepted so recipes run unchanged; our executor
    schedules by the recipe's ``np``.
    """

    # nan/inf in a threshold would silently keep or drop every row: refused with the field's name.
    model_config = ConfigDict(extra="forbid", populate_by_name=True, allow_inf_nan=False)

    #: Ranges whose stat can be negative (no warning for a negative maximum).
    signed_ranges: ClassVar[frozenset[str]] = frozenset()

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

    def ranges(self) -> list[tuple[str, float, float]]:
        """``(stat name, min, max)`` of each ``min_X``/``max_X`` pair of numeric parameters."""
        found = []
        for name in type(self).model_fields:
            if not name.startswith("min_"):
                continue
            stem = name[4:]
            low, high = getattr(self, name), getattr(self, f"max_{stem}", None)
            if _is_number(low) and _is_number(high):
                found.append((stem, float(low), float(high)))
        return found

    def range_errors(self) -> list[str]:
        """Ranges that can never keep a row (``min_X`` above ``max_X``)."""
        return [
            f"min_{stem} {_num(low)} is greater than max_{stem} {_num(high)}: no row could be kept"
            for stem, low, high in self.ranges()
            if low > high
        ]

    def warnings(self) -> list[str]:
        """Legal settings that drop every row (a negative maximum of a stat that is never negative)."""
        return [
            f"max_{stem} is {_num(high)} but {stem} is never negative: every row will be dropped"
            for stem, _low, high in self.ranges()
            if high < 0 and stem not in self.signed_ranges
        ]


def _usable_stat(value: Any, per_image: bool) -> bool:
    if per_image:
        return isinstance(value, list) and all(_is_number(v) for v in value)
    return _is_number(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _num(value: float) -> str:
    return str(int(value)) if value == int(value) and abs(value) < 1e18 else f"{value:g}"


AnyOrAll = Literal["any", "all"]


class OpSetupError(LorastoryError):
    """An op cannot run at all (its model fails to load): the whole run stops, no row is judged by it."""


def load_once(op: Op, attribute: str, load: Any) -> Any:
    """``load()`` on first use, kept in ``op.<attribute>``; a failure is kept too, so it is tried once per process.

    Every failure becomes :class:`OpSetupError` naming the op: a model that cannot load stops the
    run instead of turning every row into a skip.
    """
    cached = getattr(op, attribute, None)
    if isinstance(cached, OpSetupError):
        raise cached
    if cached is not None:
        return cached
    try:
        value = load()
    except Exception as err:  # noqa: BLE001  any loading failure (files, device, memory) stops the run in one line
        failure = OpSetupError(f"{op.name}: {first_line(err, 300)}")
        setattr(op, attribute, failure)
        raise failure from None
    setattr(op, attribute, value)
    return value



@contextmanager
def recipe_check(op: Op, *errors: type[Exception]) -> Iterator[None]:
    """A check run when the recipe loads (a model that is not there...): its ``errors`` become one-line
    :class:`RecipeError` naming the op, so the recipe is refused before any work."""
    try:
        yield
    except errors as err:
        raise RecipeError(f"{op.name}: {err}") from None
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
    #: Whether each stat is a list with one number per image (else one number per row).
    per_image: ClassVar[bool] = True

    def drop_unusable_stats(self, stats: dict[str, Any]) -> None:
        """Remove stats of this filter that a row brought with it in a shape it cannot use, so they are recomputed.

        Rows may carry ``__dj__stats__`` written by another tool (or by hand): widths as strings,
        ``null``, infinite ratios. Only finite numbers (a list of them per image) are reused.
        """
        present = [key for key in self.stats_keys if key in stats]
        if not present:
            return
        if all(_usable_stat(stats[key], self.per_image) for key in present):
            return
        for key in present:
            del stats[key]

    def compute_stats(self, sample: Sample) -> None:
        """Add this filter's values to ``sample.stats`` (skip keys already present)."""
        raise NotImplementedError

    def keep(self, stats: dict[str, Any]) -> bool:
        """Decide from the stats alone whether the sample stays."""
        raise NotImplementedError


class Mapper(Op):
    """Rewrites a sample in place (its text, as Data-Juicer's text mappers do), or turns it into several rows
    (a generator such as a captioner with ``keep_original_sample``)."""

    def process(self, sample: Sample) -> list[dict[str, Any]] | None:
        """Edit ``sample.row`` in place and return None, or return the rows ``sample`` becomes, in order
        (``sample.row`` itself among them when it is kept)."""
        raise NotImplementedError


class TextMapper(Mapper):
    """A mapper that rewrites the text under the op's text key, one string to another."""

    def process(self, sample: Sample) -> None:
        key = self.params.text_key or sample.keys.text_key
        sample.row[key] = self.process_text(sample.text(key))

    def process_text(self, text: str) -> str:
        """The rewritten text."""
        raise NotImplementedError


class RangeParams(OpParams):
    """Data-Juicer's interval options of a range filter (``Filter.get_keep_boolean``)."""

    min_closed_interval: bool = True
    max_closed_interval: bool = True
    reversed_range: bool = False

    def in_range(self, value: float, low: float | None, high: float | None) -> bool:
        """Whether ``value`` passes, as Data-Juicer decides: bounds closed unless said, then maybe reversed.

        ``reversed_range`` keeps what lies outside, so it also flips which bounds are closed.
        """
        low_closed, high_closed = self.min_closed_interval, self.max_closed_interval
        if self.reversed_range:
            low_closed, high_closed = not low_closed, not high_closed
        keep = True
        if low is not None:
            keep = value >= low if low_closed else value > low
        if high is not None:
            keep = keep and (value <= high if high_closed else value < high)
        return not keep if self.reversed_range else keep

    def range_errors(self) -> list[str]:
        # Reversed, min above max keeps every row: legal, as in Data-Juicer.
        return [] if self.reversed_range else super().range_errors()

    def warnings(self) -> list[str]:
        return [] if self.reversed_range else super().warnings()


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


def op_summary(cls: type[Op]) -> str:
    """One line on what an op does: its module docstring's first line without the leading op name."""
    module = sys.modules.get(cls.__module__)
    doc = (module.__doc__ if module is not None else None) or cls.__doc__ or ""
    line = doc.strip().splitlines()[0] if doc.strip() else ""
    line = re.sub(r"^``[a-z0-9_]+``( \([^)]*\))?: ", "", line)
    return line[:1].upper() + line[1:]


def registered_ops() -> dict[str, type[Op]]:
    """All operator classes by name (a copy)."""
    return dict(_REGISTRY)


def unknown_op_message(name: str, where: str) -> str:
    """One line for an op name we cannot run: a Data-Juicer op not supported yet, or no Data-Juicer op at all."""
    if name in DJ_OP_NAMES:
        return (
            f"{where}: '{name}' is a Data-Juicer operator lorastory does not support yet; remove it from the "
            "recipe ('lorastory data ops' lists the supported ones)"
        )
    close = difflib.get_close_matches(name, list(_REGISTRY), n=1, cutoff=0.8)
    hint = f"; did you mean '{close[0]}'?" if close else "; 'lorastory data ops' lists the supported ones"
    return f"{where}: unknown op '{name}' (not a Data-Juicer {DJ_VERSION} operator){hint}"


def build_op(name: str, params: dict[str, Any] | None, where: str = "process") -> Op:
    """Instantiate op ``name``; unknown names and bad parameters are :class:`RecipeError`."""
    cls = _REGISTRY.get(name)
    if cls is None:
        raise RecipeError(unknown_op_message(name, where))
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise RecipeError(f"{where}: parameters of '{name}' must be a mapping, got {params!r}")
    if params.get("trust_remote_code") not in (None, False):
        raise RecipeError(
            f"{where} ({name}): trust_remote_code is never allowed from a recipe (it would run Python code "
            "from the model folder); remove it and use a CLIP or Chinese CLIP model"
        )
    if params.get("allow_pickle") not in (None, False):
        raise RecipeError(
            f"{where} ({name}): allow_pickle is never allowed from a recipe (a pickle file can run code when "
            "loaded); convert the weights to .safetensors and remove allow_pickle"
        )
    try:
        validated = cls.Params.model_validate(params)
    except ValidationError as err:
        raise RecipeError(format_validation_error(err, f"{where} ({name})")) from None
    for problem in validated.range_errors():
        raise RecipeError(f"{where} ({name}): {problem}")
    return cls(validated)


def combine(results: list[bool], any_or_all: str) -> bool:
    """Data-Juicer's any/all reduction over per-image results; no images means keep."""
    if not results:
        return True
    return any(results) if any_or_all == "any" else all(results)
