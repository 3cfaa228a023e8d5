"""Reading a model's weight files ahead of its load, and loading straight onto a device."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from lorastory.models.prefetch import prefetch_weights, weight_files
from lorastory.models.registry import load_pipeline

TOY_KOLORS = Path(__file__).resolve().parents[2] / "src" / "lorastory" / "models" / "assets" / "toy" / "kolors"


def _write(path: Path, data: bytes = b"\0" * 64) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_weight_files_are_the_ones_a_load_without_variant_reads(tmp_path):
    _write(tmp_path / "model_index.json", b'{"_class_name": "KolorsPipeline"}')
    plain = _write(tmp_path / "unet" / "diffusion_pytorch_model.safetensors")
    _write(tmp_path / "unet" / "diffusion_pytorch_model.fp16.safetensors")  # a variant beside the plain file: skipped
    shards = [_write(tmp_path / "text_encoder" / f"model.fp16-0000{i}-of-00002.safetensors") for i in (1, 2)]
    _write(tmp_path / "text_encoder" / "model.safetensors.index.json")
    _write(tmp_path / "vae" / "config.json")
    _write(tmp_path / ".cache" / "x.safetensors")
    assert weight_files(tmp_path) == [*shards, plain]
    assert weight_files(plain) == [plain]
    assert weight_files(tmp_path / "unet") == []  # not a diffusers folder
    assert weight_files("Kwai-Kolors/Kolors-diffusers") == []  # a hub id


def test_prefetch_reads_a_local_model_that_fits_in_memory_once(tmp_path):
    model = tmp_path / "model"
    shutil.copytree(TOY_KOLORS, model)
    files = sorted(model.rglob("*.safetensors"))
    size = sum(f.stat().st_size for f in files)
    assert files and prefetch_weights(model, memory=2 * size - 1) == []  # over half of what is free
    assert prefetch_weights(model) == files
    assert prefetch_weights(model) == []  # asked already (the command first, then the load)
    assert prefetch_weights("Kwai-Kolors/Kolors-diffusers") == []


def test_load_onto_a_device_gives_the_same_weights_as_a_load_then_move(tiny_model_path):
    folder = tiny_model_path("kolors")
    plain = load_pipeline(folder, dtype=torch.float32)
    mapped = load_pipeline(folder, dtype=torch.float32, device="cpu")
    for name in ("unet", "vae", "text_encoder"):
        before, after = getattr(plain, name).state_dict(), getattr(mapped, name).state_dict()
        assert before.keys() == after.keys()
        assert all(torch.equal(before[key], after[key]) for key in before), name
    mapped.to("cpu")  # a pipeline loaded onto a device still moves
