"""The model cases of bench/flux_backward_probe.py: one Flux block, and the full random transformer, one step each.

Blocks are diffusers' own ``FluxTransformerBlock`` / ``FluxSingleTransformerBlock`` at Flux.1 dev's width with
the inputs a block meets at 1024² (rotary embeddings from ``FluxPosEmbed`` over the ids ``flux_predict``
builds); the full cases are bench/_dit_train.py's first step, as is (the control) or with the q/k RMSNorms
swapped for the written-out formula or made to receive a contiguous gradient, and a plain diffusers step
without any lorastory code.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from typing import Any

import torch
from _probe_ops import Setting, rms_reference, sync

from lorastory.models.families.flux import FLUX_LORA_TARGETS
from lorastory.models.lora import LoraSpec
from lorastory.models.lora.inject import peft_config
from lorastory.train.speed import lora_compute_in_input_dtype

AXES = {"full": (16, 56, 56), "tiny": (2, 2, 4)}  # Flux's rotary axes; the tiny model's (bench/_flux_arch.py)


def model_dtype(setting: Setting) -> torch.dtype:
    return torch.float32 if setting.tiny else torch.bfloat16  # as bench/_dit_train.py: float32 on the CPU


def flux_ids(txt: int, img: int, device: str, dtype: torch.dtype) -> torch.Tensor:
    """Text ids (zeros) then image ids (0, row, column) of a square latent, as flux_predict and diffusers join them."""
    side = math.isqrt(img)
    ids = torch.zeros(side, side, 3)
    ids[..., 1] += torch.arange(side)[:, None]
    ids[..., 2] += torch.arange(side)[None, :]
    return torch.cat([torch.zeros(txt, 3), ids.reshape(-1, 3)]).to(device, dtype)


def rotary(setting: Setting) -> tuple[torch.Tensor, torch.Tensor]:
    from diffusers.models.transformers.transformer_flux import FluxPosEmbed

    s = setting.shapes
    pos = FluxPosEmbed(theta=10000, axes_dim=list(AXES["tiny" if setting.tiny else "full"]))
    return pos(flux_ids(s.txt, s.img, setting.device, model_dtype(setting)))


def build_block(setting: Setting, kind: str) -> Any:
    from diffusers.models.transformers.transformer_flux import FluxSingleTransformerBlock, FluxTransformerBlock

    s = setting.shapes
    torch.manual_seed(0)
    cls = FluxTransformerBlock if kind == "double" else FluxSingleTransformerBlock
    with torch.device(setting.device):
        block = cls(dim=s.dim, num_attention_heads=s.heads, attention_head_dim=s.head_dim)
    return block.to(model_dtype(setting)).requires_grad_(False)


def add_lora(module: Any, setting: Setting, rank: int = 16) -> list[torch.nn.Parameter]:
    """lorastory's Flux targets on ``module`` (as inject_lora puts them on the transformer), fp32 weights, and
    lorastory train's per-matmul cast unless the case runs under autocast."""
    from peft import inject_adapter_in_model

    inject_adapter_in_model(peft_config(LoraSpec(rank=rank, alpha=rank), FLUX_LORA_TARGETS), module)
    params = [p for n, p in module.named_parameters() if "lora_" in n]
    for p in params:
        p.data = p.data.float()
        p.requires_grad_(True)
    if not setting.autocast:
        lora_compute_in_input_dtype(module)
    return params


def block_case(setting: Setting, kind: str, lora: bool, checkpoint: bool) -> dict[str, Any]:
    """One block's forward and backward, gradients into its image and text inputs (and its LoRA)."""
    s, device, dtype = setting.shapes, setting.device, model_dtype(setting)
    block = build_block(setting, kind)
    params = add_lora(block, setting) if lora else []
    block.train()
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(1, s.img, s.dim, generator=g).to(device, dtype).requires_grad_(True)
    text = torch.randn(1, s.txt, s.dim, generator=g).to(device, dtype).requires_grad_(True)
    temb = torch.randn(1, s.dim, generator=g).to(device, dtype)
    rope = rotary(setting)
    print(f"probe: {kind} block forward", flush=True)
    with setting.autocast_ctx():
        if checkpoint:
            out_text, out_img = torch.utils.checkpoint.checkpoint(block, hidden, text, temb, rope, None, use_reentrant=False)
        else:
            out_text, out_img = block(hidden_states=hidden, encoder_hidden_states=text, temb=temb, image_rotary_emb=rope)
        loss = out_img.float().pow(2).mean() + out_text.float().pow(2).mean()
    print(f"probe: {kind} block backward", flush=True)
    loss.backward()
    sync()
    return {"loss": round(loss.item(), 4), "input_grad_norm": round(hidden.grad.float().norm().item(), 4),
            "lora_params": len(params), "lora_grads_finite": all(bool(p.grad.isfinite().all()) for p in params if p.grad is not None)}


