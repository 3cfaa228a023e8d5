"""LoRA files: written by us, read back in every layout, and loaded by plain diffusers with the same output.

Every check runs on tiny CPU models (fp32, 64 px, 3 steps). A LoRA is injected with
rank 16 / alpha 4 (alpha != rank on purpose: a loader that ignores alpha gives a
different image), its lora_B randomised so it visibly changes the output.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from lorastory.config import YamlModel
from lorastory.errors import ConfigError
from lorastory.models.lora import (
    LoraError,
    LoraFormatError,
    LoraMismatchError,
    LoraSpec,
    apply_lora,
    diffsynth_block_map,
    fuse,
    inject_lora,
    kohya_unet_name,
    load_lora_state,
    save_lora,
    set_lora_scale,
    unfuse,
)

FAMILIES = ("kolors", "sdxl", "sd15")
PIPELINE_CLASS = {"kolors": "KolorsPipeline", "sdxl": "StableDiffusionXLPipeline", "sd15": "StableDiffusionPipeline"}
SPEC = LoraSpec()  # reference defaults: rank 16, alpha 4
TOLERANCE = 1e-5
TEXT_ENCODERS = {"kolors": ("text_encoder",), "sdxl": ("text_encoder", "text_encoder_2"), "sd15": ("text_encoder",)}


def plain_pipeline(folder: Path, family: str):
    """A pipeline loaded with diffusers alone, no lorastory code."""
    import diffusers

    extra = {"safety_checker": None, "requires_safety_checker": False} if family == "sd15" else {}
    return getattr(diffusers, PIPELINE_CLASS[family]).from_pretrained(folder, **extra)


def generate(pipe) -> np.ndarray:
    return pipe(
        "二次元 anime girl", negative_prompt="ugly", num_inference_steps=3, guidance_scale=4.0,
        height=64, width=64, generator=torch.Generator().manual_seed(0), output_type="np",
    ).images


def max_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max())


def randomise_lora_b(pipe, seed: int = 1) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name in ("unet", "text_encoder", "text_encoder_2"):
            module = getattr(pipe, name, None)
            for param_name, param in (module.named_parameters() if module is not None else []):
                if "lora_B" in param_name:
                    param.copy_(torch.randn(param.shape, generator=generator) * 0.5)


@dataclass
class Trained:
    family: str
    model: Path
    out: Path
    spec: LoraSpec
    base: np.ndarray
    lora: np.ndarray


@pytest.fixture(scope="session")
def trained(tiny_model_dir, tmp_path_factory) -> Callable[..., Trained]:
    """``trained(family, text_encoder=False)``: a LoRA injected, randomised, rendered and saved in both formats."""
    cache: dict[tuple[str, bool], Trained] = {}

    def get(family: str, text_encoder: bool = False) -> Trained:
        if (family, text_encoder) not in cache:
            model = tiny_model_dir(family)
            out = tmp_path_factory.mktemp(f"lora-{family}-{'te' if text_encoder else 'unet'}")
            spec = SPEC.model_copy(update={"train_text_encoder": text_encoder})
            pipe = plain_pipeline(model, family)
            base = generate(pipe)
            torch.manual_seed(0)
            params = inject_lora(pipe, spec)
            assert params and all(p.requires_grad for p in params)
            randomise_lora_b(pipe)
            lora = generate(pipe)
            save_lora(pipe, out / "lora.safetensors", spec, family, format="diffusers")
            save_lora(pipe, out / "kohya.safetensors", spec, family, format="kohya")
            save_lora(pipe, out / "kohya_dnames.safetensors", spec, family, format="kohya", kohya_unet_names="diffusers")
            cache[family, text_encoder] = Trained(family, model, out, spec, base, lora)
        return cache[family, text_encoder]

    return get


# ------------------------------------------------------------------ plain diffusers


@pytest.mark.parametrize("family", FAMILIES)
def test_plain_diffusers_loads_our_diffusers_file_with_alpha(trained, family):
    t = trained(family)
    assert max_diff(t.lora, t.base) > 100 * TOLERANCE, "the LoRA must visibly change the image"
    pipe = plain_pipeline(t.model, family)
    pipe.load_lora_weights(t.out, weight_name="lora.safetensors")
    assert max_diff(generate(pipe), t.lora) <= TOLERANCE


@pytest.mark.parametrize("family", FAMILIES)
def test_plain_diffusers_loads_our_kohya_file(trained, family):
    t = trained(family)
    pipe = plain_pipeline(t.model, family)
    # KolorsPipeline uses the SD1 loader mixin, which maps sd-scripts' SDXL block names only when told the UNet layout.
    extra = {"unet_config": pipe.unet.config} if family == "kolors" else {}
    pipe.load_lora_weights(t.out, weight_name="kohya.safetensors", **extra)
    assert max_diff(generate(pipe), t.lora) <= TOLERANCE


def test_kohya_with_diffusers_unet_names_loads_in_plain_kolors_pipeline(trained):
    t = trained("kolors")
    with safe_open(str(t.out / "kohya_dnames.safetensors"), "pt") as handle:
        assert any(k.startswith("lora_unet_down_blocks_") for k in handle.keys())
    pipe = plain_pipeline(t.model, "kolors")
    pipe.load_lora_weights(t.out, weight_name="kohya_dnames.safetensors")
    assert max_diff(generate(pipe), t.lora) <= TOLERANCE


def test_alpha_travels_in_metadata_not_in_weights(trained, tmp_path):
    """Without diffusers' adapter metadata, plain diffusers assumes alpha == rank: the image changes."""
    t = trained("kolors")
    tensors = load_file(t.out / "lora.safetensors")
    save_file(tensors, tmp_path / "bare.safetensors", metadata={"format": "pt"})
    pipe = plain_pipeline(t.model, "kolors")
    pipe.load_lora_weights(tmp_path, weight_name="bare.safetensors")
    assert max_diff(generate(pipe), t.lora) > 100 * TOLERANCE


