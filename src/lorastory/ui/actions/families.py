"""Which of the form's fields apply to the chosen model, read from its :class:`~lorastory.models.registry.Family`.

The Train and Story tabs ask :func:`form_fit` for the model picked and hide, disable or annotate
the fields that do not apply (true CFG for a guidance-distilled model, the text-encoder LoRA for a
family with no trainable text encoder, the LoRA kinds and target modules a family's files can hold).
Everything here reads the family's attributes; no family is named, so a family registered later
gets a fitting form without a change here. Gradio is not imported: the tabs turn a :class:`FormFit`
into updates.
"""

from __future__ import annotations

from dataclasses import dataclass

from lorastory.errors import LorastoryError
from lorastory.hub import looks_like_hub_id
from lorastory.models.registry import KNOWN_HUB_MODELS, Family, declared_family, get_family
from lorastory.ui.actions.models import model_choices
from lorastory.ui.workspace import PathRefused, Workspace

# The Train tab's target-module choices for a family with no defaults of its own (a UNet's transformer
# blocks): attention projections (the default), the feed-forward layers and the blocks' in/out projections.
UNET_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2", "proj_in", "proj_out")


@dataclass(frozen=True)
class FormFit:
    """What the forms show for one model: ``None`` family (not known until loaded) leaves every field as it is."""

    family: Family | None
    distilled: bool  # cfg is the guidance input of a guidance-distilled model; true CFG is offered
    cfg_label: str
    cfg_info: str
    negative_info: str
    text_encoder: bool  # a text-encoder LoRA can be trained
    text_encoder_info: str
    networks: tuple[str, ...] | None  # the LoRA kinds its files hold; None: every kind
    targets: tuple[str, ...]  # the target-module choices
    base_dtype: bool  # an fp8 base converts some of its Linear layers
    size_step: int  # picture sizes are multiples of this
    note: str  # one line under the model picker


def model_family(ws: Workspace, choice: str | None) -> Family | None:
    """The family of a model choice: a workspace folder's ``model_index.json``, or a known hub id; else ``None``
    (a single file, or a hub id whose family is read only when it loads)."""
    value = (choice or "").strip()
    if not value:
        return None
    try:
        path = ws.resolve(value, must_exist=True)
    except PathRefused:
        known = KNOWN_HUB_MODELS.get(value) if looks_like_hub_id(value) else None
        return get_family(known) if known else None
    except LorastoryError:
        return None
    if not path.is_dir():
        return None
    try:
        found = declared_family(path)
    except LorastoryError:
        return None
    return found[0] if found else None


def form_fit(family: Family | None) -> FormFit:
    """The fields that apply to ``family`` and the short notes the form shows."""
    if family is None:
        return FormFit(None, False, "cfg", "", "", True, "", None, UNET_TARGETS, True, 8,
                       "family read when the model loads")
    name = family.display
    distilled = family.true_cfg_argument is not None
    if distilled:
        cfg_label, cfg_info = "guidance", f"{name} is guidance-distilled: its guidance input, not CFG"
        negative_info = "used only with true CFG above 1"
    elif family.guidance_argument != "guidance_scale":
        cfg_label, cfg_info, negative_info = "cfg", f"{name}: true CFG with the negative prompt", ""
    else:
        cfg_label, cfg_info, negative_info = "cfg", "", ""
    encoders = family.trainable_text_encoders
    te_info = "" if encoders else f"{name}: no text-encoder LoRA (none of its text encoders is trained)"
    targets = tuple(family.lora_targets) if family.lora_targets else UNET_TARGETS
    step = 8 * family.latent_patch
    note = f"**{name}** ({family.denoiser}, {family.resolution}² native; sizes in multiples of {step} px)"
    return FormFit(family, distilled, cfg_label, cfg_info, negative_info, bool(encoders), te_info,
                   tuple(family.lora_networks) if family.lora_networks is not None else None, targets,
                   bool(family.fp8_blocks), step, note)


def fit_for(ws: Workspace, choice: str | None) -> FormFit:
    """:func:`form_fit` of the family of a model choice."""
    return form_fit(model_family(ws, choice))


def model_picker(ws: Workspace) -> list[tuple[str, str]]:
    """The model picker's (shown, value) pairs: each model in ``models/`` of a registered family, shown with its
    family (``models/flux-dev — Flux.1``); a single file's family is read when it loads."""
    pairs = []
    for choice in model_choices(ws):
        family = model_family(ws, choice)
        pairs.append((f"{choice} — {family.display}" if family else choice, choice))
    return pairs
