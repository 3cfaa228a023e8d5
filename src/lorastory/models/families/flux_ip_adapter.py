"""Flux's IP-Adapter in XLabs' layout (``XLabs-AI/flux-ip-adapter``): what the file holds, a check, a tiny one.

diffusers' ``FluxIPAdapterMixin.load_ip_adapter`` reads one safetensors file with

* ``ip_adapter_proj_model.proj.{weight,bias}`` and ``ip_adapter_proj_model.norm.{weight,bias}``: an
  ``ImageProjection`` turning the CLIP image embedding (``image_embeds``, the projected output of
  CLIP ViT-L/14: 768 wide) into 4 tokens of the transformer's text width (``joint_attention_dim``,
  4096; 16 tokens when ``proj`` has 65,536 rows);
* ``double_blocks.N.processor.ip_adapter_double_stream_{k,v}_proj.{weight,bias}`` for every double
  block N: the keys and values of those tokens (``inner_dim`` x ``joint_attention_dim``), read by
  the image stream's attention (``FluxIPAdapterAttnProcessor``); single blocks get none.

The published repository has no image encoder; diffusers' documentation loads
``openai/clip-vit-large-patch14`` for it (the family's ``IpAdapterSource.encoder_repo``).
:func:`check_flux_ip_adapter` compares a file's keys and shapes with the transformer and the
encoder before diffusers loads it, so a wrong file is one line naming what does not fit rather
than a ``KeyError`` or a size mismatch; :func:`flux_ip_adapter_state_dict` writes a random one
in the same layout for tests (registered as the family's ``ip_adapter_state``).
"""

from __future__ import annotations

from typing import Any

PROJ = "ip_adapter_proj_model."
DOUBLE = "double_blocks.{index}.processor.ip_adapter_double_stream_{part}_proj."
TOKENS = 4


def _expected(transformer: Any, image_embed_dim: int) -> dict[str, tuple[int, ...]]:
    """Every key of an XLabs Flux IP-Adapter for ``transformer`` with its shape (4 image tokens)."""
    config = transformer.config
    text_dim, inner = config.joint_attention_dim, config.num_attention_heads * config.attention_head_dim
    shapes: dict[str, tuple[int, ...]] = {
        f"{PROJ}proj.weight": (TOKENS * text_dim, image_embed_dim), f"{PROJ}proj.bias": (TOKENS * text_dim,),
        f"{PROJ}norm.weight": (text_dim,), f"{PROJ}norm.bias": (text_dim,),
    }
    for index in range(config.num_layers):
        for part in ("k", "v"):
            prefix = DOUBLE.format(index=index, part=part)
            shapes[f"{prefix}weight"], shapes[f"{prefix}bias"] = (inner, text_dim), (inner,)
    return shapes


def check_flux_ip_adapter(transformer: Any, shapes: dict[str, tuple[int, ...]], encoder: Any) -> str | None:
    """What keeps the file (its ``{key: shape}``) from fitting ``transformer`` and ``encoder``; None when it fits."""
    if not any(key.startswith(PROJ) for key in shapes):
        return (f"not a Flux IP-Adapter in XLabs' layout (no {PROJ}proj.weight; "
                f"{len(shapes)} keys such as {next(iter(sorted(shapes)), 'none')})")
    proj = shapes.get(f"{PROJ}proj.weight")
    tokens = 16 if proj and proj[0] == 65536 else TOKENS  # diffusers' rule for the 16-token variant
    text_dim = transformer.config.joint_attention_dim
    embed = encoder.config.projection_dim
    expected = _expected(transformer, embed)
    expected[f"{PROJ}proj.weight"] = (tokens * text_dim, embed)
    expected[f"{PROJ}proj.bias"] = (tokens * text_dim,)
    for key, shape in expected.items():
        if key not in shapes:
            return f"has no {key} (this Flux has {transformer.config.num_layers} double blocks)"
        if tuple(shapes[key]) != shape:
            what = "the image encoder's embedding" if key == f"{PROJ}proj.weight" and shapes[key][0] == shape[0] else "this Flux"
            return f"{key} is {list(shapes[key])}, {what} needs {list(shape)}"
    return None


def flux_ip_adapter_state_dict(transformer: Any, encoder: Any, seed: int = 0) -> dict[str, Any]:
    """A random XLabs-layout IP-Adapter for ``transformer`` reading ``encoder``'s image embeddings."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in _expected(transformer, encoder.config.projection_dim).items():
        if key.startswith(f"{PROJ}norm."):  # a LayerNorm as initialised
            state[key] = torch.ones(shape) if key.endswith("weight") else torch.zeros(shape)
        else:  # Linear layers as nn.Linear initialises their weights (uniform within 1/sqrt(fan_in)), small biases
            bound = 1.0 / shape[-1] ** 0.5 if len(shape) == 2 else 0.1
            state[key] = (torch.rand(shape, generator=generator) * 2 - 1) * bound
    return state
