"""The app as built (no browser): its lists come from their one source, and each tab polls its own jobs."""

from __future__ import annotations

import pytest

from lorastory.generate.samplers import SAMPLERS
from lorastory.ui.presets import TOY_PRESET, TRAIN_FIELDS, load_presets


@pytest.fixture(scope="module")
def app_config(tmp_path_factory):
    from lorastory.ui.app import create_app

    demo = create_app(tmp_path_factory.mktemp("app") / "ws", build_default_model=False)
    try:
        yield demo.get_config_file()
    finally:
        demo.lorastory.jobs.shutdown()


def component(config, label):
    found = [c for c in config["components"] if c.get("props", {}).get("label") == label]
    assert len(found) == 1, label
    return found[0]["props"]


def test_sampler_choices_are_the_generators(app_config):
    props = component(app_config, "sampler")
    assert [value for _shown, value in props["choices"]] == list(SAMPLERS)
    assert props["value"] == "Euler"


def test_train_form_shows_the_toy_preset_without_a_real_model(app_config):
    table = load_presets()
    props = component(app_config, "Preset")
    assert [value for _shown, value in props["choices"]] == list(table)
    first = table[props["value"]]
    assert props["value"] == TOY_PRESET  # only the toy model (and no GPU): the CPU preset (issue 22, defect 9)
    assert first["resolution"] == 128
    labels = {"rank": "rank", "alpha": "alpha", "resolution": "resolution", "epochs": "epochs",
              "max_steps": "max steps (0: epochs decide)", "batch_size": "batch size",
              "gradient_accumulation": "gradient accumulation", "lr": "learning rate", "center_crop": "center crop",
              "random_flip": "random flip", "buckets": "aspect buckets", "gradient_checkpointing": "gradient checkpointing",
              "precision": "precision", "optimizer": "optimizer", "train_text_encoder": "train text encoder",
              "ema": "EMA of the weights (also saves lora_ema.safetensors)", "ema_decay": "EMA decay",
              "network": "network", "target_modules": "target modules", "base_dtype": "base dtype"}
    assert set(labels) == set(TRAIN_FIELDS)
    for key, label in labels.items():
        assert component(app_config, label)["value"] == first[key], key


def test_train_form_has_the_caption_fields(app_config):
    assert component(app_config, "trigger word (put first in every caption)")["value"] == ""
    assert component(app_config, "caption dropout (0-1)")["value"] == 0
    assert component(app_config, "shuffle tags")["value"] is False
    assert component(app_config, "keep first N tags")["value"] == 0
    assert component(app_config, "repeats")["value"] == 1


def test_each_tab_polls_on_the_timer_and_on_load(app_config):
    ids = {c["id"]: c.get("props", {}).get("elem_id") for c in app_config["components"]}
    polls = [d for d in app_config["dependencies"] if d["api_name"].startswith("poll")]
    written = {trigger: {ids[o] for d in polls if any(t[1] == trigger for t in d["targets"]) for o in d["outputs"]}
               for trigger in ("tick", "load")}
    # train (with the queue), story, eval, caption, recipe, panel preview, LoRA on/off view: shown again on a reload too
    statuses = {"train-status", "story-status", "eval-status", "caption-status", "preview-status", "on-off-headline",
                "job-queue", "recipe-status"}
    assert statuses <= written["tick"] and statuses <= written["load"]
    assert "story-lora" in written["tick"]  # the lists are read again after a job ends
    # The tabs share the ticks: two events a second (the lists write a dropdown a tab's poll also writes), not nine.
    assert sum(any(t[1] == "tick" for t in d["targets"]) for d in polls) == 2
    for d in polls:  # no component written twice by one event
        assert len(d["outputs"]) == len(set(d["outputs"]))


def test_data_tab_has_the_caption_step(app_config):
    assert component(app_config, "Captioner")["value"] == "toy"
    assert component(app_config, "Caption style")["value"] == "sentence"
    assert [value for _shown, value in component(app_config, "Caption mode")["choices"]] == ["fill", "replace", "append"]
    assert component(app_config, "Captions (editable)")["interactive"] is True


def test_defaults_fit_the_toy_model(app_config):
    """On the toy model the forms start with the toy workflow (issue 22, defect 9)."""
    assert "image_text_similarity_filter" in component(app_config, "Recipe (Data-Juicer YAML; paths are workspace paths)")["value"]
    assert "min_width: 96" in component(app_config, "Recipe (Data-Juicer YAML; paths are workspace paths)")["value"]
    assert component(app_config, "Start from a recipe (examples, then yours)")["value"] == "recipe_toy.yaml"
    assert component(app_config, "Start from an example")["value"] == "story_toy.yaml"
    assert component(app_config, "Title")["value"] == "红发女孩的一天"
    assert component(app_config, "width")["value"] == 128
    assert "黑色描边" in component(app_config, "Validation prompts (one per line)")["value"]