@pytest.mark.parametrize("family", ["kolors", "sdxl"])
def test_plain_diffusers_reads_our_text_encoder_keys(trained, family, monkeypatch):
    """Our text-encoder keys load with plain diffusers (ChatGLM included).

    transformers 5.x refuses text-encoder adapters unless peft >= its MIN_PEFT_VERSION; when
    the installed peft is older, only that version gate is lifted here, to test the file format.
    """
    import peft
    import transformers.integrations.peft as hf_peft
    from packaging.version import Version

    if Version(peft.__version__) < Version(getattr(hf_peft, "MIN_PEFT_VERSION", "0")):
        monkeypatch.setattr(hf_peft, "check_peft_version", lambda *args, **kwargs: None)
    t = trained(family, text_encoder=True)
    pipe = plain_pipeline(t.model, family)
    pipe.load_lora_weights(t.out, weight_name="lora.safetensors")
    assert max_diff(generate(pipe), t.lora) <= TOLERANCE


# --------------------------------------------------------------- our own loading


@pytest.mark.parametrize("family", FAMILIES)
def test_kohya_round_trip_gives_identical_state(trained, family):
    t = trained(family, text_encoder=True)
    ours, ours_info = load_lora_state(t.out / "lora.safetensors")
    kohya, kohya_info = load_lora_state(t.out / "kohya.safetensors")
    assert set(kohya) == set(ours)
    assert all(torch.equal(kohya[k], ours[k]) for k in ours)
    assert ours_info.format == "diffusers" and kohya_info.format == "kohya"
    assert (ours_info.rank, ours_info.alpha, ours_info.family) == (16, 4.0, family)
    assert (kohya_info.rank, kohya_info.alpha) == (16, 4.0)
    assert ours_info.components == ("unet", *TEXT_ENCODERS[family])
    assert ours_info.by_lorastory


@pytest.mark.parametrize("family", FAMILIES)
def test_apply_lora_with_text_encoders_matches_injected_pipeline(trained, family):
    t = trained(family, text_encoder=True)
    assert max_diff(t.lora, trained(family).lora) > 100 * TOLERANCE, "text-encoder LoRA must matter"
    for name in ("lora.safetensors", "kohya.safetensors"):
        pipe = plain_pipeline(t.model, family)
        info = apply_lora(pipe, t.out / name)
        assert info.components == ("unet", *TEXT_ENCODERS[family])
        assert max_diff(generate(pipe), t.lora) <= TOLERANCE, name


