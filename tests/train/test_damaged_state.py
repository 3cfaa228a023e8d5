"""Damaged checkpoints are moved aside and the previous good one resumed; damaged cache entries re-encoded.

Training is exact on resume, so each repaired run must end with the LoRA of an undamaged one.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lorastory.train.cache import TensorCache, complete_safetensors
from lorastory.train.checkpoint import DamagedCheckpoint, list_checkpoints, read_checkpoint
from lorastory.train.config import TrainConfig
from lorastory.train.trainer import train


def _config(model, data, out, **overrides) -> TrainConfig:
    values = dict(model=str(model), data=str(data), out=str(out), resolution=64, rank=2, alpha=2.0, lr=1e-3,
                  max_steps=3, batch_size=2, seed=5, gradient_checkpointing=False, checkpoint_every=1)
    values.update(overrides)
    return TrainConfig(**values)


def _same_lora(a: Path, b: Path) -> bool:
    first, second = load_file(str(a)), load_file(str(b))
    return first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


@pytest.fixture(scope="module")
def finished_run(tiny_model_path, style_train_folder, tmp_path_factory):
    """A finished 3-step run with a checkpoint at every step: the reference for the resumed runs."""
    out = tmp_path_factory.mktemp("reference") / "run"
    train(_config(tiny_model_path("sd15"), style_train_folder, out), say=lambda m: None)
    return out


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _empty(path: Path) -> None:
    path.write_bytes(b"")


def _garbage(path: Path) -> None:
    path.write_bytes(b"this is not a checkpoint file at all\n" * 20)


DAMAGES = [("lora_params.safetensors", _truncate), ("lora_params.safetensors", _empty),
           ("lora_params.safetensors", _garbage), ("optimizer.pt", _truncate), ("optimizer.pt", _empty),
           ("optimizer.pt", _garbage), ("rng.pt", _truncate), ("state.json", _empty), ("state.json", _garbage)]


def _copy_run(source: Path, target: Path) -> None:
    import shutil

    shutil.copytree(source, target)
    (target / "lora.safetensors").unlink()  # as if killed before the end


@pytest.mark.parametrize(("file", "damage"), DAMAGES, ids=[f"{f}-{d.__name__[1:]}" for f, d in DAMAGES])
def test_damaged_checkpoint_file_is_named_and_caught(finished_run, tmp_path, file, damage):
    run = tmp_path / "run"
    _copy_run(finished_run, run)
    newest = run / "checkpoints" / "step-000003"
    damage(newest / file)
    with pytest.raises(DamagedCheckpoint) as caught:
        read_checkpoint(newest, TrainConfig.from_yaml(run / "config.yaml").resume_fingerprint())
    assert caught.value.path == newest / file and file in str(caught.value)
    assert len(str(caught.value).splitlines()) == 1


@pytest.mark.parametrize(("file", "damage"), [("lora_params.safetensors", _truncate), ("optimizer.pt", _garbage)])
def test_resume_moves_the_damaged_checkpoint_aside_and_ends_bit_identical(
        finished_run, tiny_model_path, style_train_folder, tmp_path, cli, file, damage):
    run = tmp_path / "run"
    _copy_run(finished_run, run)
    newest = run / "checkpoints" / "step-000003"
    damage(newest / file)
    damaged_bytes = (newest / file).read_bytes()
    result = cli("train", run / "config.yaml", "--out", run, "--resume")
    assert result.code == 0, result.err
    assert "Traceback" not in result.err
    assert f"checkpoint step-000003 is damaged: {newest / file}: cannot be read" in result.err
    assert "moved aside to step-000003.broken-1" in result.err
    assert "resumed from step-000002" in result.err
    aside = run / "checkpoints" / "step-000003.broken-1"
    assert (aside / file).read_bytes() == damaged_bytes  # kept for inspection, never deleted
    assert [step for step, _ in list_checkpoints(run)] == [1, 2, 3]  # step 3 written again
    assert _same_lora(run / "lora.safetensors", finished_run / "lora.safetensors")


def test_every_checkpoint_damaged_starts_over_with_a_warning(finished_run, tmp_path, cli):
    run = tmp_path / "run"
    _copy_run(finished_run, run)
    for _, folder in list_checkpoints(run):
        _empty(folder / "lora_params.safetensors")
    (run / "checkpoints" / "step-000002.broken-1").mkdir()  # an earlier aside copy is not overwritten
    result = cli("train", run / "config.yaml", "--out", run, "--resume")
    assert result.code == 0, result.err
    assert "Traceback" not in result.err
    assert "could be read (moved aside); starting from the beginning" in result.err
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert "step-000001.broken-1" in names and "step-000002.broken-2" in names and "step-000003.broken-1" in names
    assert _same_lora(run / "lora.safetensors", finished_run / "lora.safetensors")


def test_checkpoint_from_other_settings_is_refused_not_moved(finished_run, tmp_path, cli):
    run = tmp_path / "run"
    _copy_run(finished_run, run)
    result = cli("train", run / "config.yaml", "--out", run, "--resume", "--lr", "2e-3")
    assert result.code == 1 and "different training settings" in result.err
    assert not list((run / "checkpoints").glob("*.broken-*"))


# --- 5. cache ------------------------------------------------------------------------------


def test_damaged_cache_entries_are_re_encoded(tiny_model_path, style_train_folder, tmp_path):
    cache_dir = tmp_path / "cache"
    model = tiny_model_path("sd15")
    first = tmp_path / "first"
    train(_config(model, style_train_folder, first, checkpoint_every=0, cache_dir=str(cache_dir)), say=lambda m: None)
    entries = sorted(cache_dir.rglob("*.safetensors"))
    assert entries and all(complete_safetensors(p) for p in entries)
    _truncate(entries[0])
    _empty(entries[1])
    entries[2].write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header!!}")
    entries[3].write_bytes(entries[3].read_bytes() + b"\x00" * 7)  # padded: the sizes disagree too

    messages: list[str] = []
    second = tmp_path / "second"
    train(_config(model, style_train_folder, second, checkpoint_every=0, cache_dir=str(cache_dir)), say=messages.append)
    assert any("4 damaged cache entries were re-encoded" in m for m in messages), messages
    assert all(complete_safetensors(p) for p in entries)
    assert _same_lora(first / "lora.safetensors", second / "lora.safetensors")


def test_cache_load_of_a_damaged_entry_is_a_one_line_error(tmp_path):
    cache = TensorCache(tmp_path)
    cache.save("ab" * 32, {"x": torch.ones(3)})
    assert cache.has("ab" * 32) and not cache.damaged
    _truncate(cache.path("ab" * 32))
    assert not cache.has("ab" * 32) and cache.damaged == {"ab" * 32}
    from lorastory.errors import DataError

    with pytest.raises(DataError, match="cannot be read .*delete it and run again"):
        cache.load("ab" * 32)
