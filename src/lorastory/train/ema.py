"""An exponential moving average (EMA) of the LoRA weights, kept in fp32 beside the trained ones.

After optimizer step ``s`` (counted from 1), with ``start = ema_start_step``:

- while ``s <= start`` the average is a copy of the weights (it starts from where training is then);
- afterwards, every ``ema_every`` steps, ``ema += (1 - d) * (weights - ema)`` with
  ``d = min(ema_decay, (1 + n) / (10 + n))``, ``n`` the number of updates since the start:
  the warm-up diffusers' ``EMAModel`` and OneTrainer use, so a short run's average is not
  dominated by the first weights. The average spans about ``ema_every / (1 - d)`` steps.

diffusers' ``EMAModel`` was the first choice; it counts its own calls as steps (so ``ema_every``
would shift its start), keeps the average as an unnamed list and carries DeepSpeed branches.
This module is the same arithmetic on a dict named like the checkpoint's LoRA weights, so a
checkpoint holds the average as one more safetensors file and a resume continues it exactly.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from lorastory.models.grad import no_grad

if TYPE_CHECKING:
    import torch


class LoraEma:
    """The fp32 average of named parameters (see the module docstring for the update)."""

    def __init__(self, params: dict[str, torch.Tensor], decay: float, start_step: int = 0, every: int = 1) -> None:
        import torch

        self.decay, self.start_step, self.every = decay, start_step, every
        self.shadow = {name: p.detach().to(torch.float32, copy=True) for name, p in params.items()}

    def decay_at(self, step: int) -> float | None:
        """The decay of the update after optimizer step ``step``; 0.0 copies, ``None``: no update then."""
        since = step - self.start_step
        if since <= 0:
            return 0.0
        if since % self.every:
            return None
        updates = since // self.every
        return min(self.decay, (1 + updates) / (10 + updates))

    @no_grad
    def update(self, params: dict[str, torch.Tensor], step: int) -> None:
        """Move the average toward ``params`` after optimizer step ``step``."""
        decay = self.decay_at(step)
        if decay is None:
            return
        for name, param in params.items():
            if decay == 0.0:
                self.shadow[name].copy_(param.detach())
            else:
                self.shadow[name].lerp_(param.detach().float(), 1.0 - decay)

    def load(self, saved: dict[str, torch.Tensor]) -> None:
        """Take a checkpoint's average back (same names and shapes as this one's)."""
        if set(saved) != set(self.shadow) or any(saved[n].shape != self.shadow[n].shape for n in saved):
            raise ValueError("its moving-average weights (ema_params.safetensors) are missing or do not match "
                             "the LoRA being trained")
        for name, tensor in saved.items():
            self.shadow[name].copy_(tensor)


@contextmanager
def swapped_in(params: dict[str, torch.Tensor], weights: dict[str, torch.Tensor]) -> Iterator[None]:
    """``params`` hold ``weights`` inside the block (e.g. to save the EMA through the LoRA writer), then their own again."""
    import torch

    own = {name: p.detach().clone() for name, p in params.items()}
    try:
        with torch.no_grad():
            for name, param in params.items():
                param.copy_(weights[name])
        yield
    finally:
        with torch.no_grad():
            for name, param in params.items():
                param.copy_(own[name])
