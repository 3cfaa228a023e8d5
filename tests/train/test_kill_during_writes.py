"""kill -9 while the cache and checkpoints are being written, resume, and end with the same LoRA bits.

Each seed kills one run while it fills the latent/text cache and then twice more while it writes a
checkpoint (the temp folder is watched for and the kill comes a random moment after it appears),
resuming with ``--resume`` each time; the final LoRA must equal an uninterrupted run's, tensor for
tensor, and no temp file of the killed writers may be left. With Prodigy and the moving average of
the weights on, their state resumes as exactly (``lora_ema.safetensors`` too).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

STEPS = 8
# The training options of each case: the reference workflow's AdamW, and Prodigy with EMA.
OPTIONS = {"adamw": ["--lr", "1e-3"],
           "prodigy-ema": ["--optimizer", "prodigy", "--lr", "1", "--ema", "--ema-decay", "0.9", "--ema-start-step", "2"]}


def _command(model: Path, data: Path, out: Path, options: str = "adamw") -> list[str]:
    return [sys.executable, "-m", "lorastory", "train", "--model", str(model), "--data", str(data), "--out", str(out),
            "--resolution", "64", "--rank", "2", "--alpha", "2", "--batch-size", "2", *OPTIONS[options],
            "--max-steps", str(STEPS), "--checkpoint-every", "1", "--keep-checkpoints", "2", "--seed", "11",
            "--no-gradient-checkpointing", "--resume"]


def _loras(out: Path) -> dict[str, dict[str, torch.Tensor]]:
    return {p.name: load_file(str(p)) for p in sorted(out.glob("lora*.safetensors"))}


def _env() -> dict[str, str]:
    src = str(Path(__file__).resolve().parents[2] / "src")
    return {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}


def _temps(folder: Path) -> list[Path]:
    try:
        return [Path(e.path) for e in os.scandir(folder) if e.name.startswith(".") and ".tmp" in e.name]
    except OSError:
        return []


def _cache_writing(out: Path) -> bool:
    cache = out / "cache"
    try:
        return any(os.scandir(cache))
    except OSError:
        return False


def _kill_when(command: list[str], ready, delay: float, deadline_s: float = 240) -> bool:
    """Start a run, SIGKILL it ``delay`` seconds after ``ready()`` first holds; False when it ended first."""
    process = subprocess.Popen(command, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + deadline_s
    try:
        while process.poll() is None and time.monotonic() < deadline:
            if ready():
                time.sleep(delay)
                process.send_signal(signal.SIGKILL)
                process.wait()
                return process.returncode == -signal.SIGKILL
            time.sleep(0.0005)
        return False
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
        process.stderr.close()


def _checkpoint_write(out: Path, count: int):
    """True once ``count`` checkpoint temp folders have been seen appearing (each a write in progress)."""
    seen: set[str] = set()

    def ready() -> bool:
        seen.update(p.name for p in _temps(out / "checkpoints") if p.name.startswith(".step-"))
        return len(seen) >= count

    return ready


@pytest.fixture(scope="module")
def reference(tiny_model_path, style_train_folder, tmp_path_factory):
    """Each option set's LoRA files from an uninterrupted run (made on first use)."""
    runs: dict[str, dict[str, dict[str, torch.Tensor]]] = {}

    def get(options: str) -> dict[str, dict[str, torch.Tensor]]:
        if options not in runs:
            out = tmp_path_factory.mktemp("straight") / "run"
            done = subprocess.run(_command(tiny_model_path("sd15"), style_train_folder, out, options), env=_env(),
                                  capture_output=True, text=True)
            assert done.returncode == 0, done.stderr
            runs[options] = _loras(out)
        return runs[options]

    return get


@pytest.mark.slow
@pytest.mark.parametrize(("seed", "options"), [(1, "adamw"), (2, "prodigy-ema")])
def test_killed_during_cache_and_checkpoint_writes_resumes_bit_identical(
        tiny_model_path, style_train_folder, tmp_path, reference, seed, options):
    rng = random.Random(seed)
    out = tmp_path / "run"
    command = _command(tiny_model_path("sd15"), style_train_folder, out, options)

    assert _kill_when(command, lambda: _cache_writing(out), rng.uniform(0, 0.05)), "the run ended before the kill"
    assert not (out / "lora.safetensors").exists()
    for _ in range(2):
        killed = _kill_when(command, _checkpoint_write(out, rng.randint(1, 3)), rng.uniform(0, 0.004))
        assert killed, "the run ended before the kill"

    final = subprocess.run(command, env=_env(), capture_output=True, text=True)
    assert final.returncode == 0, final.stderr
    assert "Traceback" not in final.stderr
    resumed, straight = _loras(out), reference(options)
    expected = ["lora.safetensors", "lora_ema.safetensors"] if "--ema" in OPTIONS[options] else ["lora.safetensors"]
    assert sorted(resumed) == sorted(straight) == expected
    for name, tensors in straight.items():
        assert resumed[name].keys() == tensors.keys()
        assert all(torch.equal(resumed[name][k], tensors[k]) for k in tensors), name
    assert not _temps(out / "checkpoints")
    assert not [p for sub in (out / "cache").iterdir() if sub.is_dir() for p in _temps(sub)]
