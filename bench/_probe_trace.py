"""The aten op that raised, with its tensors' shapes and strides: independent of anomaly mode's report.

A ``TorchDispatchMode`` sees every op below autograd, the backward's too (the autograd threads inherit the
mode, as FlopCounterMode relies on). With ``CUDA_LAUNCH_BLOCKING=1`` the faulting kernel's launch raises inside
its op, so the first op that raises names the kernel's caller exactly, e.g.
``aten._fused_rms_norm_backward.default(bf16[1, 4096, 24, 128] stride (..) ...)``. Only op names are kept
on the way (the last few, for context): describing arguments costs time and happens only on failure.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

DTYPES = {torch.bfloat16: "bf16", torch.float16: "f16", torch.float32: "f32", torch.float64: "f64"}


def describe_tensor(t: torch.Tensor) -> str:
    text = f"{DTYPES.get(t.dtype, str(t.dtype))}{list(t.shape)}"
    if not t.is_contiguous():
        text += f" stride {tuple(t.stride())}"
    if t.storage_offset():
        text += f" offset {t.storage_offset()}"
    return text


def describe_arg(arg: Any) -> str:
    if isinstance(arg, torch.Tensor):
        return describe_tensor(arg)
    if isinstance(arg, (list, tuple)):
        return "[" + ", ".join(describe_arg(a) for a in arg) + "]"
    return repr(arg)[:40]


class OpTrace(TorchDispatchMode):
    """Remembers the last ``keep`` op names and the first op that raised, described."""

    def __init__(self, keep: int = 8) -> None:
        super().__init__()
        self.recent: deque[str] = deque(maxlen=keep)
        self.failed: str | None = None

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None) -> Any:
        kwargs = kwargs or {}
        self.recent.append(str(func))
        try:
            return func(*args, **kwargs)
        except BaseException:
            if self.failed is None:
                described = [describe_arg(a) for a in args] + [f"{k}={describe_arg(v)}" for k, v in kwargs.items()]
                self.failed = f"{func}({', '.join(described)})"
            raise

    def report(self) -> dict[str, Any]:
        return {"failing_op": self.failed, "recent_ops": list(self.recent)}
