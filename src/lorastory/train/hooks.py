"""What a caller of :func:`lorastory.train.train` hears and asks outside the step loop.

Loading the model and filling the caches take minutes on a large model; a caller (the web app)
shows their progress with counts and may ask the run to stop. ``stop`` is an event-like object
(``threading.Event``): set, the run ends at the next unit of work. Before training starts that
raises :class:`~lorastory.errors.Stopped` (the cache entries written so far stay and are reused);
inside the step loop the trainer itself finishes the step, writes a checkpoint and the LoRA, and
returns with ``stopped`` set (:mod:`lorastory.train.trainer`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lorastory.errors import Stopped

StageCallback = Callable[[str, int, int], None]


@dataclass
class StageHooks:
    """``on_stage(stage, done, total)`` after each unit of work; ``stop`` asked between them."""

    on_stage: StageCallback | None = None
    stop: Any = None

    def stopping(self) -> bool:
        return self.stop is not None and bool(self.stop.is_set())

    def report(self, stage: str, done: int, total: int) -> None:
        """Tell the caller how far ``stage`` is, then stop here if asked."""
        if self.on_stage is not None:
            self.on_stage(stage, done, total)
        self.check(stage)

    def check(self, stage: str) -> None:
        if self.stopping():
            raise Stopped(f"stopped before training began (while {stage}); the cache entries written so far are "
                          "kept and reused when the run starts again")
