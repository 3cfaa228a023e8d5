"""Flux LoRA files in each other tool's layout load through ``apply_lora`` (what ``generate --lora`` uses) as the
tool means them: every adapted weight is ``W + alpha / rank * up @ down`` of the file's own matrices, a fused BFL
linear (``img_attn.qkv``, ``linear1``) split into diffusers' q / k / v (/ MLP) rows.

Layouts, as the tools write them: ComfyUI's ``diffusion_model.<BFL module>`` (``lora_A``/``lora_B``, alpha baked in;
or ``lora_down``/``lora_up`` + ``.alpha``, with ``text_encoders.clip_l`` / ``t5xxl`` keys); sd-scripts' networks/lora_flux.py with its text encoders (``lora_te1_``
CLIP-L, ``lora_te3_`` T5-XXL) and ``split_qkv`` (block-diagonal ``lora_up``, alpha unchanged); kohya names over
diffusers modules (``lora_unet_transformer_blocks_0_attn_to_q``); ai-toolkit's older ``lora_transformer_`` files
and its ``transformer.`` + ``lora_down`` ones. Each file is built here from known random matrices on the tiny Flux
(2 heads x 8: inner 16, CLIP and T5 of 32); the transformer's weights are also checked against ComfyUI's own loader
(tests/clients/comfy_flux.py) wherever ComfyUI reads the layout (norm_out, stored swapped there, aside).
"""

from __future__ import annotations

import pytest
import torch
from clients.comfy_flux import comfy_flux_patch
from clients.common import merged_weights
from safetensors.torch import save_file

from lorastory.models.lora import LoraFormatError, apply_lora, load_lora_state
from lorastory.models.registry import load_pipeline

INNER, TEXT, RANK, ALPHA = 16, 32, 4, 2.0
TOLERANCE = 1e-5


