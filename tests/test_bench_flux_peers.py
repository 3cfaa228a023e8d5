"""bench/flux_peers.py on the CPU: the Flux peer benchmark's one GPU call must run as written (issue 23)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"


@pytest.mark.slow  # about 25 s: the tiny Flux built, then `lorastory train` timed for 4 steps
def test_tiny_run_times_our_row_and_leaves_kohya_its_files(tmp_path):
    work, out = tmp_path / "work", tmp_path / "peers.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run([sys.executable, str(BENCH / "flux_peers.py"), "--tiny", "--work", str(work), "--json", str(out),
                           "--logs", str(tmp_path / "logs")], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    report = json.loads(out.read_text())
    (row,) = report["rows"]
    assert row["name"] == "ours-bf16" and row["rc"] == 0 and row["cudnn_sdpa"] is True
    assert row["steps"] == 4 and row["img_per_s"] > 0 and row["warm_steps"] == 1
    assert (tmp_path / "logs" / "ours-bf16.log").read_text(encoding="utf-8")
    from safetensors.torch import load_file

    lora = load_file(work / "runs" / "ours-bf16" / "lora.safetensors")
    # kohya's default targets, modulation included: the single block's modulation Linear has its LoRA
    assert any("single_blocks_0_modulation_lin" in key for key in lora), sorted(lora)[:5]
    # what kohya is handed: the four files, and tokenizers transformers 4.x reads (no list-valued extra tokens)
    model = work / "flux-tiny"
    assert all((model / name).exists() for name in ("ae.safetensors", "transformer/diffusion_pytorch_model.safetensors",
                                                    "text_encoder/model.safetensors", "text_encoder_2/model.safetensors"))
    clip_keys = load_file(model / "text_encoder" / "model.safetensors")  # the hub's names, which kohya's loader needs
    assert clip_keys and all(key.startswith("text_model.") for key in clip_keys)
    t5 = json.loads((work / "tok" / "google_t5-v1_1-xxl" / "tokenizer_config.json").read_text())
    assert "extra_special_tokens" not in t5 and t5["model_max_length"] == 32
    assert (work / "tok" / "openai_clip-vit-large-patch14" / "vocab.json").exists()
    assert report["model"]["tiny"] is True and report["model"]["file_gb"]["ae"] >= 0


def test_ae_in_bfl_names_reads_back_through_diffusers_ldm_converter(monkeypatch):
    import torch
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    monkeypatch.syspath_prepend(str(BENCH))
    from _flux_arch import build_vae
    from _flux_files import ae_to_bfl

    vae = build_vae("cpu", torch.float32, tiny=True)
    state = vae.state_dict()
    bfl = ae_to_bfl(state, len(vae.config.up_block_types))
    # BFL's names: the decoder counted upwards, 1x1-conv attention, nin_shortcut
    assert "decoder.up.0.block.0.conv1.weight" in bfl and "encoder.mid.attn_1.q.weight" in bfl
    assert bfl["encoder.mid.attn_1.q.weight"].ndim == 4
    assert any(".nin_shortcut." in key for key in bfl)
    back = convert_ldm_vae_checkpoint(bfl, dict(vae.config))
    assert set(back) == set(state)
    for key, tensor in state.items():
        assert torch.equal(back[key].reshape(tensor.shape), tensor), key
    # the decoder's first up block in diffusers is BFL's last
    last = len(vae.config.up_block_types) - 1
    assert torch.equal(bfl[f"decoder.up.{last}.block.0.conv1.weight"], state["decoder.up_blocks.0.resnets.0.conv1.weight"])


def test_kohya_pack_keeps_both_lora_trainers_and_refuses_a_checkout_without_flux(monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(str(BENCH))
    from pack_kohya import copy_sd_scripts

    checkout = tmp_path / "sd-scripts"
    for name in ("train_network.py", "sdxl_train_network.py", "sdxl_train.py", "library/flux_utils.py",
                 "networks/lora_flux.py", "docs/train.md", "library/__pycache__/x.pyc"):
        (checkout / name).parent.mkdir(parents=True, exist_ok=True)
        (checkout / name).write_text("# kohya\n", encoding="utf-8")
    with pytest.raises(SystemExit, match="has no flux_train_network.py: use kohya-ss/sd-scripts main at 48d368fa"):
        copy_sd_scripts(checkout, tmp_path / "refused")
    (checkout / "flux_train_network.py").write_text("# kohya\n", encoding="utf-8")
    copy_sd_scripts(checkout, tmp_path / "packed")
    kept = sorted(str(p.relative_to(tmp_path / "packed")) for p in (tmp_path / "packed").rglob("*") if p.is_file())
    assert kept == ["flux_train_network.py", "library/flux_utils.py", "networks/lora_flux.py", "sdxl_train_network.py",
                    "train_network.py"]
