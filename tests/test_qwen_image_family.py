"""Qwen-Image, a second diffusion transformer family, through every stage on a tiny random model (CPU, 64 px, 2 steps).

Chinese prompts and captions end to end: its byte-level Qwen2 tokenizer → a story with true
classifier-free guidance (``true_cfg_scale`` and the negative prompt) → a flow-matching LoRA trained on
Chinese captions (video-style VAE latents, cached) that plain diffusers loads → a story with it → eval.
"""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file

from lorastory.images import load_rgb
from lorastory.models.fp8 import family_selection, fp8_layer_names
from lorastory.models.lora import apply_lora, load_lora_state
from lorastory.models.objectives import FlowObjective, training_objective
from lorastory.models.registry import ModelLoadError, denoiser, detect_family, get_family, load_pipeline

STORY = {
    "title": "歌星之梦", "character": "二次元少女，紫色长发", "style": "水彩", "separator": "，", "negative": "模糊，丑陋",
    "defaults": {"steps": 2, "cfg": 4.0, "width": 64, "height": 64, "seed": 1},
    "panels": [{"prompt": "{character}在舞台上唱歌", "caption": "第一幕"}, {"prompt": "{character}在夜晚对着流星许愿"}],
}
CAPTIONS = ["二次元少女，紫色长发，条纹", "粉色连衣裙，舞台，条纹", "夜晚，流星，许愿，条纹", "水彩，天空，草地，条纹"]


@pytest.fixture(scope="module")
def chinese_train_folder(tmp_path_factory):
    """Four 64x64 striped pictures with Chinese captions (metadata.csv)."""
    folder = tmp_path_factory.mktemp("qwen-data")
    (folder / "images").mkdir()
    rng = np.random.default_rng(0)
    for index in range(len(CAPTIONS)):
        stripes = np.zeros((64, 64, 3), dtype=np.uint8)
        stripes[:, :, 0], stripes[::8, :, 2] = 200, 255
        Image.fromarray(stripes + rng.integers(0, 40, stripes.shape, dtype=np.uint8)).save(folder / "images" / f"{index}.png")
    with open(folder / "metadata.csv", "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file_name", "text"])
        writer.writerows((f"images/{i}.png", caption) for i, caption in enumerate(CAPTIONS))
    return folder


@pytest.fixture(scope="module")
def qwen_run(tiny_model_path, chinese_train_folder, tmp_path_factory):
    """Four Qwen-Image LoRA training steps on Chinese captions through the CLI, with a validation picture."""
    from lorastory.cli import main

    out = tmp_path_factory.mktemp("qwen") / "run"
    assert main(["train", "--data", str(chinese_train_folder), "--model", str(tiny_model_path("qwen-image")),
                 "--out", str(out), "--resolution", "64", "--rank", "4", "--alpha", "2", "--lr", "3e-3",
                 "--max-steps", "4", "--batch-size", "2", "--checkpoint-every", "2", "--no-gradient-checkpointing",
                 "--validation-prompt", "二次元少女，条纹", "--validation-every", "4", "--validation-steps", "2"]) == 0
    return out


def _merged(pipe) -> dict[str, torch.Tensor]:
    weights = {}
    for name, layer in denoiser(pipe).named_modules():
        if getattr(layer, "base_layer", None) is not None:
            layer.merge()
            weights[name] = layer.base_layer.weight.detach().clone()
    return weights


def _story(cli, tmp_path, model, name: str, lora=None, **changes):
    story = tmp_path / f"{name}.yaml"
    spec = {**STORY, **changes.pop("top", {}), "defaults": {**STORY["defaults"], **changes}}
    story.write_text(yaml.safe_dump(spec, allow_unicode=True), encoding="utf-8")
    extra = ["--lora", lora] if lora is not None else []
    result = cli("generate", story, "--model", model, "--out", tmp_path / name, *extra)
    assert result.code == 0, result.err
    return tmp_path / name


