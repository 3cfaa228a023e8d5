"""The project's exception types.

Every error a user can cause is a :class:`LorastoryError`; its message is one
line that says what went wrong and what to do. The CLI prints it and exits 1;
anything else is a bug and shows a traceback.
"""

from __future__ import annotations


def first_line(err: BaseException, limit: int = 160) -> str:
    """The first line of an exception's message (its type when empty), shortened to ``limit``."""
    line = (str(err).strip().splitlines() or [type(err).__name__])[0] or type(err).__name__
    return line if len(line) <= limit else line[: limit - 3] + "..."


class LorastoryError(Exception):
    """Base class: a problem the user can fix; ``str(err)`` is the whole message."""


class ConfigError(LorastoryError):
    """A config or recipe file is missing, unreadable or invalid."""


class RecipeError(ConfigError):
    """A Data-Juicer-format recipe names an unknown op or a bad parameter."""


class DataError(LorastoryError):
    """Input data (a dataset file, an image, a caption) cannot be used."""


class SourceError(DataError):
    """An import source cannot be found or read."""


class BadImageError(DataError):
    """One image cannot be used; the message is the reason shown in reports."""


class OutputError(LorastoryError):
    """An output cannot be written where asked, or would destroy one of the command's inputs."""


class TrainingError(LorastoryError):
    """Training cannot go on (diverged loss, unusable settings, processes that disagree)."""


class Stopped(LorastoryError):
    """Work was stopped on request (a ``stop`` event was set); the message says what was kept."""


class ScorerModelError(LorastoryError):
    """A scoring model (CLIP, aesthetic predictor) cannot be found, read or used."""


class ClipModelError(ScorerModelError):
    """A CLIP model cannot be found or loaded."""


class AestheticModelError(ScorerModelError):
    """Aesthetic-predictor weights cannot be found, read or matched to a CLIP model."""


class MissingExtraError(LorastoryError):
    """An optional dependency is not installed; the message names the extra."""

    def __init__(self, package: str, extra: str, purpose: str) -> None:
        super().__init__(
            f"{purpose} needs the '{package}' package: pip install 'lorastory[{extra}]'"
        )


class CaptionerError(LorastoryError):
    """A captioning or tagging model cannot be found, loaded or used."""