def test_kohya_key_names(trained):
    def keys(family: str) -> list[str]:
        with safe_open(str(trained(family, text_encoder=True).out / "kohya.safetensors"), "pt") as handle:
            return list(handle.keys())

    sdxl, sd15, kolors = keys("sdxl"), keys("sd15"), keys("kolors")
    assert "lora_unet_middle_block_1_transformer_blocks_0_attn1_to_q.alpha" in sdxl
    assert "lora_unet_input_blocks_3_1_transformer_blocks_0_attn2_to_out_0.lora_up.weight" in sdxl
    assert "lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight" in sdxl
    assert "lora_te2_text_model_encoder_layers_1_self_attn_out_proj.lora_down.weight" in sdxl
    assert "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight" in sd15
    assert "lora_te_text_model_encoder_layers_0_self_attn_v_proj.alpha" in sd15
    assert "lora_te_encoder_layers_0_self_attention_query_key_value.lora_down.weight" in kolors
    # Kolors keeps diffusers module names: what plain KolorsPipeline.load_lora_weights maps.
    assert "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight" in kolors
    assert not any(k.startswith("lora_unet_output_blocks_") for k in kolors)
    assert all(k.startswith(("lora_unet_", "lora_te")) for k in sdxl + sd15 + kolors)


def test_saved_metadata(trained):
    t = trained("kolors")
    with safe_open(str(t.out / "lora.safetensors"), "pt") as handle:
        meta = handle.metadata()
    assert meta["lorastory.family"] == "kolors"
    assert (meta["lorastory.rank"], float(meta["lorastory.alpha"])) == ("16", 4.0)
    assert json.loads(meta["lorastory.target_modules"]) == ["to_q", "to_k", "to_v", "to_out.0"]
    assert meta["lorastory.config_hash"] == SPEC.config_hash("kolors")
    assert meta["lorastory.format"] == "diffusers" and meta["lorastory.alpha_in"] == "metadata"
    adapter = json.loads(meta["lora_adapter_metadata"])
    assert (adapter["unet.r"], adapter["unet.lora_alpha"]) == (16, 4.0)
    with safe_open(str(t.out / "kohya.safetensors"), "pt") as handle:
        kohya_meta = handle.metadata()
    assert "lora_adapter_metadata" not in kohya_meta  # diffusers refuses metadata together with kohya alphas
    assert (kohya_meta["ss_network_dim"], kohya_meta["lorastory.format"]) == ("16", "kohya")


def _peft_unet_keys(trained_lora: Trained) -> dict[str, torch.Tensor]:
    """The UNet part of our file as raw peft keys without a prefix: DiffSynth-Studio's layout."""
    state, _ = load_lora_state(trained_lora.out / "lora.safetensors", default_alpha=None)
    scale = SPEC.alpha / SPEC.rank  # undo the baked alpha: DiffSynth files carry raw weights
    return {
        k.removeprefix("unet."): (v / scale if ".lora_B." in k else v)
        for k, v in state.items() if k.startswith("unet.")
    }


@pytest.mark.parametrize("adapter_suffix", [".default", ""])
def test_diffsynth_peft_keys_load_to_the_same_state(trained, tmp_path, adapter_suffix):
    t = trained("kolors")
    raw = {k.replace(".lora_A.", f".lora_A{adapter_suffix}.").replace(".lora_B.", f".lora_B{adapter_suffix}."): v
           for k, v in _peft_unet_keys(t).items()}
    save_file(raw, tmp_path / "diffsynth.safetensors")
    ours, _ = load_lora_state(t.out / "lora.safetensors")
    theirs, info = load_lora_state(tmp_path / "diffsynth.safetensors", default_alpha=SPEC.alpha)
    assert info.format == "diffsynth" and info.family is None
    assert set(theirs) == set(ours)
    assert all(torch.allclose(theirs[k], ours[k], rtol=0, atol=1e-7) for k in ours)
    _, no_alpha = load_lora_state(tmp_path / "diffsynth.safetensors")
    assert no_alpha.alpha is None  # nothing recorded: scale 1 unless default_alpha is given


def test_peft_adapter_folder_reads_alpha_from_adapter_config(trained, tmp_path):
    """PeftModel.save_pretrained layout: base_model.model.* keys, alpha in adapter_config.json beside them."""
    t = trained("sdxl")
    save_file({f"base_model.model.{k}": v for k, v in _peft_unet_keys(t).items()}, tmp_path / "adapter_model.safetensors")
    (tmp_path / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 16, "lora_alpha": 4.0}))
    theirs, info = load_lora_state(tmp_path / "adapter_model.safetensors")
    ours, _ = load_lora_state(t.out / "lora.safetensors")
    assert (info.format, info.alpha) == ("peft", 4.0)
    assert set(theirs) == set(ours) and all(torch.allclose(theirs[k], ours[k], rtol=0, atol=1e-7) for k in ours)