def test_tiny_qwen_image_folder_is_detected_and_loaded(tiny_model_path, monkeypatch):
    folder = tiny_model_path("qwen-image")
    assert detect_family(folder).name == "qwen-image"
    index = json.loads((folder / "model_index.json").read_text(encoding="utf-8"))
    assert index["_class_name"] == "QwenImagePipeline" and index["text_encoder"][1] == "Qwen2_5_VLForConditionalGeneration"
    assert all(p.suffix != ".bin" for p in folder.rglob("*")) and any(folder.rglob("*.safetensors"))
    pipe = load_pipeline(folder)
    assert type(pipe).__name__ == "QwenImagePipeline" and denoiser(pipe) is pipe.transformer
    # The pipeline drops the template's first 34 tokens: exactly its system part, so no prompt token is lost.
    template = pipe.prompt_template_encode
    assert len(pipe.tokenizer(template.split("{}")[0])["input_ids"]) == pipe.prompt_template_encode_start_idx == 34
    unseen = "蘑菇在月亮上跳舞"  # characters outside the tiny corpus: byte-level pieces, nothing unknown
    assert pipe.tokenizer.decode(pipe.tokenizer(unseen)["input_ids"]) == unseen
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="huggingface-cli download Qwen/Qwen-Image"):
        load_pipeline("Qwen/Qwen-Image")


def test_an_fp8_base_converts_the_blocks_attention_and_mlp_but_not_their_modulation(tiny_model_path):
    transformer = load_pipeline(tiny_model_path("qwen-image")).transformer
    names = fp8_layer_names(transformer, **family_selection(get_family("qwen-image")))
    assert fp8_layer_names(transformer) == []  # the UNet selection finds nothing here: the family's is needed
    assert names and all(n.startswith("transformer_blocks.") for n in names)
    short = {n.split(".", 2)[2] for n in names}
    assert {"attn.to_q", "attn.add_k_proj", "attn.to_add_out", "img_mlp.net.2", "txt_mlp.net.0.proj"} <= short
    # Modulation sees one row per picture (as Flux's AdaLayerNorm Linear layers): it stays, as do the embedders.
    assert not any("_mod" in n for n in names)
    assert not {"img_in", "txt_in", "proj_out", "norm_out.linear"} & set(names)


def test_latents_are_normalised_as_the_pipeline_denormalises(tiny_model_path):
    from lorastory.models.vae import decode_latents, encode_latents

    pipe = load_pipeline(tiny_model_path("qwen-image"))
    kwargs = {"prompt": "二次元少女", "num_inference_steps": 2, "width": 64, "height": 64, "true_cfg_scale": 1.0}
    packed = pipe(**kwargs, output_type="latent", generator=torch.Generator().manual_seed(3)).images
    image = pipe(**kwargs, output_type="pt", generator=torch.Generator().manual_seed(3)).images
    latents = pipe._unpack_latents(packed, 64, 64, pipe.vae_scale_factor)[:, :, 0]  # (B, 16, 8, 8)
    assert torch.allclose(decode_latents(pipe.vae, latents), image, atol=1e-5)  # our decode == QwenImagePipeline's
    pixels = torch.rand(1, 3, 64, 64) * 2 - 1
    encoded = encode_latents(pipe.vae, pixels)
    assert encoded.shape == (1, 16, 8, 8)
    mean = torch.tensor(pipe.vae.config.latents_mean).view(1, -1, 1, 1)
    std = torch.tensor(pipe.vae.config.latents_std).view(1, -1, 1, 1)
    raw = pipe.vae.encode(pixels[:, :, None]).latent_dist.mode()[:, :, 0]
    assert torch.allclose(encoded, (raw - mean) / std, atol=1e-5)  # diffusers' training script's normalisation
    objective = training_objective(get_family("qwen-image"), pipe)
    assert isinstance(objective, FlowObjective)
    draws = {size: torch.stack([objective.draw_timestep(torch.Generator().manual_seed(i), (16, size, size))
                                for i in range(200)]).mean() for size in (32, 166)}
    assert draws[166] > draws[32]  # Qwen-Image's resolution-dependent shift: 1328 px trains noisier than 256 px


