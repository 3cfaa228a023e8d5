"""Training options: the nested LoRA shape (old files and checkpoints still fit), EMA, Prodigy and Adafactor.

Each optimizer trains a few steps on a tiny model and resumes bit-identically from a checkpoint,
with the moving average of the weights on where it applies.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from lorastory.train.config import TrainConfig
from lorastory.train.ema import LoraEma
from lorastory.train.trainer import train

# --- the nested LoRA shape ----------------------------------------------------------------

# Written by lorastory before the LoRA shape was nested; its fingerprints were computed on main (575c447).
OLD_FLAT_FILE = """\
model: /models/kolors
data: data/train
out: runs/a
rank: 4
alpha: 2.0
lora_dropout: 0.1
target_modules: [to_q, conv1]
train_text_encoder: true
optimizer: adamw8bit
seed: 7
"""
OLD_FINGERPRINTS = ("d89fa7494c0e4e7e", "ed91452a91178ef3")
DEFAULT_FINGERPRINTS = ("7532485aefb678b9", "d7c90fc49317ae5b")  # TrainConfig(model="m", data="d", out="o") on main


def test_old_flat_files_load_with_the_fingerprints_they_had(tmp_path):
    """Checkpoints of earlier runs must still resume: the same settings hash as they did before the nesting."""
    old = tmp_path / "old.yaml"
    old.write_text(OLD_FLAT_FILE, encoding="utf-8")
    config = TrainConfig.from_yaml(old)
    assert (config.lora.rank, config.lora.alpha, config.lora.dropout) == (4, 2.0, 0.1)
    assert config.lora.target_modules == ["to_q", "conv1"] and config.lora.train_text_encoder
    assert (config.fingerprint(), config.resume_fingerprint()) == OLD_FINGERPRINTS
    default = TrainConfig(model="m", data="d", out="o")
    assert (default.fingerprint(), default.resume_fingerprint()) == DEFAULT_FINGERPRINTS

    # Written back nested; read back equal, with the same fingerprint.
    config.save_yaml(tmp_path / "new.yaml")
    text = (tmp_path / "new.yaml").read_text(encoding="utf-8")
    assert "\nlora:\n  rank: 4\n" in text and "lora_dropout" not in text and "\nrank:" not in text
    assert TrainConfig.from_yaml(tmp_path / "new.yaml") == config


def test_new_settings_change_the_fingerprint_only_when_set():
    base = TrainConfig(model="m", data="d", out="o")
    changed = [base.model_copy(update=u) for u in (dict(ema=True), dict(optimizer="prodigy"))]
    changed.append(TrainConfig(model="m", data="d", out="o", text_encoder_targets=["q_proj"]))
    changed.append(TrainConfig(model="m", data="d", out="o", optimizer="prodigy", prodigy={"d_coef": 2.0}))
    prints = {c.fingerprint() for c in changed}
    assert len(prints) == len(changed) and base.fingerprint() not in prints


def test_flags_override_one_setting_of_a_nested_file(tiny_model_path, style_train_folder, tmp_path, cli):
    """``--rank`` over a file's ``lora:`` block changes the rank alone; the bad rank fails at once, in one line."""
    config = tmp_path / "train.yaml"
    config.write_text(f"model: {tmp_path / 'no-such-model'}\ndata: {style_train_folder}\nout: {tmp_path / 'run'}\n"
                      "lora:\n  rank: 8\n  alpha: 2\n", encoding="utf-8")
    result = cli("train", config, "--rank", "2048")
    assert result.code == 1 and result.error_line("lora.rank", "1024") and "no-such-model" not in result.err
    assert not (tmp_path / "run").exists()
    result = cli("train", config, "--model", tiny_model_path("sd15"), "--rank", "2", "--resolution", "64",
                 "--max-steps", "1", "--no-gradient-checkpointing")
    assert result.code == 0, result.err
    written = TrainConfig.from_yaml(tmp_path / "run" / "config.yaml")
    assert (written.lora.rank, written.lora.alpha) == (2, 2.0)


# --- EMA ----------------------------------------------------------------------------------


