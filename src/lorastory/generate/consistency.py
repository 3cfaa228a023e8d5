"""Consistent characters across a story's panels: shared self-attention and a reference image.

Two training-free mechanisms, switched by a story's ``consistency:`` block
(:class:`ConsistencySettings`; ``mode: none | attention | reference | both``):

**Shared self-attention** (``attention``; the consistent self-attention of StoryDiffusion,
Zhou et al. 2024). While the panels render as one batch, the self-attention (``attn1``) of the
chosen UNet blocks lets each panel attend, besides all of its own tokens, to a random
``sample_rate`` of every other panel's tokens, so identity, hair, clothes and colours drift
towards one shared appearance. It is a diffusers attention processor
(:class:`ConsistentSelfAttnProcessor`) installed with ``unet.set_attn_processor`` for the duration
of one pipeline call (:meth:`SharedAttention.render`) and removed afterwards; the UNet is not
changed. Details:

* CFG: the batch is ``[unconditional panels, conditional panels]``; each half shares only within
  itself, so the unconditional branch never sees conditional tokens or the reverse.
* Steps: it applies where ``step_range[0] <= i / n < step_range[1]`` (UNet call ``i`` of ``n``);
  layout and identity form early, so the default is the first half of the steps.
* Strength: the other panels' tokens get a logit bias of ``log(strength)``, i.e. each counts
  ``strength`` times as much as one of the panel's own; 1 is StoryDiffusion, 0 is plain attention.
* Sampling: one random sample per panel, layer and step, the same for every panel reading it,
  drawn from a CPU ``torch.Generator`` seeded from the batch's first seed: same story, same pixels.
* Exactness: at ``sample_rate: 0``, ``strength: 0``, outside the step range, for a batch of one
  panel and for any call it does not handle, the processor hands over to the processor it
  replaced, unchanged, so the result is the plain pipeline's bit for bit. That includes fused QKV
  (:mod:`lorastory.generate.speed`): fused projections are used as they are. Compiled UNet blocks
  are refused (the per-step switching would recompile them).

Cost: with ``P`` panels in the batch and rate ``r`` each panel's self-attention has
``1 + r (P - 1)`` times the keys, so the attention matmuls (QKᵀ and AV) of the chosen layers cost
that factor more in the active steps; the projections do not grow (keys and values of every token
are computed once and gathered). For the reference story (8 panels, ``r = 0.5``, Kolors up blocks
at 1024²) that is 4.5x on 0.84 of the 13.9 TFLOP of an image-step with CFG, about +21 % per active
step and +10 % for the story when active half the time; ``bench/gpu_consistency.py`` measures it.

Batches: panels share only with the panels of their own batch, so with attention on
:func:`~lorastory.generate.story.generate_story` renders the whole story as one batch by default.
When a story does not fit (a smaller ``batch_size``, or an out-of-memory retry), the first batch is
the anchor: its sampled tokens of every active layer and step are kept (the *bank*, pre-projection
hidden states, ``2 x P x r x N x C`` values per layer and step) and every later batch attends to
them instead of to its own batch-mates, as StoryDiffusion does with its identity images. The bank
for 8 anchor panels of Kolors at 1024² over 25 steps is about 22 GB in bf16 (up blocks), which is
why one batch is preferred.

**DiTs** (Flux, Qwen-Image): a family with a ``shared_attention`` processor shares through it instead
(:mod:`lorastory.models.families.flux_attention`: the batch's first panel is the reference whose
sampled image tokens every other panel's joint attention reads, text tokens untouched, the
reference panel unchanged; the step range counts scheduler steps, so true CFG's two passes a step
share alike; ``blocks`` names double/single blocks, a UNet's names mean all). The settings,
sampling generator, stats and bank are the same objects.

**Reference** (``reference``): one reference image of the character (``reference_image``, or
generated first from ``reference_prompt``, by default the story's character and style) conditions
every panel through the family's IP-Adapter (UNets: IP-Adapter Plus; Flux: XLabs') loaded with
diffusers' loader (:mod:`lorastory.models.ip_adapter`) at scale ``strength x reference_scale``.
``both`` does both (on Flux the shared processor keeps the adapter's attention in the double blocks).
With ``reference_method: in_context`` (a FLUX.1 Kontext or Qwen-Image-Edit model) the family's in-context pipeline reads
the reference picture's latents as more image tokens instead (``Family.in_context_pipeline``).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any


from lorastory.errors import BadImageError, ConfigError
from lorastory.fileio import display_path
from lorastory.generate.attention_bank import RenderStats, TokenBank
from lorastory.generate.consistency_settings import (
    BLOCK_ALIASES,
    ConsistencySettings,
)
from lorastory.images import load_rgb
from lorastory.models.registry import family_of_pipeline

# --------------------------------------------------------------------------- the processor


def select_layers(unet: Any, blocks: list[str]) -> list[str]:
    """Names (as in ``unet.attn_processors``) of the self-attention layers of the UNet transformer ``blocks``."""
    prefixes = [BLOCK_ALIASES.get(block, block if block.endswith(".") else block + ".") for block in blocks]
    names = [name for name in unet.attn_processors
             if name.endswith(".attn1.processor") and ".transformer_blocks." in name and name.startswith(tuple(prefixes))]
    if not names:
        available = sorted({".".join(n.split(".")[:2]) if not n.startswith("mid_block") else "mid_block"
                            for n in unet.attn_processors if n.endswith(".attn1.processor")})
        raise ConfigError(f"consistency.blocks {blocks} match no self-attention layer of this UNet; it has {', '.join(available)}")
    return names


def _project(attn: Any, hidden_states: Any) -> tuple[Any, Any, Any]:
    """Query, key and value of ``hidden_states``, with the fused QKV projection when the layer has one."""
    if getattr(attn, "fused_projections", False) and getattr(attn, "to_qkv", None) is not None:
        return attn.to_qkv(hidden_states).chunk(3, dim=-1)
    return attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)


class ConsistentSelfAttnProcessor:
    """Self-attention that also attends to tokens sampled from the other panels of the batch.

    Installed on ``attn1`` layers by :meth:`SharedAttention.render`, which owns the shared state
    (step, sampler, token bank). Each panel keeps all its own keys and values and gains the other
    panels' sampled ones, weighted by the strength; when inactive (or for any call it does not
    handle: cross-attention, a mask, 4-D input) it calls ``base``, the processor it replaced.
    """

    def __init__(self, name: str, base: Any, state: _RenderState) -> None:
        self.name = name
        self.base = base
        self.state = state

    def __call__(
        self,
        attn: Any,
        hidden_states: Any,
        encoder_hidden_states: Any = None,
        attention_mask: Any = None,
        temb: Any = None,
        *args: Any,
        **kwargs: Any,
    ) -> Any:
        state = self.state
        if (encoder_hidden_states is not None or attention_mask is not None or hidden_states.ndim != 3
                or attn.spatial_norm is not None or not state.shares(self.name)):
            return self.base(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        import torch
        import torch.nn.functional as F

        residual = hidden_states
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query, key, value = _project(attn, hidden_states)
        extra_key, extra_value = state.shared_keys_values(self.name, attn, hidden_states, key, value)
        batch, tokens, inner = query.shape
        head_dim = inner // attn.heads
        key = torch.cat([key, extra_key], dim=1)
        value = torch.cat([value, extra_value], dim=1)
        query, key, value = (t.view(batch, -1, attn.heads, head_dim).transpose(1, 2) for t in (query, key, value))
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        bias = None
        if state.strength < 1:  # the other panels' tokens count `strength` times one of the panel's own
            bias = torch.zeros((1, 1, 1, key.shape[2]), dtype=query.dtype, device=query.device)
            bias[..., tokens:] = math.log(state.strength)
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=bias, dropout_p=0.0, is_causal=False,
                                             scale=attn.scale)
        out = out.transpose(1, 2).reshape(batch, tokens, inner).to(query.dtype)
        out = attn.to_out[1](attn.to_out[0](out))
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


# --------------------------------------------------------------------------- shared state of one render


class _RenderState:
    """The shared state of the processors during one pipeline call: step, sampler, bank."""

    def __init__(self, settings: ConsistencySettings, panels: int, seed: int, bank: TokenBank | None,
                 write_bank: bool, scheduler: Any, by_scheduler_step: bool = False) -> None:
        import torch

        self.rate = settings.sample_rate
        self.strength = settings.strength
        self.start, self.end = settings.step_range
        self.panels = panels
        self.generator = torch.Generator("cpu").manual_seed(seed)
        self.bank = bank  # read from when given; written to when write_bank
        self.write_bank = write_bank
        self.written: dict[str, dict[int, Any]] = {}
        self.scheduler = scheduler
        self.call = -1
        self.calls = 1
        self.active = False
        self.stats = RenderStats(mode="read" if bank else ("write" if write_bank else "share"), panels=panels)
        self._others: dict[tuple[int, str], Any] = {}
        # A DiT's step comes from the scheduler (true CFG calls the denoiser twice a step); its text length per call.
        self.by_scheduler_step = by_scheduler_step
        self.text_tokens = 0

    # -- the step clock, advanced by a forward pre-hook on the UNet
    def next_call(self) -> None:
        self.call += 1
        timesteps = getattr(self.scheduler, "timesteps", None)
        self.calls = max(0 if timesteps is None else len(timesteps), self.call + 1)
        fraction = self.call / self.calls
        if self.by_scheduler_step:  # calls counted per denoiser call (bank keys), the fraction per scheduler step
            steps = 0 if timesteps is None else len(timesteps)
            self.calls = max(steps, 1)
            fraction = (getattr(self.scheduler, "step_index", None) or 0) / self.calls
        self.active = self.rate > 0 and self.strength > 0 and self.start <= fraction < self.end

    @property
    def reads_bank(self) -> bool:
        return self.bank is not None

    def shares(self, name: str) -> bool:
        if not self.active:
            return False
        if self.bank is not None:
            return bool(self.bank.tokens.get(name))
        return self.panels > 1

    def _sample(self, tokens: int, device: Any) -> Any:
        """Indices [panels, m] of the tokens each panel shares, sorted; one draw per layer and step.

        The scores come from the CPU generator (the same draw on every device); the selection runs
        where the tokens are, and a pinned asynchronous copy keeps the GPU from waiting on the host.
        """
        import torch

        count = max(1, round(self.rate * tokens))
        scores = torch.rand((self.panels, tokens), generator=self.generator)
        if getattr(device, "type", str(device)) == "cuda":
            scores = scores.pin_memory().to(device, non_blocking=True)
        else:
            scores = scores.to(device)
        return scores.topk(count, dim=1).indices.sort(dim=1).values

    def _others_index(self, device: Any) -> Any:
        """[panels, panels - 1]: for each panel, the other panels."""
        import torch

        key = (self.panels, str(device))
        if key not in self._others:
            rows = [[j for j in range(self.panels) if j != i] for i in range(self.panels)]
            self._others[key] = torch.tensor(rows, dtype=torch.long, device=device)
        return self._others[key]

    def _halves(self, batch: int) -> int:
        if batch % self.panels:
            raise ValueError(f"a batch of {batch} is not a whole number of CFG halves of {self.panels} panels")
        return batch // self.panels

    def shared_keys_values(self, name: str, attn: Any, hidden_states: Any, key: Any, value: Any) -> tuple[Any, Any]:
        """Extra keys and values [batch, extra, inner] for every panel (halves kept apart)."""
        import torch

        batch, tokens, inner = key.shape
        halves = self._halves(batch)
        panels = self.panels
        if self.bank is not None:
            stored = self.bank.entry(name, self.call, self.calls)  # [halves of the anchor, anchor tokens, channels]
            if stored.shape[0] != halves:  # CFG on in one batch and off in the other: use the conditional half
                stored = stored[-1:].expand(halves, -1, -1)
            extra_key, extra_value = attn.to_k(stored), attn.to_v(stored)
            extra = stored.shape[1]
            extra_key = extra_key[:, None].expand(halves, panels, extra, inner).reshape(batch, extra, inner)
            extra_value = extra_value[:, None].expand(halves, panels, extra, inner).reshape(batch, extra, inner)
        else:
            index = self._sample(tokens, key.device)  # [panels, m]
            rows = torch.arange(panels, device=key.device)[:, None]
            others = self._others_index(key.device)
            count = index.shape[1]

            def gather(t: Any) -> Any:  # [batch, tokens, d] -> each panel's others' samples [batch, (panels-1) m, d]
                sampled = t.view(halves, panels, tokens, -1)[:, rows, index]  # [halves, panels, m, d]
                return sampled[:, others].reshape(batch, (panels - 1) * count, -1)

            extra_key, extra_value = gather(key), gather(value)
            extra = (panels - 1) * count
            if self.write_bank:
                channels = hidden_states.shape[-1]
                kept = hidden_states.view(halves, panels, tokens, channels)[:, rows, index].reshape(halves, panels * count, channels)
                self.written.setdefault(name, {})[self.call] = kept.detach()
                self.stats.bank_bytes += kept.numel() * kept.element_size()
        self.stats.shared_calls += 1
        if name not in self.stats._measured:
            self.stats._measured.add(name)
            self.stats.plain_attention_flops += 4.0 * tokens * tokens * inner * halves
            self.stats.shared_attention_flops += 4.0 * tokens * (tokens + extra) * inner * halves
        return extra_key, extra_value


    def reference_keys_values(self, name: str, keys: Any, values: Any, tokens: int) -> tuple[Any, Any, int]:
        """A DiT's shared keys and values [m, heads, head_dim]: a sample of the reference's image tokens.

        ``keys``/``values``: the batch's image tokens [panels, n, heads, head_dim]; ``tokens``: the whole joint
        sequence's length (for the FLOP count). The reference is the batch's first panel (returned ``first`` 1:
        the others read it) or, with a bank, the anchor batch's (``first`` 0: every panel reads it).
        """
        import torch

        if self.bank is not None:
            stored = self.bank.entry(name, self.call, self.calls)  # [2, m, heads, head_dim]
            extra_key, extra_value, first = stored[0], stored[1], 0
        else:
            count = max(1, round(self.rate * keys.shape[1]))
            scores = torch.rand(keys.shape[1], generator=self.generator)
            index = scores.topk(count).indices.sort().values.to(keys.device)
            extra_key, extra_value, first = keys[0, index], values[0, index], 1
            if self.write_bank:
                kept = torch.stack([extra_key, extra_value]).detach()
                self.written.setdefault(name, {})[self.call] = kept
                self.stats.bank_bytes += kept.numel() * kept.element_size()
        self.stats.shared_calls += 1
        if name not in self.stats._measured:
            self.stats._measured.add(name)
            inner, panels, extra = keys.shape[2] * keys.shape[3], keys.shape[0], extra_key.shape[0]
            self.stats.plain_attention_flops += 4.0 * tokens * tokens * inner * panels
            self.stats.shared_attention_flops += 4.0 * tokens * (tokens * panels + extra * (panels - first)) * inner
        return extra_key, extra_value, first


class SharedAttention:
    """Consistent self-attention for one story: installs the processors per render, keeps the bank between batches.

    Use one per story; :meth:`render` wraps each pipeline call::

        shared = SharedAttention(settings)
        with shared.render(pipe, panels=len(batch), seed=first_seed, more_batches=False):
            pipe(prompt=[...], ...)
    """

    def __init__(self, settings: ConsistencySettings) -> None:
        self.settings = settings
        self.bank: TokenBank | None = None
        self.renders: list[RenderStats] = []

    @contextlib.contextmanager
    def render(self, pipe: Any, panels: int, seed: int, more_batches: bool = False) -> Iterator[RenderStats]:
        """Install the processors on the pipeline's UNet for one call rendering ``panels`` panels; restore them after.

        The first render that has ``more_batches`` after it writes the bank; renders after a
        written bank read it. A render that fails leaves no bank behind (a retry writes it again).
        """
        family = family_of_pipeline(pipe)
        processor_class: Any = ConsistentSelfAttnProcessor
        if family.shared_attention is not None:  # a DiT: its family's processor for its joint attention
            processor_class = family.resolve(family.shared_attention)
        elif family.denoiser != "unet":  # the layer names and processors here are a UNet's
            raise ConfigError(f"consistent self-attention needs a UNet; the {family.name} family has a {family.denoiser}")
        unet = family.denoiser_of(pipe)
        _check_not_compiled(unet)
        if processor_class is ConsistentSelfAttnProcessor:
            names = select_layers(unet, self.settings.blocks)
        else:
            names = processor_class.layers(unet, self.settings.blocks)
        original = unet.attn_processors
        write = self.bank is None and more_batches
        state = _RenderState(self.settings, panels, seed, self.bank, write, getattr(pipe, "scheduler", None),
                             by_scheduler_step=processor_class is not ConsistentSelfAttnProcessor)
        state.stats.layers = len(names)
        processors = dict(original)
        for name in names:
            processors[name] = processor_class(name, original[name], state)
        hook = unet.register_forward_pre_hook(lambda _module, _args: state.next_call())
        unet.set_attn_processor(processors)
        try:
            yield state.stats
        finally:
            hook.remove()
            unet.set_attn_processor(dict(original))  # a copy: diffusers empties the dict it is given
        if write and state.written:
            self.bank = TokenBank(state.written, state.calls)
        self.renders.append(state.stats)

    def summary(self) -> dict[str, Any]:
        """For the manifest: what each render did."""
        return {"renders": [stats.as_dict() for stats in self.renders],
                "bank_mb": round(sum(r.bank_bytes for r in self.renders) / 2**20, 2)}


def _check_not_compiled(unet: Any) -> None:
    compiled = sum(1 for m in unet.modules() if getattr(m, "_compiled_call_impl", None) is not None)
    if compiled:
        raise ConfigError(
            f"consistent attention cannot run inside compiled UNet blocks ({compiled} compiled); render without "
            "compile (generate_story(compile=False)) or undo it with lorastory.models.speed.uncompile_regions(pipe.unet)"
        )


@contextlib.contextmanager
def shared_attention(pipe: Any, settings: ConsistencySettings, panels: int, seed: int = 0) -> Iterator[RenderStats]:
    """Shared self-attention for one pipeline call rendering ``panels`` panels (no bank): the one-batch case."""
    with SharedAttention(settings).render(pipe, panels, seed) as stats:
        yield stats


# --------------------------------------------------------------------------- the reference image


def load_reference_image(path: str) -> Any:
    """The user's reference image as RGB; a missing, unreadable or non-image file (a FIFO, a folder, a
    truncated or undecodable picture) is one :class:`ConfigError` naming it, without blocking."""
    from pathlib import Path

    file = Path(path).expanduser()
    if not file.exists() and not file.is_symlink():
        raise ConfigError(f"consistency.reference_image {display_path(path)}: no such file")
    try:
        return load_rgb(file, max_pixels=64_000_000)
    except BadImageError as err:
        raise ConfigError(f"consistency.reference_image {display_path(path)}: {err}") from None
