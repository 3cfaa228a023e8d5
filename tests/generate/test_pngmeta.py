"""PNG parameters: the A1111 infotext round-trips (Chinese, commas, newlines, LoRA), other
tools' readers see what they expect, and the files open with plain Pillow."""

from __future__ import annotations

import hashlib
import json
import re

import numpy as np
import pytest
from PIL import Image

from lorastory.errors import DataError
from lorastory.generate.pngmeta import (
    GenerationParams,
    format_parameters,
    lora_short_hash,
    parse_parameters,
    read_parameters,
    save_png_with_parameters,
)

# The first panel of the reference workflow, as our generate stage would record it.
REFERENCE = GenerationParams(
    prompt="二次元，一个紫色长发小女孩穿着粉蓝色连衣裙，在家中阳台上坐着，外面下着雨，双手托着腮，很无聊，全身",
    negative_prompt="丑陋、变形、嘈杂、模糊、低对比度",
    steps=50,
    sampler="Euler",
    cfg_scale=4.0,
    seed=1,
    width=1024,
    height=1024,
    model="Kwai-Kolors/Kolors-diffusers",
    lora_name="anime_style",
    lora_scale=0.8,
    lora_hash="0123456789ab",
)


def _a1111_parse(text: str) -> dict[str, str]:
    """What AUTOMATIC1111's parse_generation_parameters (modules/infotext_utils.py) returns,
    minus its UI defaults: the reader our files must satisfy."""
    re_param = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
    res: dict[str, str] = {}
    prompt, negative, done = "", "", False
    *lines, last = text.strip().split("\n")
    if len(re_param.findall(last)) < 3:
        lines.append(last)
        last = ""
    for line in lines:
        line = line.strip()
        if line.startswith("Negative prompt:"):
            done = True
            line = line[16:].strip()
        if done:
            negative += ("" if negative == "" else "\n") + line
        else:
            prompt += ("" if prompt == "" else "\n") + line
    res["Prompt"], res["Negative prompt"] = prompt, negative
    for key, value in re_param.findall(last):
        if value[0] == '"' and value[-1] == '"':
            value = json.loads(value)
        size = re.match(r"^(\d+)x(\d+)$", value)
        if size:
            res[f"{key}-1"], res[f"{key}-2"] = size.group(1), size.group(2)
        else:
            res[key] = value
    return res


def test_reference_panel_text_is_a1111_style():
    text = format_parameters(REFERENCE)
    lines = text.split("\n")
    assert lines[0] == REFERENCE.prompt + " <lora:anime_style:0.8>"
    assert lines[1] == "Negative prompt: 丑陋、变形、嘈杂、模糊、低对比度"
    assert lines[2] == (
        "Steps: 50, Sampler: Euler, CFG scale: 4, Seed: 1, Size: 1024x1024, "
        'Model: Kwai-Kolors/Kolors-diffusers, Lora hashes: "anime_style: 0123456789ab"'
    )
    assert parse_parameters(text) == REFERENCE


@pytest.mark.parametrize(
    "params",
    [
        GenerationParams(prompt="a cat"),
        GenerationParams(prompt="a cat, on a mat", seed=7),
        GenerationParams(prompt="", negative_prompt="blurry", steps=20, cfg_scale=7.5),
        GenerationParams(
            prompt="第一行，紫色长发\n第二行, with a comma\n\n第四行: a colon", negative_prompt="模糊\nlow, res"
        ),
        GenerationParams(
            prompt='she said "hi"',
            sampler="DPM++ 2M",
            model='name, with "quotes": and colon',
            extra={"Schedule type": "Karras", "Comment": "多行\n注释, 逗号", "Padded": "  spaces  ", "Empty": ""},
        ),
        GenerationParams(prompt="风景", lora_name="style", lora_scale=1.0, seed=2**63 - 1, width=832, height=1216),
        GenerationParams(prompt="x", lora_name="style", lora_scale=-0.35, cfg_scale=0.1, model_hash="45dee52b"),
    ],
)
def test_format_parse_round_trip(params):
    assert parse_parameters(format_parameters(params)) == params


def test_a1111_reader_sees_every_field():
    params = GenerationParams(
        prompt="紫色长发，少女\nsecond line, 2",
        negative_prompt="丑陋, 变形",
        steps=30,
        sampler="Euler a",
        cfg_scale=4.5,
        seed=42,
        width=768,
        height=1024,
        model="kolors, v1",
        extra={"Comment": "a, b"},
    )
    seen = _a1111_parse(format_parameters(params))
    assert seen["Prompt"] == params.prompt
    assert seen["Negative prompt"] == params.negative_prompt
    assert (seen["Steps"], seen["Sampler"], seen["CFG scale"], seen["Seed"]) == ("30", "Euler a", "4.5", "42")
    assert (seen["Size-1"], seen["Size-2"]) == ("768", "1024")
    assert seen["Model"] == "kolors, v1"
    assert seen["Comment"] == "a, b"


