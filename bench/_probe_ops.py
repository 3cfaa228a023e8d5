"""The single-op cases of bench/flux_backward_probe.py: RMSNorm, LayerNorm and SDPA backward at Flux's shapes.

Each case runs its layouts one after the other and returns, per layout, the largest difference of the input's
gradient from a float32 reference (decomposed formula or the math backend): a kernel that reads the wrong
memory without faulting shows up there. Shapes are Flux.1 dev's at 1024² (4096 image tokens, 512 text tokens,
24 heads of 128) or, with ``tiny``, a few tokens on the CPU.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from lorastory.models.speed import sdpa_allowed


@dataclass(frozen=True)
class Shapes:
    """Flux's attention and stream sizes at one resolution."""

    txt: int
    img: int
    heads: int
    head_dim: int

    @property
    def dim(self) -> int:
        return self.heads * self.head_dim

    @property
    def joint(self) -> int:
        return self.txt + self.img


FULL_SHAPES = Shapes(txt=512, img=4096, heads=24, head_dim=128)  # 1024²: 64 x 64 packed latent tokens
TINY_SHAPES = Shapes(txt=16, img=16, heads=2, head_dim=8)


@dataclass(frozen=True)
class Setting:
    """Where and how a case runs (the probe's command line)."""

    tiny: bool
    autocast: bool = False

    @property
    def device(self) -> str:
        return "cpu" if self.tiny else "cuda"

    @property
    def shapes(self) -> Shapes:
        return TINY_SHAPES if self.tiny else FULL_SHAPES

    def autocast_ctx(self, on: bool | None = None) -> Any:
        enabled = self.autocast if on is None else on
        return torch.autocast(self.device, dtype=torch.bfloat16, enabled=enabled)


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _randn(*shape: int, device: str) -> torch.Tensor:
    return torch.randn(*shape, device=device, dtype=torch.bfloat16)


def head_layouts(s: Shapes, device: str) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """(input, incoming gradient) pairs of (1, S, H, D) tensors in the layouts Flux's q/k norms meet."""
    h, d = s.heads, s.head_dim

    def transposed(n: int) -> torch.Tensor:  # SDPA's (B, H, S, D) gradient seen back in (B, S, H, D)
        return _randn(1, h, n, d, device=device).transpose(1, 2)

    def plain(n: int) -> torch.Tensor:
        return _randn(1, n, h, d, device=device)

    return {
        "image contiguous": (plain(s.img), plain(s.img)),
        "text contiguous": (plain(s.txt), plain(s.txt)),
        "joint contiguous": (plain(s.joint), plain(s.joint)),
        "image qkv-chunk input": (_randn(1, s.img, 3 * s.dim, device=device).chunk(3, dim=-1)[1].unflatten(-1, (h, d)),
                                  plain(s.img)),
        "image grad transposed": (plain(s.img), transposed(s.img)),
        "joint grad transposed": (plain(s.joint), transposed(s.joint)),
        "image grad cat-slice transposed": (plain(s.img), transposed(s.joint)[:, s.txt:]),
        "text grad cat-slice transposed": (plain(s.txt), transposed(s.joint)[:, :s.txt]),
        "image grad cat-slice": (plain(s.img), plain(s.joint)[:, s.txt:]),
        "image input cat-slice": (plain(s.joint)[:, s.txt:], plain(s.img)),
    }


def rms_reference(x: torch.Tensor, weight: torch.Tensor | None, eps: float) -> torch.Tensor:
    """RMSNorm written out: what ``full-decomposed-rmsnorm`` swaps in, in the input's precision."""
    xf = x.float()
    out = (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)
    return out * weight if weight is not None else out


def _grad_error(run: Callable[[torch.Tensor], torch.Tensor], reference: Callable[[torch.Tensor], torch.Tensor],
                x: torch.Tensor, g: torch.Tensor) -> dict[str, float]:
    """Backward of ``run`` with incoming gradient ``g`` (kept in its layout), against ``reference`` in float32."""
    leaf = x.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(run(leaf), leaf, g)
    sync()
    ref_leaf = x.detach().float().requires_grad_(True)
    (ref,) = torch.autograd.grad(reference(ref_leaf), ref_leaf, g.float())
    return {"max_err": round((grad.float() - ref).abs().max().item(), 5), "ref_max": round(ref.abs().max().item(), 3)}


