"""The reference modes on Flux (tiny Flux, tiny XLabs-layout IP-Adapter): the published layout, stories through the
CLI (the reference moves the pixels, scale 0 does not, ``both`` keeps the adapter inside shared attention), the
manifest and PNG parameters, and bad or missing adapters as one line."""

from __future__ import annotations

import json
import shutil
import textwrap

import numpy as np
import pytest
from PIL import Image

from lorastory.errors import ConfigError
from lorastory.generate.pngmeta import read_parameters
from lorastory.generate.story import generate_story
from lorastory.generate.story_file import load_story
from lorastory.models.ip_adapter import DEFAULT_IP_ADAPTERS, build_tiny_ip_adapter, ip_adapter_loaded, resolve_ip_adapter
from lorastory.models.registry import ModelLoadError, load_pipeline


@pytest.fixture(scope="module")
def flux_adapter(tiny_model_path, tmp_path_factory):
    return build_tiny_ip_adapter(tmp_path_factory.mktemp("flux-ipa") / "adapter", tiny_model_path("flux"))


def _story(path, adapter, mode="reference", extra=""):
    """A two-panel story; ``extra``: more lines of the consistency block (each indented by two spaces)."""
    path.write_text(textwrap.dedent(f"""\
        character: anime girl, purple hair
        style: watercolor
        defaults: {{steps: 2, cfg: 3.5, width: 64, height: 64, seed: 4}}
        consistency:
          mode: {mode}
          step_range: [0.0, 1.0]
          ip_adapter: {adapter}
        EXTRA
        panels:
          - prompt: singing
          - prompt: on a stage
        """).replace("EXTRA\n", extra + "\n" if extra else ""), encoding="utf-8")
    return path


def _pixels(run):
    return [np.asarray(Image.open(run / f"panel-0{i}.png"), dtype=np.int16) for i in (1, 2)]


def test_the_tiny_adapter_has_xlabs_layout_through_the_cli(tiny_model_path, flux_adapter, tmp_path, cli):
    spec = DEFAULT_IP_ADAPTERS["flux"]
    assert (spec.source, spec.encoder_repo) == ("XLabs-AI/flux-ip-adapter", "openai/clip-vit-large-patch14")
    result = cli("model", "tiny-ip-adapter", "--model", tiny_model_path("flux"), "--out", tmp_path / "again")
    assert result.code == 0, result.err
    assert (tmp_path / "again" / spec.weight).read_bytes() == (flux_adapter / spec.weight).read_bytes()
    from safetensors import safe_open

    with safe_open(str(flux_adapter / spec.weight), "pt") as handle:
        keys = set(handle.keys())
    assert {"ip_adapter_proj_model.proj.weight", "ip_adapter_proj_model.norm.bias",
            "double_blocks.0.processor.ip_adapter_double_stream_k_proj.weight",
            "double_blocks.0.processor.ip_adapter_double_stream_v_proj.bias"} <= keys
    assert not any(key.startswith("double_blocks.1.") for key in keys)  # the tiny Flux has one double block
    assert (flux_adapter / "image_encoder" / "config.json").is_file()


@pytest.mark.slow
def test_flux_reference_stories(tiny_model_path, flux_adapter, tmp_path, cli):
    model = tiny_model_path("flux")
    pipe = load_pipeline(model)

    def generate(name, mode, extra=""):  # one pipeline for the comparisons; the reference story through the CLI
        story = _story(tmp_path / f"{name}.yaml", flux_adapter, mode, extra)
        if mode == "reference" and not extra:
            assert cli("generate", story, "--model", model, "--out", tmp_path / name).code == 0
        else:
            generate_story(load_story(story), str(model), tmp_path / name, pipe=pipe)
        return tmp_path / name

    plain, reference = _pixels(generate("none", "none")), generate("reference", "reference")
    assert all(np.abs(a - b).max() > 0 for a, b in zip(plain, _pixels(reference)))
    zero = generate("zero", "reference", "  reference_scale: 0")  # an adapter at scale 0: the plain pictures
    assert all(np.array_equal(a, b) for a, b in zip(plain, _pixels(zero)))

    record = json.loads((reference / "manifest.json").read_text(encoding="utf-8"))["consistency"]
    assert record["mode"] == "reference" and record["reference"]["source"] == "generated"
    assert record["ip_adapter"] == {"source": str(flux_adapter), "weight": "ip_adapter.safetensors",
                                    "image_encoder": "image_encoder", "revision": None, "scale": 0.5,
                                    "encoder_source": str(flux_adapter)}
    params = read_parameters(reference / "panel-01.png")
    assert params.extra["Consistency"].startswith("reference (strength 1, reference scale 0.5, reference ")
    assert params.extra["Guidance"] == "distilled"
    assert (reference / "reference.png").is_file()

    # both: shared attention keeps the IP-Adapter's attention in the double blocks (it replaces their processors).
    attention, both = _pixels(generate("attention", "attention")), generate("both", "both")
    record = json.loads((both / "manifest.json").read_text(encoding="utf-8"))["consistency"]
    assert record["attention"]["renders"][0]["shared_calls"] > 0 and record["ip_adapter"]["scale"] == 0.5
    assert np.array_equal(_pixels(both)[0], _pixels(reference)[0])  # the first panel: the reference mode's picture
    assert np.abs(_pixels(both)[1] - attention[1]).max() > 0 and np.abs(_pixels(both)[1] - _pixels(reference)[1]).max() > 0
    assert pipe.image_encoder is None and not pipe.transformer._forward_pre_hooks  # the pipeline given back as it was


