"""Story generation on tiny models: files, metadata, determinism, samplers, bad input."""

from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest
from PIL import Image

from lorastory.errors import ConfigError
from lorastory.generate.grid import make_storyboard
from lorastory.generate.pngmeta import read_parameters
from lorastory.generate.samplers import SAMPLERS
from lorastory.generate.story import generate_story
from lorastory.generate.story_file import Story, load_story

STORY = """\
title: 紫发少女
character: 二次元
style: 水彩
negative: 丑陋、变形
defaults:
  steps: 3
  cfg: 4
  width: 64
  height: 64
  seed: 10
panels:
  - prompt: 紫色长发少女,在练习室唱歌
    seed: 1
    caption: 她在练习
  - prompt: 站在舞台上
    negative: 模糊
    caption: 终于上台
  - prompt: looking at the stars
"""


def _story(tmp_path, text=STORY):
    path = tmp_path / "story.yaml"
    path.write_text(text, encoding="utf-8")
    return load_story(path)


def _pixels(path):
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)


@pytest.fixture(scope="module")
def kolors_pipe(tiny_model_path):
    from lorastory.models.registry import load_pipeline

    return load_pipeline(tiny_model_path("kolors"))


def test_story_renders_panels_with_metadata_manifest_and_storyboard(tmp_path, tiny_model_path, kolors_pipe):
    story = _story(tmp_path)
    steps: list[tuple[int, int]] = []
    result = generate_story(story, str(tiny_model_path("kolors")), tmp_path / "run", pipe=kolors_pipe,
                            on_step=lambda done, total: steps.append((done, total)))
    names = sorted(p.name for p in (tmp_path / "run").iterdir())
    assert names == ["manifest.json", "panel-01.png", "panel-02.png", "panel-03.png", "story.yaml", "storyboard.png"]
    params = read_parameters(tmp_path / "run" / "panel-01.png")
    assert params.prompt == "二次元,紫色长发少女,在练习室唱歌,水彩"
    assert (params.negative_prompt, params.seed, params.steps, params.cfg_scale) == ("丑陋、变形", 1, 3, 4)
    assert (params.width, params.height, params.sampler) == (64, 64, "Euler")
    assert "Negative prompt: 丑陋、变形" in Image.open(tmp_path / "run" / "panel-01.png").text["parameters"]
    second = read_parameters(tmp_path / "run" / "panel-02.png")
    assert second.negative_prompt == "模糊" and second.seed == 11  # defaults.seed + index - 1
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text(encoding="utf-8"))
    assert [p["seed"] for p in manifest["panels"]] == [1, 11, 12]
    assert Story.from_yaml(tmp_path / "run" / "story.yaml") == story
    assert steps[-1] == (9, 9)
    assert Image.open(result.storyboard).size[0] == 128
    # Made from the pictures in memory: the same storyboard as one made from the panel files.
    from_files = make_storyboard(result.panels, cols=2, title=story.title, captions=[p.caption for p in story.panels])
    assert np.array_equal(_pixels(result.storyboard), np.asarray(from_files, dtype=np.int16))


def test_same_story_same_pixels_and_panels_are_independent(tmp_path, tiny_model_path, kolors_pipe):
    model = str(tiny_model_path("kolors"))
    generate_story(_story(tmp_path), model, tmp_path / "a", pipe=kolors_pipe)
    generate_story(_story(tmp_path), model, tmp_path / "b", pipe=kolors_pipe)
    for name in ("panel-01.png", "panel-02.png", "panel-03.png"):
        assert np.array_equal(_pixels(tmp_path / "a" / name), _pixels(tmp_path / "b" / name))
    # A random tiny model barely reacts to the prompt; a new seed is a visible edit.
    edited = _story(tmp_path, STORY.replace("    negative: 模糊\n", "    negative: 模糊\n    seed: 99\n"))
    generate_story(edited, model, tmp_path / "c", pipe=kolors_pipe)
    assert np.abs(_pixels(tmp_path / "a" / "panel-01.png") - _pixels(tmp_path / "c" / "panel-01.png")).max() <= 1
    assert np.abs(_pixels(tmp_path / "a" / "panel-03.png") - _pixels(tmp_path / "c" / "panel-03.png")).max() <= 1
    assert np.abs(_pixels(tmp_path / "a" / "panel-02.png") - _pixels(tmp_path / "c" / "panel-02.png")).max() > 1


def test_batching_does_not_change_a_panel(tmp_path, tiny_model_path, kolors_pipe):
    model = str(tiny_model_path("kolors"))
    generate_story(_story(tmp_path), model, tmp_path / "one", pipe=kolors_pipe, batch_size=1)
    generate_story(_story(tmp_path), model, tmp_path / "three", pipe=kolors_pipe, batch_size=3)
    for name in ("panel-01.png", "panel-02.png", "panel-03.png"):
        assert np.abs(_pixels(tmp_path / "one" / name) - _pixels(tmp_path / "three" / name)).max() <= 1


