"""Model fixtures: tiny diffusers folders of each family, built once per test session."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_model_dir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """``tiny_model_dir("kolors")`` → a tiny Kolors diffusers folder (sdxl, sd15 likewise), cached for the session.

    Shares the suite-wide ``tiny_model_path`` cache when tests/conftest.py has one, so a
    full run builds each family once.
    """
    try:
        shared = request.getfixturevalue("tiny_model_path")
    except pytest.FixtureLookupError:
        shared = None
    if shared is not None:
        return lambda family: Path(shared(family))

    from lorastory.models.tiny import build_tiny_model

    root = tmp_path_factory.mktemp("tiny-models")
    built: dict[str, Path] = {}

    def get(family: str) -> Path:
        if family not in built:
            built[family] = build_tiny_model(family, root / family)
        return built[family]

    return get
