"""Stopping a training run on request (the web app's Stop): while the caches fill, and inside the step loop."""

from __future__ import annotations

import threading

import pytest
from safetensors import safe_open

from lorastory.errors import Stopped
from lorastory.train.checkpoint import list_checkpoints
from lorastory.train.config import TrainConfig
from lorastory.train.trainer import train

pytestmark = pytest.mark.slow


def test_stop_while_caching_then_in_the_loop_then_resume(tiny_model_path, style_train_folder, tmp_path):
    out = tmp_path / "run"
    config = TrainConfig(model=str(tiny_model_path("kolors")), data=str(style_train_folder), out=str(out), resolution=64,
                         rank=4, alpha=4.0, lr=1e-3, max_steps=6, batch_size=2, seed=3, gradient_checkpointing=False)
    stop, stages = threading.Event(), []

    def on_stage(stage, done, total):
        stages.append((stage, done, total))
        if stage == "encoding pictures" and done >= 4:  # after the first batch of four
            stop.set()

    # 1. Stopped while the cache fills: nothing trained, the entries written so far kept.
    with pytest.raises(Stopped, match="while encoding pictures"):
        train(config, on_stage=on_stage, stop=stop, say=lambda _: None)
    assert ("loading the model", 1, 1) in stages and ("encoding pictures", 4, 8) in stages
    assert not (out / "lora.safetensors").exists()

    # 2. The next start encodes only the other four pictures; stopped after step 3 (no checkpoint_every
    # set), it writes a checkpoint and the LoRA of step 3.
    stop, said = threading.Event(), []
    result = train(config, on_progress=lambda p: p.step == 3 and stop.set(), stop=stop, say=said.append,
                   on_stage=lambda *s: stages.append(s))
    assert any("cache: 4 image(s)" in line for line in said), said
    assert ("encoding captions", 2, 2) in stages
    assert result.stopped and result.steps == 3
    with safe_open(str(out / "lora.safetensors"), "pt") as handle:
        assert handle.metadata()["lorastory.steps"] == "3"
    assert [step for step, _ in list_checkpoints(out)] == [3]

    # 3. Resumed, it trains the steps left.
    resumed = train(config.model_copy(update={"resume": True}), say=lambda _: None)
    assert resumed.steps == 6 and not resumed.stopped and len(resumed.losses) == 3
