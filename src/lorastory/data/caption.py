"""``lorastory data caption``: write captions (or tags) for the rows of a dataset's ``metadata.jsonl``.

Rows are captioned in batches by a captioner (:mod:`lorastory.models.captioners`),
on the GPU when there is one, while the next batch's pictures load in a thread.
Which rows: ``fill`` captions rows with an empty text, ``append`` adds a caption
to rows this model has not captioned yet, ``replace`` captions every row. The text a row
had is kept in ``text_before_caption`` (once: a second run does not overwrite the
original) and the model in ``caption_model``.

Resumable: each finished batch is appended to ``metadata.jsonl.caption-partial``
(one write and fsync per batch, a torn last line is ignored), so a killed run
loses at most the batch in flight, and a new run with the same settings picks up
after the last finished batch. When every row is done, ``metadata.jsonl`` is
rewritten atomically (every row kept in order, unreadable ones byte for byte),
the partial file goes, and ``caption_report.json`` says what was captioned,
kept and failed, with reasons. A bad picture fails its row, never the run.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from lorastory.config import YamlModel
from lorastory.data.dataset import read_rows
from lorastory.data.sample import resolve_path
from lorastory.errors import BadImageError, CaptionerError, DataError
from lorastory.fileio import atomic_open, atomic_write_json, display_path, is_valid_text
from lorastory.images import load_rgb
from lorastory.models.captioners.base import Captioner, GenerationOptions, tags_text
from lorastory.skips import Skip
from lorastory.models.captioners.loader import load_captioner
from lorastory.models.captioners.wd14 import TagThresholds

PARTIAL_SUFFIX = ".caption-partial"
REPORT_NAME = "caption_report.json"
BEFORE_FIELD = "text_before_caption"
MODEL_FIELD = "caption_model"
DEFAULT_MODEL = "Salesforce/blip2-opt-2.7b"  # Data-Juicer's image_captioning_mapper default


class CaptionConfig(YamlModel):
    """What ``lorastory data caption`` runs with."""

    model: str = DEFAULT_MODEL
    style: Literal["sentence", "tags"] = "sentence"
    language: Literal["zh", "en"] = "en"
    prompt: str | None = None
    trigger: str | None = None
    trigger_at: Literal["start", "end"] = "start"
    mode: Literal["fill", "replace", "append"] = "fill"
    batch_size: int = Field(default=8, ge=1)
    text_key: str = "text"
    image_key: str | None = None
    max_new_tokens: int = Field(default=77, ge=1)
    general_threshold: float = Field(default=0.35, ge=0, le=1)
    character_threshold: float = Field(default=0.85, ge=0, le=1)
    device: str | None = None

    def signature(self) -> str:
        """What decides the captions: a partial run is resumed only under the same settings."""
        data = self.model_dump(exclude={"batch_size", "device"})
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class CaptionResult:
    """What a run did."""

    metadata: Path
    captioned: int = 0
    kept: int = 0
    resumed: int = 0
    failed: list[Skip] = field(default_factory=list)
    seconds: float = 0.0
    pictures_per_second: float = 0.0
    examples: list[tuple[str, str]] = field(default_factory=list)

    @property
    def report_path(self) -> Path:
        return self.metadata.parent / REPORT_NAME

    def as_report(self, config: CaptionConfig) -> dict[str, Any]:
        return {"metadata": display_path(self.metadata), "model": config.model, "mode": config.mode,
                "style": config.style, "language": config.language, "captioned": self.captioned,
                "resumed": self.resumed, "kept": self.kept, "failed": len(self.failed),
                "failed_items": [s.as_item() for s in self.failed], "seconds": round(self.seconds, 3),
                "pictures_per_second": round(self.pictures_per_second, 3)}


@dataclass
class _Row:
    line: int
    row: dict[str, Any]
    image: str


def metadata_file(dataset: str | os.PathLike[str]) -> Path:
    """The dataset's ``metadata.jsonl`` (a dataset folder or the jsonl itself)."""
    path = Path(dataset)
    if path.is_dir():
        path = path / "metadata.jsonl"
    if not path.is_file():
        raise DataError(f"{display_path(path)}: no such file; pass a dataset folder (data import --out) or its metadata.jsonl")
    return path


