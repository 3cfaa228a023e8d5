"""The dataset artefacts' csv tables (``metadata.csv``: ``file_name,text``), read row by row.

Every stage that reads such a file (import, the CLIP table, training) reads it here, so a
bad row means the same everywhere: it is reported with its line number and the rest is kept.
A header that cannot say which column is meant (missing or repeated) is an error for the file.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterator, Sequence
from typing import Any

from lorastory.errors import DataError
from lorastory.images import IMAGE_EXTENSIONS

# Captions far past any text encoder's length still read (they are truncated when encoded).
CSV_FIELD_LIMIT = 64 << 20
# A line that starts like a row of this table: an image file name, then a comma.
_ROW_LIKE = re.compile(
    r"^[^,\"\n]+(?:" + "|".join(re.escape(e) for e in sorted(IMAGE_EXTENSIONS)) + r")\s*,", re.IGNORECASE | re.MULTILINE
)


def csv_rows(text: str, source: str, required: Sequence[str] = ("file_name",)) -> Iterator[tuple[str, dict[str, Any] | None, str | None]]:
    """``(where, row, problem)`` for each data row of the csv ``text``; ``where`` is ``SOURCE line N``.

    A row is ``None`` with the reason when it cannot be used: a quote left open (the lines it
    swallowed are named), fewer or more fields than the header, or a quoted field that spans
    what look like further rows. Blank rows are passed over.
    """
    csv.field_size_limit(max(csv.field_size_limit(), CSV_FIELD_LIMIT))
    # strict: a quote left open to the end is an error for that row, not rows silently merged.
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(reader, None)
    except csv.Error as err:
        raise DataError(f"{source} line 1: unreadable header ({err})") from None
    missing = [name for name in required if name not in (header or [])]
    if not header or missing:
        found = ", ".join(header or []) or "none"
        raise DataError(f"{source}: needs the column(s) {', '.join(repr(m) for m in missing)} (found {found})")
    repeated = sorted({name for name in header if header.count(name) > 1})
    if repeated:
        raise DataError(f"{source} line 1: column '{repeated[0]}' appears {header.count(repeated[0])} times; "
                        "keep one (which one is meant cannot be told)")
    while True:
        start = reader.line_num + 1
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as err:
            yield _where(source, start, reader.line_num), None, f"unreadable csv row ({err})"
            continue
        where = _where(source, start, reader.line_num)
        if not any(field.strip() for field in fields):
            continue
        if len(fields) != len(header):
            yield where, None, f"{len(fields)} fields but the header has {len(header)}"
            continue
        if any("\n" in f and _ROW_LIKE.search(f.split("\n", 1)[1]) for f in fields):
            yield where, None, "a quoted field spans lines that look like further rows: an unterminated quote?"
            continue
        yield where, dict(zip(header, fields)), None


def _where(source: str, start: int, end: int) -> str:
    return f"{source} lines {start}-{end}" if end > start else f"{source} line {start}"
