"""Data-stage fixtures: no hub (a missing model fails at once), and a tiny CLIP for the model-based ops."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def clip_dir(tiny_model_path) -> Path:
    return Path(tiny_model_path("clip"))
