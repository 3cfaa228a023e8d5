"""How a panel is guided: classifier-free guidance, or a guidance-distilled model's guidance input and optional true CFG.

A UNet family's story ``cfg`` is classifier-free guidance (CFG): the negative prompt is the
unconditional branch. A guidance-distilled family (Flux dev; its ``Family.true_cfg_argument`` is
set) takes ``cfg`` as the distilled guidance *input* of one denoiser pass, and the negative prompt
is not used. ``defaults.true_cfg`` (> 1) asks such a family for true CFG as well: a second pass on
the negative prompt each step, mixed at that scale (diffusers' ``FluxPipeline(true_cfg_scale=,
negative_prompt=)``), twice the denoiser work. The PNG parameters say which guidance a panel had.
"""

from __future__ import annotations

from typing import Any

from lorastory.errors import ConfigError

GUIDANCE_KEY = "Guidance"
TRUE_CFG_KEY = "True CFG scale"


def uses_true_cfg(true_cfg: float | None) -> bool:
    """True CFG runs only at a scale above 1 (at 1 the negative pass would cancel out)."""
    return true_cfg is not None and true_cfg > 1


def check_true_cfg(true_cfg: float | None, family: Any) -> None:
    """Refuse, in one line, ``true_cfg`` for a family whose ``cfg`` is already classifier-free guidance."""
    if true_cfg is not None and family.true_cfg_argument is None:
        raise ConfigError(f"defaults.true_cfg is for guidance-distilled models (Flux dev); {family.display}'s cfg is "
                          "already classifier-free guidance with the negative prompt: remove true_cfg")


def guidance_arguments(family: Any, true_cfg: float | None) -> dict[str, Any]:
    """Extra pipeline-call arguments for a batch: the family's true-CFG scale when asked, else none."""
    if family is None or family.true_cfg_argument is None or not uses_true_cfg(true_cfg):
        return {}
    return {family.true_cfg_argument: float(true_cfg)}  # type: ignore[arg-type]


def guidance_parameters(family: Any, true_cfg: float | None) -> dict[str, str]:
    """What the PNG parameters record about the guidance: nothing for CFG; for a distilled family, which it was.

    ``Guidance: distilled`` (CFG scale is the guidance input, the negative prompt unused) or ``Guidance:
    true CFG`` with ``True CFG scale`` (the negative prompt's pass mixed at that scale; CFG scale still the input).
    Plain words, no commas or colons: A1111-style readers split the line on them.
    """
    if family is None or family.true_cfg_argument is None:
        return {}
    if uses_true_cfg(true_cfg):
        return {GUIDANCE_KEY: "true CFG", TRUE_CFG_KEY: f"{true_cfg:g}"}
    return {GUIDANCE_KEY: "distilled"}
