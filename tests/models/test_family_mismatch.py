"""A --family that contradicts the model folder is one line, not a crash deep in a tokenizer."""

from __future__ import annotations

import json

import pytest

from lorastory.errors import ConfigError
from lorastory.models.registry import declared_family, load_pipeline

LABELS = {"kolors": "a Kolors", "sdxl": "an SDXL", "sd15": "an SD1.5"}
PIPELINES = {"kolors": "KolorsPipeline", "sdxl": "StableDiffusionXLPipeline", "sd15": "StableDiffusionPipeline"}
MISMATCHES = [("kolors", "sdxl"), ("kolors", "sd15"), ("sdxl", "kolors"), ("sdxl", "sd15"), ("sd15", "kolors"),
              ("sd15", "sdxl")]


@pytest.mark.parametrize(("actual", "given"), MISMATCHES)
def test_load_pipeline_refuses_the_wrong_family(tiny_model_path, actual, given):
    folder = tiny_model_path(actual)
    expected = (f"{folder} is {LABELS[actual]} model (model_index.json: {PIPELINES[actual]}), not {given}: "
                f"drop --family or pass --family {actual}")
    with pytest.raises(ConfigError) as caught:
        load_pipeline(folder, family=given)
    assert str(caught.value) == expected


@pytest.mark.parametrize("family", ["kolors", "sdxl", "sd15"])
def test_the_right_family_still_loads(tiny_model_path, family):
    assert type(load_pipeline(tiny_model_path(family), family=family)).__name__ == PIPELINES[family]


@pytest.mark.parametrize(("actual", "given"), [("kolors", "sdxl"), ("kolors", "sd15"), ("sdxl", "kolors"),
                                               ("sd15", "sdxl")])
def test_train_refuses_the_wrong_family_before_reading_anything(cli, tmp_path, tiny_model_path, style_train_folder,
                                                                actual, given):
    result = cli("train", "--model", tiny_model_path(actual), "--family", given, "--data", style_train_folder,
                 "--out", tmp_path / "run", "--resolution", "64", "--max-steps", "1")
    assert result.code == 1
    lines = [line for line in result.err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.err and "OverflowError" not in result.err
    assert f"not {given}: drop --family or pass --family {actual}" in lines[0]
    assert not (tmp_path / "run" / "lora.safetensors").exists()


def test_other_pipeline_classes_are_judged_by_their_text_encoders(tmp_path):
    def folder(name, index):
        path = tmp_path / name
        path.mkdir()
        (path / "model_index.json").write_text(json.dumps(index), encoding="utf-8")
        return path

    kolors = folder("k", {"_class_name": "KolorsImg2ImgPipelineCustom", "text_encoder": ["kolors", "ChatGLMModel"]})
    custom_kolors = folder("ck", {"_class_name": "MyPipeline", "text_encoder": ["kolors", "ChatGLMModel"]})
    custom_xl = folder("cx", {"_class_name": "MyPipeline", "text_encoder": ["transformers", "CLIPTextModel"],
                              "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"]})
    unknown = folder("u", {"_class_name": "MyPipeline"})
    assert declared_family(kolors)[0].name == "kolors"
    assert declared_family(custom_kolors)[0].name == "kolors"
    assert declared_family(custom_xl)[0].name == "sdxl"
    assert declared_family(unknown) is None
    with pytest.raises(ConfigError, match="is a Kolors model \\(model_index.json: text_encoder ChatGLMModel\\), not sdxl"):
        load_pipeline(custom_kolors, family="sdxl")
    with pytest.raises(ConfigError, match="is an SDXL model .* not kolors"):
        load_pipeline(custom_xl, family="kolors")


def test_known_hub_id_with_the_wrong_family_is_refused_offline():
    with pytest.raises(ConfigError, match="Kwai-Kolors/Kolors-diffusers is a Kolors model, not sdxl"):
        load_pipeline("Kwai-Kolors/Kolors-diffusers", family="sdxl")