def test_a_family_without_an_ip_adapter_is_one_line():
    with pytest.raises(ConfigError, match="no IP-Adapter is known for model family 'qwen-image', so the consistency modes"):
        resolve_ip_adapter("qwen-image")


def test_bad_flux_adapters_are_one_line_through_the_cli(tiny_model_path, flux_adapter, tmp_path, cli):
    from safetensors.torch import save_file
    import torch

    model = tiny_model_path("flux")
    garbage = tmp_path / "garbage"
    shutil.copytree(flux_adapter, garbage)
    (garbage / "ip_adapter.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header}")
    kolors_like = tmp_path / "kolors-like"
    shutil.copytree(flux_adapter, kolors_like)
    save_file({"image_proj.proj.weight": torch.zeros(4, 4), "ip_adapter.1.to_k_ip.weight": torch.zeros(4, 4)},
              str(kolors_like / "ip_adapter.safetensors"))
    wrong_size = tmp_path / "wrong-size"
    shutil.copytree(flux_adapter, wrong_size)
    from safetensors.torch import load_file

    state = load_file(str(flux_adapter / "ip_adapter.safetensors"))
    state["ip_adapter_proj_model.proj.weight"] = torch.zeros(128, 48)  # made for a 48-wide image encoder
    save_file(state, str(wrong_size / "ip_adapter.safetensors"))
    for adapter, needle in ((garbage, "cannot load the IP-Adapter in"), (kolors_like, "not a Flux IP-Adapter in XLabs' layout"),
                            (wrong_size, "the image encoder's embedding needs [128, 32]")):
        story = _story(tmp_path / "story.yaml", adapter)
        line = cli("generate", story, "--model", model, "--out", tmp_path / "run").error_line(needle)
        assert str(adapter) in line
        assert not (tmp_path / "run").exists()


def test_offline_flux_adapters_say_what_to_download(tiny_model_path, flux_adapter, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    pipe = load_pipeline(tiny_model_path("flux"))
    processors = pipe.transformer.attn_processors
    with pytest.raises(ModelLoadError) as err:
        with ip_adapter_loaded(pipe, resolve_ip_adapter("flux"), scale=0.5):
            pass
    message = str(err.value)
    assert "hf download XLabs-AI/flux-ip-adapter --local-dir DIR" in message and "\n" not in message
    assert "hf download openai/clip-vit-large-patch14 config.json model.safetensors --local-dir DIR/image_encoder" in message
    # The adapter downloaded alone (as the hub has it: no image encoder): the encoder is what is missing.
    alone = tmp_path / "xlabs"
    alone.mkdir()
    shutil.copy(flux_adapter / "ip_adapter.safetensors", alone)
    with pytest.raises(ModelLoadError) as err:
        with ip_adapter_loaded(pipe, resolve_ip_adapter("flux", str(alone)), scale=0.5):
            pass
    assert str(err.value).startswith("the image encoder 'openai/clip-vit-large-patch14' of the IP-Adapter in")
    assert f"--local-dir {alone}/image_encoder" in str(err.value)
    assert pipe.image_encoder is None and all(pipe.transformer.attn_processors[k] is v for k, v in processors.items())


def test_in_context_reference_on_flux_and_refused_elsewhere(tiny_model_path, tmp_path, cli):
    model = tiny_model_path("flux")
    pipe = load_pipeline(model)
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (30, 40, 3), dtype=np.uint8)).save(tmp_path / "hero.png")

    def generate(name, mode, extra=""):
        story = _story(tmp_path / f"{name}.yaml", "unused", mode, extra)
        generate_story(load_story(story), str(model), tmp_path / name, pipe=pipe)
        return tmp_path / name

    plain = _pixels(generate("none", "none"))
    in_context = generate("ic", "reference", f"  reference_method: in_context\n  reference_image: {tmp_path / 'hero.png'}")
    assert all(np.abs(a - b).max() > 0 for a, b in zip(plain, _pixels(in_context)))
    record = json.loads((in_context / "manifest.json").read_text(encoding="utf-8"))["consistency"]
    assert record["in_context"] == {"pipeline": "FluxKontextPipeline", "reference_size": [64, 64]}  # at the panel size
    assert "ip_adapter" not in record and record["reference"]["source"] == str(tmp_path / "hero.png")
    assert read_parameters(in_context / "panel-02.png").extra["Consistency"].startswith(
        "reference (strength 1, reference in context, reference ")
    assert type(pipe).__name__ == "FluxPipeline" and pipe.image_encoder is None

    story = _story(tmp_path / "kolors.yaml", "unused", "reference", "  reference_method: in_context")
    cli("generate", story, "--model", tiny_model_path("kolors"), "--out", tmp_path / "run").error_line(
        "the Kolors family has no in-context reference; use consistency.reference_method: ip_adapter")
    assert not (tmp_path / "run").exists()
