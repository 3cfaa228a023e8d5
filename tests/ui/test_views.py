"""The web app's views and tools without a browser (issue 22): defaults that fit the toy model,
example recipes and saved presets, a recipe that keeps nothing saying why, the recipe editor
keeping comments, the LoRA on/off view, labelled samples, the smoothed loss, PNG Info, and the
single-panel preview and LoRA-scale X/Y grid."""

from __future__ import annotations

import json
import shutil

import pytest
import yaml

from lorastory.config import yaml_from_text
from lorastory.demo import EXAMPLES
from lorastory.errors import ConfigError, DataError
from lorastory.generate.guidance import GUIDANCE_KEY, TRUE_CFG_KEY
from lorastory.generate.pngmeta import GenerationParams, save_png_with_parameters
from lorastory.toyworld.dataset import write_toy_dataset
from lorastory.ui import actions
from lorastory.ui.actions.compare_view import on_off_view
from lorastory.ui.actions.pnginfo import png_info, story_fields
from lorastory.ui.actions.preview import grid_job, preview_job
from lorastory.ui.actions.recipe_text import add_op_keeping_comments
from lorastory.ui.actions.train import sample_label
from lorastory.ui.defaults import (
    app_defaults,
    load_user_preset,
    preset_choices,
    preset_values,
    recipe_choices,
    recipe_text,
    save_user_preset,
)
from lorastory.ui.jobs import DONE, JobQueue
from lorastory.ui.presets import REFERENCE_PRESET, TOY_PRESET, load_presets
from lorastory.ui.tabs.data import recipe_message
from lorastory.ui.workspace import Workspace


def test_defaults_follow_the_model_and_the_gpu(tmp_path):
    ws = Workspace(tmp_path / "ws")
    assert app_defaults(ws, cuda=True).preset == TOY_PRESET  # only the toy model: the toy workflow, even on a GPU
    real = ws.root / "models" / "kolors"
    real.mkdir(parents=True)
    (real / "model_index.json").write_text('{"_class_name": "KolorsPipeline"}', encoding="utf-8")
    on_gpu = app_defaults(ws, cuda=True)
    assert (on_gpu.toy, on_gpu.model, on_gpu.recipe, on_gpu.preset) == (False, "models/kolors", "recipe_reference.yaml",
                                                                       REFERENCE_PRESET)
    on_cpu = app_defaults(ws, cuda=False)
    assert (on_cpu.toy, on_cpu.recipe, on_cpu.story) == (True, "recipe_toy.yaml", "story_toy.yaml")
    assert load_presets()[on_cpu.preset]["resolution"] == 128


def test_example_recipes_load_pointed_at_the_dataset(tmp_path):
    ws = Workspace(tmp_path / "ws")
    assert {"recipe_toy.yaml", "recipe_reference.yaml"} <= set(recipe_choices(ws))
    text = recipe_text(ws, "recipe_toy.yaml", "datasets/toy/metadata.jsonl", "mine")
    data = yaml_from_text(text, "recipe")
    assert data["dataset_path"] == "datasets/toy/metadata.jsonl" and data["export_path"] == "curated/mine/result.jsonl"
    clip = [op for op in data["process"] if "image_text_similarity_filter" in op][0]
    assert clip["image_text_similarity_filter"]["hf_clip"] == "models/toy-clip"  # the workspace's toy CLIP
    assert "# drops the thumbnails" in text
    (ws.root / "recipes").mkdir(exist_ok=True)
    (ws.root / "recipes" / "mine.yaml").write_text("np: 1\n", encoding="utf-8")
    assert "recipes/mine.yaml" in recipe_choices(ws)


