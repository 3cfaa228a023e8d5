"""Issue 22, defects 6, 7, 10 and 11 without a browser: Stop and progress, lists, remembered forms, and the
smaller defects (identical jobs, reused names, wording, separators, offline hub ids, np, empty uploads, LoRA names)."""

from __future__ import annotations

import shutil
import time

import pytest

from lorastory.demo import EXAMPLES
from lorastory.errors import ConfigError, DataError, TrainingError
from lorastory.eval.compare import _half
from lorastory.generate.pngmeta import read_parameters
from lorastory.generate.story_file import load_story
from lorastory.train.checkpoint import list_checkpoints
from lorastory.ui import actions, presets
from lorastory.ui.formstore import FormStore
from lorastory.ui.jobs import CANCELLED, DONE, JobContext, eta_text
from lorastory.ui.tabs.common import err, md_list
from lorastory.ui.tabs.pagestate import STORY_KEYS
from lorastory.ui.wording import ui_words
from lorastory.ui.workspace import Workspace


@pytest.fixture(scope="module")
def app(tmp_path_factory, toy_model_path, style_train_folder):
    """The app over a workspace with the toy model and a training folder; its tabs and page state."""
    from lorastory.ui.app import create_app

    root = tmp_path_factory.mktemp("jobs") / "ws"
    shutil.copytree(toy_model_path("kolors"), root / "models" / "toy-kolors")
    shutil.copytree(style_train_folder, root / "train" / "style")
    demo = create_app(root, build_default_model=False)
    yield demo
    demo.lorastory.jobs.shutdown()


def story_values(story_tab, title="t", name="my-story", mode="none"):
    """The Story tab's inputs for on_generate: the form (story_inputs order), model, LoRA, scale, run name, base
    dtype, offload."""
    form = [title, "", "", "", 2, 4.0, 64, 64, 0, "Euler", [["a cat", "", "", ""]], mode, 1.0, "", "", ",", None]
    return [*form[: len(story_tab.story_inputs)], "models/toy-kolors", "", 0.8, name, "default", False]


def test_identical_generate_clicks_and_reused_names(app, blocked):
    """Defect 11: a second identical Generate is refused; a taken run name gets a free one (never overwritten)."""
    story, queue, ws = app.lorastory_tabs["story"], app.lorastory.jobs, app.lorastory.ws
    (ws.root / "stories" / "taken").mkdir(parents=True)
    release = blocked(queue)
    try:
        first, _ = story.on_generate(*story_values(story))
        assert first.startswith("**Queued:**") and "story my-story" in first
        again, _ = story.on_generate(*story_values(story))
        assert "the same work is already queued" in again
        other, _ = story.on_generate(*story_values(story, title="another"))  # same name, other story: my-story-2
        assert "this run is stories/my-story-2" in other
        taken, _ = story.on_generate(*story_values(story, title="third", name="taken"))
        assert "this run is stories/taken-2" in taken
        titles = [j.title for j in queue.jobs("story") if j.active]
        assert sorted(titles) == ["story my-story", "story my-story-2", "story taken-2"]
        # The queue above the tabs lists them, and cancels the one picked.
        panel = app.lorastory_tabs["queue"]
        _state, text, pick = panel.show_queue({}, None)
        assert "story my-story-2" in text and len(pick["choices"]) == 4
        victim = next(j for j in queue.jobs("story") if j.title == "story taken-2")
        assert "Stopping" in panel.on_cancel(victim.id) and queue.get(victim.id).status == CANCELLED
    finally:
        for job in queue.jobs("story"):
            queue.cancel(job.id)
        release.set()


def test_a_training_run_name_in_use_is_refused_unless_resumed(app):
    ws = app.lorastory.ws
    (ws.root / "runs" / "used").mkdir(parents=True)
    (ws.root / "runs" / "used" / "config.yaml").write_text("x: 1\n", encoding="utf-8")
    form = dict(presets.load_presets()["quick check (64², 4 steps)"])
    with pytest.raises(ConfigError, match="runs/used already exists; tick 'resume from the newest checkpoint'"):
        actions.train_config(ws, "models/toy-kolors", "train/style", "used", form)
    assert actions.train_config(ws, "models/toy-kolors", "train/style", "used", dict(form, resume=True)).resume


