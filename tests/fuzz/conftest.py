"""Fuzz suite fixtures: the shared tiny models and runs, built once per session (see harness.SessionResources)."""

from __future__ import annotations

import pytest

from harness import SessionResources


@pytest.fixture(scope="session")
def fuzz_resources(tmp_path_factory) -> SessionResources:
    return SessionResources(tmp_path_factory.mktemp("fuzz-resources"))