def needs_caption(row: dict[str, Any], config: CaptionConfig) -> bool:
    """Whether ``config.mode`` captions this row."""
    if config.mode == "replace":
        return True
    if config.mode == "append":
        return row.get(MODEL_FIELD) != config.model
    text = row.get(config.text_key)
    return not (isinstance(text, str) and text.strip())


def _image_of(row: dict[str, Any], key: str | None, base: str) -> str:
    """The row's first picture, resolved against the dataset folder."""
    value = row.get(key) if key else row.get("image", row.get("images"))
    paths = [value] if isinstance(value, str) else value
    if not isinstance(paths, list) or not paths or not all(isinstance(p, str) and p.strip() for p in paths):
        raise DataError(f"no picture path in '{key or 'image'}'")
    if not is_valid_text(paths[0]):
        raise DataError("the picture path is not valid Unicode")
    return resolve_path(paths[0], base)


def new_text(old: Any, caption: str, config: CaptionConfig) -> str:
    """The row's text after captioning: the trigger word first (or last), after the old text in ``append`` mode."""
    comma = "，" if config.language == "zh" else ", "
    if config.trigger:
        caption = f"{config.trigger}{comma}{caption}" if config.trigger_at == "start" else f"{caption}{comma}{config.trigger}"
    if config.mode == "append" and isinstance(old, str) and old.strip():
        return f"{old.strip()}{comma}{caption}"
    return caption


def _read_partial(path: Path, signature: str, source_stamp: str) -> dict[int, dict[str, Any]]:
    """Rows finished by an earlier run with the same settings on the same file; a torn last line is ignored."""
    done: dict[int, dict[str, Any]] = {}
    if not path.is_file():
        return done
    lines = path.read_bytes().split(b"\n")
    try:
        header = json.loads(lines[0])
    except (json.JSONDecodeError, UnicodeDecodeError):
        return done
    if header.get("signature") != signature or header.get("source") != source_stamp:
        return done
    for raw in lines[1:]:
        try:
            entry = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue  # the batch in flight when the run was killed
        if isinstance(entry, dict) and isinstance(entry.get("line"), int) and isinstance(entry.get("row"), dict):
            done[entry["line"]] = entry["row"]
    return done


def _stamp(path: Path) -> str:
    info = path.stat()
    return f"{info.st_size}:{info.st_mtime_ns}"


class _PartialLog:
    """``metadata.jsonl.caption-partial``: one appended, fsynced write per finished batch."""

    def __init__(self, path: Path, signature: str, stamp: str, fresh: bool) -> None:
        self.path = path
        if fresh:
            with atomic_open(path) as handle:
                handle.write(json.dumps({"signature": signature, "source": stamp}) + "\n")
        self.handle = open(path, "a", encoding="utf-8")

    def write(self, rows: list[tuple[int, dict[str, Any]]]) -> None:
        payload = "".join(json.dumps({"line": line, "row": row}, ensure_ascii=False) + "\n" for line, row in rows)
        self.handle.write(payload)
        self.handle.flush()
        os.fsync(self.handle.fileno())

    def close(self) -> None:
        self.handle.close()


