"""Reference-image consistency: the tiny IP-Adapter, loading and unloading it, stories through the CLI, bad input."""

from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image

from lorastory.errors import ConfigError
from lorastory.generate.pngmeta import read_parameters
from lorastory.generate.story_file import load_story
from lorastory.models.ip_adapter import (
    DEFAULT_IP_ADAPTERS,
    build_tiny_ip_adapter,
    ip_adapter_loaded,
    resolve_ip_adapter,
)
from lorastory.models.registry import ModelLoadError


@pytest.fixture(scope="module")
def tiny_ip_adapter(tiny_model_path, tmp_path_factory):
    """family -> a tiny IP-Adapter folder fitting that tiny model (built once per module)."""
    built: dict[str, object] = {}

    def get(family: str = "kolors"):
        if family not in built:
            built[family] = build_tiny_ip_adapter(tmp_path_factory.mktemp(f"ipa-{family}") / "adapter", tiny_model_path(family))
        return built[family]

    return get


def _story_text(adapter, mode="reference", extra=""):
    return textwrap.dedent(f"""\
        title: 参考图
        character: 二次元,紫色长发少女
        style: 水彩
        defaults: {{steps: 2, width: 64, height: 64, seed: 4}}
        consistency:
          mode: {mode}
          ip_adapter: {adapter}
        {extra}
        panels:
          - prompt: 在练习室唱歌
          - prompt: 站在舞台上
        """)


def test_tiny_adapter_has_the_published_layout_and_is_deterministic(tiny_model_path, tmp_path, cli):
    first = tmp_path / "a"
    result = cli("model", "tiny-ip-adapter", "--model", tiny_model_path("kolors"), "--out", first)
    assert result.code == 0, result.err
    spec = DEFAULT_IP_ADAPTERS["kolors"]
    assert (first / spec.weight).is_file() and (first / spec.image_encoder / "config.json").is_file()
    second = build_tiny_ip_adapter(tmp_path / "b", tiny_model_path("kolors"))
    assert (first / spec.weight).read_bytes() == (second / spec.weight).read_bytes()
    from safetensors import safe_open

    with safe_open(str(first / spec.weight), "pt") as handle:
        keys = list(handle.keys())
    assert any(k.startswith("image_proj.layers.0.0.to_kv") for k in keys) and "ip_adapter.1.to_k_ip.weight" in keys
    assert not list(first.rglob("*.bin"))


@pytest.mark.parametrize("family", ["kolors", "sdxl"])
def test_adapter_loads_changes_the_image_and_is_taken_out_again(family, tiny_model_path, tiny_ip_adapter):
    from lorastory.models.registry import load_pipeline

    pipe = load_pipeline(tiny_model_path(family))
    pipe.set_progress_bar_config(disable=True)

    def render(**extra):
        return pipe(prompt=["a girl", "a cat"], negative_prompt=["", ""], num_inference_steps=2, guidance_scale=4.0,
                    width=64, height=64, output_type="np",
                    generator=[torch.Generator().manual_seed(s) for s in (1, 2)], **extra).images

    processors = pipe.unet.attn_processors
    plain = render()
    reference = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    with ip_adapter_loaded(pipe, resolve_ip_adapter(family, str(tiny_ip_adapter(family))), scale=0.5) as info:
        conditioned = render(ip_adapter_image=reference)
    assert info.scale == 0.5 and np.abs(conditioned - plain).max() > 1e-3
    assert np.array_equal(render(), plain)
    assert pipe.image_encoder is None and all(pipe.unet.attn_processors[k] is v for k, v in processors.items())


def test_reference_story_through_the_cli(tmp_path, tiny_model_path, tiny_ip_adapter, cli):
    (tmp_path / "story.yaml").write_text(_story_text(tiny_ip_adapter("kolors")), encoding="utf-8")
    result = cli("generate", tmp_path / "story.yaml", "--model", tiny_model_path("kolors"), "--out", tmp_path / "run")
    assert result.code == 0, result.err
    run = tmp_path / "run"
    assert (run / "reference.png").is_file()
    manifest = json.loads((run / "manifest.json").read_text(encoding="utf-8"))
    record = manifest["consistency"]
    assert record["mode"] == "reference" and record["reference"]["source"] == "generated"
    assert record["reference"]["prompt"] == "二次元,紫色长发少女,水彩"
    assert record["ip_adapter"]["source"] == str(tiny_ip_adapter("kolors")) and record["ip_adapter"]["scale"] == 0.5
    assert "attention" not in record
    params = read_parameters(run / "panel-02.png")
    assert params.extra["Consistency"].startswith("reference (strength 1, reference scale 0.5, reference ")
    assert read_parameters(run / "reference.png").extra == {"Consistency": "reference image"}
    # The mode switch on the command line; "both" adds shared attention on top of the reference.
    result = cli("generate", tmp_path / "story.yaml", "--model", tiny_model_path("kolors"), "--out", tmp_path / "both",
                 "--consistency", "both")
    assert result.code == 0, result.err
    both = json.loads((tmp_path / "both" / "manifest.json").read_text(encoding="utf-8"))["consistency"]
    assert both["mode"] == "both" and both["attention"]["renders"][0]["shared_calls"] > 0
    assert "Consistency: \"both (" in Image.open(tmp_path / "both" / "panel-01.png").text["parameters"]


