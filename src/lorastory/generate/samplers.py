"""Sampler names as users know them (A1111's) mapped to diffusers schedulers.

A flow-matching model (Flux: its scheduler is a ``FlowMatch*`` one) samples with the flow-matching
versions: ``Euler`` is ``FlowMatchEulerDiscreteScheduler`` with the model's own shift settings.
"""

from __future__ import annotations

from typing import Any

from lorastory.errors import ConfigError

# name -> (diffusers scheduler class, extra config)
SAMPLERS: dict[str, tuple[str, dict[str, Any]]] = {
    "Euler": ("EulerDiscreteScheduler", {}),
    "Euler a": ("EulerAncestralDiscreteScheduler", {}),
    "DPM++ 2M": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "DPM++ 2M Karras": (
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": True},
    ),
    "DPM++ 2M SDE": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++", "solver_order": 2}),
    "DDIM": ("DDIMScheduler", {}),
    "UniPC": ("UniPCMultistepScheduler", {}),
    "Heun": ("HeunDiscreteScheduler", {}),
}


# name -> flow-matching scheduler class, for models whose scheduler is a flow-matching one
FLOW_SAMPLERS: dict[str, str] = {
    "Euler": "FlowMatchEulerDiscreteScheduler",
    "Heun": "FlowMatchHeunDiscreteScheduler",
}


def check_sampler(name: str) -> str:
    """``name`` in its canonical spelling (case-insensitive match), or a :class:`ConfigError`."""
    for known in SAMPLERS:
        if known.lower() == name.strip().lower():
            return known
    raise ConfigError(f"unknown sampler '{name}'; choose one of: {', '.join(SAMPLERS)}")


def make_scheduler(name: str, base_config: Any) -> Any:
    """A scheduler for sampler ``name`` built from the model's own scheduler config."""
    import diffusers

    name = check_sampler(name)
    if str(dict(base_config).get("_class_name", "")).startswith("FlowMatch"):
        if name not in FLOW_SAMPLERS:
            raise ConfigError(f"sampler '{name}' is for noise-prediction models; this flow-matching model samples "
                              f"with {' or '.join(FLOW_SAMPLERS)}")
        return getattr(diffusers, FLOW_SAMPLERS[name]).from_config(base_config)
    class_name, extra = SAMPLERS[name]
    return getattr(diffusers, class_name).from_config(base_config, **extra)