def test_captions_of_different_lengths_batch_with_their_padding_masked(tiny_model_path):
    from lorastory.models.conditioning import encode_text
    from lorastory.models.families.qwen_image import qwen_image_predict
    from lorastory.train.step import _batch_text

    pipe = load_pipeline(tiny_model_path("qwen-image"))
    short, long = "少女", "二次元少女，紫色长发，粉色连衣裙，在舞台上唱歌"
    alone = encode_text(pipe, [short])
    assert alone["prompt_embeds_mask"].all()  # a mask even when nothing is padded: cached captions can be padded later

    class Cache:  # the training cache as _batch_text reads it: one caption's tensors per key
        entries = {"short": {k: v[0] for k, v in alone.items()}, "long": {k: v[0] for k, v in encode_text(pipe, [long]).items()}}

        def load(self, key):
            return self.entries[key]

    batch = _batch_text(["short", "long"], Cache())
    assert batch["prompt_embeds"].shape[1] > alone["prompt_embeds"].shape[1]
    assert batch["prompt_embeds_mask"][0].sum() == alone["prompt_embeds"].shape[1]
    noisy, sigmas = torch.randn(1, 16, 8, 8).expand(2, -1, -1, -1), torch.tensor([0.7, 0.7])
    with torch.no_grad():
        together = qwen_image_predict(pipe.transformer, noisy, sigmas, batch, torch.float32)
        single = qwen_image_predict(pipe.transformer, noisy[:1], sigmas[:1], alone, torch.float32)
    assert torch.allclose(together[0], single[0], atol=1e-5)  # the padding changes nothing


def test_web_app_model_picker_offers_a_qwen_image_folder(tiny_model_path, tmp_path):
    import shutil

    from lorastory.ui.actions import model_choices, resolve_model
    from lorastory.ui.workspace import Workspace

    ws = Workspace(tmp_path / "ws")
    shutil.copytree(tiny_model_path("qwen-image"), ws.root / "models" / "qwen-image")
    assert "models/qwen-image" in model_choices(ws)
    assert detect_family(resolve_model(ws, "models/qwen-image")).name == "qwen-image"


def test_chinese_story_with_true_cfg_and_negative_prompt(cli, tiny_model_path, tmp_path):
    from lorastory.generate.pngmeta import read_parameters

    model = tiny_model_path("qwen-image")
    out = _story(cli, tmp_path, model, "story")
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["family"] == "QwenImagePipeline" and [p["file"] for p in manifest["panels"]] == ["panel-01.png", "panel-02.png"]
    assert manifest["panels"][0]["prompt"] == "二次元少女，紫色长发在舞台上唱歌，水彩"
    params = read_parameters(out / "panel-01.png")
    assert params.prompt == "二次元少女，紫色长发在舞台上唱歌，水彩" and params.negative_prompt == "模糊，丑陋"
    assert params.cfg_scale == 4.0 and params.sampler == "Euler" and (out / "storyboard.png").is_file()
    # cfg is true CFG: above 1 the negative prompt steers the picture; at 1 there is no guidance to steer.
    pixels = {name: np.asarray(load_rgb(_story(cli, tmp_path, model, name, cfg=cfg, top={"negative": negative})
                                         / "panel-01.png"), dtype=np.int16)
              for name, cfg, negative in (("other", 4.0, "黑色"), ("off", 1.0, "模糊，丑陋"), ("off2", 1.0, "黑色"))}
    first = np.asarray(load_rgb(out / "panel-01.png"), dtype=np.int16)
    assert np.abs(first - pixels["other"]).max() > 0
    assert np.array_equal(pixels["off"], pixels["off2"])


def test_lora_trained_on_chinese_captions_loads_in_plain_diffusers(qwen_run, tiny_model_path):
    from diffusers import QwenImagePipeline

    assert sorted(p.name for p in (qwen_run / "samples").iterdir()) == ["step-000004-00.png"]  # validation picture
    lora = qwen_run / "lora.safetensors"  # musubi-tuner's kohya names (tests/models/test_qwen_image_lora_files.py)
    with safe_open(str(lora), "pt") as handle:
        keys, metadata = list(handle.keys()), handle.metadata()
    assert metadata["lorastory.family"] == "qwen-image" and all(k.startswith("lora_unet_") for k in keys)
    assert "lora_unet_transformer_blocks_1_img_mlp_net_0_proj.lora_down.weight" in keys
    assert "lora_unet_transformer_blocks_0_attn_add_q_proj.alpha" in keys
    with safe_open(str(qwen_run / "lora_diffusers.safetensors"), "pt") as handle:
        assert "transformer.transformer_blocks.0.attn.add_q_proj.lora_B.weight" in handle.keys()  # noqa: SIM118
    _, info = load_lora_state(lora)
    assert info.components == ("transformer",) and info.rank == 4 and info.alpha == 2.0

    ours = load_pipeline(tiny_model_path("qwen-image"))
    apply_lora(ours, lora)
    reference = _merged(ours)
    plain = QwenImagePipeline.from_pretrained(tiny_model_path("qwen-image"))
    plain.load_lora_weights(str(qwen_run), weight_name=lora.name)
    merged = _merged(plain)
    assert merged.keys() == reference.keys() and len(reference) == len(keys) // 3
    assert max(float((reference[k] - w).abs().max()) for k, w in merged.items()) < 1e-6
    state, base = load_file(str(lora)), load_pipeline(tiny_model_path("qwen-image")).transformer.state_dict()
    name = "transformer_blocks.0.attn.to_q"  # W + alpha/rank B A: the LoRA trained (B is no longer zero)
    stem = "lora_unet_" + name.replace(".", "_")
    delta = 0.5 * state[f"{stem}.lora_up.weight"] @ state[f"{stem}.lora_down.weight"]
    assert delta.abs().max() > 0 and torch.allclose(reference[name], base[f"{name}.weight"] + delta, atol=1e-6)


