"""Qwen-Image's in-context reference through a Qwen-Image-Edit model (tiny, built by the CLI): the Edit folder loads
as the family's text-to-image pipeline keeping its processor, a story with ``reference_method: in_context`` reads
the reference through ``QwenImageEditPipeline`` (manifest, PNG parameters), and a plain Qwen-Image model is refused
in one line."""

from __future__ import annotations

import json
import shutil
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image

from lorastory.errors import ConfigError
from lorastory.generate.pngmeta import read_parameters
from lorastory.generate.story import generate_story
from lorastory.generate.story_file import load_story
from lorastory.models.registry import denoiser, detect_family, family_of_pipeline, load_pipeline


@pytest.fixture(scope="module")
def edit_model(tmp_path_factory):
    from lorastory.cli import main

    out = tmp_path_factory.mktemp("qwen-edit") / "model"
    assert main(["model", "tiny", "--family", "qwen-image-edit", "--out", str(out)]) == 0
    return out


def _story(path, mode="reference", extra=""):
    path.write_text(textwrap.dedent("""\
        character: 二次元少女，紫色长发
        style: 水彩
        separator: "，"
        negative: 模糊
        defaults: {steps: 2, cfg: 4.0, width: 64, height: 64, seed: 3}
        consistency:
          mode: MODE
        EXTRA
        panels:
          - prompt: 在舞台上唱歌
          - prompt: 在夜晚许愿
        """).replace("MODE", mode).replace("EXTRA\n", extra + "\n" if extra else ""), encoding="utf-8")
    return path


def test_an_edit_folder_loads_as_qwen_image_with_its_processor(edit_model):
    index = json.loads((edit_model / "model_index.json").read_text(encoding="utf-8"))
    assert index["_class_name"] == "QwenImageEditPipeline" and index["processor"] == ["transformers", "Qwen2VLProcessor"]
    assert detect_family(edit_model).name == "qwen-image"
    pipe = load_pipeline(edit_model, dtype=torch.bfloat16)
    assert type(pipe).__name__ == "QwenImagePipeline"  # it draws stories from text
    edit = family_of_pipeline(pipe).in_context_pipe(pipe)
    assert type(edit).__name__ == "QwenImageEditPipeline" and edit.transformer is denoiser(pipe)
    assert edit.processor.tokenizer is pipe.tokenizer and edit.processor.image_processor.size["longest_edge"] == 56 * 56
    # from_pipe casts the shared modules to float32 unless told: they stay as loaded.
    assert denoiser(pipe).dtype == torch.bfloat16 and pipe.text_encoder.dtype == torch.bfloat16


def test_an_edit_plus_folder_draws_from_text_and_its_in_context_use_is_refused(edit_model, tmp_path):
    plus = tmp_path / "plus"
    shutil.copytree(edit_model, plus)
    index = json.loads((plus / "model_index.json").read_text(encoding="utf-8"))
    (plus / "model_index.json").write_text(json.dumps({**index, "_class_name": "QwenImageEditPlusPipeline"}), encoding="utf-8")
    pipe = load_pipeline(plus)
    assert type(pipe).__name__ == "QwenImagePipeline"
    with pytest.raises(ConfigError, match=r"^the Qwen-Image in-context reference needs a Qwen-Image-Edit model "
                                          r"\(QwenImageEditPipeline, e\.g\. Qwen/Qwen-Image-Edit\): pass it as --model"):
        family_of_pipeline(pipe).in_context_pipe(pipe)


@pytest.mark.slow  # the Edit pipeline encodes the reference at its working size, about 1024² (8 s of CPU)
def test_in_context_story_on_an_edit_model_and_refused_on_plain_qwen_image(edit_model, tiny_model_path, tmp_path, cli):
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (30, 40, 3), dtype=np.uint8)).save(tmp_path / "hero.png")
    in_context = _story(tmp_path / "ic.yaml", extra=f"  reference_method: in_context\n  reference_image: {tmp_path / 'hero.png'}")
    result = cli("generate", in_context, "--model", edit_model, "--out", tmp_path / "ic")
    assert result.code == 0, result.err
    record = json.loads((tmp_path / "ic" / "manifest.json").read_text(encoding="utf-8"))["consistency"]
    assert record["in_context"] == {"pipeline": "QwenImageEditPipeline", "reference_size": [64, 64]}
    assert record["reference"]["source"] == str(tmp_path / "hero.png") and "ip_adapter" not in record
    params = read_parameters(tmp_path / "ic" / "panel-02.png")
    assert params.extra["Consistency"].startswith("reference (strength 1, reference in context, reference ")
    # The same panels without the reference, from the same Edit model drawing from text: other pixels.
    generate_story(load_story(_story(tmp_path / "none.yaml", "none")), str(edit_model), tmp_path / "none")
    for name in ("panel-01.png", "panel-02.png"):
        plain, referenced = (np.asarray(Image.open(tmp_path / run / name), dtype=np.int16) for run in ("none", "ic"))
        assert plain.shape == referenced.shape == (64, 64, 3) and np.abs(plain - referenced).max() > 0

    cli("generate", in_context, "--model", tiny_model_path("qwen-image"), "--out", tmp_path / "run").error_line(
        "the Qwen-Image in-context reference needs a Qwen-Image-Edit model (QwenImageEditPipeline, e.g. "
        "Qwen/Qwen-Image-Edit): pass it as --model (it draws the stories too), or use consistency.mode: attention")
    assert not (tmp_path / "run").exists()
