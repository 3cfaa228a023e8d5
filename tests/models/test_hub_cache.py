"""Hub ids load offline from the Hugging Face cache, as after ``huggingface-cli download`` on a machine with
network: a known id (its family from the registry) and an unknown one (its family read from the cached
``model_index.json``); Qwen-Image-Edit keeps its processor for the in-context reference."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from lorastory.models.registry import ModelLoadError, denoiser, family_of_pipeline, load_pipeline


def _download(cache: Path, repo_id: str, folder: Path) -> None:
    """The hub cache's layout for one repository at one commit (what ``huggingface-cli download`` leaves)."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    commit = "3f1c0a7e" * 5
    shutil.copytree(folder, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit, encoding="utf-8")


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def test_a_known_hub_id_loads_from_the_cache_offline(hub_cache, tiny_model_path):
    with pytest.raises(ModelLoadError, match="huggingface-cli download Kwai-Kolors/Kolors-diffusers"):
        load_pipeline("Kwai-Kolors/Kolors-diffusers")  # not downloaded yet: the fix, in one line
    _download(hub_cache, "Kwai-Kolors/Kolors-diffusers", tiny_model_path("kolors"))
    pipe = load_pipeline("Kwai-Kolors/Kolors-diffusers")
    assert type(pipe).__name__ == "KolorsPipeline" and denoiser(pipe) is pipe.unet


def test_an_unknown_hub_id_is_recognised_from_its_cached_index_and_an_edit_model_keeps_its_processor(
        hub_cache, tmp_path):
    from lorastory.cli import main

    edit = tmp_path / "edit"
    assert main(["model", "tiny", "--family", "qwen-image-edit", "--out", str(edit)]) == 0
    _download(hub_cache, "someone/tiny-qwen-image-edit", edit)
    pipe = load_pipeline("someone/tiny-qwen-image-edit")
    assert type(pipe).__name__ == "QwenImagePipeline"  # it draws stories from text
    in_context = family_of_pipeline(pipe).in_context_pipe(pipe)
    assert type(in_context).__name__ == "QwenImageEditPipeline" and in_context.transformer is denoiser(pipe)
    assert in_context.processor.tokenizer is pipe.tokenizer
