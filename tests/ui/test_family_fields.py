"""The Train and Story tabs' handlers, called directly (no browser): true CFG, base dtype and offload, the 12 GB
preset, and forms fitted to the chosen model's family (read from its Family, a family registered here included)."""

from __future__ import annotations

import json
import shutil

import pytest
import yaml

from lorastory.generate.story_file import load_story
from lorastory.models.registry import FAMILIES, Family, register_family, unregister_family
from lorastory.ui import actions
from lorastory.ui.actions.families import model_picker
from lorastory.ui.presets import CAPTION_FIELDS, TRAIN_FIELDS, TWELVE_GB_PRESET, load_presets
from lorastory.ui.tabs.pagestate import STORY_KEYS

CPU = "cpu"


def fake_model(root, name, pipeline_class):
    """A models/ folder that names its pipeline (enough for the family; nothing here loads it)."""
    folder = root / "models" / name
    folder.mkdir(parents=True)
    (folder / "model_index.json").write_text(json.dumps({"_class_name": pipeline_class}), encoding="utf-8")
    return f"models/{name}"


@pytest.fixture(scope="module")
def app(tmp_path_factory, toy_model_path):
    from lorastory.ui.app import create_app

    root = tmp_path_factory.mktemp("fields") / "ws"
    shutil.copytree(toy_model_path("kolors"), root / "models" / "toy-kolors")
    fake_model(root, "flux-dev", FAMILIES["flux"].pipeline_class)
    fake_model(root, "qwen", FAMILIES["qwen-image"].pipeline_class)
    fake_model(root, "mystery", "SomeOtherPipeline")
    (root / "models" / "style-lora.safetensors").write_bytes(b"")
    (root / "data" / "train").mkdir(parents=True)
    (root / "data" / "train" / "metadata.csv").write_text("file_name,text\n", encoding="utf-8")
    demo = create_app(root, build_default_model=False)
    try:
        yield demo
    finally:
        demo.lorastory.jobs.shutdown()


@pytest.fixture(autouse=True)
def on_the_cpu(monkeypatch):
    """Jobs run on the CPU here whatever the test machine has (base dtype and offload then need a GPU)."""
    import torch

    monkeypatch.setattr("lorastory.ui.actions.models.job_device", lambda: torch.device(CPU))


def story_values(story_tab, **changes):
    """The Story tab's form as on_generate receives it: the toy example, then model, LoRA, scale, name, base dtype
    and offload."""
    values = dict(zip(STORY_KEYS, story_tab.on_load_example("story_toy.yaml")))
    run = {"model": "models/toy-kolors", "lora": "", "scale": 1.0, "name": "s", "base_dtype": "default",
           "offload": False}
    for key, value in changes.items():
        (values if key in values else run)[key] = value
    return [values[k] for k in STORY_KEYS] + list(run.values())


def test_story_true_cfg_goes_into_the_yaml_and_back(app, tmp_path):
    story_tab = app.lorastory_tabs["story"]
    assert len(story_tab.story_inputs) == len(STORY_KEYS)  # what the page remembers lines up with the form
    values = story_values(story_tab, true_cfg=3.5)
    story = story_tab.form_story(*values[: len(STORY_KEYS)])
    assert yaml.safe_load(story.to_yaml())["defaults"]["true_cfg"] == 3.5
    (tmp_path / "story.yaml").write_text(story.to_yaml(), encoding="utf-8")
    assert actions.story_form_values(load_story(tmp_path / "story.yaml"))[-1] == 3.5  # loading a story fills it
    assert story_tab.on_load_example("story_toy.yaml")[-1] is None


def test_story_refuses_what_the_library_refuses_in_one_line(app):
    story_tab = app.lorastory_tabs["story"]
    cases = {
        (("true_cfg", 3.0),): "true_cfg is for guidance-distilled models",  # the toy Kolors' cfg is CFG already
        (("true_cfg", 0.5),): "true_cfg",  # below 1: the story's own range
        (("base_dtype", "fp8"),): "base dtype fp8 needs a CUDA GPU",
        (("offload", True),): "'offload' moves models on and off a CUDA GPU",
    }
    for change, expected in cases.items():
        status, _yaml = story_tab.on_generate(*story_values(story_tab, **dict(change)))
        assert status.startswith("**Error:** ") and expected in status, status
        assert "\n" not in status and "Traceback" not in status
    preview = story_tab.preview.on_preview(1, *story_values(story_tab, base_dtype="fp8"))  # rendered as the story
    assert preview.startswith("**Error:** base dtype fp8 needs a CUDA GPU"), preview
    assert app.lorastory.jobs.jobs() == []  # nothing was queued


