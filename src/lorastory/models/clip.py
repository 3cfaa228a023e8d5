"""CLIP models and CLIP-T: how well an image matches its prompt.

CLIP-T is the cosine similarity of CLIP's image and text embeddings times 100,
as text-to-image papers report it (a matching pair scores roughly 25–35 with
``openai/clip-vit-base-patch32``; unrelated pairs score lower). For a trained
CLIP the logit scale is exactly 100, so CLIP-T also equals CLIP's
image-text logit.

:func:`load_clip` accepts a local folder or a hub id and picks the model class
from its config: ``clip`` → ``CLIPModel``, ``chinese_clip`` → ``ChineseCLIPModel``
(for Chinese prompts, which the English CLIP reads badly; e.g.
``OFA-Sys/chinese-clip-vit-base-patch16``). Models are cached per process and
device. Prompts longer than the text encoder's window (77 tokens for CLIP) are
truncated, as CLIP always does; :meth:`ClipModel.token_counts` tells which.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from lorastory.errors import ClipModelError
from lorastory.errors import first_line
from lorastory.hub import from_pretrained, resolve_source
from lorastory.models.quiet import quiet_transformers

DEFAULT_CLIP = "openai/clip-vit-base-patch32"
CHINESE_CLIP = "OFA-Sys/chinese-clip-vit-base-patch16"
CLIP_OPTION = "--clip"
# model_type in config.json → (model class, processor class) in transformers.
_CLASSES = {
    "clip": ("CLIPModel", "CLIPProcessor"),
    "chinese_clip": ("ChineseCLIPModel", "ChineseCLIPProcessor"),
}
_CJK = re.compile("[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")


def has_chinese(text: str) -> bool:
    """True when ``text`` contains CJK ideographs."""
    return bool(_CJK.search(text))


def resolve_device(device: str | None = None) -> Any:
    """``device`` as a torch device; ``None`` means CUDA when available, else CPU."""
    import torch

    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except RuntimeError as err:
        raise ClipModelError(f"device '{device}': {first_line(err)}; use cpu, cuda or cuda:N") from None


def _features(output: Any) -> Any:
    """Projected embeddings from ``get_*_features`` (a tensor in transformers 4, an output object in 5)."""
    import torch

    if isinstance(output, torch.Tensor):
        return output
    pooled = getattr(output, "pooler_output", None)
    if pooled is None:
        raise ClipModelError(f"the model returned {type(output).__name__} without projected embeddings")
    return pooled


def _normalise(embeddings: Any) -> Any:
    import torch

    return torch.nn.functional.normalize(embeddings.float(), dim=-1).cpu()


@dataclass
class ClipModel:
    """A loaded CLIP-style model with its processor, ready to embed images and texts."""

    source: str
    kind: str  # clip | chinese_clip | the model_type of a remote-code model
    model: Any
    processor: Any
    device: Any
    max_text_tokens: int

    @property
    def embed_dim(self) -> int:
        """Size of the shared image-text embedding space."""
        return int(self.model.config.projection_dim)

    @property
    def logit_scale(self) -> float:
        """CLIP's learned temperature (100 for trained OpenAI CLIP)."""
        return float(self.model.logit_scale.detach().exp().item())

    def pixel_values(self, images: Sequence[Image.Image]) -> Any:
        """The image processor's tensor for ``images`` (RGB PIL images)."""
        return self.processor.image_processor(images=list(images), return_tensors="pt")["pixel_values"]

    def image_embeddings(self, images: Sequence[Image.Image], batch_size: int = 32) -> Any:
        """L2-normalised image embeddings, shape (len(images), embed_dim), float32 on the CPU."""
        import torch

        if not images:
            return torch.zeros((0, self.embed_dim))
        parts = []
        with torch.inference_mode():
            for start in range(0, len(images), max(1, batch_size)):
                pixels = self.pixel_values(images[start : start + batch_size]).to(self.device, self.model.dtype)
                parts.append(_normalise(_features(self.model.get_image_features(pixel_values=pixels))))
        return torch.cat(parts)

    def text_inputs(self, texts: Sequence[str]) -> dict[str, Any]:
        """Tokenized ``texts``, padded and truncated to the text encoder's window."""
        return self.processor.tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.max_text_tokens, return_tensors="pt"
        )

    def text_embeddings(self, texts: Sequence[str], batch_size: int = 64) -> Any:
        """L2-normalised text embeddings, shape (len(texts), embed_dim), float32 on the CPU."""
        import torch

        if not texts:
            return torch.zeros((0, self.embed_dim))
        parts = []
        with torch.inference_mode():
            for start in range(0, len(texts), max(1, batch_size)):
                inputs = {k: v.to(self.device) for k, v in self.text_inputs(texts[start : start + batch_size]).items()}
                parts.append(_normalise(_features(self.model.get_text_features(**inputs))))
        return torch.cat(parts)

    def token_counts(self, texts: Sequence[str]) -> list[int]:
        """Tokens of each text with the special tokens, before truncation."""
        with quiet_transformers():  # no "sequence longer than the maximum" warning: counting is the point
            ids = self.processor.tokenizer(list(texts), add_special_tokens=True, truncation=False)["input_ids"]
        return [len(row) for row in ids]


