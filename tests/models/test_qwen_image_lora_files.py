"""Qwen-Image LoRA files: ours load in ComfyUI, musubi-tuner and diffusers alike; the other tools' files load in ours.

The default file is musubi-tuner's kohya layout (``lora_unet_transformer_blocks_0_attn_to_q`` + ``.alpha``): the
fused weights ComfyUI's loader (tests/clients/comfy_qwen_image.py) and musubi-tuner's merge
(tests/clients/musubi_lora.py) make of it equal diffusers' ``load_lora_weights`` + ``fuse_lora``, on the tiny
Qwen-Image, every Linear module of the transformer adapted (rank 4, alpha 2: a loader that ignores alpha gives other
weights). Files in diffusers', ComfyUI's, musubi-tuner's and DiffSynth-Studio's layouts, built here from known
matrices, load through ``apply_lora`` (what ``generate --lora`` uses) as ``W + alpha / rank * up @ down``.
"""

from __future__ import annotations

import pytest
import torch
from clients.comfy_qwen_image import comfy_qwen_image_patch
from clients.common import diffusers_fused, max_difference, merged_weights, randomise
from clients.musubi_lora import musubi_merge
from safetensors import safe_open
from safetensors.torch import save_file

from lorastory.models.families.qwen_image import QWEN_IMAGE_MODULES
from lorastory.models.lora import LoraMismatchError, LoraSpec, apply_lora, default_save_formats, inject_lora, load_lora_state, save_lora
from lorastory.models.registry import load_pipeline

# Every Linear module of the transformer, by the name peft matches (the block index dropped).
EVERY_LINEAR = sorted({m.removeprefix("transformer_blocks.N.") for m in QWEN_IMAGE_MODULES})
SPEC = LoraSpec(rank=4, alpha=2.0, target_modules=EVERY_LINEAR)
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def default_files(tiny_model_path, tmp_path_factory):
    """A randomised LoRA on a plain diffusers Qwen-Image, saved as a training run saves it; its merged weights."""
    from diffusers import QwenImagePipeline

    folder = tiny_model_path("qwen-image")
    pipe = QwenImagePipeline.from_pretrained(folder)
    torch.manual_seed(0)
    randomise(inject_lora(pipe, SPEC))
    out = tmp_path_factory.mktemp("qwen-lora") / "lora.safetensors"
    formats = default_save_formats("qwen-image", SPEC)
    assert formats == ["kohya", "diffusers"]
    for fmt in formats:
        save_lora(pipe, out if fmt == formats[0] else out.with_name(f"lora_{fmt}.safetensors"), SPEC, format=fmt)
    return folder, out, merged_weights(pipe)


def _plain_fused(folder, file):
    from diffusers import QwenImagePipeline

    plain = QwenImagePipeline.from_pretrained(folder)
    plain.load_lora_weights(file.parent, weight_name=file.name)
    return diffusers_fused(plain)


def test_default_file_fuses_the_same_in_comfyui_musubi_tuner_and_diffusers(default_files):
    folder, out, merged = default_files
    with safe_open(str(out), "pt") as handle:
        keys = set(handle.keys())
        alphas = {float(handle.get_tensor(k)) for k in keys if k.endswith(".alpha")}
    assert all(k.startswith("lora_unet_") for k in keys) and alphas == {2.0}
    for name in ("transformer_blocks_1_img_mlp_net_0_proj", "transformer_blocks_0_attn_to_out_0", "norm_out_linear",
                 "time_text_embed_timestep_embedder_linear_2", "transformer_blocks_1_txt_mod_1"):
        assert {f"lora_unet_{name}.{part}" for part in ("lora_down.weight", "lora_up.weight", "alpha")} <= keys
    fused = _plain_fused(folder, out)
    assert len(fused) == len(merged) == len(keys) // 3 and max_difference(merged, fused) <= TOLERANCE

    transformer = load_pipeline(folder).transformer
    patched, total, not_loaded, errors = comfy_qwen_image_patch(transformer, out)
    assert (not_loaded, errors) == ([], []) and len(patched) == total == len(merged)
    assert max_difference(fused, patched) <= TOLERANCE  # ComfyUI's patched weights are diffusers' fuse_lora's
    musubi, network, unused = musubi_merge(transformer, out)
    assert (network, unused) == ("lora", []) and max_difference(fused, musubi) <= TOLERANCE

    ours = load_pipeline(folder)
    info = apply_lora(ours, out)
    assert (info.format, info.components, info.num_modules, info.alpha) == ("kohya", ("transformer",), len(merged), 2.0)
    assert max_difference(merged, merged_weights(ours)) <= TOLERANCE


