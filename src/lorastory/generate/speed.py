"""Make a loaded pipeline render faster on a GPU, keeping its output within rounding of the eager path.

:func:`prepare_for_speed` applies, in order: LoRA fused into the weights (the LoRA layers stay,
merged, so a second :func:`~lorastory.models.lora.apply_lora` of the same adapter is still refused),
fused QKV projections, and optionally regional compilation of the UNet's transformer and ResNet
blocks (and the VAE's ResNet blocks). A DiT family says what reaches its transformer
(:attr:`~lorastory.models.registry.Family.speed_qkv`, ``compile_repeated``): Flux fuses its joint
attention's QKV and compiles its double and single blocks, Qwen-Image compiles its blocks only. channels_last is there but off by default (the opt-in fp8 mode
the benchmarks measure lives in ``bench/levers.py``).
Panels and CFG are batched by :func:`~lorastory.generate.story.generate_story` itself.

Measured on an H100 (``bench/RESULTS.md``, 8 panels at 1024², 50 steps): batching 1.6-1.7x, an unfused
LoRA costs 19 % per step and fusing removes it, compiling the transformer and ResNet blocks 1.18x,
the VAE's ResNet blocks 1.7x on the decode; fused QKV is neutral, channels_last 7 % slower in eager
and no faster compiled, and torch's default attention backend (cuDNN on an H100) is the fastest.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from lorastory.errors import ConfigError
from lorastory.models.fp8 import describe as describe_fp8
from lorastory.models.fp8 import check_selection, family_selection, fp8_layer_names, quantize_base
from lorastory.models.registry import family_of_pipeline
from lorastory.models.speed import (
    TRANSFORMER_BLOCKS, UNET_COMPILE_STEP_SAVING, UNET_REGIONS, CompileChoice, compile_cache_has_kernels,
    compile_regions, repeated_blocks, sdpa_backend, to_channels_last,
)

# What ``--compile auto`` weighs (bench/RESULTS.md). `lorastory generate` with Kolors' UNet and VAE at 1024² on an
# H200 (2026-12-02): compiling their repeated blocks took 57 s with an empty kernel cache (33 s inside the
# denoising, 24 s in the first decode) and still about 6 s with the cache filled, since a new process traces every
# block again (5.0 s + 1.1 s). A compiled decode saves about 35 ms a picture per megapixel (0.64 -> 0.36 s for 8,
# H100); what a compiled image-step saves is the family's (:attr:`~lorastory.models.registry.Family.compile_step_saving`).
COMPILE_SECONDS = {"cold": 57.0, "warm": 6.1}
DECODE_SAVING = 0.035
# GPU memory one panel needs while it renders, per megapixel, CFG included: the Kolors UNet's bf16
# activations at batch 16 (8 panels x CFG) peaked 17 GB above the weights at 1024² (bench/RESULTS.md),
# about 2.1 GB a panel; the VAE decodes after the UNet is done, in the same room.
PANEL_BYTES_PER_MEGAPIXEL = 2.6e9
MAX_AUTO_BATCH = 8


@dataclass
class SpeedReport:
    """What :func:`prepare_for_speed` did to a pipeline."""

    levers: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    compiled_modules: int = 0
    sdpa: str | None = None

    def __str__(self) -> str:
        parts = [", ".join(self.levers) or "nothing"]
        parts += [f"{name} skipped ({why})" for name, why in self.skipped.items()]
        return "; ".join(parts)


def compile_choice(device: Any, image_steps: int, pictures: int, *, megapixels: float = 1.0,
                   step_saving: float = UNET_COMPILE_STEP_SAVING, cache_warm: bool | None = None,
                   compiled: bool = False) -> CompileChoice:
    """``--compile auto``: compile on CUDA when the seconds the run saves beat the compile's warm-up.

    ``image_steps`` (panels x steps) save ``step_saving`` seconds each per megapixel, ``pictures`` decodes
    :data:`DECODE_SAVING` each; the warm-up is :data:`COMPILE_SECONDS` for a kernel cache that is empty or filled
    (``cache_warm``, default: whether the cache folder holds anything). A pipeline ``compiled`` earlier in
    this process (the web app's) costs nothing more: it stays compiled.
    """
    if getattr(device, "type", str(device)) != "cuda":
        return CompileChoice("off", "not on a CUDA GPU")
    if compiled:
        return CompileChoice("on", "auto: compiled earlier in this process")
    warm = compile_cache_has_kernels() if cache_warm is None else cache_warm
    cost = COMPILE_SECONDS["warm" if warm else "cold"]
    per_image_step = (step_saving + DECODE_SAVING * pictures / max(1, image_steps)) * megapixels
    saving = per_image_step * image_steps
    pays_from = math.ceil(cost / per_image_step)
    summary = (f"auto: {image_steps} image-steps save about {saving:.0f} s for about {cost:.0f} s of compiling "
               f"(kernel cache {'warm' if warm else 'cold'}); it pays from about {pays_from} image-steps")
    if saving < cost:
        return CompileChoice("off", f"{summary}; --compile on compiles anyway")
    return CompileChoice("on", summary)


def story_compile_choice(pipe: Any, family: Any, jobs: list[Any], target: Any) -> CompileChoice:
    """``--compile auto`` for a story's panel jobs: their image-steps and pictures, their size, the family's saving
    per step; a pipeline compiled earlier in this process stays compiled."""
    report = getattr(pipe, "_lorastory_speed", None)
    megapixels = sum(job.width * job.height for job in jobs) / len(jobs) / 2**20
    return compile_choice(target, sum(job.steps for job in jobs), len(jobs), megapixels=megapixels,
                          step_saving=family.compile_step_saving, compiled=bool(report and report.compiled_modules))


def auto_batch_size(device: Any, width: int, height: int, panels: int) -> int:
    """Panels per batch: as many as the free GPU memory holds (up to 8), 2 on the CPU.

    An estimate with a quarter to spare; ``generate_story`` still halves the batch if the GPU runs out.
    """
    import torch

    if getattr(device, "type", str(device)) != "cuda":
        return max(1, min(2, panels))
    free, _ = torch.cuda.mem_get_info(device)
    per_panel = PANEL_BYTES_PER_MEGAPIXEL * width * height / 2**20
    return max(1, min(MAX_AUTO_BATCH, panels, int(free // per_panel)))


def _peft_layers(model: Any) -> list[Any]:
    if model is None:
        return []
    try:
        from peft.tuners.tuners_utils import BaseTunerLayer
    except ImportError:  # no peft, no LoRA layers
        return []
    return [m for m in model.modules() if isinstance(m, BaseTunerLayer)]


def unmerged_lora(model: Any) -> bool:
    """True when some LoRA layer of ``model`` computes its adapter on the fly (not merged into the weight)."""
    return any(layer.active_adapters and not layer.merged for layer in _peft_layers(model))


def fuse_lora_weights(pipe: Any) -> bool:
    """Merge every active LoRA (at its current scale) into the base weights; True if there was one to merge."""
    # Only those with an unmerged LoRA (a text encoder's merged by --offload's plan would warn "already merged").
    components = [c for c in getattr(pipe, "_lora_loadable_modules", ()) if unmerged_lora(getattr(pipe, c, None))]
    if not components:
        return False
    pipe.fuse_lora(components=components, lora_scale=1.0)
    return True


# Fused projection -> the separate projections its rows come from (diffusers' fuse_projections).
_FUSED_PARTS = (("to_qkv", ("to_q", "to_k", "to_v")), ("to_kv", ("to_k", "to_v")),
                ("to_added_qkv", ("add_q_proj", "add_k_proj", "add_v_proj")))


def fuse_qkv(model: Any, *, rebuild: bool = False) -> bool:
    """Fuse each attention's Q, K, V (K, V for cross-attention) projections into one matmul.

    ``rebuild`` builds them again from the current weights (a LoRA fused since).
    """
    if model is None or not hasattr(model, "fuse_qkv_projections"):
        return False
    if getattr(model, "_lorastory_qkv_fused", False) and not rebuild:
        return True
    if rebuild:  # a DiT's attention (diffusers' AttentionModuleMixin) keeps its fused projection until unfused
        for module in model.modules():
            if getattr(module, "fused_projections", False) and hasattr(module, "unfuse_projections"):
                module.unfuse_projections()
    model.fuse_qkv_projections()
    share_fused_weights(model)
    model._lorastory_qkv_fused = True
    return True


def _fused_groups(model: Any) -> Iterator[tuple[str, Any, list[tuple[str, Any]]]]:
    """Each fused projection of ``model`` (its name, the Linear) with its separate parts (name, Linear)."""
    for module_name, module in model.named_modules():
        if not getattr(module, "fused_projections", False):
            continue
        prefix = f"{module_name}." if module_name else ""
        for fused_name, part_names in _FUSED_PARTS:
            fused = getattr(module, fused_name, None)
            parts = []
            for name in part_names:
                layer = getattr(module, name, None)
                inner = getattr(layer, "base_layer", None)  # a peft layer's frozen Linear
                parts.append((f"{prefix}{name}.base_layer", inner) if inner is not None else (prefix + name, layer))
            if fused is not None and all(part is not None for _, part in parts):
                yield prefix + fused_name, fused, parts


def quantize_denoiser(denoiser: Any, base_dtype: str, family: Any, device: Any = None, offloaded: bool = False) -> int:
    """Convert the denoiser's chosen Linear layers (:func:`~lorastory.models.fp8.quantize_base`); return how many.

    A fused q/k/v is converted first, one at a time, and its separate parts then point at its fp8 rows: converted
    too, they would be a second fp8 copy (2.15 B parameters on FLUX.1-dev; 140 more layers, about 0.65 GB, on
    Kolors' UNet), and moved to ``device`` on their own each would become a bf16 copy before it could be shared.
    """
    selection = family_selection(family)
    chosen = set(fp8_layer_names(denoiser, **selection))
    count, done = 0, set()
    for name, fused, parts in _fused_groups(denoiser):
        done.update(part_name for part_name, _ in parts)
        if name in chosen:  # converted, then shared at once: the bf16 rows are freed as the walk goes
            count += quantize_base(fused, base_dtype, whole=True, device=device, offloaded=offloaded)
            _share_rows(fused, [part for _, part in parts])
            done.add(name)
    return count + quantize_base(denoiser, base_dtype, device=device, offloaded=offloaded, exclude=done, **selection)


def share_fused_weights(model: Any) -> int:
    """Point each separate projection's weight and bias at its rows of the fused one; return how many fused layers.

    diffusers keeps both copies (the separate layers stay for LoRA loading and unfusing): 2.15 B parameters twice,
    4.3 GB in bf16, on FLUX.1-dev. As views they cost nothing; a LoRA merged later into a separate layer then
    also reaches the fused one, and :func:`prepare_for_speed` rebuilds the fused layers anyway. A fused weight
    stored in fp8 (torchao's ``Float8Tensor``, sliced by rows with its per-row scales) is shared the same way.
    """
    count = 0
    for _, fused, parts in _fused_groups(model):
        _share_rows(fused, [part for _, part in parts])
        count += 1
    return count


def _share_rows(fused: Any, parts: list[Any]) -> None:
    import torch

    plain = type(fused.weight) in (torch.Tensor, torch.nn.Parameter)
    start = 0
    for part in parts:  # fused rows are the parts' rows, in order (diffusers' torch.cat)
        rows = part.weight.shape[0]
        if plain:
            part.weight.data = fused.weight.data[start:start + rows]
        else:  # a tensor subclass cannot be set as .data of a plain Parameter
            part.weight = torch.nn.Parameter(fused.weight[start:start + rows], requires_grad=False)
        if part.bias is not None and fused.bias is not None:
            part.bias.data = fused.bias.data[start:start + rows]
        start += rows


def _denoiser_and_family(pipe: Any) -> tuple[Any, Any]:
    """The pipeline's denoiser (UNet or transformer) and its family (None for a stand-in: its ``unet``)."""
    try:
        family = family_of_pipeline(pipe)
    except ConfigError:
        return getattr(pipe, "unet", None), None
    return family.denoiser_of(pipe), family


def prepare_for_speed(
    pipe: Any,
    *,
    fuse_lora: bool = True,
    qkv: bool = True,
    channels_last: bool = False,
    compile: bool = False,
    compile_classes: tuple[str, ...] = UNET_REGIONS,
    compile_vae: bool = True,
    sdpa: str | None = None,
    base_dtype: str = "default",
    device: Any = None,
    offload: bool = False,
    text_encoders: bool = True,
) -> SpeedReport:
    """Apply the speed levers to ``pipe`` in place and report which ones took.

    Safe to call again on the same pipeline: done levers are not redone, and a LoRA loaded since the
    last call is fused and the QKV projections rebuilt from the new weights (so call this again after
    loading a LoRA into a prepared pipeline: until then, fused QKV ignores it). Compiling needs CUDA
    in practice (the first call of each block shape compiles; later runs read the kernel cache,
    see :func:`~lorastory.models.speed.use_compile_cache`). ``sdpa`` names the attention backend
    to prefer inside :func:`speed_context`. ``base_dtype`` (``fp8`` or ``fp8-weights``;
    :mod:`lorastory.models.fp8`) converts the denoiser's token-wise Linear layers (those of the blocks its
    family names: a UNet's transformer blocks, a DiT's blocks) once the LoRA and QKV
    are fused into them, before compiling; each converted layer moves to ``device`` first.

    ``offload``: the pipeline stays on the CPU for model offloading (``enable_model_cpu_offload``), so
    nothing here may leave a model on the GPU: each layer converts there and comes back (one layer and its
    temporaries at a time, under 4 GB for ChatGLM3-6B's largest), and QKV is not fused, since every move to
    the GPU would copy the separate projections apart from the fused one (views do not survive a move: a
    second copy of the attention weights there). ``text_encoders`` False leaves the text encoders as they are
    (``--offload``'s plan stores them itself and encodes every prompt before the denoiser goes on the GPU).
    """
    report: SpeedReport = getattr(pipe, "_lorastory_speed", None) or SpeedReport()
    denoiser, family = _denoiser_and_family(pipe)
    # The family says which levers reach its denoiser (a stand-in pipeline: a UNet's).
    qkv_model = denoiser if family is None or family.speed_qkv else None
    if family is not None and family.compile_repeated:
        compile_classes = repeated_blocks(denoiser)
    vae = getattr(pipe, "vae", None)
    relayout = False  # modules or weight layouts changed under already compiled blocks: rebuild their graphs
    if fuse_lora and fuse_lora_weights(pipe):
        if "LoRA fused" not in report.levers:
            report.levers.append("LoRA fused")
        if "fused QKV" in report.levers:  # a LoRA added after QKV fusion: rebuild the fused projections from the new weights
            for model in (qkv_model, vae):
                fuse_qkv(model, rebuild=True)
            relayout = True
    if qkv and "fused QKV" not in report.levers:
        if offload:
            report.skipped["fused QKV"] = "offloaded: each move to the GPU would copy the projections twice"
        elif unmerged_lora(denoiser):
            report.skipped["fused QKV"] = "a LoRA is loaded unfused"
        else:
            try:
                if [fuse_qkv(model) for model in (qkv_model, vae)].count(True):  # a list: fuse both
                    report.levers.append("fused QKV")
            except ValueError as err:  # e.g. added KV projections (IP-Adapter)
                report.skipped["fused QKV"] = str(err).splitlines()[0]
    if channels_last and "channels_last" not in report.levers:
        to_channels_last(denoiser, vae)
        report.levers.append("channels_last")
        relayout = True
    if relayout and report.compiled_modules:
        import torch

        # Compiled graphs assume the weights' old layout and modules (seen failing on an H100 after a
        # layout change); recompile (the kernel cache makes the unchanged ones quick).
        torch._dynamo.reset()
    if base_dtype != "default" and denoiser is not None and "fp8" not in " ".join(report.levers):
        # The family names the denoiser blocks whose Linear layers convert (a DiT's as well as a UNet's).
        count = quantize_denoiser(denoiser, base_dtype, family, device, offload)
        report.levers.append(describe_fp8(base_dtype, check_selection(count, base_dtype, family)))
        # The text encoders run once per batch: stored in fp8 (Kolors' ChatGLM3-6B: 12.5 -> 6.6 GB), bf16 matmuls.
        encoders = [getattr(pipe, name, None) for name in ("text_encoder", "text_encoder_2") if text_encoders]
        count = sum(quantize_base(encoder, "fp8-weights", whole=True, device=device, offloaded=offload)
                    for encoder in encoders if encoder is not None)
        if count:
            report.levers.append(f"text encoder: {count} Linear layers stored in float8 e4m3")
        if report.compiled_modules:
            import torch

            torch._dynamo.reset()
    if compile and denoiser is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            report.compiled_modules += compile_regions(denoiser, compile_classes)
            if compile_vae and vae is not None:
                report.compiled_modules += compile_regions(vae, ("ResnetBlock2D",))
        if "compiled" not in report.levers:
            report.levers.append("compiled")
        report.skipped.pop("compile", None)  # an earlier run's auto choice not to: this run compiles
    if sdpa is not None:
        report.sdpa = sdpa
    pipe._lorastory_speed = report
    return report


@contextlib.contextmanager
def speed_context(pipe: Any) -> Iterator[None]:
    """The context to render in: the attention backend :func:`prepare_for_speed` chose, if any."""
    report: SpeedReport | None = getattr(pipe, "_lorastory_speed", None)
    with sdpa_backend(report.sdpa if report else None):
        yield


__all__ = [
    "COMPILE_SECONDS",
    "CompileChoice",
    "TRANSFORMER_BLOCKS",
    "UNET_REGIONS",
    "SpeedReport",
    "compile_choice",
    "fuse_lora_weights",
    "fuse_qkv",
    "prepare_for_speed",
    "speed_context",
]
