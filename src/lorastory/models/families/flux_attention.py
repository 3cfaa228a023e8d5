"""Shared attention for Flux's joint attention: the story's consistent-character mode on a DiT.

A Flux block attends over one joint sequence, the text tokens then the image tokens (the double
blocks project the two streams apart and concatenate them; the single blocks get them already
concatenated). :class:`FluxSharedAttnProcessor` replaces diffusers' ``FluxAttnProcessor`` on the
double and single blocks that ``consistency.blocks`` names (:func:`flux_shared_layers`: ``double``,
``single``, ``double_blocks.3``, ``single_blocks.0-9``; by default all) during one pipeline call
and adds, to each panel's keys and values, a sample of the *reference panel's image tokens'* keys
and values (after the q/k norms and the rotary embedding, so they keep their own positions): the
reference is the batch's first panel, or the anchor batch's when a story renders in several
batches (the render state's bank). The text tokens are untouched (each panel reads only its own
prompt), and the reference panel itself attends exactly as without the mode: it is computed apart,
with the plain call, so it is the same picture with and without the mode.

What is shared and when (sample rate, strength as a logit bias ``log(strength)``, step range, the
bank) is the render state's business (:class:`lorastory.generate.consistency.SharedAttention`,
duck-typed here: ``shares``, ``strength``, ``reference_keys_values``); this module holds only the
attention math, so the models layer does not import a stage. A call it does not handle (an
attention mask, IP-Adapter masks, a batch of one) goes to the processor it replaced, unchanged,
with the IP-Adapter inputs it takes. With an IP-Adapter loaded (consistency mode ``both``) the
double blocks' processors it replaces are diffusers' ``FluxIPAdapterAttnProcessor``: the shared
attention then also returns the image tokens' attention to the reference image's tokens, computed
as that processor does (query after the norm, before the rotary embedding; scaled by its scale).
"""

from __future__ import annotations

import math
import re
from typing import Any

from lorastory.errors import ConfigError

# The transformer blocks whose attention shares by default: all of them (a DiT has no up/mid/down blocks).
FLUX_SHARED_BLOCKS = ("transformer_blocks.", "single_transformer_blocks.")
# consistency.blocks names → diffusers' block lists: BFL's and kohya's names (double_blocks.N) and diffusers' own.
_KINDS = {"double": "transformer_blocks", "double_blocks": "transformer_blocks", "transformer_blocks": "transformer_blocks",
          "single": "single_transformer_blocks", "single_blocks": "single_transformer_blocks",
          "single_transformer_blocks": "single_transformer_blocks"}
_SHOWN = {"transformer_blocks": "double", "single_transformer_blocks": "single"}
_BLOCK = re.compile(r"^(?P<kind>[a-z_]+?)(\.(?P<first>\d+)(-(?P<last>\d+))?)?$")


def block_prefixes(transformer: Any, name: str, kinds: dict[str, str], label: str, use: str,
                   shown: dict[str, str]) -> list[str]:
    """A DiT's ``consistency.blocks`` name (``double``, ``single_blocks.3``, ``double_blocks.0-9``) as prefixes of
    attention layer names, through ``kinds`` (name → diffusers' block list); a block the model does not have is one
    :class:`ConfigError` naming how many it has (``shown``: how a block list is named to the user)."""
    match = _BLOCK.match(name)
    kind = kinds.get(match.group("kind")) if match else None
    if kind is None:
        raise ConfigError(f"consistency.blocks {name}: not a {label} block; use {use}")
    count = len(getattr(transformer, kind))
    if match.group("first") is None:
        return [f"{kind}."]
    first, last = int(match.group("first")), int(match.group("last") or match.group("first"))
    if last >= count:
        word = f"{shown[kind]} " if shown.get(kind) else ""
        listed = f"{shown[kind]}_blocks" if shown.get(kind) else kind
        raise ConfigError(f"consistency.blocks {name}: this {label} has {count} {word}block{'s' * (count != 1)} "
                          f"({listed}.0-{count - 1})")
    return [f"{kind}.{index}." for index in range(first, last + 1)]


