"""Fused LoRA q/k/v for training: peft's math in two matmuls, same parameters, exact fallbacks."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from lorastory.train.lora_qkv import LoraQKVAttnProcessor, fuse_lora_qkv, unfuse_lora_qkv


def _unet(tiny_model_path, targets=("to_q", "to_k", "to_v", "to_out.0"), dropout=0.0):
    from lorastory.models.lora import LoraSpec, inject_lora
    from lorastory.models.registry import load_pipeline

    pipe = load_pipeline(tiny_model_path("kolors"))
    torch.manual_seed(0)
    inject_lora(pipe, LoraSpec(rank=4, alpha=8, dropout=dropout, target_modules=list(targets)))
    with torch.no_grad():
        for name, param in pipe.unet.named_parameters():
            if ".lora_B." in name:
                param.normal_(std=0.05)
    return pipe.unet


def _run(unet):
    g = torch.Generator().manual_seed(1)
    hidden = unet.config.encoder_hid_dim
    sample = torch.randn(2, 4, 8, 8, generator=g)
    text, pooled = torch.randn(2, 8, hidden, generator=g), torch.randn(2, hidden, generator=g)
    time_ids = torch.tensor([[64.0, 64, 0, 0, 64, 64]] * 2)
    out = unet(sample, torch.tensor([10, 500]), encoder_hidden_states=text,
               added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids}).sample
    if not out.requires_grad:  # adapters disabled: nothing to train
        return out, {}
    F.mse_loss(out, torch.zeros_like(out)).backward()
    grads = {n: p.grad.clone() for n, p in unet.named_parameters() if p.requires_grad}
    unet.zero_grad(set_to_none=True)
    return out.detach(), grads


def test_fused_qkv_gives_peft_outputs_and_gradients(tiny_model_path):
    reference = _unet(tiny_model_path)
    fused = copy.deepcopy(reference)
    keys = list(fused.state_dict())
    count = fuse_lora_qkv(fused)
    self_attention = [m for m in fused.modules() if type(m).__name__ == "Attention" and not m.is_cross_attention]
    assert count == len(self_attention) > 0
    assert all(isinstance(m.processor, LoraQKVAttnProcessor) for m in self_attention)
    assert list(fused.state_dict()) == keys  # nothing renamed or added: checkpoints and saved LoRAs unchanged
    out_ref, grads_ref = _run(reference)
    out, grads = _run(fused)
    assert torch.allclose(out, out_ref, atol=1e-5)
    assert grads.keys() == grads_ref.keys()
    assert all(torch.allclose(grads[n], grads_ref[n], atol=1e-6, rtol=1e-4) for n in grads)
    assert any(grads[n].abs().sum() > 0 for n in grads if "attn1.to_k.lora_A" in n)


def test_fused_qkv_follows_disabled_adapters_and_unfuses(tiny_model_path):
    reference = _unet(tiny_model_path)
    fused = copy.deepcopy(reference)
    fuse_lora_qkv(fused)
    for unet in (reference, fused):
        unet.disable_adapters()
    assert torch.equal(_run(fused)[0], _run(reference)[0])
    for unet in (reference, fused):
        unet.enable_adapters()
    assert unfuse_lora_qkv(fused) > 0
    assert not any(isinstance(getattr(m, "processor", None), LoraQKVAttnProcessor) for m in fused.modules())
    assert torch.allclose(_run(fused)[0], _run(reference)[0], atol=1e-6)


@pytest.mark.parametrize("targets, dropout", [(("to_q", "to_v"), 0.0), (("to_q", "to_k", "to_v"), 0.1)])
def test_layers_it_cannot_compute_exactly_are_left_alone(tiny_model_path, targets, dropout):
    unet = _unet(tiny_model_path, targets=targets, dropout=dropout)
    assert fuse_lora_qkv(unet) == 0
