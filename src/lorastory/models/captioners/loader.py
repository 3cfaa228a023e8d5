"""Load a captioner from a folder or a hub id, choosing the backend by the model's ``config.json``.

``model_type`` → backend: ``blip`` (BLIP), ``blip-2`` (BLIP-2), ``florence2``
(Florence-2, transformers' native classes), ``qwen2_5_vl`` / ``qwen2_vl``
(a vision-language model with an instruction). A folder with ``model.onnx`` and
``selected_tags.csv`` is a WD14 tagger; ``toy`` is the toy world's retrieval
captioner over the shipped toy CLIP. Weights are read from safetensors only
and never with remote code: a model that needs its own Python is refused.
Offline, a hub id that is not in the cache fails in one line that says what
to download.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

from lorastory.errors import CaptionerError, first_line
from lorastory.hub import from_pretrained, hub_reachable, resolve_source
from lorastory.models.captioners.base import Captioner
from lorastory.models.captioners.img2seq import Img2SeqCaptioner
from lorastory.models.captioners.vlm import VlmCaptioner
from lorastory.models.captioners.wd14 import MODEL_FILE, TAGS_FILE, TagThresholds, Wd14Tagger, is_tagger_folder
from lorastory.hub import check_source
from lorastory.models.captioners.toy import ToyCaptioner
from lorastory.models.quiet import quiet_transformers

OPTION = "--model"
TOY = "toy"
# model_type → (model class, backend); the processor is AutoProcessor's (VLMs: image processor + tokenizer).
MODEL_TYPES: dict[str, tuple[str, str]] = {
    "blip": ("BlipForConditionalGeneration", "img2seq"),
    "blip-2": ("Blip2ForConditionalGeneration", "img2seq"),
    "florence2": ("Florence2ForConditionalGeneration", "img2seq"),
    "qwen2_5_vl": ("Qwen2_5_VLForConditionalGeneration", "vlm"),
    "qwen2_vl": ("Qwen2VLForConditionalGeneration", "vlm"),
}
KNOWN = "BLIP, BLIP-2, Florence-2, Qwen2.5-VL / Qwen2-VL, a WD14 tagger (model.onnx + selected_tags.csv) or 'toy'"


def resolve_device(device: str | None) -> Any:
    """``device`` as a torch device; None: CUDA when there is one."""
    import torch

    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except RuntimeError as err:
        raise CaptionerError(f"device '{device}': {first_line(err)}; use cpu, cuda or cuda:N") from None


def read_model_type(folder: Path) -> str:
    """``model_type`` of a local model folder's config.json."""
    config = folder / "config.json"
    if not config.is_file():
        raise CaptionerError(f"captioner {folder}: no config.json (and no {MODEL_FILE} + {TAGS_FILE}); "
                             f"pass {KNOWN} to {OPTION}")
    try:
        return str(json.loads(config.read_text(encoding="utf-8")).get("model_type", ""))
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as err:
        raise CaptionerError(f"{config}: unreadable ({first_line(err)})") from None


def _hub_tagger(source: str) -> Path | None:
    """A hub tagger's cached (or, online, downloaded) folder; None when the repo is not a tagger."""
    from huggingface_hub import snapshot_download, try_to_load_from_cache

    cached = try_to_load_from_cache(source, TAGS_FILE)
    if isinstance(cached, str) and isinstance(try_to_load_from_cache(source, MODEL_FILE), str):
        return Path(cached).parent
    if not hub_reachable():
        return None
    try:
        from huggingface_hub import file_exists

        if not file_exists(source, TAGS_FILE):
            return None
        return Path(snapshot_download(source, allow_patterns=[MODEL_FILE, TAGS_FILE]))
    except Exception as err:  # noqa: BLE001  network, auth, missing repo: one line
        raise CaptionerError(f"cannot download tagger '{source}' ({first_line(err)})") from None


def _model_type(source: str, local: bool) -> str:
    if local:
        return read_model_type(Path(source))
    from transformers import AutoConfig

    config = from_pretrained(AutoConfig, source, False, "captioner", OPTION, CaptionerError)
    return str(getattr(config, "model_type", ""))


def _load_transformers(source: str, local: bool, model_type: str, device: Any) -> Captioner:
    import torch
    import transformers

    class_name, backend = MODEL_TYPES[model_type]
    model_cls = getattr(transformers, class_name, None)
    if model_cls is None:
        raise CaptionerError(f"{source}: this transformers {transformers.__version__} has no {class_name}; upgrade transformers")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    load = functools.partial(from_pretrained, source=source, local=local, option=OPTION, error=CaptionerError)
    model = load(model_cls, what="captioner", use_safetensors=True, dtype=dtype)
    model = model.to(device).eval()
    if backend == "vlm":
        image_processor = load(transformers.AutoImageProcessor, what="captioner image processor")
        tokenizer = load(transformers.AutoTokenizer, what="captioner tokenizer")
        return VlmCaptioner(model_type, source, model, image_processor, tokenizer, device)
    processor = load(transformers.AutoProcessor, what="captioner processor")
    return Img2SeqCaptioner(model_type, source, model, processor, device)


@functools.lru_cache(maxsize=2)
def _load_cached(source: str, device: str, general: float, character: float) -> Captioner:

    target = resolve_device(device if device != "auto" else None)
    if source == TOY:

        return ToyCaptioner.load(target)
    path, local = resolve_source(source, "captioner", OPTION, CaptionerError)
    thresholds = TagThresholds(general, character)
    if local and is_tagger_folder(Path(path)):
        return Wd14Tagger(Path(path), str(target), thresholds)
    if not local:
        folder = _hub_tagger(path)
        if folder is not None:
            return Wd14Tagger(folder, str(target), thresholds)
    with quiet_transformers():
        model_type = _model_type(path, local)
        if model_type not in MODEL_TYPES:
            raise CaptionerError(f"{source} is a '{model_type or 'unknown'}' model; the captioners lorastory runs "
                                 f"(without remote code) are {KNOWN}")
        return _load_transformers(path, local, model_type, target)


def load_captioner(source: str, device: str | None = None, thresholds: TagThresholds | None = None) -> Captioner:
    """The captioner at ``source`` (folder, hub id or ``toy``), loaded once per process and device."""
    thresholds = thresholds or TagThresholds()
    return _load_cached(str(source), device or "auto", thresholds.general, thresholds.character)



def check_captioner(source: str) -> None:
    """Fail early (when a recipe loads, before any row) when ``source`` cannot be a captioner here.

    A folder needs ``config.json`` of a known model type or the two tagger files; a hub id must be
    cached or the hub reachable. The weights are read when the model loads, once per process.
    """

    if source == TOY:
        return
    path, local = resolve_source(source, "captioner", OPTION, CaptionerError)
    if not local:
        if not isinstance(_cached_file(path, TAGS_FILE), str):
            check_source(path, "captioner", OPTION, CaptionerError)
        return
    folder = Path(path)
    if is_tagger_folder(folder):
        return
    model_type = read_model_type(folder)
    if model_type not in MODEL_TYPES:
        raise CaptionerError(f"{source} is a '{model_type or 'unknown'}' model; the captioners lorastory runs "
                             f"(without remote code) are {KNOWN}")


def _cached_file(repo: str, name: str) -> Any:
    from huggingface_hub import try_to_load_from_cache

    return try_to_load_from_cache(repo, name)