def dit_shared_layers(transformer: Any, blocks: list[str], defaults: tuple[str, ...], resolve: Any) -> list[str]:
    """The attention layers (names as in ``transformer.attn_processors``) of ``blocks``, each resolved to prefixes by
    ``resolve(transformer, name)``; a UNet's block names (the default ``up``) mean the ``defaults`` prefixes."""
    prefixes = defaults
    if not all(block in ("up", "mid", "down") or block.startswith(("up_blocks", "mid_block", "down_blocks"))
               for block in blocks):
        prefixes = tuple(prefix for block in blocks for prefix in resolve(transformer, block))
    return [name for name in transformer.attn_processors if name.startswith(prefixes)]


def _flux_prefixes(transformer: Any, name: str) -> list[str]:
    return block_prefixes(transformer, name, _KINDS, "Flux",
                          "double, single, or a name like double_blocks.3 or single_blocks.0-9", _SHOWN)


def flux_shared_layers(transformer: Any, blocks: list[str]) -> list[str]:
    """The attention layers (names as in ``transformer.attn_processors``) that share: those of ``blocks``
    (``double``, ``single``, ``double_blocks.3``, ``single_blocks.0-9``, or diffusers' ``transformer_blocks.N``);
    a UNet's block names (the default ``up``) mean every double and single block."""
    return dit_shared_layers(transformer, blocks, FLUX_SHARED_BLOCKS, _flux_prefixes)


def _attention(query: Any, key: Any, value: Any, mask: Any, base: Any) -> Any:
    """Attention of [B, S, H, D] tensors through diffusers' dispatcher, with the replaced processor's backend."""
    from diffusers.models.attention_dispatch import dispatch_attention_fn

    return dispatch_attention_fn(query, key, value, attn_mask=mask, backend=getattr(base, "_attention_backend", None),
                                 parallel_config=getattr(base, "_parallel_config", None))


def shared_joint_attention(state: Any, name: str, base: Any, query: Any, key: Any, value: Any, text: int,
                           text_mask: Any = None) -> Any:
    """The joint attention [B, S, H, D] of [text, image] sequences whose panels also read the reference's sampled image
    tokens (``state.reference_keys_values``), the reference's ``log(strength)`` as a logit bias; the reference panel
    itself (the batch's first, without a bank) attends as without the mode. ``text_mask``: [B, text] booleans, the
    text tokens that are not padding (Qwen-Image's prompts), or None for all."""
    import torch

    # [m, H, D] of the reference's image tokens; `first`: the first panel that reads them (0 with a bank).
    extra_key, extra_value, first = state.reference_keys_values(name, key[:, text:], value[:, text:], key.shape[1])
    rest = key.shape[0] - first
    plain_mask = None
    if text_mask is not None:  # the joint mask the plain processor builds: the text's padding out, every image token in
        image = torch.ones((key.shape[0], key.shape[1] - text), dtype=torch.bool, device=key.device)
        plain_mask = torch.cat([text_mask.to(torch.bool), image], dim=1)[:, None, None, :]
    mask = None
    if state.strength < 1 or plain_mask is not None:  # the reference's tokens count `strength` times one of the panel's own
        mask = torch.zeros((1 if plain_mask is None else rest, 1, 1, key.shape[1] + extra_key.shape[0]),
                           dtype=query.dtype, device=query.device)
        mask[..., key.shape[1]:] = math.log(state.strength) if state.strength < 1 else 0.0
        if plain_mask is not None:
            mask[..., :key.shape[1]].masked_fill_(~plain_mask[first:], float("-inf"))
    shared = _attention(query[first:], torch.cat([key[first:], extra_key[None].expand(rest, -1, -1, -1)], dim=1),
                        torch.cat([value[first:], extra_value[None].expand(rest, -1, -1, -1)], dim=1), mask, base)
    if first:  # the reference panel: the plain attention, so it is the same picture with and without the mode
        reference_mask = None if plain_mask is None else plain_mask[:first]
        shared = torch.cat([_attention(query[:first], key[:first], value[:first], reference_mask, base), shared])
    return shared


class SharedJointAttnProcessor:
    """A DiT's shared joint attention on one layer: its name, the processor it replaced, the render state."""

    def __init__(self, name: str, base: Any, state: Any) -> None:
        self.name = name
        self.base = base
        self.state = state


