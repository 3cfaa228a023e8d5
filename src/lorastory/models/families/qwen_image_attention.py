"""Shared attention for Qwen-Image's joint attention: the story's consistent-character mode on its MMDiT.

Every Qwen-Image block is dual-stream: diffusers' ``QwenDoubleStreamAttnProcessor2_0`` projects the
text and the image tokens apart, normalises their queries and keys, rotates them with their own
RoPE frequencies and attends over the joint sequence [text, image], the text's padding masked out
(``encoder_hidden_states_mask``: the prompts of a batch differ in length). :class:`QwenImageSharedAttnProcessor`
replaces it on the blocks ``consistency.blocks`` names (:func:`qwen_image_shared_layers`: ``double``,
``double_blocks.3``, ``transformer_blocks.0-9``; by default all) for one pipeline call, and adds to each
panel's keys and values a sample of the reference panel's image tokens' keys and values (after the norms
and the rotary embedding), as Flux's does (:mod:`.flux_attention`, whose attention math this module
shares: :func:`~.flux_attention.shared_joint_attention`). The text tokens are untouched, the reference
panel attends exactly as without the mode, and the step range counts scheduler steps: true CFG calls
the transformer twice a step (the prompts, then the negative prompts), and both passes share.

What is shared and when is the render state's business (:class:`lorastory.generate.consistency.SharedAttention`,
duck-typed here); a call it does not handle (an external attention mask, a batch of one) goes to the
processor it replaced, unchanged.
"""

from __future__ import annotations

from typing import Any

from lorastory.models.families.flux_attention import (
    SharedJointAttnProcessor,
    block_prefixes,
    dit_shared_layers,
    shared_joint_attention,
)

# The blocks that share by default: all of them (Qwen-Image has only dual-stream blocks).
QWEN_IMAGE_SHARED_BLOCKS = ("transformer_blocks.",)
# consistency.blocks names → diffusers' block list: every block is a double (dual-stream) block; no single blocks.
_KINDS = {"double": "transformer_blocks", "double_blocks": "transformer_blocks", "transformer_blocks": "transformer_blocks"}


def _prefixes(transformer: Any, name: str) -> list[str]:
    return block_prefixes(transformer, name, _KINDS, "Qwen-Image",
                          "double (its blocks are all dual-stream) or a name like transformer_blocks.3 or "
                          "transformer_blocks.0-9", {})


def qwen_image_shared_layers(transformer: Any, blocks: list[str]) -> list[str]:
    """The attention layers that share: those of ``blocks`` (``double``, ``double_blocks.3``,
    ``transformer_blocks.0-9``); a UNet's block names (the default ``up``) mean every block."""
    return dit_shared_layers(transformer, blocks, QWEN_IMAGE_SHARED_BLOCKS, _prefixes)


class QwenImageSharedAttnProcessor(SharedJointAttnProcessor):
    """Qwen-Image joint attention whose panels also attend to the reference panel's sampled image tokens."""

    layers = staticmethod(qwen_image_shared_layers)  # which of the transformer's attention layers it replaces

    def __call__(
        self,
        attn: Any,
        hidden_states: Any,
        encoder_hidden_states: Any = None,
        encoder_hidden_states_mask: Any = None,
        attention_mask: Any = None,
        image_rotary_emb: Any = None,
    ) -> Any:
        state = self.state
        alone = hidden_states.shape[0] < 2 and not state.reads_bank  # a batch of one has no reference to read
        if encoder_hidden_states is None or attention_mask is not None or alone or not state.shares(self.name):
            return self.base(attn, hidden_states, encoder_hidden_states, encoder_hidden_states_mask, attention_mask,
                             image_rotary_emb)
        import torch
        from diffusers.models.transformers.transformer_qwenimage import apply_rotary_emb_qwen

        head_dim = attn.inner_dim // attn.heads
        image = [t.unflatten(-1, (-1, head_dim)) for t in (attn.to_q(hidden_states), attn.to_k(hidden_states),
                                                           attn.to_v(hidden_states))]
        words = [t.unflatten(-1, (-1, head_dim)) for t in (attn.add_q_proj(encoder_hidden_states),
                                                           attn.add_k_proj(encoder_hidden_states),
                                                           attn.add_v_proj(encoder_hidden_states))]
        for norms, stream in (((attn.norm_q, attn.norm_k), image), ((attn.norm_added_q, attn.norm_added_k), words)):
            stream[:2] = [t if norm is None else norm(t) for norm, t in zip(norms, stream[:2])]
        if image_rotary_emb is not None:
            image_freqs, text_freqs = image_rotary_emb
            image[:2] = [apply_rotary_emb_qwen(t, image_freqs, use_real=False) for t in image[:2]]
            words[:2] = [apply_rotary_emb_qwen(t, text_freqs, use_real=False) for t in words[:2]]
        query, key, value = (torch.cat([w, i], dim=1) for w, i in zip(words, image))  # joint order: [text, image]
        text = encoder_hidden_states.shape[1]

        shared = shared_joint_attention(state, self.name, self.base, query, key, value, text, encoder_hidden_states_mask)
        out = shared.flatten(2, 3).to(query.dtype)
        text_out, image_out = out[:, :text], out[:, text:]
        image_out = attn.to_out[0](image_out.contiguous())
        if len(attn.to_out) > 1:
            image_out = attn.to_out[1](image_out)  # dropout
        return image_out, attn.to_add_out(text_out.contiguous())
