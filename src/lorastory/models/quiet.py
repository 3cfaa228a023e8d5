"""The model libraries' warnings and progress bars held back around a load that is known to trigger them."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' warnings (the 'falling back to the Pil processor' one) and progress bars."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


@contextlib.contextmanager
def quiet_diffusers() -> Iterator[None]:
    """Silence diffusers' warnings: "modules that should be kept in float32: []", once per module it casts."""
    from diffusers.utils import logging as diffusers_logging

    level = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()
    try:
        yield
    finally:
        diffusers_logging.set_verbosity(level)


@contextlib.contextmanager
def loading_bars_off() -> Iterator[None]:
    """No per-component loading bars from diffusers or transformers: the caller reports progress in its own terms."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    restore = [m for m in (diffusers_logging, transformers_logging) if m.is_progress_bar_enabled()]
    for module in restore:
        module.disable_progress_bar()
    try:
        yield
    finally:
        for module in restore:
            module.enable_progress_bar()