class DecomposedRMSNorm(torch.nn.Module):
    """torch.nn.RMSNorm's formula written out in float32 (no fused rms_norm kernel), same weight and eps."""

    def __init__(self, norm: torch.nn.RMSNorm) -> None:
        super().__init__()
        self.weight = norm.weight
        self.eps = norm.eps if norm.eps is not None else torch.finfo(norm.weight.dtype).eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_reference(x, self.weight, self.eps)


class _ContiguousGrad(torch.autograd.Function):
    """Identity whose backward hands on a contiguous copy of the gradient."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        return grad.contiguous()


class ContiguousGradRMSNorm(torch.nn.Module):
    """The same torch.nn.RMSNorm, but its backward always receives a contiguous gradient (and input)."""

    def __init__(self, norm: torch.nn.RMSNorm) -> None:
        super().__init__()
        self.norm = norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _ContiguousGrad.apply(self.norm(x.contiguous()))


def swap_rmsnorms(model: Any, wrapper: type[torch.nn.Module]) -> int:
    """Replace every torch.nn.RMSNorm under ``model`` by ``wrapper(norm)``; return how many."""
    targets = [(parent, name, child) for parent in model.modules() for name, child in parent.named_children()
               if isinstance(child, torch.nn.RMSNorm)]
    for parent, name, child in targets:
        setattr(parent, name, wrapper(child))
    return len(targets)


def lorastory_step(setting: Setting, wrapper: type[torch.nn.Module] | None = None) -> dict[str, Any]:
    """bench/_dit_train.py's bf16 path for one step (no warm-up), optionally with the RMSNorms swapped."""
    from _dit_train import train_steps
    from flux_train import FLUX

    swapped: list[int] = []
    kit = FLUX
    if wrapper is not None:
        def build(device: str, dtype: torch.dtype, tiny: bool) -> Any:
            transformer = FLUX.transformer(device, dtype, tiny)
            swapped.append(swap_rmsnorms(transformer, wrapper))
            return transformer

        kit = dataclasses.replace(FLUX, transformer=build)
    args = argparse.Namespace(size=64 if setting.tiny else 1024, batch=1, steps=1, warmup=0, rank=16, checkpointing=True,
                              autocast=setting.autocast, sdpa=None, tiny=setting.tiny)
    print("probe: bench/_dit_train.py train_steps, one step", flush=True)
    result = train_steps(kit, "bf16", args, setting.device, model_dtype(setting))
    return {**result, "rmsnorms_swapped": swapped[0] if swapped else 0}


def plain_step(setting: Setting, checkpointing: bool) -> dict[str, Any]:
    """One backward through the random transformer with diffusers alone: no LoRA, no lorastory code; only
    x_embedder's weight trains, so the gradient crosses every block."""
    from _flux_arch import FULL, TINY, build_transformer

    s, device, dtype = setting.shapes, setting.device, model_dtype(setting)
    config = TINY if setting.tiny else FULL
    transformer = build_transformer(device, dtype, setting.tiny)
    transformer.x_embedder.weight.requires_grad_(True)
    if checkpointing:
        transformer.enable_gradient_checkpointing()
    transformer.train()
    g = torch.Generator().manual_seed(0)
    side = math.isqrt(s.img) * 2  # latent side: 2x2 patches
    latents = torch.randn(1, 16, side, side, generator=g)
    packed = latents.view(1, 16, side // 2, 2, side // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(1, s.img, 64)
    ids = flux_ids(s.txt, s.img, device, dtype)
    inputs = {"hidden_states": packed.to(device, dtype), "timestep": torch.tensor([0.7], device=device, dtype=dtype),
              "guidance": torch.ones(1, device=device), "txt_ids": ids[:s.txt], "img_ids": ids[s.txt:],
              "pooled_projections": torch.randn(1, config["pooled_projection_dim"], generator=g).to(device, dtype),
              "encoder_hidden_states": torch.randn(1, s.txt, config["joint_attention_dim"], generator=g).to(device, dtype)}
    target = torch.randn(1, s.img, 64, generator=g).to(device)
    print(f"probe: plain diffusers forward (checkpointing {checkpointing})", flush=True)
    with setting.autocast_ctx():
        out = transformer(**inputs, return_dict=False)[0]
        loss = torch.nn.functional.mse_loss(out.float(), target)
    print("probe: plain diffusers backward", flush=True)
    loss.backward()
    sync()
    grad = transformer.x_embedder.weight.grad
    return {"loss": round(loss.item(), 4), "grad_norm": round(grad.float().norm().item(), 4)}