def test_saved_presets_round_trip(tmp_path):
    ws = Workspace(tmp_path / "ws")
    values = dict(load_presets()[TOY_PRESET], rank=4, max_steps=7)
    path = save_user_preset(ws, "my-toy", values)
    assert path == ws.root / "presets" / "train" / "my-toy.yaml"
    assert "saved: my-toy" in preset_choices(ws)
    assert preset_values(ws, "saved: my-toy") == values
    with pytest.raises(ConfigError, match="preset name"):
        save_user_preset(ws, "../escape", values)
    path.write_text("rank: 4\nbogus: 1\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="unknown field.*bogus"):
        load_user_preset(ws, "my-toy")


def test_add_operator_keeps_the_comments():
    text = (EXAMPLES / "recipe_reference.yaml").read_text(encoding="utf-8") + "# a closing note\n"
    new, note = add_op_keeping_comments(text, "image_deduplicator", "method: phash\n")
    assert note == ""
    comments = [line for line in text.splitlines() if line.lstrip().startswith("#")]
    assert comments and all(line in new.splitlines() for line in comments)
    before, after = yaml.safe_load(text), yaml.safe_load(new)
    assert after["process"] == before["process"] + [{"image_deduplicator": {"method": "phash"}}]
    assert new.rstrip().endswith("# a closing note")
    with pytest.raises(ConfigError):
        add_op_keeping_comments(text, "image_deduplicator", "no_such_param: 1\n")


def test_a_recipe_that_keeps_nothing_says_why(tmp_path):
    ws = Workspace(tmp_path / "ws")
    write_toy_dataset(ws.root / "incoming", count=4, seed=0)
    actions.import_folder(ws, "incoming", "toy", None, True)
    recipe = actions.default_recipe("datasets/toy/metadata.jsonl")  # the 1024² reference recipe
    report = actions.run_recipe_text(ws, recipe, "ref")
    assert report["samples_out"] == 0
    message = recipe_message(ws, report)
    assert "nothing kept: image_shape_filter dropped the last" in message
    assert "toy recipe" in message


def test_on_off_view_shows_both_rows_and_the_deltas(tmp_path):
    ws = Workspace(tmp_path / "ws")
    folder = ws.root / "stories" / "s" / "compare"
    folder.mkdir(parents=True)
    from PIL import Image

    Image.new("RGB", (8, 4)).save(folder / "lora_on_off.png")
    summary = {"style_score_mean": {"with_lora": 31.5, "without_lora": 8.9, "delta": 22.6},
               "clip_t_content_mean": {"with_lora": 20.0, "without_lora": 35.5, "delta": -15.5},
               "aesthetic_mean": {"with_lora": None, "without_lora": None, "delta": None}}
    (folder / "compare.json").write_text(json.dumps({"lora": {"path": "/w/runs/ink-style/lora.safetensors", "scale": 0.8},
                                                     "summary": summary}), encoding="utf-8")
    view = on_off_view(ws, "stories/s")
    assert view["image"] == str(folder / "lora_on_off.png")
    assert view["rows"][:2] == [["style score (toward the training pictures)", "31.50", "8.90", "+22.60"],
                                ["story content (CLIP-T without the style phrase)", "20.00", "35.50", "-15.50"]]
    assert len(view["rows"]) == 2  # scores without values are left out
    assert "style +22.60, content -15.50" in view["headline"]
    assert "LoRA `ink-style` at scale 0.8" in view["headline"]  # the run's name, not the file's stem "lora"
    assert on_off_view(ws, "stories/none") is None


def test_samples_are_labelled_and_the_loss_smoothed():
    assert sample_label("step-000050-01", ["a", "一个女孩"]) == "step 50: 一个女孩"
    assert sample_label("step-000007-00", []) == "step 7, prompt 1"
    frame = actions.loss_frame([1, 2, 3], [1.0, 0.0, 1.0], weight=0.5)
    assert list(frame["series"]) == ["raw"] * 3 + ["smoothed (0.5)"] * 3
    smoothed = list(frame["loss"][3:])
    assert smoothed[0] == pytest.approx(1.0)  # debiased: the first point is the first loss
    assert smoothed[1] == pytest.approx((0.5 * 0.5 * 1.0) / 0.75)  # (0.25 + 0) / (1 - 0.25)
    assert 0 < smoothed[2] < 1


def test_png_info_reads_the_parameters(tmp_path):
    from PIL import Image

    ws = Workspace(tmp_path / "ws")
    params = GenerationParams(prompt="一个女孩在中间", negative_prompt="模糊", steps=8, sampler="Euler", cfg_scale=5.0,
                              seed=42, width=128, height=128, lora_name="toy-style", lora_scale=0.75)
    path = ws.root / "up" / "p.png"
    path.parent.mkdir(parents=True)
    save_png_with_parameters(Image.new("RGB", (16, 16)), path, params)
    info = png_info(ws, str(path))
    assert info["text"].startswith("一个女孩在中间 <lora:toy-style:0.75>\nNegative prompt: 模糊\nSteps: 8")
    assert ["seed", "42"] in info["rows"]
    fields = story_fields(info["params"])
    assert fields["panels"] == [["一个女孩在中间", "", 42, ""]] and (fields["width"], fields["steps"]) == (128, 8)
    assert fields["true_cfg"] is None  # nothing said of guidance: the Story tab's field is left as it is
    flux = GenerationParams(prompt="a cat", cfg_scale=3.5, extra={GUIDANCE_KEY: "true CFG", TRUE_CFG_KEY: "4"})
    save_png_with_parameters(Image.new("RGB", (16, 16)), ws.root / "up" / "flux.png", flux)
    fields = story_fields(png_info(ws, str(ws.root / "up" / "flux.png"))["params"])
    assert (fields["true_cfg"], fields["cfg"]) == (4.0, 3.5)  # a Flux panel's true CFG reaches the Story tab
    assert story_fields(GenerationParams(prompt="a cat", extra={GUIDANCE_KEY: "distilled"}))["true_cfg"] == 0
    Image.new("RGB", (4, 4)).save(ws.root / "up" / "plain.png")
    with pytest.raises(DataError, match="no generation parameters"):
        png_info(ws, str(ws.root / "up" / "plain.png"))


@pytest.fixture
def grid_ws(tmp_path, tiny_model_path):
    import torch

    from lorastory.models.lora import LoraSpec, inject_lora, save_lora
    from lorastory.models.registry import load_pipeline

    ws = Workspace(tmp_path / "ws")
    shutil.copytree(tiny_model_path("kolors"), ws.root / "models" / "tiny")
    pipe = load_pipeline(ws.root / "models" / "tiny")
    spec = LoraSpec(rank=4, alpha=4)
    inject_lora(pipe, spec)
    with torch.no_grad():
        for name, param in pipe.unet.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=torch.Generator().manual_seed(1)) * 0.5)
    (ws.root / "runs" / "r").mkdir(parents=True)
    save_lora(pipe, ws.root / "runs" / "r" / "lora.safetensors", spec, "kolors")
    return ws


