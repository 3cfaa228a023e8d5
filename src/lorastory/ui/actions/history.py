"""A training run's loss history, read back from its TensorBoard log (``RUN/logs``).

A resumed run reports only its new steps; the Train tab's plot starts with these, so it
shows the whole run.
"""

from __future__ import annotations

from pathlib import Path

LOSS_TAG = "train/loss"


def loss_history(out: str | Path) -> list[tuple[int, float]]:
    """(step, loss) pairs logged by earlier sessions of the run in ``out``, by step (the newest value
    of a step wins); empty when there is no log or TensorBoard is not installed."""
    logs = Path(out) / "logs"
    folders = sorted({p.parent for p in logs.rglob("events.out.tfevents.*")}) if logs.is_dir() else []
    if not folders:
        return []
    try:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    except ImportError:
        return []
    found: dict[int, float] = {}
    for folder in folders:
        for path in sorted(folder.glob("events.out.tfevents.*"), key=lambda p: p.stat().st_mtime):
            events = EventAccumulator(str(path), size_guidance={"scalars": 0})
            try:
                events.Reload()
                scalars = events.Scalars(LOSS_TAG) if LOSS_TAG in events.Tags().get("scalars", []) else []
            except Exception:  # noqa: BLE001 - a damaged log only loses the plot's history
                continue
            found.update((int(e.step), float(e.value)) for e in scalars)
    return sorted(found.items())