def test_lora_tag_is_what_a1111_and_comfyui_extract():
    prompt_line = format_parameters(REFERENCE).split("\n")[0]
    # ComfyUI's A1111 import (and A1111's extra-network parser) find <lora:name:weight>.
    assert re.findall(r"<lora:([^:]+:[^>]+)>", prompt_line) == ["anime_style:0.8"]
    assert _a1111_parse(format_parameters(REFERENCE))["Lora hashes"] == "anime_style: 0123456789ab"


def test_parses_a_foreign_a1111_infotext():
    text = (
        "masterpiece, 1girl, <lora:add_detail:0.5> <lora:anime:0.7>\n"
        "Negative prompt: (worst quality:1.4), lowres\n"
        "Steps: 28, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 965400086, "
        'Size: 512x768, Model hash: 45dee52b, Model: anything-v5, Lora hashes: "add_detail: 7c6bad76eb54, anime: 1a2b3c4d5e6f", '
        "Version: v1.10.1"
    )
    params = parse_parameters(text)
    assert params.prompt == "masterpiece, 1girl, <lora:add_detail:0.5> <lora:anime:0.7>"  # two LoRAs stay in the prompt
    assert params.negative_prompt == "(worst quality:1.4), lowres"
    assert (params.steps, params.sampler, params.cfg_scale, params.seed) == (28, "DPM++ 2M", 7.0, 965400086)
    assert (params.width, params.height, params.model, params.model_hash) == (512, 768, "anything-v5", "45dee52b")
    assert params.lora_name is None
    assert params.extra == {
        "Schedule type": "Karras",
        "Lora hashes": "add_detail: 7c6bad76eb54, anime: 1a2b3c4d5e6f",
        "Version": "v1.10.1",
    }
    assert parse_parameters(format_parameters(params)) == params


def test_unreadable_known_values_are_kept_as_text():
    params = parse_parameters("a prompt\nSteps: many, Seed: 3, Size: big, Sampler: Euler")
    assert (params.steps, params.seed, params.width, params.sampler) == (None, 3, None, "Euler")
    assert params.extra == {"Steps": "many", "Size": "big"}


def test_prompt_only_text_is_all_prompt():
    assert parse_parameters("a girl: smiling\nin the rain") == GenerationParams(prompt="a girl: smiling\nin the rain")


@pytest.mark.parametrize(
    ("params", "message"),
    [
        (GenerationParams(prompt="x", lora_name="a:b"), "LoRA name"),
        (GenerationParams(prompt="x", lora_hash="abc"), "lora_name"),
        (GenerationParams(prompt="x", width=512), "width and height"),
        (GenerationParams(prompt="x", extra={"a": "1"}), "extra key"),
        (GenerationParams(prompt="x", extra={"bad:key": "1"}), "extra key"),
        (GenerationParams(prompt="x", seed=1, extra={"Seed": "2"}), "duplicates"),
        (GenerationParams(prompt="x", steps="50"), "steps must be int"),  # type: ignore[arg-type]
        (GenerationParams(prompt="x", cfg_scale=True), "cfg_scale must be"),  # type: ignore[arg-type]
    ],
)
def test_bad_params_are_rejected_with_a_reason(params, message):
    with pytest.raises(DataError, match=message):
        format_parameters(params)


def test_from_dict_rejects_unknown_and_mistyped():
    with pytest.raises(DataError, match="unknown generation parameter"):
        GenerationParams.from_dict({"prompt": "x", "guidance": 4})
    with pytest.raises(DataError, match="incomplete"):
        GenerationParams.from_dict({"seed": 1})
    with pytest.raises(DataError, match="seed must be int"):
        GenerationParams.from_dict({"prompt": "x", "seed": "1"})
    assert GenerationParams.from_dict(REFERENCE.to_dict()) == REFERENCE


# --------------------------------------------------------------------------- files


def _panel(size=(32, 24), mode="RGB"):
    pixels = np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels, "RGB").convert(mode)


def test_png_is_readable_by_plain_pillow(tmp_path):
    path = tmp_path / "panel.png"
    save_png_with_parameters(_panel(), path, REFERENCE)
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == (32, 24)
        assert image.text["parameters"] == format_parameters(REFERENCE)
        assert json.loads(image.text["lorastory"])["params"]["prompt"] == REFERENCE.prompt
    assert read_parameters(path) == REFERENCE
    assert [p.name for p in tmp_path.iterdir()] == ["panel.png"]  # no temporary file left behind


