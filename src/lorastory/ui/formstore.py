"""What the page's forms hold, kept per workspace so a reload (or a restart) shows them again.

One small JSON file in the workspace (``.lorastory-ui.json``), rewritten atomically on each
change: the form values by key (``train.rank``, ``story.title``...) and the selected runs. A
damaged or foreign file is ignored (the forms start from their defaults), never trusted for
more than values: paths in it still go through the workspace checks when used.
"""

from __future__ import annotations

import json
import math
import threading
from pathlib import Path
from typing import Any

from lorastory.fileio import atomic_write_json

STATE_FILE = ".lorastory-ui.json"
MAX_BYTES = 4 << 20  # a form is small; a larger file is not ours


def plain(value: Any) -> Any:
    """``value`` as JSON can hold it: a table as a list of rows, NaN as None, numpy scalars as numbers."""
    if hasattr(value, "columns") and hasattr(value, "values"):  # a pandas DataFrame from a table
        return [[plain(cell) for cell in row] for row in value.astype(object).values.tolist()]
    if isinstance(value, dict) and "data" in value and "headers" in value:
        return plain(value["data"])
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # numpy scalar
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


class FormStore:
    """The workspace's remembered form values (thread-safe within the app's process)."""

    def __init__(self, root: str | Path) -> None:
        self.path = Path(root) / STATE_FILE
        self._lock = threading.Lock()

    def load(self) -> dict[str, Any]:
        """Every remembered value by key; empty when there is no file or it cannot be read."""
        try:
            if self.path.is_symlink() or self.path.stat().st_size > MAX_BYTES:
                return {}
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def update(self, values: dict[str, Any]) -> None:
        """Remember ``values`` (key -> value), keeping the other keys."""
        with self._lock:
            data = self.load()
            new = {key: plain(value) for key, value in values.items()}
            if all(data.get(key) == value and key in data for key, value in new.items()):
                return
            data.update(new)
            atomic_write_json(self.path, data)
