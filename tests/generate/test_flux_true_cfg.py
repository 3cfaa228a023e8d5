"""True CFG for a guidance-distilled family (tiny Flux): the negative prompt is used only when ``true_cfg`` asks,
and the PNG parameters and manifest say which guidance each panel had."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from lorastory.generate.pngmeta import read_parameters
from lorastory.generate.story import generate_story
from lorastory.generate.story_file import Story
from lorastory.images import load_rgb
from lorastory.models.registry import load_pipeline


def _story(negative: str, true_cfg: float | None = None) -> dict:
    defaults = {"steps": 2, "cfg": 3.5, "width": 64, "height": 64, "seed": 1}
    if true_cfg is not None:
        defaults["true_cfg"] = true_cfg
    return {"character": "anime girl", "negative": negative, "defaults": defaults,
            "panels": [{"prompt": "{character} on a stage"}]}


def _pixels(folder) -> np.ndarray:
    return np.asarray(load_rgb(folder / "panel-01.png"), dtype=np.int16)


@pytest.fixture(scope="module")
def flux_pipe(tiny_model_path):
    return load_pipeline(tiny_model_path("flux"))


def test_negative_prompt_steers_a_flux_panel_only_with_true_cfg(cli, flux_pipe, tiny_model_path, tmp_path):
    runs = {}
    for name, negative, true_cfg in [("plain", "blurry", None), ("plain_other", "red sky", None),
                                     ("true", "blurry", 4.0), ("true_other", "red sky", 4.0)]:
        runs[name] = tmp_path / name
        generate_story(Story.model_validate(_story(negative, true_cfg)), str(tiny_model_path("flux")), runs[name],
                       pipe=flux_pipe)
    # Distilled guidance: the negative prompt is not used; true CFG: it changes the picture.
    assert np.array_equal(_pixels(runs["plain"]), _pixels(runs["plain_other"]))
    assert not np.array_equal(_pixels(runs["true"]), _pixels(runs["true_other"]))
    assert not np.array_equal(_pixels(runs["plain"]), _pixels(runs["true"]))

    plain, true = read_parameters(runs["plain"] / "panel-01.png"), read_parameters(runs["true"] / "panel-01.png")
    assert plain.cfg_scale == true.cfg_scale == 3.5 and true.negative_prompt == "blurry"
    assert plain.extra == {"Guidance": "distilled"}
    assert true.extra == {"Guidance": "true CFG", "True CFG scale": "4"}
    panels = [json.loads((runs[n] / "manifest.json").read_text(encoding="utf-8"))["panels"][0] for n in ("plain", "true")]
    assert "true_cfg" not in panels[0] and panels[1]["true_cfg"] == 4.0
    assert yaml.safe_load((runs["true"] / "story.yaml").read_text(encoding="utf-8"))["defaults"]["true_cfg"] == 4.0


def test_true_cfg_is_refused_where_cfg_already_is_classifier_free(cli, tiny_model_path, tmp_path):
    story = tmp_path / "story.yaml"
    story.write_text(yaml.safe_dump(_story("blurry", 4.0)), encoding="utf-8")
    result = cli("generate", story, "--model", tiny_model_path("sd15"), "--out", tmp_path / "run")
    assert result.code == 1
    assert result.error_line("defaults.true_cfg is for guidance-distilled models (Flux dev); SD1.5's cfg is already "
                             "classifier-free guidance with the negative prompt: remove true_cfg")
    assert not (tmp_path / "run").exists()
    with pytest.raises(ValueError, match="greater than or equal to 1"):
        Story.model_validate(_story("blurry", 0.5))