def test_diffsynth_native_blocks_checkpoint_applies(trained, tmp_path):
    """DiffSynth-Studio's own UNet layout (blocks.N, to_out without .0), as a lightning .ckpt."""
    t = trained("kolors")
    pipe = plain_pipeline(t.model, "kolors")
    to_block = {prefix: index for index, prefix in diffsynth_block_map(pipe.unet.config).items()}
    native = {}
    for key, value in _peft_unet_keys(t).items():
        prefix = ".".join(key.split(".")[: 3 if key.startswith("mid_block.") else 4])
        key = f"blocks.{to_block[prefix]}" + key[len(prefix):]
        key = key.replace(".to_out.0.", ".to_out.").replace(".lora_A.", ".lora_A.default.")
        native[key.replace(".lora_B.", ".lora_B.default.")] = value
    torch.save(native, tmp_path / "epoch=0-step=500.ckpt")
    info = apply_lora(pipe, tmp_path / "epoch=0-step=500.ckpt", allow_pickle=True, default_alpha=SPEC.alpha)
    assert info.format == "diffsynth-blocks"
    assert max_diff(generate(pipe), t.lora) <= TOLERANCE


# ------------------------------------------------------------ naming tables


SDXL_LIKE_UNET = dict(
    sample_size=8, block_out_channels=(32, 64, 64), layers_per_block=2,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    transformer_layers_per_block=(1, 2, 2), attention_head_dim=(2, 4, 4), cross_attention_dim=32,
    norm_num_groups=16, use_linear_projection=True,
    addition_embed_type="text_time", addition_time_embed_dim=8, projection_class_embeddings_input_dim=80,
)


def test_sgm_names_for_sdxl_layout_known_values():
    config = {k: SDXL_LIKE_UNET[k] for k in ("layers_per_block", "down_block_types", "up_block_types")}
    expected = {
        "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q": "input_blocks.4.1.transformer_blocks.0.attn1.to_q",
        "down_blocks.2.attentions.1.proj_in": "input_blocks.8.1.proj_in",
        "down_blocks.0.downsamplers.0.conv": "input_blocks.3.0.op",
        "down_blocks.1.resnets.0.conv_shortcut": "input_blocks.4.0.skip_connection",
        "mid_block.attentions.0.transformer_blocks.3.attn2.to_k": "middle_block.1.transformer_blocks.3.attn2.to_k",
        "mid_block.resnets.1.time_emb_proj": "middle_block.2.emb_layers.1",
        "up_blocks.0.attentions.2.transformer_blocks.0.attn1.to_out.0": "output_blocks.2.1.transformer_blocks.0.attn1.to_out.0",
        "up_blocks.0.upsamplers.0.conv": "output_blocks.2.2.conv",
        "up_blocks.1.attentions.0.proj_out": "output_blocks.3.1.proj_out",
        "up_blocks.2.resnets.2.conv1": "output_blocks.8.0.in_layers.2",
        "conv_in": "input_blocks.0.0",
        "add_embedding.linear_1": "label_emb.0.0",
    }
    assert {m: kohya_unet_name(m, config) for m in expected} == expected
    with pytest.raises(LoraError, match="no kohya SDXL name"):
        kohya_unet_name("encoder_hid_proj", config)


def test_sgm_names_round_trip_through_diffusers_converter_for_every_layer():
    """Every Linear/Conv of an SDXL-shaped UNet: our SGM name → diffusers' own converter → the same module."""
    from types import SimpleNamespace

    from diffusers import UNet2DConditionModel
    from diffusers.loaders.lora_conversion_utils import (
        _convert_non_diffusers_lora_to_diffusers,
        _maybe_map_sgm_blocks_to_diffusers,
    )
    from diffusers.utils.state_dict_utils import convert_unet_state_dict_to_peft

    unet = UNet2DConditionModel(**SDXL_LIKE_UNET)
    modules = {n for n, m in unet.named_modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))}
    state = {}
    for module in modules:
        name = "lora_unet_" + kohya_unet_name(module, unet.config).replace(".", "_")
        state[name + ".lora_down.weight"] = state[name + ".lora_up.weight"] = torch.zeros(1)
    mapped = _maybe_map_sgm_blocks_to_diffusers(state, SimpleNamespace(layers_per_block=2))
    converted, _ = _convert_non_diffusers_lora_to_diffusers(mapped)
    back = convert_unet_state_dict_to_peft({k.removeprefix("unet."): v for k, v in converted.items()})
    assert {k.rsplit(".lora_", 1)[0] for k in back} == modules