def _random(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * 0.1


def _lora(key: str, fan_in: int, fan_out: int, seed: int, alpha: float | None = ALPHA, a: str = "lora_down.weight",
          b: str = "lora_up.weight", rank: int = RANK) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """One module's keys in a layout, and the change it means: alpha / rank * up @ down (no alpha: scale 1)."""
    down, up = _random(rank, fan_in, seed=seed), _random(fan_out, rank, seed=seed + 100)
    tensors = {f"{key}.{a}": down, f"{key}.{b}": up}
    if alpha is not None:
        tensors[f"{key}.alpha"] = torch.tensor(alpha)
    return tensors, (1.0 if alpha is None else alpha / rank) * up @ down


def _fused(key: str, parts: list[tuple[str, int]], seed: int, **kwargs) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """A dense LoRA on a fused BFL linear: each part's change is its rows of the fused one."""
    tensors, delta = _lora(key, INNER, sum(size for _, size in parts), seed, **kwargs)
    rows = delta.split([size for _, size in parts])
    return tensors, {module: part for (module, _), part in zip(parts, rows, strict=True)}


def _qkv(prefix: str) -> list[tuple[str, int]]:
    return [(f"transformer.{prefix}.{m}", INNER) for m in ("attn.to_q", "attn.to_k", "attn.to_v")]


def _comfy_bfl(lora_ab: bool) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    names = {"a": "lora_A.weight", "b": "lora_B.weight", "alpha": None} if lora_ab else {}
    qkv, expected = _fused("diffusion_model.double_blocks.0.img_attn.qkv", _qkv("transformer_blocks.0"), 1, **names)
    linear1, single = _fused("diffusion_model.single_blocks.0.linear1",
                             [*_qkv("single_transformer_blocks.0"), ("transformer.single_transformer_blocks.0.proj_mlp", 4 * INNER)],
                             2, **names)
    mlp, mlp_delta = _lora("diffusion_model.double_blocks.0.txt_mlp.0", INNER, 4 * INNER, 3, **names)
    expected = {**expected, **single, "transformer.transformer_blocks.0.ff_context.net.0.proj": mlp_delta}
    tensors = {**qkv, **linear1, **mlp}
    final, final_delta = _lora("diffusion_model.final_layer.adaLN_modulation.1", INNER, 2 * INNER, 6, **names)
    tensors.update(final)  # BFL's rows are (shift, scale), diffusers' norm_out.linear (scale, shift)
    expected["transformer.norm_out.linear"] = torch.cat(final_delta.chunk(2)[::-1])
    if not lora_ab:  # ComfyUI's text-encoder keys too (its LoRA saving nodes)
        clip, expected["text_encoder.encoder.layers.0.self_attn.v_proj"] = _lora(
            "text_encoders.clip_l.transformer.text_model.encoder.layers.0.self_attn.v_proj", TEXT, TEXT, 4)
        t5, expected["text_encoder_2.encoder.block.0.layer.0.SelfAttention.o"] = _lora(
            "text_encoders.t5xxl.transformer.encoder.block.0.layer.0.SelfAttention.o", TEXT, TEXT, 5)
        tensors.update({**clip, **t5})
    return tensors, expected


def _sd_scripts() -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """split_qkv: lora_down stacked (3r), lora_up block-diagonal, the file's alpha the parts' own; read as ComfyUI and
    sd-scripts' merge read it: one LoRA of rank 3r."""
    downs = [_random(RANK, INNER, seed=10 + i) for i in range(3)]
    ups = [_random(INNER, RANK, seed=20 + i) for i in range(3)]
    key = "lora_unet_double_blocks_0_txt_attn_qkv"
    tensors = {f"{key}.lora_down.weight": torch.cat(downs), f"{key}.lora_up.weight": torch.block_diag(*ups),
               f"{key}.alpha": torch.tensor(ALPHA)}
    expected = {f"transformer.transformer_blocks.0.attn.add_{p}_proj": ALPHA / (3 * RANK) * up @ down
                for p, down, up in zip("qkv", downs, ups, strict=True)}
    for part, (name, fan_in, fan_out, module) in enumerate([
        ("lora_unet_double_blocks_0_img_attn_proj", INNER, INNER, "transformer.transformer_blocks.0.attn.to_out.0"),
        ("lora_te1_text_model_encoder_layers_0_self_attn_q_proj", TEXT, TEXT, "text_encoder.encoder.layers.0.self_attn.q_proj"),
        ("lora_te1_text_model_encoder_layers_0_mlp_fc1", TEXT, 2 * TEXT, "text_encoder.encoder.layers.0.mlp.fc1"),
        ("lora_te3_encoder_block_0_layer_0_SelfAttention_q", TEXT, TEXT, "text_encoder_2.encoder.block.0.layer.0.SelfAttention.q"),
        ("lora_te3_encoder_block_1_layer_1_DenseReluDense_wi_0", TEXT, 2 * TEXT,
         "text_encoder_2.encoder.block.1.layer.1.DenseReluDense.wi_0"),
    ]):
        more, delta = _lora(name, fan_in, fan_out, 30 + part)
        tensors.update(more)
        expected[module] = delta
    return tensors, expected


_DIFFUSERS_NAMED = [  # (module, fan in, fan out)
    ("transformer_blocks.0.attn.to_q", INNER, INNER), ("transformer_blocks.0.ff_context.net.0.proj", INNER, 4 * INNER),
    ("single_transformer_blocks.0.proj_mlp", INNER, 4 * INNER), ("single_transformer_blocks.0.proj_out", 5 * INNER, INNER),
    ("proj_out", INNER, 64), ("time_text_embed.guidance_embedder.linear_1", 256, INNER),
]


def _diffusers_named(key_of) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    tensors, expected = {}, {}
    for seed, (module, fan_in, fan_out) in enumerate(_DIFFUSERS_NAMED):
        more, delta = _lora(key_of(module), fan_in, fan_out, 40 + seed)
        tensors.update(more)
        expected[f"transformer.{module}"] = delta
    more, delta = _lora("lora_te1_text_model_encoder_layers_1_self_attn_out_proj", TEXT, TEXT, 50)
    if key_of("x").startswith("lora_"):  # the kohya-named files carry a CLIP-L LoRA too
        tensors.update(more)
        expected["text_encoder.encoder.layers.1.self_attn.out_proj"] = delta
    return tensors, expected


LAYOUTS = {
    "comfyui lora_A/lora_B": (lambda: _comfy_bfl(True), "comfyui"),
    "comfyui lora_down + alpha, CLIP-L + T5": (lambda: _comfy_bfl(False), "comfyui"),
    "sd-scripts split_qkv + CLIP-L + T5": (_sd_scripts, "kohya"),
    "kohya names over diffusers modules": (lambda: _diffusers_named(lambda m: "lora_unet_" + m.replace(".", "_")), "kohya"),
    "ai-toolkit lora_transformer_": (lambda: _diffusers_named(lambda m: "lora_transformer_" + m.replace(".", "_")), "kohya"),
    "ai-toolkit transformer. + lora_down": (lambda: _diffusers_named(lambda m: f"transformer.{m}"), "diffusers"),
}

COMFY_SKIPS = {"kohya names over diffusers modules"}  # ComfyUI maps kohya names over BFL's modules only


@pytest.mark.parametrize("layout", LAYOUTS)
def test_flux_lora_of_each_tool_merges_into_the_weights_it_means(layout, tiny_model_path, tmp_path):
    build, fmt = LAYOUTS[layout]
    tensors, expected = build()
    file = tmp_path / "lora.safetensors"
    save_file(tensors, str(file))
    pipe = load_pipeline(tiny_model_path("flux"))
    base = {f"{c}.{n}": m.weight.detach().clone() for c in ("transformer", "text_encoder", "text_encoder_2")
            for n, m in getattr(pipe, c).named_modules() if isinstance(m, torch.nn.Linear)}
    base = {k.replace(".text_model.", "."): v for k, v in base.items()}  # CLIP's names with or without text_model.

    info = apply_lora(pipe, file)

    assert info.format == fmt
    merged = {k.replace(".text_model.", ".").removesuffix(".weight"): v for k, v in merged_weights(pipe).items()}
    assert set(merged) == set(expected)
    for module, delta in expected.items():
        assert torch.allclose(merged[module], base[module] + delta, atol=TOLERANCE), module
    if layout not in COMFY_SKIPS:  # ComfyUI's own loader (ported) patches the transformer the same way
        patched, _, not_loaded, errors = comfy_flux_patch(load_pipeline(tiny_model_path("flux")).transformer, file)
        assert errors == [] and all(k.startswith(("lora_te", "text_encoders.")) for k in not_loaded)  # its CLIP/T5 loaders
        for module in (m for m in expected if m.startswith("transformer.") and m != "transformer.norm_out.linear"):
            assert torch.allclose(patched[f"{module}.weight"], merged[module], atol=TOLERANCE), module


def test_a_flux_file_with_unknown_keys_is_one_line_error(cli, tiny_model_path, tmp_path):
    story = tmp_path / "story.yaml"
    story.write_text("title: t\ndefaults: {steps: 1, width: 64, height: 64}\npanels: [{prompt: a cat}]\n", encoding="utf-8")
    model = tiny_model_path("flux")
    unknown = tmp_path / "unknown_module.safetensors"
    save_file({**_lora("lora_unet_transformer_blocks_0_attn_to_q", INNER, INNER, 1)[0],
               **_lora("lora_unet_transformer_blocks_0_attn_to_qkv", INNER, 3 * INNER, 2)[0]}, str(unknown))
    cli("generate", story, "--model", model, "--out", tmp_path / "a", "--lora", unknown).error_line(
        "unknown_module.safetensors: kohya module lora_unet_transformer_blocks_0_attn_to_qkv is not a Flux.1 transformer module")
    no_layout = tmp_path / "no_layout.safetensors"
    save_file({"blocks.0.attn.lora.weight": torch.zeros(4, 4)}, str(no_layout))
    line = cli("generate", story, "--model", model, "--out", tmp_path / "b", "--lora", no_layout).error_line(
        "no_layout.safetensors: its keys match no Flux.1 LoRA layout (first key 'blocks.0.attn.lora.weight')")
    assert "lora_unet_double_blocks_0_img_attn_qkv" in line  # the layouts it reads, by example
    comfy = tmp_path / "comfy_bad.safetensors"
    save_file({"diffusion_model.double_blocks.0.img_attn.qkv.lora_A.weight": torch.zeros(4, INNER),
               "diffusion_model.double_blocks.0.img_attn.qkv.lora_B.weight": torch.zeros(3 * INNER, 4),
               "diffusion_model.double_blocks.0.img_attn.qkv.lora_B.bias": torch.zeros(3 * INNER)}, str(comfy))
    with pytest.raises(LoraFormatError, match="key 'diffusion_model.double_blocks.0.img_attn.qkv.lora_B.bias' is not a ComfyUI Flux"):
        load_lora_state(comfy, family="flux")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
