"""Add trainable peft LoRA layers to a pipeline's UNet and, when asked, its text encoder(s).

Text encoders are injected with peft directly: transformers 5.x gates its own
``add_adapter`` behind a peft release newer than the one we pin.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from lorastory.errors import first_line
from lorastory.models.lora.errors import LoraError
from lorastory.models.lora.keys import COMPONENTS
from lorastory.models.lora.spec import LoraSpec
from lorastory.models.registry import Family, family_of_pipeline

if TYPE_CHECKING:
    import torch


def _peft_config(rank: int, alpha: float, dropout: float, targets: Iterable[str]) -> Any:
    from peft import LoraConfig

    return LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(targets), init_lora_weights="gaussian")


def _text_encoders(pipe: Any, family: Family) -> list[tuple[str, Any]]:
    return [(name, getattr(pipe, name)) for name in family.text_encoders if getattr(pipe, name, None) is not None]


def inject_lora(pipe: Any, spec: LoraSpec, adapter_name: str = "default") -> list[torch.nn.Parameter]:
    """Add LoRA layers to the UNet (and text encoders if ``spec.train_text_encoder``); return their parameters.

    Base weights are frozen by peft; only the returned parameters require grad.
    """
    from peft import inject_adapter_in_model

    family = family_of_pipeline(pipe)
    check_adapter_free(pipe, adapter_name)
    try:
        family.denoiser_of(pipe).add_adapter(_peft_config(spec.rank, spec.alpha, spec.dropout, spec.target_modules), adapter_name=adapter_name)
    except ValueError as err:
        raise LoraError(f"cannot add LoRA to the {family.name} UNet: {first_line(err, 200)}; check target_modules") from None
    modules = [family.denoiser_of(pipe)]
    if spec.train_text_encoder:
        config = _peft_config(spec.rank, spec.alpha, spec.dropout, spec.text_encoder_targets_for(family))
        for name, encoder in _text_encoders(pipe, family):
            try:
                inject_adapter_in_model(config, encoder, adapter_name=adapter_name)
            except ValueError as err:
                raise LoraError(f"cannot add LoRA to {name}: {first_line(err, 200)}; check text_encoder_targets") from None
            modules.append(encoder)
    params = [p for module in modules for n, p in module.named_parameters() if _is_lora_param(n, adapter_name)]
    for param in params:
        param.requires_grad_(True)
    return params


def _is_lora_param(name: str, adapter_name: str) -> bool:
    return (".lora_A." in name or ".lora_B." in name) and f".{adapter_name}." in f"{name}."


def check_adapter_free(pipe: Any, adapter_name: str) -> None:
    """Refuse an invalid adapter name, or one the pipeline already holds."""
    if not adapter_name or "." in adapter_name:
        raise LoraError(f"adapter name '{adapter_name}' is invalid; use letters, digits and underscores")
    for component in COMPONENTS:
        module = getattr(pipe, component, None)
        if adapter_name in (getattr(module, "peft_config", None) or {}):
            raise LoraError(f"the pipeline already has a LoRA named '{adapter_name}'; pass another adapter_name")