def test_diffsynth_block_map_matches_diffsynth_sdxl_layout():
    """DiffSynth-Studio's SDXLUNet block list (diffsynth/models/sdxl_unet.py), R/A/D/U/P = resnet/attention/down/up/push-pop."""
    published = (
        "RPRPDP" "RAPRAPDP" "RAPRAP" "RAR" "PRAPRAPRAU" "PRAPRAPRAU" "PRPRPR"
    )
    config = {k: SDXL_LIKE_UNET[k] for k in ("layers_per_block", "down_block_types", "up_block_types")}
    blocks = diffsynth_block_map(config)
    kinds = {"resnets": "R", "attentions": "A", "downsamplers": "D", "upsamplers": "U"}
    derived = "".join(kinds[blocks[i].split(".")[-2]] if i in blocks else "P" for i in range(len(published)))
    assert derived == published
    assert max(blocks) == len(published) - 1
    assert blocks[7] == "down_blocks.1.attentions.0" and blocks[21] == "mid_block.attentions.0"


# ------------------------------------------------------------------- safety


def test_pickle_refused_without_allow_pickle_then_loaded(trained, tmp_path):
    t = trained("sd15")
    tensors = load_file(t.out / "lora.safetensors")
    torch.save(tensors, tmp_path / "lora.pt")
    with pytest.raises(LoraFormatError, match="allow_pickle"):
        load_lora_state(tmp_path / "lora.pt")
    loaded, info = load_lora_state(tmp_path / "lora.pt", allow_pickle=True)
    assert info.alpha is None  # a pickle has no safetensors header, so diffusers' alpha metadata is gone
    reference, _ = load_lora_state(t.out / "lora.safetensors", default_alpha=None)
    assert set(loaded) == set(reference)


class _RunsCodeWhenUnpickled:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_pickle_with_code_is_refused_even_when_allowed(tmp_path):
    marker = tmp_path / "code-ran"
    torch.save({"x": torch.zeros(1), "payload": _RunsCodeWhenUnpickled(marker)}, tmp_path / "evil.ckpt")
    with pytest.raises(LoraFormatError, match="weights-only"):
        load_lora_state(tmp_path / "evil.ckpt", allow_pickle=True)
    assert not marker.exists()


def test_family_mismatch_names_both_families(trained):
    t = trained("kolors")
    pipe = plain_pipeline(trained("sdxl").model, "sdxl")
    with pytest.raises(LoraMismatchError, match="kolors LoRA but the pipeline is sdxl"):
        apply_lora(pipe, t.out / "lora.safetensors")
    with pytest.raises(LoraMismatchError, match="kolors.*sdxl"):
        load_lora_state(t.out / "kohya.safetensors", family="sdxl")


def test_foreign_lora_without_metadata_is_rejected_by_shape(trained, tmp_path):
    tensors = load_file(trained("sdxl").out / "lora.safetensors")
    save_file(tensors, tmp_path / "anonymous.safetensors")
    pipe = plain_pipeline(trained("kolors").model, "kolors")
    with pytest.raises(LoraMismatchError, match="another model"):
        apply_lora(pipe, tmp_path / "anonymous.safetensors")


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("weird.safetensors", {"foo.weight": torch.zeros(2)}, "unrecognised LoRA layout"),
        ("lycoris.safetensors", {"lora_unet_x.hada_w1_a": torch.zeros(2)}, "LyCORIS"),
        ("half.safetensors", {"unet.down_blocks.0.to_q.lora_A.weight": torch.zeros(2, 2)}, "only one of lora_A/lora_B"),
    ],
)
def test_bad_files_give_clear_errors(tmp_path, name, content, message):
    save_file(content, tmp_path / name)
    with pytest.raises(LoraFormatError, match=message):
        load_lora_state(tmp_path / name)


def test_missing_and_wrong_suffix(tmp_path):
    with pytest.raises(LoraFormatError, match="no such LoRA file"):
        load_lora_state(tmp_path / "nope.safetensors")
    (tmp_path / "lora.txt").write_text("hi")
    with pytest.raises(LoraFormatError, match="expected a .safetensors"):
        load_lora_state(tmp_path / "lora.txt")
    (tmp_path / "broken.safetensors").write_bytes(b"\x00\x01garbage")
    with pytest.raises(LoraFormatError, match="not a readable safetensors"):
        load_lora_state(tmp_path / "broken.safetensors")