def test_story_with_the_qwen_image_lora_then_eval(cli, qwen_run, tiny_model_path, tiny_clip, tmp_path):
    from lorastory.generate.pngmeta import read_parameters

    out = _story(cli, tmp_path, tiny_model_path("qwen-image"), "story", lora=qwen_run / "lora.safetensors")
    assert read_parameters(out / "panel-02.png").lora_name
    result = cli("eval", out, "--clip", tiny_clip)
    assert result.code == 0, result.err
    scores = json.loads((out / "scores.json").read_text(encoding="utf-8"))
    assert [p["file"] for p in scores["panels"]] == ["panel-01.png", "panel-02.png"]
    assert all(np.isfinite([p["clip_t"], p["consistency"]]).all() for p in scores["panels"])


def test_qwen_image_sizes_and_adapters_it_cannot_train_are_one_line_errors(cli, tiny_model_path, chinese_train_folder,
                                                                           tmp_path):
    model = tiny_model_path("qwen-image")
    cli("train", "--data", chinese_train_folder, "--model", model, "--out", tmp_path / "run", "--resolution", "72",
        "--max-steps", "1", "--batch-size", "2").error_line("multiples of 16", "72x72")
    cli("train", "--data", chinese_train_folder, "--model", model, "--out", tmp_path / "run2", "--resolution", "64",
        "--max-steps", "1", "--network", "locon").error_line("Qwen-Image", "not locon", "--network lora")
    cli("train", "--data", chinese_train_folder, "--model", model, "--out", tmp_path / "run3", "--resolution", "64",
        "--max-steps", "1", "--train-text-encoder").error_line("Qwen-Image", "drop --train-text-encoder")


@pytest.mark.slow
def test_resumed_qwen_image_training_ends_bit_identical(cli, qwen_run, tiny_model_path, chinese_train_folder, tmp_path):
    import shutil

    out = tmp_path / "run"  # the straight run as it stood after step 2
    shutil.copytree(qwen_run, out, ignore=shutil.ignore_patterns("step-000004*", "samples"))
    for written_at_the_end in out.glob("lora*.safetensors"):
        written_at_the_end.unlink()
    result = cli("train", "--data", chinese_train_folder, "--model", tiny_model_path("qwen-image"), "--out", out,
                 "--resolution", "64", "--rank", "4", "--alpha", "2", "--lr", "3e-3", "--max-steps", "4", "--batch-size", "2",
                 "--checkpoint-every", "2", "--no-gradient-checkpointing", "--validation-prompt", "二次元少女，条纹",
                 "--validation-every", "4", "--validation-steps", "2", "--resume")
    assert result.code == 0, result.err
    assert "resumed from step-000002" in result.out + result.err
    straight, resumed = load_file(str(qwen_run / "lora.safetensors")), load_file(str(out / "lora.safetensors"))
    assert straight.keys() == resumed.keys() and all(torch.equal(straight[k], resumed[k]) for k in straight)


@pytest.mark.slow
def test_eval_checkpoints_picks_a_qwen_image_checkpoint(cli, qwen_run, tiny_clip, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(qwen_run, run)
    result = cli("eval", "checkpoints", run, "--clip", tiny_clip, "--seeds", "1", "--batch-size", "2")
    assert result.code == 0, result.err
    _, info = load_lora_state(run / "best.safetensors")
    assert info.family == "qwen-image" and info.components == ("transformer",)
