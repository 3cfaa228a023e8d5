"""Add trainable peft adapters (LoRA, LoCon, LoHa, LoKr, DoRA) to a pipeline's UNet and, when asked, its text encoder(s).

Text encoders are injected with peft directly: transformers 5.x gates its own
``add_adapter`` behind a peft release newer than the one we pin.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from lorastory.errors import first_line
from lorastory.models.lora.errors import LoraError
from lorastory.models.lora.keys import COMPONENTS
from lorastory.models.lora.spec import CONV_TARGETS, LoraSpec
from lorastory.models.registry import Family, family_of_pipeline

if TYPE_CHECKING:
    import torch

# The parameter names of every adapter kind peft keeps: LoRA/DoRA, LoHa, LoKr.
ADAPTER_PARAM_MARKERS = (".lora_A.", ".lora_B.", ".lora_magnitude_vector.", ".hada_", ".lokr_")


def peft_config(spec: LoraSpec, targets: Iterable[str], convolutions: bool = False) -> Any:
    """The peft config of ``spec.network`` over ``targets``; ``convolutions``: the ResNet convolutions get
    ``conv_rank``/``conv_alpha`` (peft's rank/alpha patterns)."""
    from peft import LoHaConfig, LoKrConfig, LoraConfig

    targets = list(targets)
    conv = [t for t in targets if t in CONV_TARGETS] if convolutions else []
    conv_rank = spec.conv_rank or spec.rank
    conv_alpha = spec.conv_alpha or spec.alpha
    ranks = {t: conv_rank for t in conv if conv_rank != spec.rank}
    alphas = {t: conv_alpha for t in conv if conv_alpha != spec.alpha}
    if spec.network in ("lora", "locon", "dora"):
        return LoraConfig(r=spec.rank, lora_alpha=spec.alpha, lora_dropout=spec.dropout, target_modules=targets,
                          init_lora_weights="gaussian", use_dora=spec.network == "dora", rank_pattern=ranks,
                          alpha_pattern=alphas)
    if spec.network == "loha":  # peft's module_dropout is LyCORIS' dropout of a whole module per step
        return LoHaConfig(r=spec.rank, alpha=spec.alpha, module_dropout=spec.dropout, target_modules=targets,
                          rank_pattern=ranks, alpha_pattern=alphas)
    return LoKrConfig(r=spec.rank, alpha=spec.alpha, module_dropout=spec.dropout, target_modules=targets,
                      rank_pattern=ranks, alpha_pattern=alphas, decompose_both=spec.lokr_decompose_both,
                      decompose_factor=spec.lokr_factor)


def file_peft_config(network: str, ranks: Mapping[str, int], alphas: Mapping[str, float], settings: Mapping[str, Any]) -> Any:
    """The peft config that rebuilds a read LoHa / LoKr / DoRA file's adapter: one entry per module path."""
    from peft import LoHaConfig, LoKrConfig, LoraConfig

    rank = Counter(ranks.values()).most_common(1)[0][0]
    alpha = Counter(alphas.values()).most_common(1)[0][0]
    # full module paths as patterns: peft matches "(.*\.)?<pattern>$", so each names exactly one module
    common = dict(r=rank, target_modules=sorted(ranks), rank_pattern={m: r for m, r in ranks.items() if r != rank},
                  alpha_pattern={m: a for m, a in alphas.items() if a != alpha})
    if network == "dora":
        return LoraConfig(lora_alpha=alpha, use_dora=True, **common)
    if network == "loha":
        return LoHaConfig(alpha=alpha, **common)
    return LoKrConfig(alpha=alpha, decompose_both=bool(settings.get("decompose_both")),
                      decompose_factor=int(settings.get("decompose_factor", -1)), **common)


def _text_encoders(pipe: Any, family: Family) -> list[tuple[str, Any]]:
    return [(name, getattr(pipe, name)) for name in family.trainable_text_encoders if getattr(pipe, name, None) is not None]


def inject_lora(pipe: Any, spec: LoraSpec, adapter_name: str = "default") -> list[torch.nn.Parameter]:
    """Add ``spec.network`` adapters to the UNet (and text encoders if ``spec.train_text_encoder``); return their parameters.

    Base weights are frozen by peft; only the returned parameters require grad.
    """
    from peft import inject_adapter_in_model

    family = family_of_pipeline(pipe)
    check_adapter_free(pipe, adapter_name)
    try:
        config = peft_config(spec, spec.unet_targets(), convolutions=spec.adapts_convolutions)
        family.denoiser_of(pipe).add_adapter(config, adapter_name=adapter_name)
    except ValueError as err:
        raise LoraError(f"cannot add {spec.network} to the {family.name} UNet: {first_line(err, 200)}; check target_modules") from None
    modules = [family.denoiser_of(pipe)]
    if spec.train_text_encoder:
        config = peft_config(spec, spec.text_encoder_targets_for(family))
        for name, encoder in _text_encoders(pipe, family):
            try:
                inject_adapter_in_model(config, encoder, adapter_name=adapter_name)
            except ValueError as err:
                raise LoraError(f"cannot add {spec.network} to {name}: {first_line(err, 200)}; check text_encoder_targets") from None
            modules.append(encoder)
    params = [p for module in modules for n, p in module.named_parameters() if _is_lora_param(n, adapter_name)]
    for param in params:
        param.requires_grad_(True)
    return params


def _is_lora_param(name: str, adapter_name: str) -> bool:
    return any(marker in name for marker in ADAPTER_PARAM_MARKERS) and f".{adapter_name}." in f"{name}."


def check_adapter_free(pipe: Any, adapter_name: str) -> None:
    """Refuse an invalid adapter name, or one the pipeline already holds."""
    if not adapter_name or "." in adapter_name:
        raise LoraError(f"adapter name '{adapter_name}' is invalid; use letters, digits and underscores")
    for component in COMPONENTS:
        module = getattr(pipe, component, None)
        if adapter_name in (getattr(module, "peft_config", None) or {}):
            raise LoraError(f"the pipeline already has a LoRA named '{adapter_name}'; pass another adapter_name")