def test_exact_params_survive_what_the_infotext_cannot_hold(tmp_path):
    params = GenerationParams(prompt="  leading and trailing spaces  \nNegative prompt: looks like a negative")
    path = tmp_path / "odd.png"
    with pytest.warns(UserWarning, match="Negative prompt:"):
        save_png_with_parameters(_panel(), path, params)
        assert parse_parameters(format_parameters(params)) != params  # the infotext alone loses it...
    assert read_parameters(path) == params  # ...the lorastory chunk keeps it


def test_reads_infotext_when_json_chunk_is_missing_or_broken(tmp_path):
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", format_parameters(REFERENCE))
    info.add_text("lorastory", "{not json")
    path = tmp_path / "a1111.png"
    _panel().save(path, pnginfo=info)
    assert read_parameters(path) == REFERENCE


def test_overwrites_old_parameters_and_converts_modes(tmp_path):
    path = tmp_path / "panel.png"
    save_png_with_parameters(_panel(), path, GenerationParams(prompt="old"))
    with Image.open(path) as old:
        old.load()
        save_png_with_parameters(old, path, GenerationParams(prompt="新的"))
    assert read_parameters(path) == GenerationParams(prompt="新的")
    save_png_with_parameters(_panel(mode="CMYK"), path, REFERENCE)
    with Image.open(path) as image:
        assert image.mode == "RGB"


def test_png_without_parameters_reads_none(tmp_path):
    path = tmp_path / "plain.png"
    _panel().save(path)
    assert read_parameters(path) is None


def test_bad_paths_raise_data_errors(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        read_parameters(tmp_path / "missing.png")
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not a png at all")
    with pytest.raises(DataError, match="cannot read it as an image"):
        read_parameters(junk)


def test_lora_short_hash_matches_a1111(tmp_path):
    from safetensors.numpy import save_file

    path = tmp_path / "style.safetensors"
    save_file({"w": np.arange(12, dtype=np.float32)}, str(path), metadata={"rank": "4"})
    data = path.read_bytes()
    header = int.from_bytes(data[:8], "little")
    assert lora_short_hash(path) == hashlib.sha256(data[8 + header :]).hexdigest()[:12]
    with pytest.raises(DataError, match="not found"):
        lora_short_hash(tmp_path / "none.safetensors")


# --------------------------------------------------------------- model name, hash, mis-read warnings


def test_model_is_named_not_located(tmp_path):
    from lorastory.generate.pngmeta import model_name

    folder = tmp_path / "my-kolors"
    folder.mkdir()
    single = tmp_path / "dreamshaper_8.safetensors"
    single.write_bytes(b"x")
    assert model_name(str(folder)) == "my-kolors" and model_name(str(folder) + "/") == "my-kolors"
    assert model_name(str(single)) == "dreamshaper_8"
    assert model_name("Kwai-Kolors/Kolors-diffusers") == "Kwai-Kolors/Kolors-diffusers"  # a hub id names itself
    assert str(tmp_path) not in model_name(str(tmp_path / "gone" / "model"))


def test_model_hash_is_a1111_short_hash_of_a_single_file(tmp_path):
    from lorastory.generate.pngmeta import model_short_hash

    single = tmp_path / "model.safetensors"
    single.write_bytes(b"weights" * 1000)
    # A1111: shorthash = sha256 of the whole checkpoint file, first 10 hex digits
    assert model_short_hash(single) == hashlib.sha256(single.read_bytes()).hexdigest()[:10]
    assert model_short_hash(tmp_path) is None and model_short_hash("org/hub-model") is None


def test_a1111_reads_model_name_and_hash(tmp_path):
    params = GenerationParams(prompt="a cat", steps=20, seed=3, width=64, height=64, model="dreamshaper_8",
                              model_hash="0123456789")
    parsed = _a1111_parse(format_parameters(params))
    assert (parsed["Model"], parsed["Model hash"], parsed["Prompt"]) == ("dreamshaper_8", "0123456789", "a cat")


def test_prompt_line_that_parsers_misread_warns_and_json_keeps_it(tmp_path):
    params = GenerationParams(prompt="a cat\nNegative prompt: part of the prompt", negative_prompt="blur", steps=5,
                              seed=1, width=64, height=64)
    with pytest.warns(UserWarning, match="starts with 'Negative prompt:'"):
        save_png_with_parameters(Image.new("RGB", (8, 8)), tmp_path / "p.png", params)
    assert _a1111_parse(Image.open(tmp_path / "p.png").text["parameters"])["Prompt"] == "a cat"  # what A1111 sees
    assert read_parameters(tmp_path / "p.png") == params  # the exact values, from the JSON chunk