class FluxSharedAttnProcessor(SharedJointAttnProcessor):
    """Flux joint attention whose panels also attend to the reference panel's sampled image tokens."""

    layers = staticmethod(flux_shared_layers)  # which of the transformer's attention layers it replaces

    def __call__(
        self,
        attn: Any,
        hidden_states: Any,
        encoder_hidden_states: Any = None,
        attention_mask: Any = None,
        image_rotary_emb: Any = None,
        ip_hidden_states: Any = None,  # named, not **kwargs: FluxAttention passes only the names a processor lists
        ip_adapter_masks: Any = None,
    ) -> Any:
        state = self.state
        alone = hidden_states.shape[0] < 2 and not state.reads_bank  # a batch of one has no reference to read
        ip_inputs = {"ip_hidden_states": ip_hidden_states, "ip_adapter_masks": ip_adapter_masks}
        if attention_mask is not None or ip_adapter_masks is not None or alone or not state.shares(self.name):
            return _call_base(self.base, attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb,
                              ip_inputs)
        import torch
        from diffusers.models.embeddings import apply_rotary_emb
        from diffusers.models.transformers.transformer_flux import _get_qkv_projections

        query, key, value, encoder_query, encoder_key, encoder_value = _get_qkv_projections(
            attn, hidden_states, encoder_hidden_states)
        query, key, value = (t.unflatten(-1, (-1, attn.head_dim)) for t in (query, key, value))
        query, key = attn.norm_q(query), attn.norm_k(key)
        image_query = query  # an IP-Adapter's image-token query: after the norm, before the text and the rotary embedding
        if encoder_hidden_states is not None and attn.added_kv_proj_dim is not None:  # a double block: text first
            text = encoder_hidden_states.shape[1]
            encoder_query, encoder_key, encoder_value = (t.unflatten(-1, (-1, attn.head_dim))
                                                         for t in (encoder_query, encoder_key, encoder_value))
            query = torch.cat([attn.norm_added_q(encoder_query), query], dim=1)
            key = torch.cat([attn.norm_added_k(encoder_key), key], dim=1)
            value = torch.cat([encoder_value, value], dim=1)
            state.text_tokens = text
        else:  # a single block: the sequence arrives as [text, image]; the text length is the double blocks'
            text = state.text_tokens
        if image_rotary_emb is not None:
            query = apply_rotary_emb(query, image_rotary_emb, sequence_dim=1)
            key = apply_rotary_emb(key, image_rotary_emb, sequence_dim=1)

        shared = shared_joint_attention(state, self.name, self.base, query, key, value, text)
        out = shared.flatten(2, 3).to(query.dtype)
        if encoder_hidden_states is None:
            return out
        encoder_out, out = out.split_with_sizes([text, out.shape[1] - text], dim=1)
        out = attn.to_out[1](attn.to_out[0](out.contiguous()))
        if _has_ip_adapter(self.base, ip_hidden_states):  # mode both: the reference image's attention as the base adds it
            return out, attn.to_add_out(encoder_out.contiguous()), _ip_adapter_output(self.base, attn, image_query,
                                                                                        ip_hidden_states)
        return out, attn.to_add_out(encoder_out.contiguous())


def _call_base(base: Any, attn: Any, hidden_states: Any, encoder_hidden_states: Any, attention_mask: Any,
               image_rotary_emb: Any, ip_inputs: dict[str, Any]) -> Any:
    """The replaced processor's call, with the IP-Adapter inputs it takes (as ``FluxAttention`` would pass them)."""
    import inspect

    accepted = inspect.signature(base.__call__).parameters
    extra = {name: value for name, value in ip_inputs.items() if name in accepted and value is not None}
    return base(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb, **extra)


def _has_ip_adapter(base: Any, ip_hidden_states: Any) -> bool:
    return ip_hidden_states is not None and hasattr(base, "to_k_ip")


def _ip_adapter_output(base: Any, attn: Any, image_query: Any, ip_hidden_states: Any) -> Any:
    """The image tokens' attention to the reference image's IP-Adapter tokens, scaled, as diffusers'
    ``FluxIPAdapterAttnProcessor`` adds it to a double block's image stream."""
    import torch

    batch = image_query.shape[0]
    total = torch.zeros(batch, image_query.shape[1], attn.heads * attn.head_dim, dtype=image_query.dtype,
                        device=image_query.device)
    for states, scale, to_k_ip, to_v_ip in zip(ip_hidden_states, base.scale, base.to_k_ip, base.to_v_ip):
        key = to_k_ip(states).view(batch, -1, attn.heads, attn.head_dim)
        value = to_v_ip(states).view(batch, -1, attn.heads, attn.head_dim)
        out = _attention(image_query, key, value, None, base)
        total = total + scale * out.reshape(batch, -1, attn.heads * attn.head_dim).to(image_query.dtype)
    return total
