"""What the app's buttons do, without a browser: bind checks, story jobs, regenerate, cancel, zip."""

from __future__ import annotations

import json
import shutil
import zipfile

import pytest

from lorastory.ui import actions, presets
from lorastory.ui.app import UiError, check_bind
from lorastory.ui.jobs import CANCELLED, DONE, JobQueue
from lorastory.ui.workspace import Workspace


def test_bind_beyond_localhost_needs_auth(monkeypatch):
    monkeypatch.delenv("LORASTORY_UI_AUTH", raising=False)
    assert check_bind("127.0.0.1", None) is None
    with pytest.raises(UiError, match="--auth"):
        check_bind("0.0.0.0", None)
    with pytest.raises(UiError, match="USER:PASSWORD"):
        check_bind("0.0.0.0", "nopassword")
    assert check_bind("0.0.0.0", "ann:s3cret") == ("ann", "s3cret")
    monkeypatch.setenv("LORASTORY_UI_AUTH", "bob:pw")
    assert check_bind("192.168.1.5", None) == ("bob", "pw")


def test_cli_refuses_open_bind(cli, monkeypatch, tmp_path):
    monkeypatch.delenv("LORASTORY_UI_AUTH", raising=False)
    result = cli("ui", "--host", "0.0.0.0", "--workspace", tmp_path / "ws")
    assert result.code == 1
    assert "--auth" in result.err and "127.0.0.1" in result.err
    assert not (tmp_path / "ws").exists()


@pytest.fixture(scope="module")
def story_ws(tmp_path_factory, toy_model_path):
    ws = Workspace(tmp_path_factory.mktemp("story") / "ws")
    shutil.copytree(toy_model_path("kolors"), ws.root / "models" / "toy-kolors")
    return ws


def small_story(title="小猫的冒险"):
    return actions.story_from_form(
        title, "一只橘色的小猫", "水彩风格", "", [["在花园里玩耍", "花园", None, ""], ["在窗边睡觉", "", 7, ""]],
        {"steps": 2, "cfg": 4.0, "width": 64, "height": 64, "seed": 3, "sampler": "Euler"})


@pytest.mark.slow
def test_story_regenerate_zip(story_ws):
    ws, queue = story_ws, JobQueue()
    try:
        job = queue.wait(queue.submit("story", "s", actions.story_job(ws, small_story(), "", None, 1.0, "s1")).id, 120)
        assert job.status == DONE, job.error
        run = ws.root / "stories" / "s1"
        before = {p.name: p.read_bytes() for p in run.glob("panel-*.png")}
        assert sorted(before) == ["panel-01.png", "panel-02.png"]
        assert not [p for p in run.parent.iterdir() if p.name.startswith(".")]

        job = queue.wait(queue.submit("story", "r", actions.regenerate_job(ws, "stories/s1", 2, 12345)).id, 120)
        assert job.status == DONE, job.error
        manifest = json.loads((run / "manifest.json").read_text(encoding="utf-8"))
        assert [p["seed"] for p in manifest["panels"]] == [3, 12345]
        assert (run / "panel-01.png").read_bytes() == before["panel-01.png"]
        assert (run / "panel-02.png").read_bytes() != before["panel-02.png"]
        assert "seed: 12345" in (run / "story.yaml").read_text(encoding="utf-8")
        details = actions.run_details(ws, "stories/s1")
        assert details["rows"][1][3] == 12345 and "在窗边睡觉" in details["rows"][1][1]

        names = zipfile.ZipFile(actions.story_zip(ws, "stories/s1")).namelist()
        assert {"s1/panel-01.png", "s1/panel-02.png", "s1/storyboard.png", "s1/manifest.json", "s1/story.yaml"} <= set(names)
    finally:
        queue.shutdown()