@pytest.mark.slow
def test_panel_preview_and_scale_grid(grid_ws):
    ws, queue = grid_ws, JobQueue()
    story = actions.story_from_form("t", "一只猫", "", "", [["在花园里", "", None, ""], ["在窗边", "", 5, ""]],
                                    {"steps": 2, "cfg": 4.0, "width": 64, "height": 64, "seed": 3})
    try:
        job = queue.wait(queue.submit("preview", "p", preview_job(ws, story, 2, "models/tiny", None, 1.0, "s")).id, 120)
        assert job.status == DONE, job.error
        manifest = json.loads((ws.root / "previews" / "s-panel-2" / "manifest.json").read_text(encoding="utf-8"))
        assert [(p["prompt"], p["seed"]) for p in manifest["panels"]] == [("一只猫,在窗边", 5)]
        grid = grid_job(ws, story, 1, "models/tiny", "runs/r/lora.safetensors", "0, 1", "seeds", "7, 8", "s")
        job = queue.wait(queue.submit("preview", "g", grid).id, 240)
        assert job.status == DONE, job.error
        from PIL import Image

        with Image.open(job.data["grid"]) as board:
            assert board.width >= 2 * 64 and board.height > 2 * 64  # 2 columns, 2 rows with captions and a title
        cells = sorted((ws.root / "previews" / "s-grid-1").glob("cell-*/manifest.json"))
        seen = [(m["lora"]["scale"] if m.get("lora") else None, m["panels"][0]["seed"])
                for m in (json.loads(c.read_text(encoding="utf-8")) for c in cells)]
        assert seen == [(0.0, 7), (0.0, 8), (1.0, 7), (1.0, 8)]
        with pytest.raises(ConfigError, match="over 36"):
            grid_job(ws, story, 1, "models/tiny", "runs/r/lora.safetensors", "0,0.5,1,1.5,2,2.5,3", "seeds",
                     "1,2,3,4,5,6", "s")
    finally:
        queue.shutdown()


def test_caption_table_bulk_edits(tmp_path):
    """The tag editor edits the table; Save writes it to the dataset's metadata.jsonl."""
    from lorastory.ui.actions.caption_edit import edit_captions

    ws = Workspace(tmp_path / "ws")
    write_toy_dataset(ws.root / "incoming", count=2, seed=0, bad_samples=False, lang="en")
    actions.import_folder(ws, "incoming", "toy", None, True)
    table = actions.caption_rows(ws, "datasets/toy/metadata.jsonl")
    edited, changed = edit_captions(table, find="outlines", replace="lines", add="sks", at="start")
    assert changed == 2 and all(caption.startswith("sks, ") and "outlines" not in caption for _f, caption in edited)
    assert edit_captions(edited, add="sks")[1] == 0  # a tag already there is not added twice
    assert actions.save_captions(ws, "datasets/toy/metadata.jsonl", edited) == 2
    assert actions.caption_rows(ws, "datasets/toy/metadata.jsonl") == edited
    removed, _ = edit_captions([["a.png", "1girl，红发，sks"]], remove="sks")
    assert removed == [["a.png", "1girl，红发"]]