def test_messages_speak_the_apps_language():
    """Defect 11: no CLI flags and no pydantic prefixes on the page."""
    shown = err(TrainingError("runs/x already has checkpoints; pass --resume to continue or choose a new --out"))
    assert "--" not in shown and "tick 'resume from the newest checkpoint' to continue" in shown
    assert "Value error" not in err(ConfigError("story form: panels: Value error, a panel needs a prompt"))
    reason = "empty or missing caption (pass --caption TEXT, add a .txt file, or --allow-empty-caption)"
    listed = md_list([{"item": "a.png", "reason": reason}])
    assert "--" not in listed and "enter a fallback caption" in listed
    assert ui_words("use --lora-scale 0.5 or --some-flag") == "use the LoRA scale 0.5 or the 'some flag' setting"


def test_an_example_keeps_its_separator(app):
    story = app.lorastory_tabs["story"]
    values = story.on_load_example("story_toy.yaml")
    example = load_story(EXAMPLES / "story_toy.yaml")
    assert example.separator == "，" and values[STORY_KEYS.index("separator")] == "，"
    assert story.form_story(*values).separator == "，"
    assert [row[2] for row in actions.story_rows(example)] == [""] * len(example.panels)  # the browser test: not 0


def test_offline_hub_ids_fail_before_queueing(app, monkeypatch, tmp_path):
    """Defect 11: reference mode without a downloaded IP-Adapter, and a hub model that is not downloaded,
    are refused at once (no job queued to fail later or to wait on retries)."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    story, queue = app.lorastory_tabs["story"], app.lorastory.jobs
    before = len(queue.jobs())
    status, _ = story.on_generate(*story_values(story, title="ref", name="ref", mode="reference"))
    assert "reference mode needs an IP-Adapter" in status
    values = story_values(story, title="hub", name="hub")
    values[-6] = "someone/not-downloaded"
    status, _ = story.on_generate(*values)
    assert "model 'someone/not-downloaded' is not downloaded and there is no network" in status
    assert len(queue.jobs()) == before
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    assert actions.go_offline_without_network() and constants.HF_HUB_OFFLINE is True


def test_recipe_np_is_honoured_and_an_uncaptioned_upload_is_refused(tmp_path):
    import os

    from PIL import Image

    ws = Workspace(tmp_path / "ws")
    (ws.root / "incoming").mkdir()
    for index in range(3):
        Image.new("RGB", (64, 64), (index * 80, 10, 10)).save(ws.root / "incoming" / f"p{index}.png")
    with pytest.raises(DataError, match="none of the 3 picture"):
        actions.import_upload(ws, [str(p) for p in (ws.root / "incoming").glob("*.png")], str(ws.root), "bare", "", True)
    assert not (ws.root / "datasets" / "bare").exists()
    actions.import_folder(ws, "incoming", "cap", "a picture", True)
    recipe = ("dataset_path: datasets/cap/metadata.jsonl\nexport_path: curated/c/result.jsonl\nnp: 2\n"
              "image_key: image\nprocess:\n  - image_shape_filter:\n      min_width: 8\n")
    report = actions.run_recipe_text(ws, recipe, "c", None)
    assert report["processes"] == min(2, os.cpu_count() or 1) and report["samples_out"] == 3


def test_lists_are_read_again_and_forms_remembered(app, blocked):
    """Defects 7 and 10 (the browser test checks the same through a page reload)."""
    page, ws, queue = app.lorastory_page, app.lorastory.ws, app.lorastory.jobs
    story = app.lorastory_tabs["story"]
    (ws.root / "runs" / "fresh").mkdir(parents=True)
    (ws.root / "runs" / "fresh" / "lora.safetensors").write_bytes(b"")
    listed = dict(zip([id(c) for c, _ in page.lists], page.refresh_lists()))
    assert "runs/fresh/lora.safetensors" in listed[id(story.lora)]["choices"]
    # After a job ends the lists are sent again; between jobs they are not.
    queue.wait(queue.submit("other", "quick", lambda ctx: None).id, 30)
    seen, *updates = page.after_jobs(None)
    assert any(isinstance(u, dict) and "choices" in u for u in updates)
    again = page.after_jobs(seen)
    assert not any(isinstance(u, dict) and "choices" in u for u in again[1:])
    # Form values: remembered in the workspace's file, put back on load; a running training's settings win.
    page.store.update({"story.title": "remembered", "train.rank": 7, "story.panels": [["p", "", None, ""]]})
    assert FormStore(ws.root).load()["story.title"] == "remembered"
    restored = dict(zip([id(c) for _, c in page.fields], page.restore([c for _, c in page.fields])))
    title = next(c for k, c in page.fields if k == "story.title")
    rank = next(c for k, c in page.fields if k == "train.rank")
    assert restored[id(title)]["value"] == "remembered" and restored[id(rank)]["value"] == 7
    # A remembered choice a fixed list no longer offers (a preset renamed since) is left out, not sent.
    page.store.update({"train.preset": "a preset that is gone"})
    preset = next(c for k, c in page.fields if k == "train.preset")
    assert "value" not in page.restore([preset])[0]
    release = blocked(queue)
    try:
        job = queue.submit("train", "train x", lambda ctx: None)
        job.data["form"] = {"train.rank": 32}
        restored = dict(zip([id(c) for _, c in page.fields], page.restore([c for _, c in page.fields])))
        assert restored[id(rank)]["value"] == 32
    finally:
        queue.cancel(job.id)
        release.set()


def test_progress_counts_with_an_eta_and_one_bar_for_lora_on_off():
    assert eta_text(("step", 0.0, 0), 10.0, 5, 10) == ", ETA 0:10"
    assert eta_text(("step", 0.0, 0), 10.0, 0, 10) == ""
    seen: list[tuple[int, int]] = []
    for half in (_half(lambda d, t: seen.append((d, t)), 0), _half(lambda d, t: seen.append((d, t)), 1)):
        for step in (1, 2, 3):
            half(step, 3)
    assert seen == [(1, 6), (2, 6), (3, 6), (4, 6), (5, 6), (6, 6)]  # never starts again


@pytest.mark.slow
def test_stop_writes_the_lora_and_a_checkpoint_and_resume_plots_the_whole_run(app, monkeypatch):
    """Defects 6 and 11: Stop during training keeps a resumable run; every stage reports counts (and an ETA);
    after resume the loss plot starts at step 1; the LoRA is named after its run in the PNG parameters."""
    ws, queue = app.lorastory.ws, app.lorastory.jobs
    messages: list[str] = []
    original = JobContext.stage

    def spy(self, name, done, total, detail="", check=True):
        original(self, name, done, total, detail, check)
        messages.append(self.job.message)

    monkeypatch.setattr(JobContext, "stage", spy)
    form = dict(presets.load_presets()["quick check (64², 4 steps)"], max_steps=500, batch_size=1)

    def run_until(config, steps):
        job = queue.submit("train", "train stopper", actions.train_job(ws, config))
        deadline = time.monotonic() + 300
        while len(job.data.get("steps", [])) < steps and job.active and time.monotonic() < deadline:
            time.sleep(0.05)
        queue.cancel(job.id)
        return queue.wait(job.id, 120)

    job = run_until(actions.train_config(ws, "models/toy-kolors", "train/style", "stopper", form), 2)
    assert job.status == CANCELLED and "the LoRA (runs/stopper/lora.safetensors) and a checkpoint were written" in job.message
    stopped_at = list_checkpoints(ws.root / "runs" / "stopper")[-1][0]
    assert f"stopped at step {stopped_at}" in job.message and "s after Stop)" in job.message
    assert any(m.startswith("loading the model 1/1") for m in messages)
    assert any(m.startswith("encoding pictures 8/8") for m in messages)
    assert any(m.startswith("training: step") and "ETA" in m for m in messages)

    resumed = run_until(actions.train_config(ws, "models/toy-kolors", "train/style", "stopper", dict(form, resume=True)),
                        stopped_at + 1)
    assert resumed.data["steps"][: stopped_at + 1] == list(range(1, stopped_at + 2))

    story = actions.story_from_form("t", "", "", "", [["a cat", "", None, ""]], {"steps": 2, "width": 64, "height": 64})
    done = queue.wait(queue.submit("story", "s", actions.story_job(ws, story, "models/toy-kolors",
                                                                   "runs/stopper/lora.safetensors", 0.8, "named")).id, 120)
    assert done.status == DONE, done.error
    assert read_parameters(ws.root / "stories" / "named" / "panel-01.png").lora_name == "stopper"