def _batches(items: list[_Row], size: int) -> Iterator[list[_Row]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _load(item: _Row) -> Any:
    try:
        return load_rgb(item.image)
    except BadImageError as err:
        return err


def _captions(captioner: Captioner, images: list[Any], config: CaptionConfig) -> list[str]:
    if config.style == "tags" and "tags" not in captioner.styles:
        raise CaptionerError(f"{config.model} ({captioner.kind}) writes sentences, not tags; use --style sentence, "
                             "a WD14 tagger or a vision-language model")
    if config.style == "tags" and captioner.kind == "wd14":
        return [tags_text(tags.names(), "en") for tags in captioner.tag(images)]
    prompt = config.prompt if config.prompt is not None else captioner.default_prompt(config.style, config.language)
    options = GenerationOptions(num=1, max_new_tokens=config.max_new_tokens, language=config.language, style=config.style)
    return [candidates[0] for candidates in captioner.generate(images, [prompt] * len(images), options)]


def _plan(metadata: Path, config: CaptionConfig, done: dict[int, dict[str, Any]], result: CaptionResult) -> list[_Row]:
    """The rows to caption now; counts the kept, resumed and unusable ones."""
    todo = []
    base = str(metadata.resolve().parent)
    for number, row, problem in read_rows(metadata):
        if row is None:
            result.failed.append(Skip(f"line {number}", f"{problem or 'unreadable'} (kept as it is)"))
            continue
        if number in done:
            result.resumed += 1
            continue
        if not needs_caption(row, config):
            result.kept += 1
            continue
        try:
            todo.append(_Row(number, row, _image_of(row, config.image_key, base)))
        except DataError as err:
            result.failed.append(Skip(f"line {number}", str(err)))
    return todo


def _updated(item: _Row, caption: str, config: CaptionConfig) -> dict[str, Any]:
    row = dict(item.row)
    old = row.get(config.text_key)
    if BEFORE_FIELD not in row and isinstance(old, str):
        row[BEFORE_FIELD] = old
    row[config.text_key] = new_text(old, caption, config)
    row[MODEL_FIELD] = config.model
    return row


def caption_dataset(
    dataset: str | os.PathLike[str],
    config: CaptionConfig,
    captioner: Captioner | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> CaptionResult:
    """Caption the rows of ``dataset`` that ``config.mode`` selects; rewrite its metadata.jsonl at the end."""

    metadata = metadata_file(dataset)
    result = CaptionResult(metadata)
    partial = metadata.with_name(metadata.name + PARTIAL_SUFFIX)
    signature, stamp = config.signature(), _stamp(metadata)
    done = _read_partial(partial, signature, stamp)
    todo = _plan(metadata, config, done, result)
    if todo and captioner is None:
        thresholds = TagThresholds(config.general_threshold, config.character_threshold)
        captioner = load_captioner(config.model, config.device, thresholds)
    started = time.perf_counter()  # pictures/s counts captioning, not loading the model
    if todo:
        log = _PartialLog(partial, signature, stamp, fresh=not done)
        try:
            _run_batches(todo, config, captioner, log, done, result, on_progress)
        finally:
            log.close()
    result.seconds = time.perf_counter() - started
    result.pictures_per_second = result.captioned / result.seconds if result.seconds > 0 else 0.0
    _rewrite(metadata, done)
    atomic_write_json(result.report_path, result.as_report(config))
    if partial.exists():
        partial.unlink()
    return result


def _run_batches(todo: list[_Row], config: CaptionConfig, captioner: Captioner, log: _PartialLog,
                 done: dict[int, dict[str, Any]], result: CaptionResult,
                 on_progress: Callable[[int, int], None] | None) -> None:
    finished = 0
    with ThreadPoolExecutor(max_workers=2) as pool:  # the next batch decodes while the model runs
        batches = list(_batches(todo, config.batch_size))
        pending = pool.map(_load, batches[0]) if batches else iter(())
        for index, batch in enumerate(batches):
            loaded = list(pending)
            if index + 1 < len(batches):
                pending = pool.map(_load, batches[index + 1])
            good = [(item, image) for item, image in zip(batch, loaded) if not isinstance(image, BadImageError)]
            for item, image in zip(batch, loaded):
                if isinstance(image, BadImageError):
                    result.failed.append(Skip(f"line {item.line}: {display_path(item.image)}", str(image)))
            captions = _captions(captioner, [image for _, image in good], config) if good else []
            rows = []
            for (item, _), caption in zip(good, captions):
                if not caption.strip():
                    result.failed.append(Skip(f"line {item.line}", "the model wrote an empty caption"))
                    continue
                rows.append((item.line, _updated(item, caption.strip(), config)))
                if len(result.examples) < 8:
                    result.examples.append((Path(item.image).name, rows[-1][1][config.text_key]))
            log.write(rows)
            done.update(rows)
            result.captioned += len(rows)
            finished += len(batch)
            if on_progress is not None:
                on_progress(finished, len(todo))


def _rewrite(metadata: Path, done: dict[int, dict[str, Any]]) -> None:
    """``metadata.jsonl`` with the captioned rows replaced, every other line byte for byte."""
    if not done:
        return
    with open(metadata, "rb") as source, atomic_open(metadata, "wb") as target:
        for number, raw in enumerate(source, start=1):
            row = done.get(number)
            if row is None:
                target.write(raw if raw.endswith(b"\n") else raw + b"\n")
            else:
                target.write((json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8"))
