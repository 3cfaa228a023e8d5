"""Caption text as the dataset artefacts carry it (Data-Juicer's special tokens), shared by every stage."""

from __future__ import annotations

import re

# Data-Juicer marks where images sit in a multimodal text (<__dj__image>) and where a chunk ends.
DJ_SPECIAL_TOKENS = re.compile(r"<__dj__\w+>|<\|__dj__eoc\|>")


def clean_caption(text: str) -> str:
    """A training caption: Data-Juicer's special tokens removed, whitespace collapsed."""
    return " ".join(DJ_SPECIAL_TOKENS.sub(" ", text).split())