def test_diffusers_file_beside_it_loads_in_plain_diffusers(default_files):
    folder, out, merged = default_files
    second = out.with_name("lora_diffusers.safetensors")
    with safe_open(str(second), "pt") as handle:
        assert all(k.startswith("transformer.") for k in handle.keys())  # noqa: SIM118 - safe_open has no iterator
    assert max_difference(merged, _plain_fused(folder, second)) <= TOLERANCE


# ------------------------------------------------------------------ other tools' files

MODULES = ("transformer_blocks.0.attn.to_q", "transformer_blocks.1.img_mlp.net.0.proj", "transformer_blocks.0.attn.to_out.0",
           "transformer_blocks.1.txt_mod.1", "transformer_blocks.0.attn.add_k_proj", "norm_out.linear",
           "time_text_embed.timestep_embedder.linear_2")
RANK, ALPHA = 4, 2.0


def _layout_keys(layout: str, module: str) -> tuple[str, str, str | None]:
    """(down key, up key, alpha key or None) of ``module`` in each tool's layout."""
    flat = "lora_unet_" + module.replace(".", "_")
    return {
        "musubi": (f"{flat}.lora_down.weight", f"{flat}.lora_up.weight", f"{flat}.alpha"),  # musubi-tuner, kohya
        "comfyui": (f"diffusion_model.{module}.lora_down.weight", f"diffusion_model.{module}.lora_up.weight",
                    f"diffusion_model.{module}.alpha"),  # ComfyUI's LoRA training node
        "comfyui-baked": (f"diffusion_model.{module}.lora_A.weight", f"diffusion_model.{module}.lora_B.weight",
                          None),  # musubi-tuner's convert_lora.py --target other: alpha baked in
        "diffusers": (f"transformer.{module}.lora_A.weight", f"transformer.{module}.lora_B.weight", None),  # ai-toolkit
        "diffsynth": (f"{module}.lora_A.default.weight", f"{module}.lora_B.default.weight", None),  # DiffSynth-Studio
    }[layout]


@pytest.mark.parametrize(("layout", "fmt"), [("musubi", "kohya"), ("comfyui", "comfyui"), ("comfyui-baked", "comfyui"),
                                             ("diffusers", "diffusers"), ("diffsynth", "diffsynth")])
def test_other_tools_qwen_image_loras_load_with_the_weights_they_mean(tiny_model_path, tmp_path, layout, fmt):
    folder = tiny_model_path("qwen-image")
    base = load_pipeline(folder).transformer
    shapes = {name: layer.weight.shape for name, layer in base.named_modules() if name in MODULES}
    generator = torch.Generator().manual_seed(len(layout))
    tensors, expected = {}, {}
    for module in MODULES:
        down_key, up_key, alpha_key = _layout_keys(layout, module)
        out_features, in_features = shapes[module]
        down, up = torch.randn(RANK, in_features, generator=generator), torch.randn(out_features, RANK, generator=generator)
        tensors.update({down_key: down, up_key: up, **({alpha_key: torch.tensor(ALPHA)} if alpha_key else {})})
        scale = ALPHA / RANK if alpha_key else 1.0  # no alpha: alpha == rank, as every one of these tools reads it
        expected[f"transformer.{module}.weight"] = base.get_submodule(module).weight.detach() + scale * up @ down
    file = tmp_path / f"{layout}.safetensors"
    save_file(tensors, str(file))

    pipe = load_pipeline(folder)
    info = apply_lora(pipe, file)
    assert (info.format, info.components, info.num_modules) == (fmt, ("transformer",), len(MODULES))
    assert max_difference(expected, merged_weights(pipe)) <= TOLERANCE
    if layout != "diffsynth":  # the ported ComfyUI loader predates ComfyUI's reading of peft's ".default." keys
        patched, _, not_loaded, errors = comfy_qwen_image_patch(base, file)
        assert (not_loaded, errors) == ([], []) and max_difference(expected, patched) <= TOLERANCE