def test_story_form_fits_the_family(app):
    story_tab = app.lorastory_tabs["story"]
    note, cfg, _negative, true_cfg, base = story_tab.on_model("models/flux-dev")
    assert "Flux.1" in note and cfg["label"] == "guidance" and true_cfg["visible"] is True
    note, cfg, _negative, true_cfg, base = story_tab.on_model("models/toy-kolors")
    assert "Kolors" in note and cfg["label"] == "cfg"
    assert true_cfg["visible"] is False and true_cfg["value"] is None  # hidden and cleared: never sent by mistake
    # A Flux model takes true CFG: the job is accepted (not run here).
    story = story_tab.form_story(*story_values(story_tab, true_cfg=2.0, width=64, height=64)[: len(STORY_KEYS)])
    assert callable(actions.story_job(app.lorastory.ws, story, "models/flux-dev", None, 1.0, "f"))


def test_model_picker_names_each_models_family(app):
    picker = dict((value, shown) for shown, value in model_picker(app.lorastory.ws))
    assert picker["models/flux-dev"] == "models/flux-dev — Flux.1"
    assert picker["models/toy-kolors"] == "models/toy-kolors — Kolors"
    assert "models/mystery" not in picker  # no registered family: it would not load
    assert "models/style-lora.safetensors" not in picker  # a LoRA, listed in the LoRA picker


def train_values(preset, **changes):
    """The Train tab's form as on_train receives it: model, data, name, the preset fields, the extras, captions."""
    fields = {**preset, **changes}
    extras = [0, 0, 0, False, ""]  # checkpoint every, samples every, seed, resume, validation prompts
    captions = ["", 0.0, False, 0, 1]
    assert len(captions) == len(CAPTION_FIELDS)
    return ["models/toy-kolors", "data/train", "r1", *[fields[k] for k in TRAIN_FIELDS], *extras, *captions]


def test_train_base_dtype_without_cuda_or_torchao_is_one_line(app, monkeypatch):
    import torch

    train_tab = app.lorastory_tabs["train"]
    preset = load_presets()[TWELVE_GB_PRESET]
    status = train_tab.on_train(*train_values(preset))
    assert preset["base_dtype"] != "default"  # the example file's fp8 setting reaches the form
    assert status == (f"**Error:** base dtype {preset['base_dtype']} needs a CUDA GPU (this run is on the cpu); "
                      "leave it at default")
    monkeypatch.setattr("lorastory.ui.actions.models.job_device", lambda: torch.device("cuda"))
    monkeypatch.setitem(__import__("sys").modules, "torchao", None)  # as when it is not installed
    status = train_tab.on_train(*train_values(preset, base_dtype="fp8"))
    assert status == "**Error:** base dtype fp8 needs torchao: pip install 'lorastory[fp8]'"
    assert app.lorastory.jobs.jobs() == []


def test_train_form_fits_the_family(app):
    train_tab = app.lorastory_tabs["train"]
    qwen = FAMILIES["qwen-image"]
    note, te, network, targets, base = train_tab.on_model("models/qwen", "locon")  # no convolutions to adapt
    assert qwen.display in note
    assert te["interactive"] is False and te["value"] is False and te["info"]  # no trainable text encoder
    assert network["choices"] == list(qwen.lora_networks) and network["value"] == qwen.lora_networks[0]
    assert targets["choices"] == list(qwen.lora_targets)
    note, te, network, targets, base = train_tab.on_model("models/toy-kolors", "loha")
    assert te["interactive"] is True and network["value"] == "loha" and base["interactive"] is True


def test_a_registered_family_fits_the_forms_without_ui_code(app):
    """The forms read the Family: one registered now, distilled with no text-encoder LoRA, no fp8 blocks."""
    family = register_family(Family("test-dit", "TestDitPipeline", ("text_encoder",), 512, False, label="TestDiT",
                                    denoiser="transformer", true_cfg_argument="true_cfg_scale", lora_text_encoders=(),
                                    lora_targets=("attn.to_q", "attn.to_v"), fp8_blocks=()))
    try:
        model = fake_model(app.lorastory.ws.root, "test-dit", family.pipeline_class)
        note, cfg, _negative, true_cfg, base = app.lorastory_tabs["story"].on_model(model)
        assert "TestDiT" in note and true_cfg["visible"] is True and base["interactive"] is False
        note, te, _network, targets, base = app.lorastory_tabs["train"].on_model(model, "lora")
        assert te["interactive"] is False and targets["choices"] == ["attn.to_q", "attn.to_v"]
        assert base == {"__type__": "update", "value": "default", "interactive": False}
    finally:
        unregister_family("test-dit")
