"""``no_grad`` as a decorator that imports torch on first call, so the modules it decorates stay cheap to import."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any


def no_grad(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Run ``fn`` under ``torch.no_grad()`` (what ``@torch.no_grad()`` does, without importing torch now)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        import torch

        with torch.no_grad():
            return fn(*args, **kwargs)

    return wrapper