@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_every_sampler_runs(tmp_path, tiny_model_path, kolors_pipe, sampler):
    text = STORY.replace("  seed: 10\n", f"  seed: 10\n  sampler: {sampler}\n")
    result = generate_story(_story(tmp_path, text), str(tiny_model_path("kolors")), tmp_path / "run", pipe=kolors_pipe)
    assert read_parameters(result.panels[0]).sampler == sampler


def test_cli_generate_with_a_lora_from_another_family_names_both(tmp_path, tiny_model_path, cli):
    from lorastory.models.lora import LoraSpec, inject_lora, save_lora
    from lorastory.models.registry import load_pipeline

    sd15 = load_pipeline(tiny_model_path("sd15"))
    spec = LoraSpec(rank=2, alpha=2)
    inject_lora(sd15, spec)
    save_lora(sd15, tmp_path / "sd15_lora.safetensors", spec, "sd15")
    (tmp_path / "story.yaml").write_text(STORY, encoding="utf-8")
    result = cli("generate", tmp_path / "story.yaml", "--model", tiny_model_path("kolors"),
                 "--lora", tmp_path / "sd15_lora.safetensors", "--out", tmp_path / "run")
    assert result.code == 1
    assert "sd15" in result.err and "kolors" in result.err and "Traceback" not in result.err


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("title: x\npanels: []\n", "no panels"),
        ("panels:\n  - caption: no prompt here\n", "line 2: panels.0.prompt"),
        ("panels:\n  - prompt: '   '\n", "needs a prompt"),
        ("defaults:\n  width: 100\npanels:\n  - prompt: a\n", "line 2: defaults.width"),
        ("defaults:\n  sampler: Eulr\npanels:\n  - prompt: a\n", "unknown sampler 'Eulr'"),
        ("panels:\n  - prompt: a\n    colour: red\n", "line 3: panels.0.colour: unknown key"),
        ("panels: [prompt: a\n", "invalid YAML"),
        ("- just\n- a list\n", "expected a mapping"),
    ],
)
def test_bad_story_files_name_line_and_field(tmp_path, text, expected):
    path = tmp_path / "story.yaml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    with pytest.raises(ConfigError, match=expected.replace("(", r"\(")):
        load_story(path)


def test_cli_reports_a_bad_story_in_one_line(tmp_path, cli):
    (tmp_path / "story.yaml").write_text("panels: []\n", encoding="utf-8")
    result = cli("generate", tmp_path / "story.yaml", "--model", "x")
    assert result.code == 1 and "no panels" in result.err and "Traceback" not in result.err


def test_reference_story_example_matches_the_workflow():
    story = load_story("examples/story_kolors_anime.yaml")
    from lorastory.generate.story_file import resolve_panels

    jobs = resolve_panels(story)
    assert [j.seed for j in jobs] == [1, 1, 2, 5, 0, 1, 7, 0]
    assert {(j.cfg, j.steps, j.width, j.height) for j in jobs} == {(4, 50, 1024, 1024)}
    assert jobs[0].prompt.startswith("二次元,日系动漫,演唱会的观众席")
    assert jobs[3].negative == "丑陋、变形、嘈杂、模糊、低对比度,扭曲的手指,多余的手指"


def test_regenerate_one_panel_leaves_the_others_byte_identical(tmp_path, tiny_model_path, kolors_pipe, cli):
    model = str(tiny_model_path("kolors"))
    generate_story(_story(tmp_path), model, tmp_path / "run", pipe=kolors_pipe)
    before = {n: (tmp_path / "run" / n).read_bytes() for n in ("panel-01.png", "panel-02.png", "panel-03.png")}
    result = cli("regenerate", tmp_path / "run", "--panel", "2", "--seed", "1234")
    assert result.code == 0, result.err
    assert (tmp_path / "run" / "panel-01.png").read_bytes() == before["panel-01.png"]
    assert (tmp_path / "run" / "panel-03.png").read_bytes() == before["panel-03.png"]
    assert (tmp_path / "run" / "panel-02.png").read_bytes() != before["panel-02.png"]
    assert read_parameters(tmp_path / "run" / "panel-02.png").seed == 1234
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text(encoding="utf-8"))
    assert [p["seed"] for p in manifest["panels"]] == [1, 1234, 12]
    assert load_story(tmp_path / "run" / "story.yaml").panels[1].seed == 1234
    assert not list(tmp_path.glob(".run.*"))  # no staging folder left
    assert cli("regenerate", tmp_path / "run", "--panel", "9", "--seed", "1").code == 1