def test_a_qwen_image_lora_for_another_family_or_with_unknown_modules_is_refused(tiny_model_path, tmp_path, cli):
    file = tmp_path / "musubi.safetensors"
    save_file({"lora_unet_transformer_blocks_0_attn_to_q.lora_down.weight": torch.zeros(4, 32),
               "lora_unet_transformer_blocks_0_attn_to_q.lora_up.weight": torch.zeros(32, 4),
               "lora_unet_transformer_blocks_0_img_mod_1.lora_down.weight": torch.zeros(4, 32),  # Qwen-Image's alone
               "lora_unet_transformer_blocks_0_img_mod_1.lora_up.weight": torch.zeros(192, 4)}, str(file))
    with pytest.raises(LoraMismatchError, match="names Qwen-Image transformer modules but the pipeline is Flux.1"):
        load_lora_state(file, family="flux")
    _, info = load_lora_state(file)  # no family asked for: the module names say Qwen-Image
    assert info.components == ("transformer",) and info.target_modules == ("img_mod.1", "to_q")

    story = tmp_path / "story.yaml"
    story.write_text("title: t\ndefaults: {steps: 1, width: 64, height: 64}\npanels: [{prompt: 少女}]\n", encoding="utf-8")
    model = tiny_model_path("qwen-image")
    unknown = tmp_path / "unknown.safetensors"
    save_file({**{k.replace("to_q", "to_qkv"): torch.zeros(4, 4) for k in ("lora_unet_transformer_blocks_0_attn_to_q.lora_down.weight",
                                                                             "lora_unet_transformer_blocks_0_attn_to_q.lora_up.weight")},
               "lora_unet_transformer_blocks_0_attn_to_k.lora_down.weight": torch.zeros(4, 32),
               "lora_unet_transformer_blocks_0_attn_to_k.lora_up.weight": torch.zeros(32, 4)}, str(unknown))
    cli("generate", story, "--model", model, "--out", tmp_path / "a", "--lora", unknown).error_line(
        "lora_unet_transformer_blocks_0_attn_to_qkv is not a Qwen-Image transformer module")
    flux_comfy = tmp_path / "flux_comfy.safetensors"  # a ComfyUI Flux LoRA: BFL names
    save_file({"diffusion_model.double_blocks.0.img_attn.qkv.lora_A.weight": torch.zeros(4, 32),
               "diffusion_model.double_blocks.0.img_attn.qkv.lora_B.weight": torch.zeros(96, 4)}, str(flux_comfy))
    cli("generate", story, "--model", model, "--out", tmp_path / "b", "--lora", flux_comfy).error_line(
        "flux_comfy.safetensors names Flux.1 transformer modules but the pipeline is Qwen-Image")
    no_layout = tmp_path / "no_layout.safetensors"
    save_file({"double_blocks.0.img_attn.qkv.weight": torch.zeros(4, 32)}, str(no_layout))
    line = cli("generate", story, "--model", model, "--out", tmp_path / "c", "--lora", no_layout).error_line(
        "no_layout.safetensors: its keys match no Qwen-Image LoRA layout", "double_blocks.0.img_attn.qkv.weight")
    assert "lora_unet_transformer_blocks_0_attn_to_q.lora_down.weight" in line  # the layouts it reads, by example
    assert not any((tmp_path / out).exists() for out in "abc")
