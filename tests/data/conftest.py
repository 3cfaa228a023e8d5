"""Data-stage fixtures: no hub (a missing model fails at once), and a tiny CLIP for the model-based ops."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture
def clip_dir(tiny_clip) -> Path:
    return tiny_clip