def _read_model_type(source: str, local: bool) -> str | None:
    """``model_type`` from a local folder's config.json (None for hub ids: read after loading the config)."""
    if not local:
        return None
    config = Path(source) / "config.json"
    if not config.is_file():
        raise ClipModelError(f"{source}: no config.json; pass a CLIP model folder (as save_pretrained writes) to {CLIP_OPTION}")
    try:
        return str(json.loads(config.read_text(encoding="utf-8")).get("model_type", ""))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ClipModelError(f"{config}: unreadable ({err})") from None


def _model_classes(model_type: str, source: str, trust_remote_code: bool) -> tuple[Any, Any]:
    import transformers

    if model_type in _CLASSES:
        model_name, processor_name = _CLASSES[model_type]
        return getattr(transformers, model_name), getattr(transformers, processor_name)
    if trust_remote_code:
        return transformers.AutoModel, transformers.AutoProcessor
    raise ClipModelError(
        f"{source} is a '{model_type or 'unknown'}' model, not CLIP or Chinese CLIP; pass a CLIP model "
        f"(e.g. {DEFAULT_CLIP} or {CHINESE_CLIP}), or trust_remote_code for a custom one"
    )


def _text_window(model: Any, tokenizer: Any) -> int:
    positions = int(getattr(model.config.text_config, "max_position_embeddings", 77))
    limit = getattr(tokenizer, "model_max_length", positions) or positions
    return int(min(positions, limit))


_PICKLE_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json", "tf_model.h5", "flax_model.msgpack")


def _check_weights(path: str, allow_pickle: bool) -> None:
    """A local folder must hold safetensors weights; pickle-only weights need ``allow_pickle``."""
    folder = Path(path)
    if any(folder.glob("*.safetensors")) or allow_pickle:
        return
    if any((folder / name).is_file() for name in _PICKLE_WEIGHTS):
        raise ClipModelError(
            f"CLIP model {path} holds only pickle weights (pytorch_model.bin), which lorastory does not load "
            "unless allowed; convert it to model.safetensors (save_pretrained does) or pass allow_pickle"
        )
    raise ClipModelError(f"CLIP model {path}: no weights (model.safetensors) in the folder; check {CLIP_OPTION}")


def check_clip_folder(source: str, allow_pickle: bool = False) -> None:
    """For a local folder: fail at once (before any work) when it is not CLIP or has no usable weights.

    Reads only ``config.json`` and the file names; a hub id is left to :func:`load_clip`.
    """
    path, local = resolve_source(source, "CLIP model", CLIP_OPTION, ClipModelError)
    if not local:
        return
    model_type = _read_model_type(path, local)
    if model_type not in _CLASSES:
        raise ClipModelError(
            f"{source} is a '{model_type or 'unknown'}' model, not CLIP or Chinese CLIP; pass a CLIP model "
            f"(e.g. {DEFAULT_CLIP} or {CHINESE_CLIP})"
        )
    _check_weights(path, allow_pickle)