# ------------------------------------------------------------ scale and fuse


def test_scale_zero_is_base_and_fuse_unfuse_restores_weights(trained):
    t = trained("kolors")
    pipe = plain_pipeline(t.model, "kolors")
    original = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    apply_lora(pipe, t.out / "lora.safetensors", adapter_name="style")
    set_lora_scale(pipe, 0.0, "style")
    assert max_diff(generate(pipe), t.base) <= TOLERANCE
    set_lora_scale(pipe, 1.0)
    assert max_diff(generate(pipe), t.lora) <= TOLERANCE
    fuse(pipe)
    assert max_diff(generate(pipe), t.lora) <= TOLERANCE
    fused = pipe.unet.state_dict()
    changed = [k for k in original if k.replace(".weight", ".base_layer.weight") in fused
               and not torch.equal(fused[k.replace(".weight", ".base_layer.weight")], original[k])]
    assert changed, "fusing must change base weights"
    unfuse(pipe)
    restored = pipe.unet.state_dict()
    for key in changed:
        assert torch.allclose(restored[key.replace(".weight", ".base_layer.weight")], original[key], atol=1e-6)
    assert max_diff(generate(pipe), t.lora) <= TOLERANCE


def test_apply_with_fuse_and_duplicate_name(trained):
    t = trained("sd15")
    pipe = plain_pipeline(t.model, "sd15")
    apply_lora(pipe, t.out / "kohya.safetensors", scale=0.5, fuse=True)
    half = generate(pipe)
    assert 0 < max_diff(half, t.base) < max_diff(t.lora, t.base)
    with pytest.raises(LoraError, match="already has a LoRA named 'kohya'"):
        apply_lora(pipe, t.out / "kohya.safetensors")
    with pytest.raises(LoraError, match="no LoRA named 'other'"):
        set_lora_scale(pipe, 1.0, "other")


# ---------------------------------------------------------------------- spec


def test_spec_yaml_round_trip_and_validation(tmp_path):
    spec = LoraSpec(rank=8, alpha=2.0, train_text_encoder=True)
    spec.save_yaml(tmp_path / "lora.yaml")
    again = LoraSpec.from_yaml(tmp_path / "lora.yaml")
    assert again == spec and isinstance(again, YamlModel)
    assert again.text_encoder_targets_for("kolors") == ["query_key_value", "dense"]
    assert again.text_encoder_targets_for("sdxl") == ["q_proj", "k_proj", "v_proj", "out_proj"]
    assert spec.config_hash("kolors") != spec.config_hash("sdxl")
    with pytest.raises(ConfigError, match="rank"):
        LoraSpec.from_dict({"rank": 0})
    with pytest.raises(ConfigError, match="unknown key"):
        LoraSpec.from_dict({"rnak": 4})


def test_save_checks_spec_and_suffix(trained, tmp_path):
    t = trained("sd15")
    pipe = plain_pipeline(t.model, "sd15")
    with pytest.raises(LoraError, match="call inject_lora first"):
        save_lora(pipe, tmp_path / "x.safetensors", SPEC)
    inject_lora(pipe, SPEC)
    with pytest.raises(LoraError, match="rank 16, alpha 4.0 but the spec says rank 8"):
        save_lora(pipe, tmp_path / "x.safetensors", LoraSpec(rank=8))
    with pytest.raises(LoraError, match=r"\.safetensors"):
        save_lora(pipe, tmp_path / "x.bin", SPEC)
    with pytest.raises(LoraMismatchError, match="pipeline is sd15"):
        save_lora(pipe, tmp_path / "x.safetensors", SPEC, "kolors")
    with pytest.raises(LoraError, match="written by lorastory itself"):
        save_lora(pipe, tmp_path / "x.safetensors", SPEC, extra_metadata={"lorastory.rank": "4"})
    with pytest.raises(LoraError, match="unknown LoRA format"):
        save_lora(pipe, tmp_path / "x.safetensors", SPEC, format="comfy")
    save_lora(pipe, tmp_path / "x.safetensors", SPEC, extra_metadata={"lorastory.steps": 3, "note": "风格"})
    with safe_open(str(tmp_path / "x.safetensors"), "pt") as handle:
        assert (handle.metadata()["lorastory.steps"], handle.metadata()["note"]) == ("3", "风格")
    assert [p.name for p in tmp_path.iterdir()] == ["x.safetensors"]  # atomic write leaves no temp files
