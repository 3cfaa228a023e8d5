"""Load a LoRA file into a pipeline and steer it: :func:`apply_lora`, :func:`set_lora_scale`, :func:`fuse`, :func:`unfuse`.

Thin wrappers over diffusers' adapter API. The file is first read into the canonical,
scale-baked state (:func:`~lorastory.models.lora.load_lora_state`) and checked against the
pipeline, so a LoRA for another model fails with the module that does not fit. Text encoders
are loaded with peft directly: transformers 5.x gates its own ``load_adapter`` behind a peft
release newer than the one we pin.
"""

from __future__ import annotations

import inspect
import os
import re
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lorastory.models.lora.errors import LoraError, LoraMismatchError
from lorastory.errors import first_line
from lorastory.models.lora.inject import check_adapter_free, file_peft_config
from lorastory.models.lora.keys import DENOISERS, modules_of
from lorastory.models.lora.read import load_lora_state
from lorastory.models.lora.spec import LoraInfo
from lorastory.models.registry import Family, denoiser, family_of_pipeline

if TYPE_CHECKING:
    import torch


def apply_lora(
    pipe: Any,
    path: str | os.PathLike[str],
    scale: float = 1.0,
    adapter_name: str | None = None,
    allow_pickle: bool = False,
    fuse: bool = False,
    default_alpha: float | None = None,
) -> LoraInfo:
    """Load a LoRA file into ``pipe`` as adapter ``adapter_name`` (default: from the file name) at ``scale``.

    Adapters already loaded stay active at their own scales. ``fuse=True`` merges the
    LoRA into the base weights afterwards (faster inference; :func:`unfuse` undoes it).
    """
    family = family_of_pipeline(pipe)
    name = adapter_name or _adapter_name_from(Path(path))
    check_adapter_free(pipe, name)
    state, info = load_lora_state(
        path, allow_pickle, family=family.name, unet_config=family.denoiser_of(pipe).config, default_alpha=default_alpha
    )
    parts = _split_components(pipe, family, state, info)
    if info.network == "lora":
        _check_fits(pipe, parts, info, family)
    try:
        if info.network == "lora":
            _load_parts(pipe, parts, name)
        else:
            _load_variant(pipe, parts, info, name)
    except Exception:
        if name in {a for adapters in pipe.get_list_adapters().values() for a in adapters}:
            pipe.delete_adapters(name)  # leave no half-loaded adapter behind
        raise
    set_lora_scale(pipe, scale, name)
    if fuse:
        _fuse(pipe, 1.0, [name])
    return info


def _load_parts(pipe: Any, parts: dict[str, dict[str, torch.Tensor]], name: str) -> None:
    component = family_of_pipeline(pipe).denoiser
    denoiser_state = parts.get(component)
    if denoiser_state:  # diffusers' own UNet / transformer loader (load_lora_weights minus the text-encoder half)
        prefixed = {f"{component}.{k}": v for k, v in denoiser_state.items()}
        load = getattr(type(pipe), f"load_lora_into_{component}")
        # Qwen-Image's loader takes no network_alphas (the alphas are already folded into the state here).
        alphas = {"network_alphas": None} if "network_alphas" in inspect.signature(load).parameters else {}
        load(prefixed, adapter_name=name, _pipeline=pipe, **alphas, **{component: denoiser(pipe)})
    for component, component_state in parts.items():
        if component not in DENOISERS:
            _load_text_encoder_lora(getattr(pipe, component), component_state, name)


def _load_variant(pipe: Any, parts: dict[str, dict[str, torch.Tensor]], info: LoraInfo, name: str) -> None:
    """Inject the peft adapter a LoHa / LoKr / DoRA file was trained as, and load its weights into it."""
    from peft import inject_adapter_in_model, set_peft_model_state_dict

    for component, state in parts.items():
        module = getattr(pipe, component)
        ranks, alphas = ({_module_path(pipe, component, m): v for m, v in info.adapter[key].items()
                          if m.startswith(component + ".")} for key in ("ranks", "alphas"))
        config = file_peft_config(info.network, ranks, alphas, info.adapter)
        try:
            if component in DENOISERS:
                denoiser(pipe).add_adapter(config, adapter_name=name)
            else:
                inject_adapter_in_model(config, module, adapter_name=name)
            result = set_peft_model_state_dict(module, dict(state), adapter_name=name)
        except (ValueError, RuntimeError) as err:
            raise LoraMismatchError(f"{info.path.name}: its {info.network} weights do not fit this {component} "
                                    f"({first_line(err, 200)}); the LoRA is for another model") from None
        unexpected = [k for k in getattr(result, "unexpected_keys", []) or [] if name in k or "lora" in k or "hada" in k]
        if unexpected:
            raise LoraMismatchError(f"{info.path.name}: {component} weight '{unexpected[0]}' was not loaded")


def _module_path(pipe: Any, component: str, module: str) -> str:
    """``component.module`` → the module's path inside that component (CLIP without ``text_model.`` on transformers 5)."""
    rest = module.split(".", 1)[1]
    if component not in DENOISERS and not hasattr(getattr(pipe, component), "text_model"):
        rest = rest.removeprefix("text_model.")
    return rest


