"""The web app's checkpoint view: the Train tab's curves and recommendation, the Story tab's recommended scale."""

from __future__ import annotations

import shutil

import pytest

from lorastory.ui import actions
from lorastory.ui.jobs import DONE, JobQueue
from lorastory.ui.workspace import Workspace

PROMPT = "striped style 条纹, a red square"


@pytest.fixture(scope="module")
def scored_ws(tmp_path_factory, tiny_model_path, style_train_folder):
    """A workspace with a tiny trained run (a checkpoint each step) scored by the Train tab's job."""
    from lorastory.train.config import TrainConfig
    from lorastory.train.trainer import train

    ws = Workspace(tmp_path_factory.mktemp("ckpt-ui") / "ws")
    shutil.copytree(tiny_model_path("clip"), ws.root / "models" / "toy-clip")
    run = ws.child("runs", "r1")
    train(TrainConfig(model=str(tiny_model_path("kolors")), data=str(style_train_folder), out=str(run), resolution=64,
                      rank=4, alpha=4.0, lr=3e-3, max_steps=2, batch_size=2, gradient_checkpointing=False,
                      checkpoint_every=1, validation_prompts=[PROMPT], validation_steps=2), say=lambda _m: None)
    assert actions.checkpoint_choice(ws, str(run)) == (None, "")  # nothing scored yet: nothing shown
    queue = JobQueue()
    try:
        job = queue.wait(queue.submit("train", "checkpoints", actions.checkpoints_job(ws, "runs/r1")).id, 600)
    finally:
        queue.shutdown()
    assert job.status == DONE, job.error
    return ws, run, job.result


def test_train_tab_shows_the_curves_and_the_recommendation(scored_ws):
    ws, run, result = scored_ws
    plot, text = actions.checkpoint_choice(ws, str(run))
    assert plot is not None and plot.endswith("checkpoints.png") and ws.is_inside(plot)
    assert f"**Recommended checkpoint:** {result['reason']}" in text and "runs/r1/best.safetensors" in text
    assert f"**Recommended LoRA scale:** {result['scale']:g}" in text


def test_story_tab_scale_defaults_to_the_recommended_one(scored_ws):
    ws, _run, result = scored_ws
    assert actions.recommended_scale(ws, "runs/r1/best.safetensors") == result["scale"]
    assert actions.recommended_scale(ws, "runs/r1/loras/step-000001.safetensors") in (None, result["scale"])
    assert actions.recommended_scale(ws, "") is None and actions.recommended_scale(ws, "../outside.safetensors") is None


def test_the_tabs_are_wired(tmp_path):
    from lorastory.ui.app import create_app

    demo = create_app(tmp_path / "ws", build_default_model=False)
    try:
        config = demo.get_config_file()
    finally:
        demo.lorastory.jobs.shutdown()
    ids = {c.get("props", {}).get("elem_id"): c["id"] for c in config["components"]}
    assert {"checkpoint-plot", "checkpoint-choice", "score-checkpoints-btn", "story-lora-scale"} <= set(ids)
    changes = [d for d in config["dependencies"] if any(t[1] == "change" for t in d["targets"])]
    assert any(ids["story-lora-scale"] in d["outputs"] for d in changes)
    polls = [d for d in config["dependencies"] if d["api_name"].startswith("poll")]
    assert any(ids["checkpoint-plot"] in d["outputs"] for d in polls)
