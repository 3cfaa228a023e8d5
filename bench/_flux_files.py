"""A random Flux.1 dev on disk in the files both peers of ``bench/flux_peers.py`` read, written once.

One diffusers folder (what ``lorastory train --model`` reads) whose files kohya sd-scripts' Flux trainer also
reads, so that the 34 GB of weights are written once:

- ``transformer/diffusion_pytorch_model.safetensors``: the real Flux.1 dev transformer (bench/_flux_arch.py,
  11.9 B parameters, bf16), saved as one file: kohya's ``--pretrained_model_name_or_path`` accepts a single file
  with diffusers keys (``flux_utils.analyze_checkpoint_state`` tells them apart and converts them to BFL names);
  a folder it would read only as the hub's three shards;
- ``text_encoder/model.safetensors`` (CLIP-L, 123 M) and ``text_encoder_2/model.safetensors`` (T5-XXL v1.1
  encoder, 4.76 B, bf16) with the hub's keys (CLIP's ``text_model.`` prefix put back: :func:`hub_clip_names`),
  which kohya's ``--clip_l`` and ``--t5xxl`` load into models built from the same published configs;
- ``ae.safetensors``: the VAE again in BFL's names (``encoder.down.0.block.0.conv1``...), the only layout
  kohya's ``--ae`` reads (:func:`ae_to_bfl`); 160 MB.

The tokenizers are lorastory's small offline ones (CLIP BPE and a T5 unigram over a short vocabulary: token ids
stay inside the real vocabularies; T5's max length is dev's 512), copied where kohya's ``--tokenizer_cache_dir``
looks for ``openai/clip-vit-large-patch14`` and ``google/t5-v1_1-xxl``. ``--tiny`` writes lorastory's tiny
random Flux instead (CPU smoke test). A folder already built with the same settings is reused
(``bench_folder.json``).
"""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path
from typing import Any

MARKER = "bench_folder.json"
NEEDS_GB = 34  # GiB: 31.6 of weights (transformer 22.2, T5-XXL 8.9, CLIP-L, the VAE twice), LoRAs and caches
# google/t5-v1_1-xxl's encoder, as kohya's flux_utils.load_t5xxl builds it.
T5_XXL: dict[str, Any] = {"vocab_size": 32128, "d_model": 4096, "d_kv": 64, "d_ff": 10240, "num_layers": 24,
                          "num_heads": 64, "relative_attention_num_buckets": 32, "relative_attention_max_distance": 128,
                          "feed_forward_proj": "gated-gelu", "layer_norm_epsilon": 1e-6, "tie_word_embeddings": False, "decoder_start_token_id": 0,
                          "pad_token_id": 0, "eos_token_id": 1}
CLIP_L = {"vocab_size": 49408, "max_position_embeddings": 77, "hidden_size": 768, "intermediate_size": 3072,
          "num_attention_heads": 12, "num_hidden_layers": 12, "projection_dim": 768, "hidden_act": "quick_gelu"}
KOHYA_TOKENIZERS = (("openai/clip-vit-large-patch14", "tokenizer"), ("google/t5-v1_1-xxl", "tokenizer_2"))


def _resnet(name: str) -> str:
    return name.replace("conv_shortcut", "nin_shortcut")


def _ae_key(key: str, up_blocks: int) -> str:
    """One diffusers ``AutoencoderKL`` key in BFL's (ldm's) name."""
    side, rest = key.split(".", 1)
    if m := re.fullmatch(r"down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", rest):
        rest = f"down.{m[1]}.block.{m[2]}.{_resnet(m[3])}"
    elif m := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.(.+)", rest):
        rest = f"down.{m[1]}.downsample.{m[2]}"
    elif m := re.fullmatch(r"up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", rest):  # BFL counts the decoder upwards
        rest = f"up.{up_blocks - 1 - int(m[1])}.block.{m[2]}.{_resnet(m[3])}"
    elif m := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.(.+)", rest):
        rest = f"up.{up_blocks - 1 - int(m[1])}.upsample.{m[2]}"
    elif m := re.fullmatch(r"mid_block\.resnets\.(\d+)\.(.+)", rest):
        rest = f"mid.block_{int(m[1]) + 1}.{_resnet(m[2])}"
    elif m := re.fullmatch(r"mid_block\.attentions\.0\.(.+)", rest):
        names = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
        module, leaf = m[1].rsplit(".", 1)
        rest = f"mid.attn_1.{names[module]}.{leaf}"
    elif rest.startswith("conv_norm_out."):
        rest = rest.replace("conv_norm_out.", "norm_out.", 1)
    return f"{side}.{rest}"


def ae_to_bfl(state: dict[str, Any], up_blocks: int) -> dict[str, Any]:
    """A diffusers Flux VAE state dict in the names (and 1x1-conv attention shapes) BFL's ``ae.safetensors`` has."""
    out = {}
    for key, tensor in state.items():
        name = _ae_key(key, up_blocks)
        if ".attn_1." in name and name.endswith(".weight") and tensor.ndim == 2:  # Linear in diffusers, 1x1 conv in BFL
            tensor = tensor[:, :, None, None]
        out[name] = tensor.contiguous()
    return out