def _adapter_name_from(path: Path) -> str:
    return re.sub(r"\W", "_", path.stem) or "lora"


def _split_components(
    pipe: Any, family: Family, state: Mapping[str, torch.Tensor], info: LoraInfo
) -> dict[str, dict[str, torch.Tensor]]:
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        component, rest = key.split(".", 1)
        if component in DENOISERS and component != family.denoiser:
            raise LoraMismatchError(
                f"{info.path.name} is a LoRA for a model with a {component}; {family.article} {family.display} "
                f"pipeline has a {family.denoiser}: it is a LoRA for another model family"
            )
        if component not in DENOISERS and component not in family.text_encoders:
            raise LoraMismatchError(
                f"{info.path.name} has {component} weights but a {family.name} pipeline has no {component}; "
                "it is a LoRA for another model family"
            )
        if component not in DENOISERS and not hasattr(getattr(pipe, component), "text_model"):
            rest = rest.removeprefix("text_model.")
        parts.setdefault(component, {})[rest] = value
    return parts


def _check_fits(pipe: Any, parts: Mapping[str, Mapping[str, torch.Tensor]], info: LoraInfo, family: Family) -> None:
    """Every LoRA module must exist in the pipeline with matching shapes; say which one does not."""
    for component, state in parts.items():
        named = dict(getattr(pipe, component).named_modules())
        for module, (down, up) in modules_of(state).items():
            target = named.get(module)
            if target is None:
                raise LoraMismatchError(
                    f"{info.path.name}: {component} module '{module}' does not exist in this {family.name} pipeline; "
                    "the LoRA is for another model"
                )
            base = getattr(target, "base_layer", target)
            fan_in = getattr(base, "in_features", getattr(base, "in_channels", None))
            fan_out = getattr(base, "out_features", getattr(base, "out_channels", None))
            if (fan_in is not None and down.shape[1] != fan_in) or (fan_out is not None and up.shape[0] != fan_out):
                raise LoraMismatchError(
                    f"{info.path.name}: {component} module '{module}' is {fan_in}→{fan_out} here but "
                    f"{down.shape[1]}→{up.shape[0]} in the LoRA; the LoRA is for another model"
                )


def _load_text_encoder_lora(encoder: Any, state: Mapping[str, torch.Tensor], adapter_name: str) -> None:
    """Inject and fill a text-encoder adapter with peft (scale already baked, so alpha == rank)."""
    from peft import LoraConfig, inject_adapter_in_model, set_peft_model_state_dict

    ranks = {module: int(down.shape[0]) for module, (down, _) in modules_of(state).items()}
    rank = Counter(ranks.values()).most_common(1)[0][0]
    pattern = {m: r for m, r in ranks.items() if r != rank}  # full module paths: peft matches them exactly
    config = LoraConfig(
        r=rank, lora_alpha=rank, target_modules=sorted(ranks), rank_pattern=pattern, alpha_pattern=dict(pattern)
    )
    inject_adapter_in_model(config, encoder, adapter_name=adapter_name)
    set_peft_model_state_dict(encoder, dict(state), adapter_name=adapter_name)


def _lora_components(pipe: Any) -> list[str]:
    return [c for c in pipe._lora_loadable_modules if getattr(pipe, c, None) is not None]


def _adapter_scales(pipe: Any) -> dict[str, float]:
    scales = getattr(pipe, "_lorastory_lora_scales", None)
    if scales is None:
        scales = {}
        pipe._lorastory_lora_scales = scales
    return scales


def set_lora_scale(pipe: Any, scale: float, adapter_name: str | None = None) -> None:
    """Set one adapter's strength (``None``: every loaded adapter); all loaded adapters stay active."""
    loaded = sorted({a for adapters in pipe.get_list_adapters().values() for a in adapters})
    if not loaded:
        raise LoraError("the pipeline has no LoRA loaded; call apply_lora first")
    if adapter_name is not None and adapter_name not in loaded:
        raise LoraError(f"no LoRA named '{adapter_name}' is loaded; loaded: {', '.join(loaded)}")
    scales = _adapter_scales(pipe)
    for name in loaded if adapter_name is None else [adapter_name]:
        scales[name] = float(scale)
    pipe.set_adapters(loaded, adapter_weights=[scales.get(name, 1.0) for name in loaded])


def fuse(pipe: Any, scale: float = 1.0, adapter_names: list[str] | None = None) -> None:
    """Merge active adapters (at their current scales, times ``scale``) into the base weights."""
    _fuse(pipe, scale, adapter_names)


def _fuse(pipe: Any, scale: float, adapter_names: list[str] | None) -> None:
    pipe.fuse_lora(components=_lora_components(pipe), lora_scale=scale, adapter_names=adapter_names)


def unfuse(pipe: Any) -> None:
    """Undo :func:`fuse`: subtract the merged LoRA weights again (adapters stay loaded)."""
    pipe.unfuse_lora(components=_lora_components(pipe))
