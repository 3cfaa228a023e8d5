"""Shared by the client-loading tests: plain pipelines, randomised adapters, merged weights to compare."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

PIPELINE_CLASS = {"kolors": "KolorsPipeline", "sdxl": "StableDiffusionXLPipeline", "sd15": "StableDiffusionPipeline"}
COMPONENTS = ("unet", "transformer", "text_encoder", "text_encoder_2")


def plain_pipeline(folder: Path, family: str):
    """A pipeline loaded with diffusers alone, no lorastory code."""
    import diffusers

    extra = {"safety_checker": None, "requires_safety_checker": False} if family == "sd15" else {}
    return getattr(diffusers, PIPELINE_CLASS[family]).from_pretrained(folder, **extra)


def randomise(params, seed: int = 1, std: float = 0.3) -> None:
    """Give every adapter parameter random values, so each one changes the weights (LoRA's B starts at zero)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in params:
            param.copy_(torch.randn(param.shape, generator=generator) * std + (1.0 if param.dim() == 1 else 0.0))


def merged_weights(pipe) -> dict[str, torch.Tensor]:
    """Every adapted module's weight with its adapters merged, by "component.module.weight" (diffusers names)."""
    weights = {}
    for component in COMPONENTS:
        module = getattr(pipe, component, None)
        if module is None:
            continue
        for name, layer in module.named_modules():
            base = getattr(layer, "base_layer", None)
            if base is not None and hasattr(layer, "merge"):
                layer.merge()
                weights[f"{component}.{name}.weight"] = base.weight.detach().to(torch.float32).clone()
    return weights


def diffusers_fused(pipe) -> dict[str, torch.Tensor]:
    """The weights after diffusers' own ``fuse_lora`` (every loadable component)."""
    pipe.fuse_lora(components=[c for c in pipe._lora_loadable_modules if getattr(pipe, c, None) is not None])
    weights = {}
    for component in COMPONENTS:
        module = getattr(pipe, component, None)
        for name, layer in (module.named_modules() if module is not None else []):
            if getattr(layer, "base_layer", None) is not None:
                weights[f"{component}.{name}.weight"] = layer.base_layer.weight.detach().to(torch.float32).clone()
    return weights


def max_difference(reference: dict[str, torch.Tensor], other: dict[str, torch.Tensor]) -> float:
    """The largest absolute difference over the reference's weights (every one must be present)."""
    missing = sorted(set(reference) - set(other))
    assert not missing, f"{len(missing)} adapted weights missing, e.g. {missing[0]}"
    return max(float((reference[k] - other[k].to(torch.float32)).abs().max()) for k in reference)


def save_random_adapter(folder: Path, spec, out: Path) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """A randomised ``spec`` adapter on the DiT pipeline in ``folder``, saved to ``out`` as a training run saves it:
    (its merged weights, the transformer's base weights), both by "transformer.module.weight"."""
    from diffusers import DiffusionPipeline

    from lorastory.models.lora import inject_lora, save_lora

    pipe = DiffusionPipeline.from_pretrained(folder)
    base = {f"transformer.{k}": v.clone() for k, v in pipe.transformer.state_dict().items()}
    torch.manual_seed(0)
    randomise(inject_lora(pipe, spec), std=0.1)
    save_lora(pipe, out, spec)
    return merged_weights(pipe), base


def saved_variants(family: str, folder: Path, specs: dict, tmp_path_factory) -> Callable[[str], tuple]:
    """Per network of ``specs``, saved once on first use: (folder, file, merged weights, base weights) of a
    randomised adapter on the tiny ``family`` in ``folder``, saved as a training run saves it (kohya layout)."""
    from lorastory.models.lora import default_save_formats

    cache: dict[str, tuple] = {}

    def get(network: str) -> tuple:
        if network not in cache:
            assert default_save_formats(family, specs[network]) == ["kohya"]
            out = tmp_path_factory.mktemp(f"{family}-{network}") / "lora.safetensors"
            cache[network] = (folder, out, *save_random_adapter(folder, specs[network], out))
        return cache[network]

    return get
