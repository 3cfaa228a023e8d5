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


@pytest.fixture(scope="session")
def tiny_captioner(tmp_path_factory):
    """Each tiny captioner kind built at most once per session: kind -> folder."""
    from lorastory.models.captioners.tiny import build_tiny_captioner

    built: dict[str, Path] = {}

    def get(kind: str) -> Path:
        if kind not in built:
            built[kind] = build_tiny_captioner(kind, tmp_path_factory.mktemp("captioners") / kind)
        return built[kind]

    return get


@pytest.fixture
def uncaptioned(tmp_path, cli):
    """A dataset of six toy pictures imported without captions: its folder."""
    from lorastory.toyworld.dataset import write_toy_dataset

    raw = write_toy_dataset(tmp_path / "raw", count=6, size=48, bad_samples=False).folder
    for text in raw.glob("*.txt"):
        text.unlink()
    assert cli("data", "import", str(raw), "--out", str(tmp_path / "ds"), "--allow-empty-caption").code == 0
    return tmp_path / "ds"
