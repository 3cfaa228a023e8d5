"""Model families, loading sources, tiny models and the fp16 VAE fallback."""

from __future__ import annotations

import filecmp
import types
import warnings

import pytest
import torch

from lorastory.errors import ConfigError
from lorastory.models.registry import ModelLoadError, detect_family, load_pipeline
from lorastory.models.vae import decode_latents, encode_latents


@pytest.mark.parametrize(("family", "pipeline"), [("kolors", "KolorsPipeline"), ("sdxl", "StableDiffusionXLPipeline"),
                                                   ("sd15", "StableDiffusionPipeline")])
def test_tiny_models_load_through_the_registry(tiny_model_path, family, pipeline):
    folder = tiny_model_path(family)
    assert detect_family(folder).name == family
    assert type(load_pipeline(folder)).__name__ == pipeline


def test_tiny_model_is_deterministic(cli, tmp_path, tiny_model_path):
    result = cli("model", "tiny", "--family", "sd15", "--out", tmp_path / "again")
    assert result.code == 0
    comparison = filecmp.dircmp(tiny_model_path("sd15"), tmp_path / "again")

    def same(cmp) -> bool:
        _, mismatch, errors = filecmp.cmpfiles(cmp.left, cmp.right, cmp.common_files, shallow=False)
        return not (mismatch or errors or cmp.left_only or cmp.right_only) and all(same(s) for s in cmp.subdirs.values())

    assert same(comparison)


def test_unknown_family_and_bad_sources(tmp_path, cli):
    assert "unknown family" in cli("model", "tiny", "--family", "sd3", "--out", tmp_path / "x").err
    with pytest.raises(ModelLoadError, match="no model_index.json"):
        load_pipeline(tmp_path)
    with pytest.raises(ModelLoadError, match="no such folder or file"):
        load_pipeline(tmp_path / "missing")
    (tmp_path / "model.ckpt").write_bytes(b"not really")
    with pytest.raises(ModelLoadError, match="allow-pickle"):
        load_pipeline(tmp_path / "model.ckpt", family="sd15")
    (tmp_path / "model.safetensors").write_bytes(b"not really")
    with pytest.raises(ModelLoadError, match="needs --family"):
        load_pipeline(tmp_path / "model.safetensors")
    with pytest.raises(ModelLoadError, match="cannot load kolors from a single file"):
        load_pipeline(tmp_path / "model.safetensors", family="kolors")
    with pytest.raises(ConfigError, match="unknown model family"):
        load_pipeline(tmp_path / "model.safetensors", family="nosuch")


def test_hub_id_offline_names_the_id_and_the_fix(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="huggingface-cli download Kwai-Kolors/Kolors-diffusers"):
        load_pipeline("Kwai-Kolors/Kolors-diffusers")


class _OverflowingVAE(torch.nn.Module):
    """A VAE-shaped module whose activations exceed fp16's range (65504), as the SDXL VAE's do."""

    def __init__(self) -> None:
        super().__init__()
        self.gain = torch.nn.Parameter(torch.tensor(1000.0))
        self.config = types.SimpleNamespace(scaling_factor=0.13025, shift_factor=None)

    @property
    def device(self) -> torch.device:
        return self.gain.device

    def encode(self, pixels: torch.Tensor):
        hidden = pixels * self.gain * 100  # up to 1e5: inf in fp16
        mean = hidden.mean(dim=1, keepdim=True).repeat(1, 4, 1, 1) / 1e5
        return types.SimpleNamespace(latent_dist=types.SimpleNamespace(mode=lambda: mean[:, :, ::8, ::8]))

    def decode(self, latents: torch.Tensor):
        hidden = latents.repeat_interleave(8, -1).repeat_interleave(8, -2)[:, :3] * self.gain * 100
        return types.SimpleNamespace(sample=hidden / 1e5)


@pytest.mark.parametrize("direction", ["encode", "decode"])
def test_fp16_vae_overflow_falls_back_to_fp32(direction):
    vae = _OverflowingVAE()
    data = torch.rand(1, 3, 64, 64) * 2 - 1 if direction == "encode" else torch.randn(1, 4, 8, 8) * 5
    run = encode_latents if direction == "encode" else decode_latents
    reference = run(vae, data)
    vae.to(torch.float16)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = run(vae, data)
    assert any("redoing it in fp32" in str(w.message) for w in caught)
    assert torch.isfinite(result).all() and torch.allclose(result, reference, atol=1e-3)
    assert next(vae.parameters()).dtype == torch.float16  # back to the caller's precision
