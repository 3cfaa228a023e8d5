"""The optimizers a run can use, their own settings, and the scheduler each one needs.

- ``adamw``: torch's AdamW, the reference workflow's; ``lr`` around 1e-4.
- ``adamw8bit``: bitsandbytes' 8-bit AdamW (CUDA only; AdamW elsewhere, with a warning).
- ``prodigy``: Prodigy (``prodigyopt``) estimates the step size itself; ``lr`` multiplies
  its estimate and is normally 1.0.
- ``adafactor``: transformers' Adafactor, factored second moments (less memory than AdamW).
  By default with ``lr`` and the lr schedule as given (``relative_step: false``,
  ``scale_parameter: false``, what kohya's SDXL guides use); ``relative_step: true`` lets it set
  its own step size from the step count, and then the schedule must be ``constant``.

Each optimizer's own settings are a nested model of :class:`~lorastory.train.config.TrainConfig`
(``prodigy:``, ``adafactor:``); setting one for an optimizer the run does not use is refused, so
a leftover of an earlier experiment is not silently ignored. ``weight_decay`` applies to all four.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

from pydantic import ConfigDict, Field

from lorastory.config import YamlModel

if TYPE_CHECKING:
    import torch

    from lorastory.train.config import TrainConfig

OptimizerName = Literal["adamw", "adamw8bit", "prodigy", "adafactor"]

# Below this, Prodigy's step (its estimate × lr) is too small to learn in a LoRA run.
PRODIGY_LOW_LR = 0.1


class ProdigySettings(YamlModel):
    """Prodigy's own settings; the defaults are its authors' advice for diffusion models."""

    model_config = ConfigDict(**YamlModel.model_config, allow_inf_nan=False)

    d_coef: float = Field(1.0, gt=0, le=100)  # scales the estimated step size; 0.5-2 are the usual tunings
    use_bias_correction: bool = True  # Adam's bias correction: smaller steps at the start
    safeguard_warmup: bool = True  # keeps the estimate from running away during lr warm-up
    growth_rate: float | None = Field(None, gt=1)  # cap on the estimate's growth per step (e.g. 1.02); None: no cap


class AdafactorSettings(YamlModel):
    """Adafactor's own settings (transformers' names); the defaults use ``lr`` and the schedule as given."""

    model_config = ConfigDict(**YamlModel.model_config, allow_inf_nan=False)

    relative_step: bool = False  # its own step size from the step count (lr and lr_scheduler then unused)
    scale_parameter: bool = False  # scale the step by each weight's RMS
    warmup_init: bool = False  # with relative_step: start the step size near 0 and grow it


def optimizer_problem(config: TrainConfig) -> str | None:
    """Why the optimizer settings do not combine (one line), or ``None``."""
    for name, settings in (("prodigy", config.prodigy), ("adafactor", config.adafactor)):
        changed = [key for key, value in settings if value != type(settings).model_fields[key].default]
        if config.optimizer != name and changed:
            return (f"{name}.{changed[0]} is set but the optimizer is {config.optimizer}; "
                    f"use optimizer: {name} or remove the {name} settings")
    ada = config.adafactor
    if ada.warmup_init and not ada.relative_step:
        return "adafactor.warmup_init needs adafactor.relative_step: true"
    if config.optimizer == "adafactor" and ada.relative_step and (config.lr_scheduler != "constant" or config.lr_warmup_steps):
        return ("adafactor.relative_step sets its own step size: use lr_scheduler: constant and lr_warmup_steps: 0 "
                "(adafactor.warmup_init is its warm-up)")
    return None


def make_optimizer(params: list[torch.nn.Parameter], config: TrainConfig, say: Callable[[str], None]) -> Any:
    """The optimizer ``config`` names, over ``params``."""
    import torch

    if config.optimizer == "prodigy":
        return _prodigy(params, config, say)
    if config.optimizer == "adafactor":
        return _adafactor(params, config, say)
    if config.optimizer == "adamw8bit":
        try:
            import bitsandbytes as bnb

            if torch.cuda.is_available():
                return bnb.optim.AdamW8bit(params, lr=config.lr, weight_decay=config.weight_decay)
        except ImportError:
            pass
        say("warning: 8-bit AdamW needs bitsandbytes and CUDA; using AdamW")
    return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)


def _prodigy(params: list[torch.nn.Parameter], config: TrainConfig, say: Callable[[str], None]) -> Any:
    from prodigyopt import Prodigy

    if config.lr < PRODIGY_LOW_LR:
        say(f"warning: Prodigy estimates the step size itself and lr multiplies it (usually 1.0); "
            f"lr {config.lr:g} will train very little")
    settings = config.prodigy
    # Prodigy prints a note to stdout when weight decay is on; the CLI's stdout holds only results.
    with contextlib.redirect_stdout(io.StringIO()):
        return Prodigy(params, lr=config.lr, weight_decay=config.weight_decay, d_coef=settings.d_coef,
                       use_bias_correction=settings.use_bias_correction, safeguard_warmup=settings.safeguard_warmup,
                       growth_rate=settings.growth_rate if settings.growth_rate is not None else float("inf"))


def _adafactor(params: list[torch.nn.Parameter], config: TrainConfig, say: Callable[[str], None]) -> Any:
    from transformers.optimization import Adafactor

    settings = config.adafactor
    if settings.relative_step:
        say("note: Adafactor with relative_step sets its own step size; lr is not used")
    return Adafactor(params, lr=None if settings.relative_step else config.lr, weight_decay=config.weight_decay,
                     relative_step=settings.relative_step, scale_parameter=settings.scale_parameter,
                     warmup_init=settings.warmup_init)


def make_scheduler(optimizer: Any, config: TrainConfig, total_steps: int) -> Any:
    """The lr schedule; Adafactor's relative steps get transformers' proxy, which reports the step size it uses."""
    if config.optimizer == "adafactor" and config.adafactor.relative_step:
        from transformers.optimization import AdafactorSchedule

        return AdafactorSchedule(optimizer)
    from diffusers.optimization import get_scheduler

    return get_scheduler(config.lr_scheduler, optimizer, num_warmup_steps=config.lr_warmup_steps,
                         num_training_steps=total_steps)
