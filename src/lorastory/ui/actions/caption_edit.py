"""Bulk edits of a dataset's captions in the Caption table (what tag editors offer): find and replace
across every caption, add a tag to every caption (first or last, once), remove a tag everywhere.
The table is changed, not the file: "Save captions" writes it (:func:`~lorastory.ui.actions.caption.save_captions`)."""

from __future__ import annotations

import re
from typing import Any

_TAG_SPLIT = re.compile(r"\s*[,，]\s*")


def _tags(caption: str) -> list[str]:
    return [t for t in _TAG_SPLIT.split(caption.strip()) if t] if caption.strip() else []


def _join(tags: list[str], like: str) -> str:
    return ("，" if "，" in like and "," not in like else ", ").join(tags)


def edit_caption(caption: str, find: str = "", replace: str = "", add: str = "", remove: str = "",
                 at: str = "start") -> str:
    """One caption with the edits applied, in order: replace, remove a tag, add a tag."""
    text = caption.replace(find, replace) if find else caption
    if remove.strip():
        tags = _tags(text)
        if remove.strip() in tags:
            text = _join([t for t in tags if t != remove.strip()], text)
    if add.strip():
        tags = _tags(text)
        if add.strip() not in tags:
            tags = [add.strip(), *tags] if at == "start" else [*tags, add.strip()]
            text = _join(tags, caption)
    return text


def edit_captions(rows: list[list[Any]], find: str = "", replace: str = "", add: str = "", remove: str = "",
                  at: str = "start") -> tuple[list[list[Any]], int]:
    """The table's rows ([file, caption]) with every caption edited, and how many changed."""
    edited, changed = [], 0
    for row in rows:
        name, caption = (list(row) + ["", ""])[:2]
        caption = "" if caption is None else str(caption)
        new = edit_caption(caption, find, replace, add, remove, at)
        changed += new != caption
        edited.append([name, new])
    return edited, changed
