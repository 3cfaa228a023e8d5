"""The reference workflow's CLIP table for a dataset: softmax of image-text logits, plus cosines.

The reference scores its curated data with ``openai/clip-vit-base-patch32``
like this: feed a batch of images and their captions to ``CLIPModel``, take
``logits_per_image`` (logit scale × cosine, rows = images, columns = texts)
and ``softmax(dim=1)``: for each image, a probability over the batch's texts.
That is a relative number — it depends on which other captions share the
batch, and identical captions share the probability equally — so each row
here also carries the absolute cosine of the image and its own caption and
CLIP-T (cosine × 100). ``batch_size`` 8 is the reference's DataLoader; 0 puts
every row in one batch, like its first cell.

Input is a Data-Juicer jsonl (``text`` + ``image``/``images`` paths; a row with
several images gives one line per image) or a ``metadata.csv``
(``file_name,text``). Unreadable rows and images are skipped with a reason.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lorastory.captions import clean_caption
from lorastory.data.dataset import read_rows
from lorastory.data.sample import resolve_path
from lorastory.images import load_rgb
from lorastory.models.clip import ClipModel
from lorastory.errors import BadImageError, DataError
from lorastory.fileio import atomic_write_text, check_outputs_apart, is_valid_text
from lorastory.skips import Skip
from lorastory.tables import csv_rows

REFERENCE_BATCH = 8


@dataclass(frozen=True)
class Pair:
    """One image and its caption, with where it came from (for skip reasons)."""

    image: str
    text: str
    where: str


@dataclass
class PairScore:
    """One row of the table."""

    image: str
    text: str
    batch: int
    position: int
    cosine: float
    clip_t: float
    logit: float
    prob: float
    best_match: int  # position (in its batch) of the text with the highest probability
    best_prob: float
    probs: list[float]


@dataclass
class DatasetScores:
    """The table, what was skipped, and where the csv went."""

    source: Path
    rows: list[PairScore]
    skipped: list[Skip] = field(default_factory=list)
    batch_size: int = REFERENCE_BATCH
    logit_scale: float = 100.0
    csv_path: Path | None = None


def _jsonl_pairs(path: Path, text_key: str, image_key: str | None) -> tuple[list[Pair], list[Skip]]:
    pairs: list[Pair] = []
    skipped: list[Skip] = []
    base = str(path.resolve().parent)
    for number, row, problem in read_rows(path):
        where = f"line {number}"
        if not isinstance(row, dict):
            skipped.append(Skip(where, problem or "not a JSON object"))
            continue
        text = row.get(text_key)
        key = image_key or ("image" if "image" in row else "images")
        images = row.get(key) or []
        images = [images] if isinstance(images, str) else images
        if not isinstance(text, str) or not isinstance(images, list) or not images or not all(
            isinstance(p, str) and p.strip() and "\0" not in p for p in images
        ):
            skipped.append(Skip(where, f"needs '{text_key}' text and '{key}' paths"))
            continue
        if not is_valid_text(text):
            skipped.append(Skip(where, "caption is not valid Unicode (a lone surrogate)"))
            continue
        pairs.extend(Pair(resolve_path(str(p), base), clean_caption(text), where) for p in images)
    return pairs, skipped


def _csv_pairs(path: Path) -> tuple[list[Pair], list[Skip]]:
    pairs: list[Pair] = []
    skipped: list[Skip] = []
    base = str(path.resolve().parent)
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 ({err.reason} at byte {err.start})") from None
    for where, row, problem in csv_rows(text, str(path), required=("file_name", "text")):
        if row is None:
            skipped.append(Skip(where, problem or "unreadable"))
        elif not row["file_name"].strip() or "\n" in row["file_name"] or "\0" in row["file_name"]:
            skipped.append(Skip(where, "empty or malformed file_name"))
        else:
            pairs.append(Pair(resolve_path(row["file_name"], base), row["text"], where))
    return pairs, skipped


def read_pairs(path: str | Path, text_key: str = "text", image_key: str | None = None) -> tuple[list[Pair], list[Skip]]:
    """(image, caption) pairs of a jsonl or csv dataset file, and the rows skipped."""
    source = Path(path)
    if not source.is_file():
        raise DataError(f"{source}: no such file; pass a result jsonl (data run) or a metadata.csv (data export-csv)")
    if source.suffix.lower() == ".csv":
        return _csv_pairs(source)
    return _jsonl_pairs(source, text_key, image_key)


def _loaded_batches(pairs: list[Pair], size: int, skipped: list[Skip]) -> Iterator[tuple[list[Pair], list[Any]]]:
    """Batches of ``size`` readable pairs with their images (0: one batch of all); bad images are skipped."""
    batch: list[Pair] = []
    images: list[Any] = []
    for pair in pairs:
        try:
            images.append(load_rgb(pair.image))
        except BadImageError as err:
            skipped.append(Skip(f"{pair.where}: {pair.image}", str(err)))
            continue
        batch.append(pair)
        if len(batch) == size:
            yield batch, images
            batch, images = [], []
    if batch:
        yield batch, images


def _score_batch(clip: ClipModel, pairs: list[Pair], images: list[Any], batch: int) -> list[PairScore]:
    image_emb = clip.image_embeddings(images, len(images))
    text_emb = clip.text_embeddings([p.text for p in pairs], len(pairs))
    cosines = (image_emb @ text_emb.T).clamp(-1.0, 1.0)
    logits = clip.logit_scale * cosines  # = CLIPModel(...).logits_per_image
    probs = logits.softmax(dim=1)
    rows = []
    for i, pair in enumerate(pairs):
        best = int(probs[i].argmax())
        rows.append(PairScore(
            pair.image, pair.text, batch, i, float(cosines[i, i]), 100.0 * float(cosines[i, i]), float(logits[i, i]),
            float(probs[i, i]), best, float(probs[i, best]), [float(p) for p in probs[i]],
        ))
    return rows


def default_csv_path(source: Path) -> Path:
    """``result.jsonl`` → ``result_clip_scores.csv`` beside it."""
    return source.with_name(source.stem + "_clip_scores.csv")


def write_csv(scores: DatasetScores, path: Path) -> Path:
    """The table as csv (one ``p_J`` column per text position in a batch), written atomically."""
    width = max((len(r.probs) for r in scores.rows), default=0)
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["file_name", "text", "batch", "index", "cosine", "clip_t", "logit", "prob", "best_match", "best_prob",
                     *[f"p_{j}" for j in range(width)]])
    for r in scores.rows:
        writer.writerow([r.image, r.text, r.batch, r.position, f"{r.cosine:.6f}", f"{r.clip_t:.4f}", f"{r.logit:.4f}",
                         f"{r.prob:.6f}", r.best_match, f"{r.best_prob:.6f}",
                         *[f"{p:.6f}" for p in r.probs], *[""] * (width - len(r.probs))])
    atomic_write_text(path, buffer.getvalue())
    return path


def clip_score_dataset(
    path: str | Path,
    clip: ClipModel,
    batch_size: int = REFERENCE_BATCH,
    text_key: str = "text",
    image_key: str | None = None,
    out_csv: str | Path | None = None,
) -> DatasetScores:
    """Score every (image, caption) of a dataset file in batches; write the csv (default: beside it)."""
    if batch_size < 0:
        raise DataError(f"batch size must be 0 (one batch) or more, got {batch_size}")
    source = Path(path)
    target = Path(out_csv) if out_csv else default_csv_path(source)
    pairs, skipped = read_pairs(source, text_key, image_key)
    check_outputs_apart([("--out", target)], [("DATASET", source), *(("an image", pair.image) for pair in pairs)])
    rows: list[PairScore] = []
    for batch, (batch_pairs, images) in enumerate(_loaded_batches(pairs, batch_size, skipped)):
        rows.extend(_score_batch(clip, batch_pairs, images, batch))
    if not rows:
        first = f" (first problem: {skipped[0].item}: {skipped[0].reason})" if skipped else ""
        raise DataError(f"{source}: no readable (image, caption) pairs to score{first}")
    scores = DatasetScores(source, rows, skipped, batch_size, clip.logit_scale)
    scores.csv_path = write_csv(scores, target)
    return scores

