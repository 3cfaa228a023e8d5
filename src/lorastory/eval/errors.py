"""Errors of the evaluation stage: one line each, saying what to do."""

from __future__ import annotations

from lorastory.errors import LorastoryError


class EvalError(LorastoryError):
    """A run cannot be evaluated (missing manifest, panels, story...)."""