def test_a_given_reference_image_is_used_and_copied(tmp_path, tiny_model_path, tiny_ip_adapter, cli):
    Image.new("RGB", (40, 30), (200, 30, 30)).save(tmp_path / "hero.jpg")
    text = _story_text(tiny_ip_adapter("kolors"), extra=f"  reference_image: {tmp_path / 'hero.jpg'}")
    (tmp_path / "story.yaml").write_text(text, encoding="utf-8")
    result = cli("generate", tmp_path / "story.yaml", "--model", tiny_model_path("kolors"), "--out", tmp_path / "run")
    assert result.code == 0, result.err
    record = json.loads((tmp_path / "run" / "manifest.json").read_text(encoding="utf-8"))["consistency"]["reference"]
    assert record["source"] == str(tmp_path / "hero.jpg") and len(record["sha256"]) == 64
    assert Image.open(tmp_path / "run" / "reference.png").size == (40, 30)


@pytest.mark.parametrize(
    ("reference", "expected"),
    [("missing.png", "consistency.reference_image .*missing.png: no such file"),
     ("notes.png", "consistency.reference_image .*notes.png: ")],
)
def test_a_bad_reference_image_is_one_clear_error(tmp_path, tiny_model_path, cli, reference, expected):
    (tmp_path / "notes.png").write_text("not an image", encoding="utf-8")
    text = _story_text(tmp_path / "nowhere", extra=f"  reference_image: {tmp_path / reference}")
    (tmp_path / "story.yaml").write_text(text, encoding="utf-8")
    result = cli("generate", tmp_path / "story.yaml", "--model", tiny_model_path("kolors"), "--out", tmp_path / "run")
    assert result.code == 1 and "Traceback" not in result.err
    assert len(result.err.strip().splitlines()) == 1
    import re

    assert re.search(expected, result.err)
    assert not (tmp_path / "run").exists()


def test_an_offline_hub_adapter_names_the_id_and_how_to_download(tmp_path, tiny_model_path, monkeypatch):
    from lorastory.models.registry import load_pipeline

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    pipe = load_pipeline(tiny_model_path("kolors"))
    processors = pipe.unet.attn_processors
    with pytest.raises(ModelLoadError) as err:
        with ip_adapter_loaded(pipe, resolve_ip_adapter("kolors"), scale=0.5):
            pass
    message = str(err.value)
    assert "Kwai-Kolors/Kolors-IP-Adapter-Plus" in message and "--revision refs/pr/4" in message
    assert "consistency.ip_adapter" in message and "\n" not in message
    assert all(pipe.unet.attn_processors[k] is v for k, v in processors.items()) and pipe.image_encoder is None
    with pytest.raises(ModelLoadError, match="no such folder"):
        with ip_adapter_loaded(pipe, resolve_ip_adapter("kolors", str(tmp_path / "missing")), scale=0.5):
            pass
    with pytest.raises(ModelLoadError, match="cannot load the IP-Adapter in"):
        with ip_adapter_loaded(pipe, resolve_ip_adapter("kolors", str(tmp_path)), scale=0.5):
            pass


def test_pickle_weights_are_refused():
    with pytest.raises(ConfigError, match="only .safetensors"):
        resolve_ip_adapter("kolors", "Kwai-Kolors/Kolors-IP-Adapter-Plus", weight="ip_adapter_plus_general.bin")
    spec = resolve_ip_adapter("sdxl", "/some/folder")
    assert (spec.subfolder, spec.weight_name, spec.revision) == ("sdxl_models", "ip-adapter-plus_sdxl_vit-h.safetensors", None)
    assert resolve_ip_adapter("kolors").revision == "refs/pr/4"


@pytest.mark.parametrize(
    ("consistency", "expected"),
    [
        ("  mode: sometimes\n", "line 4: consistency.mode: Input should be 'none', 'attention', 'reference' or 'both'"),
        ("  mode: attention\n  strength: 2\n", "line 5: consistency.strength: Input should be less than or equal to 1"),
        ("  mode: attention\n  step_range: [0.8, 0.2]\n", "line 5: consistency.step_range: Value error"),
        ("  mode: attention\n  blocks: [left]\n", "consistency.blocks: Value error, 'left' is not a UNet block"),
        ("  mode: attention\n  colour: red\n", "line 5: consistency.colour: unknown key"),
    ],
)
def test_bad_consistency_settings_are_one_line_naming_the_field(tmp_path, consistency, expected):
    text = f"defaults:\n  steps: 2\nconsistency:\n{consistency}panels:\n  - prompt: a\n"
    (tmp_path / "story.yaml").write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_story(tmp_path / "story.yaml")
    assert expected in str(err.value) and "\n" not in str(err.value)


def test_example_story_with_consistency_loads():
    story = load_story("examples/story_kolors_consistent.yaml")
    assert story.consistency.mode == "attention" and len(story.panels) == 4


def test_a_missing_adapter_fails_before_anything_is_rendered(tmp_path, tiny_model_path, cli):
    (tmp_path / "empty").mkdir()
    for adapter, expected in ((tmp_path / "empty", "has no ip_adapter_plus_general.safetensors"),
                              (tmp_path / "missing", "no such folder, and not a hub id")):
        (tmp_path / "story.yaml").write_text(_story_text(adapter), encoding="utf-8")
        result = cli("generate", tmp_path / "story.yaml", "--model", tiny_model_path("kolors"), "--out", tmp_path / "run")
        assert result.code == 1 and expected in result.err and len(result.err.strip().splitlines()) == 1
        assert not (tmp_path / "run" / "reference.png").exists()