def test_ema_follows_until_its_start_then_averages_every_n_steps():
    weights = {"w": torch.zeros(3)}
    ema = LoraEma(weights, decay=0.5, start_step=2, every=2)
    expected = torch.zeros(3)
    for step in range(1, 9):
        weights["w"] = torch.full((3,), float(step))
        ema.update(weights, step)
        since = step - 2
        if since <= 0:
            expected = weights["w"].clone()  # before the start: a copy
        elif since % 2 == 0:
            decay = min(0.5, (1 + since // 2) / (10 + since // 2))
            expected = decay * expected + (1 - decay) * weights["w"]
        assert torch.allclose(ema.shadow["w"], expected), step
        assert ema.shadow["w"].dtype == torch.float32
    assert not torch.equal(ema.shadow["w"], weights["w"])


# --- optimizers and resume ----------------------------------------------------------------


def _config(model, data, out, **overrides) -> TrainConfig:
    values = dict(model=str(model), data=str(data), out=str(out), resolution=64, rank=2, alpha=2.0, lr=1e-3,
                  max_steps=3, batch_size=2, seed=5, gradient_checkpointing=False, checkpoint_every=1)
    values.update(overrides)
    return TrainConfig.from_dict(values)


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def _equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


OPTIONS = {
    "prodigy-ema": dict(optimizer="prodigy", lr=1.0, ema=True, ema_decay=0.9, ema_start_step=1,
                        prodigy={"d_coef": 2.0}),
    "adafactor": dict(optimizer="adafactor", ema=True, ema_every=2),
    "adafactor-relative-step": dict(optimizer="adafactor", adafactor={"relative_step": True, "warmup_init": True}),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(OPTIONS))
def test_each_optimizer_trains_and_resumes_bit_identically(tiny_model_path, style_train_folder, tmp_path, name):
    straight = tmp_path / "straight"
    messages: list[str] = []
    train(_config(tiny_model_path("sd15"), style_train_folder, straight, **OPTIONS[name]), say=messages.append)
    raw = _tensors(straight / "lora.safetensors")
    assert any(t.abs().max() > 0 for k, t in raw.items() if "lora_B" in k or "lora_up" in k)  # it learned
    assert not any("Traceback" in m for m in messages)

    # Stopped after step 1 (the later checkpoints and the LoRA gone), then resumed: the same bits.
    resumed = tmp_path / "resumed"
    shutil.copytree(straight, resumed)
    for stale in ["lora.safetensors", "lora_ema.safetensors"]:
        (resumed / stale).unlink(missing_ok=True)
    for step in (2, 3):
        shutil.rmtree(resumed / "checkpoints" / f"step-00000{step}")
    said: list[str] = []
    config = TrainConfig.from_yaml(resumed / "config.yaml").model_copy(update={"out": str(resumed), "resume": True})
    train(config, say=said.append)
    assert any("resumed from step-000001" in m for m in said)
    assert _equal(_tensors(resumed / "lora.safetensors"), raw)
    if config.ema:
        ema = _tensors(straight / "lora_ema.safetensors")
        assert _equal(_tensors(resumed / "lora_ema.safetensors"), ema)
        assert ema.keys() == raw.keys() and not _equal(ema, raw)  # same layout, other weights


def test_ema_file_has_the_default_files_layout_and_metadata(tiny_model_path, style_train_folder, tmp_path):
    out = tmp_path / "run"
    result = train(_config(tiny_model_path("kolors"), style_train_folder, out, max_steps=2, checkpoint_every=0,
                           ema=True, ema_decay=0.5, save_formats=["diffusers", "kohya"]), say=lambda m: None)
    assert [p.name for p in result.lora_files] == ["lora.safetensors", "lora_kohya.safetensors",
                                                   "lora_ema.safetensors", "lora_ema_kohya.safetensors"]
    for stem in ("lora", "lora_kohya"):
        with safe_open(str(out / f"{stem}.safetensors"), "pt") as plain, \
                safe_open(str(out / f"{stem.replace('lora', 'lora_ema')}.safetensors"), "pt") as averaged:
            assert set(plain.keys()) == set(averaged.keys())
            extra = set(averaged.metadata()) - set(plain.metadata())
            assert extra == {"lorastory.ema_decay"}
            assert {k: v for k, v in averaged.metadata().items() if k in plain.metadata()} == plain.metadata()
            assert any(not torch.equal(plain.get_tensor(k), averaged.get_tensor(k)) for k in plain.keys())

    from lorastory.models.lora import apply_lora
    from lorastory.models.registry import load_pipeline

    info = apply_lora(load_pipeline(tiny_model_path("kolors")), out / "lora_ema.safetensors")
    assert info.rank == 2 and info.by_lorastory
