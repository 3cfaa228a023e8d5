"""Where and how mappers that make new images write them (not an operator).

Data-Juicer writes a mapper's new image beside the input image, into
``<input folder>/__dj__produced_data__/<op name>/<name>__dj_hash_#<hash>#<ext>``
(or ``save_dir``), the hash made of the op's parameters, the process id and the
time. lorastory never writes into the input folder: the same names go into
``<export folder>/__dj__produced_data__/<op name>/`` (or ``save_dir``, which may
not be the input image's folder), and the hash is of the op's parameters and the
source path only, so a re-run writes the same files (atomically) instead of new ones.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
from collections.abc import Callable

from PIL import Image

from lorastory.data.ops.base import Op
from lorastory.data.sample import Sample
from lorastory.errors import DataError, OutputError
from lorastory.fileio import atomic_write_bytes, display_path

_DJ_HASH = re.compile(r"__dj_hash_#(.*?)#")
SOURCE_FILE_FIELD = "__dj__source_file__"


def produced_path(op: Op, sample: Sample, source: str, save_dir: str | None) -> str:
    """The path of ``op``'s new version of image ``source`` (Data-Juicer's file name, our folder)."""
    if save_dir:
        folder = os.path.abspath(os.path.expanduser(save_dir))
    elif sample.keys.produced_dir:
        folder = os.path.join(sample.keys.produced_dir, op.name)
    else:
        raise OutputError(f"{op.name}: no output folder for new images")
    if not source.startswith(("s3://", "gs://", "http://", "https://")) and (
        os.path.normpath(folder) == os.path.normpath(os.path.dirname(os.path.abspath(source)))
    ):
        raise OutputError(
            f"{op.name}: save_dir {display_path(folder)} is the folder of the input image {os.path.basename(source)}; "
            "new images never go beside the inputs: leave save_dir out (they go beside the export)"
        )
    settings = op.params.model_dump(exclude={"save_dir", "text_key", "image_key", "num_proc", "batch_size"})
    digest = hashlib.md5(
        json.dumps([settings, source], sort_keys=True, default=str).encode("utf-8")
    ).hexdigest()
    stem, ext = os.path.splitext(os.path.basename(source))
    match = _DJ_HASH.search(stem)
    if match:  # an image an earlier op produced: replace its hash, as Data-Juicer does
        stem = stem[: match.start()]
    return os.path.join(folder, f"{stem}__dj_hash_#{digest}#{ext or '.png'}")


def save_image(image: Image.Image, path: str) -> None:
    """Encode ``image`` in the format its extension names and write it atomically."""
    ext = os.path.splitext(path)[1].lower()
    image_format = Image.registered_extensions().get(ext, "PNG")
    if image_format == "JPEG" and image.mode not in ("RGB", "L"):
        image = image.convert("RGB")
    buffer = io.BytesIO()
    try:
        image.save(buffer, format=image_format)
    except (OSError, ValueError, KeyError) as err:
        raise DataError(f"cannot encode {os.path.basename(path)} as {image_format}: {err}") from None
    os.makedirs(os.path.dirname(path), exist_ok=True)
    atomic_write_bytes(path, buffer.getvalue())


def update_sources(sample: Sample, before: list[str], after: list[str]) -> None:
    """Data-Juicer's ``__dj__source_file__`` bookkeeping after a mapper turned ``before`` paths into ``after``.

    The field starts as the row's image paths; an entry that differs from the image a mapper just
    replaced is set to that image (so after two mappers it names the first one's output, as in Data-Juicer).
    """
    sources = sample.row.get(SOURCE_FILE_FIELD)
    if not isinstance(sources, list) or len(sources) != len(before):
        sources = sample.row[SOURCE_FILE_FIELD] = list(before)
    for index, (old, new) in enumerate(zip(before, after)):
        if sources[index] != old and new != old:
            sources[index] = old


def replace_images(
    op: Op, sample: Sample, key: str, save_dir: str | None, make: Callable[[str], Image.Image | None]
) -> None:
    """Write ``make(path)`` for each distinct image of the row as a new file and point the row at it.

    ``make`` returning ``None`` leaves that image as it is; ``__dj__source_file__`` follows (:func:`update_sources`).
    """
    paths = sample.image_paths(key)
    if not paths:
        return
    new: dict[str, str] = {}
    for path in paths:
        if path in new:
            continue
        image = make(path)
        if image is None:
            new[path] = ""
            continue
        target = produced_path(op, sample, path, save_dir)
        save_image(image, target)
        new[path] = target
    after = [new[path] or path for path in paths]
    update_sources(sample, paths, after)
    sample.set_image_paths(after, key)