def rmsnorm_case(setting: Setting, layouts: str, autocast: bool = False) -> dict[str, Any]:
    """torch.nn.RMSNorm(head_dim, eps=1e-6, bf16 weight) forward and backward, frozen and trainable weight."""
    s, device = setting.shapes, setting.device
    torch.manual_seed(0)
    pairs = head_layouts(s, device)
    names = [n for n in pairs if ("contiguous" in n) == (layouts == "contiguous")] if layouts != "all" else list(pairs)
    results: dict[str, Any] = {}
    for trainable in (False, True):
        norm = torch.nn.RMSNorm(s.head_dim, eps=1e-6, device=device, dtype=torch.bfloat16).requires_grad_(trainable)
        with torch.no_grad():
            norm.weight.uniform_(0.5, 1.5)
        weight = norm.weight.detach().float()
        for name in names:
            label = f"{name}, weight {'trainable' if trainable else 'frozen'}"
            print(f"probe: layout {label}", flush=True)
            x, g = pairs[name]
            with setting.autocast_ctx(autocast or None):  # rmsnorm-autocast: always; the others: as --autocast
                results[label] = _grad_error(norm, lambda t: rms_reference(t, weight, 1e-6), x, g)
    return {"layouts": results}


def layernorm_case(setting: Setting) -> dict[str, Any]:
    """F.layer_norm without affine (AdaLayerNormZero's and norm2's) over the stream width, strided gradients too."""
    s, device = setting.shapes, setting.device
    torch.manual_seed(0)

    def run(t: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.layer_norm(t, (s.dim,), eps=1e-6)

    def reference(t: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.layer_norm(t.float(), (s.dim,), eps=1e-6)

    plain = {n: _randn(1, n, s.dim, device=device) for n in (s.img, s.joint)}
    cases = {
        "image contiguous": (plain[s.img], _randn(1, s.img, s.dim, device=device)),
        "joint contiguous": (plain[s.joint], _randn(1, s.joint, s.dim, device=device)),
        "image grad cat-slice": (plain[s.img], _randn(1, s.joint, s.dim, device=device)[:, s.txt:]),
        "image grad transposed": (plain[s.img], _randn(1, s.dim, s.img, device=device).transpose(1, 2)),
        "image input cat-slice": (_randn(1, s.joint, s.dim, device=device)[:, s.txt:], plain[s.img]),
    }
    results = {}
    for name, (x, g) in cases.items():
        print(f"probe: layout {name}", flush=True)
        with setting.autocast_ctx():
            results[name] = _grad_error(run, reference, x, g)
    return {"layouts": results}


def _backend(name: str) -> Any:
    return sdpa_allowed([name])  # that backend alone


def _attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """diffusers' native dispatch: (B, S, H, D) in, permuted to (B, H, S, D) for SDPA, permuted back and flattened."""
    q, k, v = (t.permute(0, 2, 1, 3) for t in (q, k, v))
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    return out.permute(0, 2, 1, 3).flatten(2, 3)


def sdpa_case(setting: Setting, backend: str) -> dict[str, Any]:
    """SDPA backward pinned to ``backend`` on the joint sequence, with the permuted layouts diffusers passes."""
    s, device = setting.shapes, setting.device
    if device == "cpu" and backend in ("efficient", "cudnn"):
        return {"skipped": f"the {backend} backend is CUDA-only"}
    torch.manual_seed(0)
    q, k, v = (_randn(1, s.joint, s.heads, s.head_dim, device=device).requires_grad_(True) for _ in range(3))
    g = _randn(1, s.joint, s.dim, device=device)
    print(f"probe: sdpa {backend} forward+backward", flush=True)
    with _backend(backend), setting.autocast_ctx():
        grads = torch.autograd.grad(_attention(q, k, v), (q, k, v), g)
    sync()
    print("probe: float32 math reference", flush=True)
    refs = [t.detach().float().requires_grad_(True) for t in (q, k, v)]
    with _backend("math"):
        ref_grads = torch.autograd.grad(_attention(*refs), refs, g.float())
    errors = {name: round((a.float() - b).abs().max().item(), 5) for name, a, b in zip("qkv", grads, ref_grads, strict=True)}
    return {"max_err": errors, "ref_max": round(max(b.abs().max().item() for b in ref_grads), 3)}