@functools.lru_cache(maxsize=4)
def _load_cached(source: str, device: str, trust_remote_code: bool, allow_pickle: bool) -> ClipModel:
    from transformers import AutoConfig

    path, local = resolve_source(source, "CLIP model", CLIP_OPTION, ClipModelError)
    with quiet_transformers():
        model_type = _read_model_type(path, local)
        if local:
            _check_weights(path, allow_pickle)
        extra = {"trust_remote_code": True} if trust_remote_code else {}
        if model_type is None:
            config = from_pretrained(AutoConfig, path, local, "CLIP model", CLIP_OPTION, ClipModelError, **extra)
            model_type = str(getattr(config, "model_type", ""))
        model_cls, processor_cls = _model_classes(model_type, source, trust_remote_code)
        weights = {} if allow_pickle else {"use_safetensors": True}
        model = from_pretrained(model_cls, path, local, "CLIP model", CLIP_OPTION, ClipModelError, **extra, **weights)
        processor = from_pretrained(processor_cls, path, local, "CLIP processor", CLIP_OPTION, ClipModelError, **extra)
    for method in ("get_image_features", "get_text_features"):
        if not hasattr(model, method):
            raise ClipModelError(f"{source}: {type(model).__name__} has no {method}(); it is not a CLIP-style model")
    target = resolve_device(device)
    model = model.to(target).eval()
    return ClipModel(source, model_type, model, processor, target, _text_window(model, processor.tokenizer))


def load_clip(
    source: str = DEFAULT_CLIP, device: str | None = None, trust_remote_code: bool = False, allow_pickle: bool = False
) -> ClipModel:
    """Load (once per process and device) a CLIP or Chinese CLIP model from a folder or hub id.

    Only safetensors weights are read unless ``allow_pickle`` (a folder with only
    ``pytorch_model.bin`` is refused). ``trust_remote_code`` runs Python from the
    model folder: recipes and the web app never pass it.
    """
    return _load_cached(str(source), str(resolve_device(device)), bool(trust_remote_code), bool(allow_pickle))


def cosine_matrix(a: Any, b: Any) -> Any:
    """Cosine similarities between the rows of two L2-normalised embedding matrices."""
    return a @ b.T


def clip_t_scores(clip: ClipModel, images: Sequence[Image.Image], texts: Sequence[str], batch_size: int = 32) -> list[float]:
    """CLIP-T of each (image, text) pair: cosine × 100."""
    if len(images) != len(texts):
        raise ValueError(f"{len(images)} images but {len(texts)} texts; CLIP-T scores pairs")
    image_emb = clip.image_embeddings(images, batch_size)
    text_emb = clip.text_embeddings(texts, batch_size)
    cosines = (image_emb * text_emb).sum(dim=-1).clamp(-1.0, 1.0)
    return [100.0 * float(c) for c in cosines]


def op_device(accelerator: str | None) -> str:
    """Where a data operator runs its model: the CPU when the recipe says so, else CUDA when available."""
    import torch

    if accelerator == "cpu" or not torch.cuda.is_available():
        return "cpu"
    return "cuda"


def one_thread_in_workers() -> None:
    """In a worker process of a multi-process recipe run, let torch use one thread.

    The recipe's ``np`` processes are the parallelism; a full thread pool in each
    would oversubscribe the cores (and OpenMP can hang after ``fork``), which is
    why Data-Juicer does the same.
    """
    import multiprocessing

    import torch

    if multiprocessing.parent_process() is not None and torch.get_num_threads() != 1:
        torch.set_num_threads(1)