def hub_clip_names(path: Path) -> None:
    """CLIP-L's file with the hub's ``text_model.`` names: transformers 5 saves them without it, transformers 5 reads
    both, and kohya's transformers 4.54 (``load_state_dict(..., assign=True)``) only the hub's."""
    from safetensors.torch import load_file, save_file

    state = load_file(path)
    if not all(key.startswith("text_model.") for key in state):
        save_file({key if key.startswith("text_model.") else f"text_model.{key}": tensor for key, tensor in state.items()},
                  path, metadata={"format": "pt"})


def kohya_files(folder: Path) -> dict[str, Path]:
    """The four files kohya's Flux trainer is given, by its option names."""
    return {"pretrained_model_name_or_path": folder / "transformer" / "diffusion_pytorch_model.safetensors",
            "clip_l": folder / "text_encoder" / "model.safetensors", "t5xxl": folder / "text_encoder_2" / "model.safetensors",
            "ae": folder / "ae.safetensors"}


def _save_real_size(folder: Path, device: str) -> None:
    import torch
    from _flux_arch import _building_on, build_transformer, build_vae, scheduler
    from diffusers import FluxPipeline
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    from lorastory.models import tiny as tiny_models
    from lorastory.models.families.flux_tiny import _t5_tokenizer

    dtype = torch.bfloat16
    torch.manual_seed(3)
    with _building_on(device, dtype):
        clip = CLIPTextModel(CLIPTextConfig(**CLIP_L))
        t5 = T5EncoderModel(T5Config(**T5_XXL))
    pipe = FluxPipeline(scheduler=scheduler(), vae=build_vae(device, dtype, False), text_encoder=clip.eval(),
                        tokenizer=tiny_models._clip_tokenizer(), text_encoder_2=t5.eval(), tokenizer_2=_t5_tokenizer(512),
                        transformer=build_transformer(device, dtype, False))
    pipe.save_pretrained(folder, safe_serialization=True, max_shard_size="100GB")  # one file per model: kohya's reads
    tiny_models._save_clip_tokenizer(pipe.tokenizer, folder / "tokenizer")
    del pipe, clip, t5
    if device == "cuda":
        torch.cuda.empty_cache()


def build_flux_folder(folder: Path, tiny: bool) -> dict[str, Any]:
    """Write (or reuse) the random Flux dev folder with ``ae.safetensors``; return what it holds and the build time."""
    marker = folder / MARKER
    if marker.exists() and json.loads(marker.read_text()).get("tiny") == tiny:
        return json.loads(marker.read_text())
    import torch
    from safetensors.torch import load_file, save_file

    from lorastory.models.tiny import build_tiny_model

    started = time.perf_counter()
    shutil.rmtree(folder, ignore_errors=True)
    if tiny:
        build_tiny_model("flux", folder)
    else:
        folder.mkdir(parents=True)
        free_gb = shutil.disk_usage(folder).free / 2**30
        if free_gb < NEEDS_GB:  # say so now rather than fail in the middle of a 34 GB write
            raise SystemExit(f"{folder}: {free_gb:.0f} GiB free, the real-size Flux needs {NEEDS_GB} GiB; free some disk")
        _save_real_size(folder, "cuda" if torch.cuda.is_available() else "cpu")
    hub_clip_names(folder / "text_encoder" / "model.safetensors")
    vae_config = json.loads((folder / "vae" / "config.json").read_text())
    vae = load_file(folder / "vae" / "diffusion_pytorch_model.safetensors")
    save_file(ae_to_bfl(vae, len(vae_config["up_block_types"])), folder / "ae.safetensors")
    files = kohya_files(folder)
    missing = [str(path) for path in files.values() if not path.exists()]
    if missing:
        raise RuntimeError(f"the Flux folder lacks what kohya reads: {', '.join(missing)}")
    record = {"tiny": tiny, "build_s": round(time.perf_counter() - started, 1),
              "file_gb": {name: round(path.stat().st_size / 2**30, 2) for name, path in files.items()},
              "disk_gb": round(sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 2**30, 2)}
    marker.write_text(json.dumps(record, indent=1))
    return record


def kohya_tokenizer_cache(cache: Path, folder: Path) -> None:
    """kohya loads its tokenizers from the hub unless ``--tokenizer_cache_dir`` holds them: give it the model's own.

    transformers 5 writes ``extra_special_tokens`` as a list, which kohya's transformers 4.54 reads as a mapping
    (``AttributeError: 'list' object has no attribute 'keys'``): an empty list is left out of the copies.
    """
    for hub_id, sub in KOHYA_TOKENIZERS:
        target = cache / hub_id.replace("/", "_")
        if target.exists():
            continue
        shutil.copytree(folder / sub, target)
        config_path = target / "tokenizer_config.json"
        config = json.loads(config_path.read_text(encoding="utf-8"))
        if config.get("extra_special_tokens") == []:
            del config["extra_special_tokens"]
            config_path.write_text(json.dumps(config, indent=2), encoding="utf-8")
