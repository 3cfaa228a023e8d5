"""What one shared-attention render did, and the anchor batch's token bank (:mod:`lorastory.generate.consistency`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class RenderStats:
    """What one :meth:`SharedAttention.render` did: filled in while the pipeline runs."""

    mode: str = "share"
    layers: int = 0
    panels: int = 0
    shared_calls: int = 0
    plain_attention_flops: float = 0.0  # per image and step, over the layers' first shared call each
    shared_attention_flops: float = 0.0
    bank_bytes: int = 0
    _measured: set[str] = field(default_factory=set, repr=False)

    @property
    def attention_factor(self) -> float | None:
        """Shared / plain FLOPs of the chosen layers' attention matmuls in an active step."""
        if not self.plain_attention_flops:
            return None
        return self.shared_attention_flops / self.plain_attention_flops

    def as_dict(self) -> dict[str, Any]:
        factor = self.attention_factor
        return {"mode": self.mode, "layers": self.layers, "panels": self.panels, "shared_calls": self.shared_calls,
                "attention_flops_factor": None if factor is None else round(factor, 3),
                "bank_mb": round(self.bank_bytes / 2**20, 2)}


@dataclass
class TokenBank:
    """The anchor batch's sampled tokens (pre-projection hidden states), by layer and UNet call."""

    tokens: dict[str, dict[int, Any]]
    calls: int  # UNet calls of the anchor render

    @property
    def bytes(self) -> int:
        return sum(t.numel() * t.element_size() for layer in self.tokens.values() for t in layer.values())

    def entry(self, name: str, call: int, calls: int) -> Any:
        """The tokens of layer ``name`` at call ``call`` of ``calls`` (the nearest recorded call at the same fraction)."""
        entries = self.tokens[name]
        if call in entries and calls == self.calls:
            return entries[call]
        target = call * self.calls / calls
        return entries[min(entries, key=lambda c: abs(c - target))]