@pytest.mark.slow
def test_cancelled_story_leaves_nothing(story_ws):
    ws, queue = story_ws, JobQueue()
    try:
        story = small_story().model_copy(update={"defaults": small_story().defaults.model_copy(update={"steps": 200})})
        job = queue.submit("story", "c", actions.story_job(ws, story, "", None, 1.0, "cancelled"))
        import time

        deadline = time.monotonic() + 60
        while "step" not in job.message and time.monotonic() < deadline:
            time.sleep(0.05)
        queue.cancel(job.id)
        assert queue.wait(job.id, 60).status == CANCELLED
        leftovers = [p.name for p in (ws.root / "stories").iterdir() if "cancelled" in p.name]
        assert leftovers == []
    finally:
        queue.shutdown()


def test_story_form_validation():
    with pytest.raises(Exception, match="panels"):
        actions.story_from_form("t", "", "", "", [["", "", None, ""]], {"steps": 2})
    with pytest.raises(Exception, match="multiple of 8"):
        actions.story_from_form("t", "", "", "", [["x", "", None, ""]], {"width": 100})
    story = actions.story_from_form("t", "", "", "", [["x", "", float("nan"), ""], [None, None, None, None]], {})
    assert len(story.panels) == 1 and story.panels[0].seed is None


def test_recipe_helpers():
    text = actions.default_recipe("datasets/d/metadata.jsonl", "c")
    assert 'dataset_path: "datasets/d/metadata.jsonl"' in text and 'export_path: "curated/c/result.jsonl"' in text
    assert "# process schedule" in text  # comments kept
    added = actions.add_op(text, "image_size_filter", "max_size: 2MB")
    assert "image_size_filter" in added and "image_aspect_ratio_filter" in added
    with pytest.raises(Exception, match="min_widht"):
        actions.add_op(text, "image_shape_filter", "min_widht: 3")
    assert "min_width" in actions.op_defaults("image_shape_filter")


def test_story_form_consistency(story_ws, tmp_path):
    from lorastory.ui.workspace import PathRefused

    ws = story_ws
    (ws.root / "models" / "ipa" / "image_encoder").mkdir(parents=True, exist_ok=True)
    (ws.root / "refs").mkdir(exist_ok=True)
    (ws.root / "refs" / "hero.png").write_bytes(b"")
    assert actions.ip_adapter_choices(ws) == ["models/ipa"]
    settings = actions.consistency_from_form(ws, "both", 0.6, "refs/hero.png", "models/ipa")
    story = actions.story_from_form("t", "", "", "", [["x", "", None, ""]], {}, settings)
    assert story.consistency.mode == "both" and story.consistency.strength == 0.6
    assert story.consistency.reference_image == str(ws.root / "refs" / "hero.png")
    assert story.consistency.ip_adapter == str(ws.root / "models" / "ipa")
    assert "mode: both" in story.to_yaml()
    # Attention alone keeps no reference fields; a hub id passes through; paths outside the workspace are refused.
    assert actions.consistency_from_form(ws, "attention", 1.0, "refs/hero.png", "models/ipa") == {"mode": "attention",
                                                                                                   "strength": 1.0}
    assert actions.consistency_from_form(ws, "reference", None, "", "Kwai-Kolors/Kolors-IP-Adapter-Plus")["ip_adapter"] \
        == "Kwai-Kolors/Kolors-IP-Adapter-Plus"
    (tmp_path / "outside.png").write_bytes(b"")
    with pytest.raises(PathRefused):
        actions.consistency_from_form(ws, "reference", 1.0, str(tmp_path / "outside.png"), "")
    with pytest.raises(Exception, match="consistency.mode"):
        actions.story_from_form("t", "", "", "", [["x", "", None, ""]], {}, {"mode": "sometimes"})


@pytest.mark.parametrize("preset, example", [("reference (rank 16, alpha 4, 1024², 1 epoch)", "train_kolors_style.yaml"),
                                             ("fast GPU (1024², batch 8, 40 GB+)", "train_kolors_fast.yaml"),
                                             ("24 GB GPU (1024², batch 16, checkpointing)", "train_kolors_24gb.yaml"),
                                             (presets.TWELVE_GB_PRESET, "train_kolors_12gb.yaml")])
