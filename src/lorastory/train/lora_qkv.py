"""Self-attention q/k/v with LoRA in two matmuls instead of nine, for training.

A peft LoRA on ``to_q``, ``to_k`` and ``to_v`` costs nine matmuls per self-attention layer in the
forward pass (three frozen projections, three ``lora_A``, three ``lora_B``) and about twice that in
the backward pass, most of them skinny rank-16 products that read the whole activation. All
three read the same input, so the three frozen weights are stacked once into one matrix
(``to_qkv``) and the three ``lora_A`` matrices into another each step: the activation is read twice
instead of six times, and the three ``lora_B`` products become one block-diagonal product.

The math is peft's, ``base(x) + scaling * B(A(x))``, with the same parameters: nothing is renamed,
saved weights and checkpoints are unchanged, and the layers fall back to the usual path whenever
the LoRA is disabled, merged, has dropout, or the call is not plain self-attention.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

_FUSED_WEIGHT = "lorastory_qkv_weight"


def _single_adapter(layer: Any) -> str | None:
    """The one active LoRA adapter of a peft layer that this fusion can compute, else None."""
    import torch

    names = list(getattr(layer, "active_adapters", []))
    if len(names) != 1 or getattr(layer, "merged_adapters", []) or getattr(layer, "use_dora", {}).get(names[0]):
        return None
    name = names[0]
    if name not in getattr(layer, "lora_A", {}) or not isinstance(layer.lora_dropout[name], torch.nn.Identity):  # LoHa/LoKr: no fusion
        return None
    if layer.get_base_layer().bias is not None:
        return None
    return name


def _fusable(attn: Any) -> str | None:
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = [getattr(attn, name, None) for name in ("to_q", "to_k", "to_v")]
    if not all(isinstance(layer, BaseTunerLayer) for layer in layers):
        return None
    names = {_single_adapter(layer) for layer in layers}
    if len(names) != 1 or None in names:
        return None
    name = names.pop()
    if len({layer.scaling[name] for layer in layers}) != 1:
        return None
    if len({layer.get_base_layer().weight.shape[1] for layer in layers}) != 1:
        return None
    return name


class LoraQKVAttnProcessor:
    """diffusers' SDPA attention processor with q/k/v (frozen weight + LoRA) computed in two matmuls.

    Anything but plain self-attention (a mask, cross-attention, 4-D input, extra norms) goes to the
    wrapped processor unchanged.
    """

    def __init__(self, original: Any, adapter: str) -> None:
        self.original = original
        self.adapter = adapter

    def _plain(self, attn: Any, encoder_hidden_states: Any, attention_mask: Any, hidden_states: torch.Tensor) -> bool:
        layer = attn.to_q
        return (encoder_hidden_states is None and attention_mask is None and hidden_states.ndim == 3
                and attn.spatial_norm is None and attn.group_norm is None and attn.norm_q is None
                and attn.norm_k is None and not layer.disable_adapters and not layer.merged
                and list(layer.active_adapters) == [self.adapter])

    def qkv(self, attn: Any, hidden_states: torch.Tensor) -> torch.Tensor:
        import torch
        import torch.nn.functional as F

        layers = (attn.to_q, attn.to_k, attn.to_v)
        dtype = hidden_states.dtype
        lora_a = torch.cat([layer.lora_A[self.adapter].weight for layer in layers]).to(dtype)
        lora_b = torch.block_diag(*[layer.lora_B[self.adapter].weight for layer in layers]).to(dtype)
        frozen = F.linear(hidden_states, getattr(attn, _FUSED_WEIGHT).to(dtype))
        return frozen + F.linear(F.linear(hidden_states, lora_a), lora_b) * attn.to_q.scaling[self.adapter]

    def __call__(self, attn: Any, hidden_states: torch.Tensor, encoder_hidden_states: Any = None,
                 attention_mask: Any = None, temb: Any = None, *args: Any, **kwargs: Any) -> torch.Tensor:
        import torch.nn.functional as F

        if args or kwargs or not self._plain(attn, encoder_hidden_states, attention_mask, hidden_states):
            return self.original(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        batch, _, _ = hidden_states.shape
        query, key, value = self.qkv(attn, hidden_states).chunk(3, dim=-1)
        head_dim = query.shape[-1] // attn.heads
        query, key, value = (t.view(batch, -1, attn.heads, head_dim).transpose(1, 2) for t in (query, key, value))
        out = F.scaled_dot_product_attention(query, key, value, dropout_p=0.0, is_causal=False)
        out = out.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim).to(query.dtype)
        out = attn.to_out[1](attn.to_out[0](out))
        if attn.residual_connection:
            out = out + hidden_states
        return out / attn.rescale_output_factor


def fuse_lora_qkv(model: Any) -> int:
    """Install :class:`LoraQKVAttnProcessor` on every self-attention of ``model`` that it fits; return how many.

    The frozen q/k/v weights become views into one stacked matrix (no extra memory). Call after the
    LoRA is injected and the model sits on its device in its dtype.
    """
    import torch
    from diffusers.models.attention_processor import Attention

    count = 0
    for attn in model.modules():
        if not isinstance(attn, Attention) or attn.is_cross_attention or hasattr(attn, _FUSED_WEIGHT):
            continue
        adapter = _fusable(attn)
        if adapter is None:
            continue
        bases = [getattr(attn, name).get_base_layer() for name in ("to_q", "to_k", "to_v")]
        with torch.no_grad():
            stacked = torch.cat([base.weight for base in bases])
        attn.register_buffer(_FUSED_WEIGHT, stacked, persistent=False)
        rows = 0
        for base in bases:
            size = base.weight.shape[0]
            base.weight = torch.nn.Parameter(stacked[rows:rows + size], requires_grad=False)
            rows += size
        attn.set_processor(LoraQKVAttnProcessor(attn.processor, adapter))
        count += 1
    return count


def unfuse_lora_qkv(model: Any) -> int:
    """Undo :func:`fuse_lora_qkv` (the processors; the weights stay views, which is harmless); return how many."""
    count = 0
    for attn in model.modules():
        processor = getattr(attn, "processor", None)
        if isinstance(processor, LoraQKVAttnProcessor):
            attn.set_processor(processor.original)
            delattr(attn, _FUSED_WEIGHT)
            count += 1
    return count
