"""LoRA adapters for Kolors, SDXL, SD1.5, Flux.1 and Qwen-Image pipelines: inject, save, read, apply.

Everything here is a thin layer over peft and diffusers, one module per concern:

* :mod:`.spec` — :class:`LoraSpec` (rank, alpha, targets) and :class:`LoraInfo` (what a file holds);
  :mod:`.errors` — the :class:`LoraError` tree.
* :mod:`.inject` — :func:`inject_lora` adds peft adapters (``LoraSpec.network``: LoRA, LoCon, LoHa,
  LoKr, DoRA) to the UNet and, when asked, to the text encoder(s).
* :mod:`.write` — :func:`save_lora` writes one ``.safetensors`` file atomically, with metadata
  (family, network, rank, alpha, targets, config hash), in the ``"kohya"`` (default: it loads in
  ComfyUI, A1111/Forge, sd-scripts and diffusers) or ``"diffusers"`` layout;
  :func:`default_save_formats` is what a training run writes.
* :mod:`.read` — :func:`load_lora_state` detects the layout of ours, diffusers/peft, kohya and
  DiffSynth-Studio files and reads them into one canonical state dict with each module's
  ``alpha / rank`` baked into ``lora_B``.
* One module per layout: :mod:`.diffusers_format` (diffusers/peft keys), :mod:`.kohya` (sd-scripts
  names, SGM naming tables, :func:`kohya_unet_name`), :mod:`.diffsynth` (DiffSynth-Studio,
  :func:`diffsynth_block_map`), :mod:`.lycoris` (LoHa, LoKr, DoRA in the LyCORIS layout, both ways), :mod:`.bfl`
  (a Flux transformer's kohya layout with BFL's fused q/k/v, ComfyUI's spelling of it, sd-scripts' T5 keys; XLabs
  files), :mod:`.dit_names` (a transformer's diffusers module names, Qwen-Image and Flux: musubi-tuner's and
  ai-toolkit's kohya-style names, ComfyUI's ``diffusion_model.`` keys,
  read back through the family's ``lora_modules`` table); :mod:`.keys` holds the
  canonical key grammar they share and :mod:`.unet_layout` the UNet block layout they count over.
* :mod:`.apply` — :func:`apply_lora`, :func:`set_lora_scale`, :func:`fuse`, :func:`unfuse` wrap
  diffusers' adapter API.

Text encoders are injected and loaded with peft directly: transformers 5.x gates its
own ``add_adapter``/``load_adapter`` behind a peft release newer than the one we pin.
"""

from __future__ import annotations

# ``X as X``: names the single-file module had besides __all__, re-exported so old imports keep working.
from lorastory.models.lora.apply import apply_lora, fuse, set_lora_scale, unfuse
from lorastory.models.lora.diffsynth import diffsynth_block_map
from lorastory.models.lora.errors import LoraError, LoraFormatError, LoraMismatchError
from lorastory.models.lora.inject import inject_lora
from lorastory.models.lora.keys import COMPONENTS as COMPONENTS
from lorastory.models.lora.keys import DIFFUSERS_METADATA_KEY as DIFFUSERS_METADATA_KEY
from lorastory.models.lora.keys import META_PREFIX as META_PREFIX
from lorastory.models.lora.kohya import KOHYA_TE_PREFIX as KOHYA_TE_PREFIX
from lorastory.models.lora.kohya import kohya_unet_name
from lorastory.hub import PICKLE_SUFFIXES as PICKLE_SUFFIXES
from lorastory.models.lora.read import load_lora_state
from lorastory.models.lora.spec import CHATGLM_TE_TARGETS as CHATGLM_TE_TARGETS
from lorastory.models.lora.spec import CLIP_TE_TARGETS as CLIP_TE_TARGETS
from lorastory.models.lora.spec import LoraInfo, LoraSpec
from lorastory.models.lora.write import KohyaUnetNames as KohyaUnetNames
from lorastory.models.lora.write import LoraFormat as LoraFormat
from lorastory.models.lora.write import default_save_formats, save_lora

__all__ = [
    "LoraError",
    "LoraFormatError",
    "LoraMismatchError",
    "LoraInfo",
    "LoraSpec",
    "inject_lora",
    "save_lora",
    "default_save_formats",
    "load_lora_state",
    "apply_lora",
    "set_lora_scale",
    "fuse",
    "unfuse",
    "kohya_unet_name",
    "diffsynth_block_map",
]