def test_presets_are_the_shipped_training_examples(preset, example):
    """What a preset puts in the form is the example file's value, or TrainConfig's default where the file has none."""
    from importlib import resources

    from lorastory.config import read_yaml
    from lorastory.train.config import TrainConfig

    from lorastory.train.config import FLAT_KEYS

    shipped = read_yaml(resources.files("lorastory") / "examples" / example)
    form = presets.load_presets()[preset]
    assert set(form) == set(presets.TRAIN_FIELDS)
    for key in presets.TRAIN_FIELDS:
        if key in FLAT_KEYS:  # a LoRA setting, nested in the file (lora: {rank: 16})
            group, name = FLAT_KEYS[key]
            model = TrainConfig.model_fields[group].annotation
            expected = shipped.get(group, {}).get(name, model.model_fields[name].default)
        else:
            expected = shipped.get(key, TrainConfig.model_fields[key].default)
        if key == "max_steps":
            expected = expected or 0  # the form shows 0 where the epochs decide
        assert form[key] == expected, key


def test_derived_presets_change_only_what_they_say():
    table = presets.load_presets()
    reference = table["reference (rank 16, alpha 4, 1024², 1 epoch)"]
    changed = {name: {k: v for k, v in values.items() if reference[k] != v} for name, values in table.items()}
    assert changed["low memory (512², 8-bit AdamW, accumulate 4)"] == {
        "rank": 8, "resolution": 512, "gradient_accumulation": 4, "optimizer": "adamw8bit"}
    assert changed["quick check (64², 4 steps)"] == {"rank": 4, "resolution": 64, "max_steps": 4,
                                                     "gradient_checkpointing": False}
    assert list(table)[0].startswith("reference")


def test_train_form_caption_fields_reach_the_config(tmp_path):
    ws = Workspace(tmp_path / "ws")
    folder = ws.root / "train" / "style"
    folder.mkdir(parents=True)
    (folder / "metadata.csv").write_text("file_name,text\n", encoding="utf-8")
    form = dict(presets.load_presets()["quick check (64², 4 steps)"], trigger_word=" sks ", caption_dropout=0.1,
                shuffle_tags=True, keep_tags=2.0, repeats=3.0)
    assert set(presets.CAPTION_FIELDS) <= set(form)
    config = actions.train_config(ws, "Kwai-Kolors/Kolors-diffusers", "train/style", "run", form)
    assert (config.trigger_word, config.caption_dropout, config.shuffle_tags, config.keep_tags, config.repeats) == (
        "sks", 0.1, True, 2, 3)
    cleared = actions.train_config(ws, "Kwai-Kolors/Kolors-diffusers", "train/style", "run", dict(form, trigger_word="", caption_dropout=None))
    assert (cleared.trigger_word, cleared.caption_dropout) == (None, 0.0)
    with pytest.raises(Exception, match="caption_dropout"):
        actions.train_config(ws, "Kwai-Kolors/Kolors-diffusers", "train/style", "run", dict(form, caption_dropout=2))


def test_train_form_network_and_targets_reach_the_lora_spec(tmp_path):
    ws = Workspace(tmp_path / "ws")
    folder = ws.root / "train" / "style"
    folder.mkdir(parents=True)
    (folder / "metadata.csv").write_text("file_name,text\n", encoding="utf-8")
    form = presets.load_presets()["quick check (64², 4 steps)"]
    assert (form["network"], form["target_modules"]) == ("lora", ["to_q", "to_k", "to_v", "to_out.0"])
    config = actions.train_config(ws, "Kwai-Kolors/Kolors-diffusers", "train/style", "run",
                                  dict(form, network="loha", target_modules=["to_q", "to_v", "ff.net.2"]))
    assert (config.lora.network, config.lora.target_modules) == ("loha", ["to_q", "to_v", "ff.net.2"])
    with pytest.raises(Exception, match="target_modules"):
        actions.train_config(ws, "Kwai-Kolors/Kolors-diffusers", "train/style", "run", dict(form, target_modules=[]))
