"""Aesthetic scores: the LAION aesthetic predictor on CLIP image embeddings.

The predictor is a small head on L2-normalised CLIP image embeddings that
outputs a rating on LAION's 1–10 scale. Weights are never bundled or guessed:
the user passes them, and without them there is no aesthetic score
("not available"), never a made-up number. Accepted:

* a head file (``.safetensors``) in one of the layouts LAION published:
  - ``improved-aesthetic-predictor`` MLP (``layers.0/2/4/6/7``: Linear
    768→1024→128→64→16→1 with dropouts, e.g. ``sac+logos+ava1-l14-linearMSE``),
  - its ReLU variant (``layers.0/3/6/9/11``, ``ava+logos-l14-reluMSE``),
  - the simple linear head (``weight``/``bias`` or ``predictor.*``, LAION's
    ``sa_0_4_vit_*_linear`` v1 predictors);
* a model folder (or hub id) in ``simple-aesthetics-predictor``'s layout, the
  one Data-Juicer uses (``shunk031/aesthetics-predictor-*``): a CLIP vision
  tower with projection plus the head, in one ``config.json`` + weights folder.

A head file reads embeddings from a CLIP model that must match the one it was
trained on: the improved predictor was trained on OpenAI CLIP ViT-L/14 (768-d).
Pickle files (``.pth``, ``.pt``...) are refused unless ``allow_pickle`` is set,
and then read with ``torch.load(weights_only=True)``, which loads tensors only.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from lorastory.errors import AestheticModelError
from lorastory.errors import first_line
from lorastory.hub import PICKLE_SUFFIXES, hub_reachable, looks_like_hub_id, offline_by_env
from lorastory.errors import DataError
from lorastory.fileio import parse_json
from lorastory.models.clip import resolve_device
from lorastory.models.quiet import quiet_transformers

AESTHETIC_OPTION = "--aesthetic"
# Sequential indices of the Linear layers in LAION's two MLP heads.
MLP_LAYOUTS = {(0, 2, 4, 6, 7): "mlp", (0, 3, 6, 9, 11): "mlp_relu"}
# The CLIP a head of this input size was most likely trained on (LAION's published heads).
CLIP_FOR_DIM = {768: "openai/clip-vit-large-patch14", 512: "openai/clip-vit-base-patch32"}
CLIP_METADATA_KEY = "clip_model"
NOT_AVAILABLE = "not available"
_LAYER_KEY = re.compile(r"^(?:.*\.)?layers\.(\d+)\.(weight|bias)$")


def _head_module(layout: str, sizes: list[tuple[int, int]]) -> Any:
    """LAION's head as an ``nn.Sequential`` whose indices match the published state dicts."""
    import torch.nn as nn

    if layout == "linear":
        return nn.Linear(sizes[0][1], 1)
    dropouts = (0.2, 0.2, 0.1)
    modules: list[nn.Module] = []
    for index, (out_features, in_features) in enumerate(sizes):
        modules.append(nn.Linear(in_features, out_features))
        if index < len(sizes) - 1 and layout == "mlp_relu":
            modules.append(nn.ReLU())
        if index < len(dropouts):
            modules.append(nn.Dropout(dropouts[index]))
    return nn.Sequential(*modules)


@dataclass
class VisionEmbedder:
    """A CLIP vision tower with projection (the image half of CLIP) and its image processor."""

    source: str
    model: Any
    image_processor: Any
    device: Any

    @property
    def embed_dim(self) -> int:
        return int(self.model.config.projection_dim)

    def image_embeddings(self, images: Sequence[Image.Image], batch_size: int = 32) -> Any:
        """L2-normalised image embeddings, float32 on the CPU."""
        import torch

        parts = []
        with torch.inference_mode():
            for start in range(0, len(images), max(1, batch_size)):
                pixels = self.image_processor(images=list(images[start : start + batch_size]), return_tensors="pt")["pixel_values"]
                embeds = self.model(pixel_values=pixels.to(self.device, self.model.dtype)).image_embeds
                parts.append(torch.nn.functional.normalize(embeds.float(), dim=-1).cpu())
        return torch.cat(parts) if parts else torch.zeros((0, self.embed_dim))


@dataclass
class AestheticPredictor:
    """A loaded aesthetic head; ``embedder`` is set when the weights bring their own CLIP vision tower."""

    path: str
    layout: str  # mlp | mlp_relu | linear
    input_dim: int
    head: Any
    clip_hint: str | None = None
    embedder: VisionEmbedder | None = None
    metadata: dict[str, str] = field(default_factory=dict)

    def score_embeddings(self, embeddings: Any) -> list[float]:
        """Ratings (LAION 1–10 scale) for L2-normalised image embeddings of ``input_dim``."""
        import torch

        if embeddings.shape[-1] != self.input_dim:
            raise AestheticModelError(
                f"aesthetic head {self.path} reads {self.input_dim}-d CLIP embeddings but got {embeddings.shape[-1]}-d; "
                f"pass the CLIP it was trained on ({self.clip_hint or CLIP_FOR_DIM.get(self.input_dim, 'see its model card')})"
            )
        with torch.inference_mode():
            scores = self.head(embeddings.to(torch.float32)).reshape(-1)
        return [float(s) for s in scores]

    def describe(self) -> dict[str, Any]:
        """What scores.json records about the predictor."""
        return {
            "available": True,
            "weights": self.path,
            "layout": self.layout,
            "input_dim": self.input_dim,
            "clip": self.embedder.source if self.embedder is not None else self.clip_hint,
            "scale": "LAION aesthetic rating, 1-10",
        }


# --------------------------------------------------------------------------- reading weights


def _unwrap(state: Any, path: Path) -> dict[str, Any]:
    """A plain name → tensor mapping from what ``torch.load`` returned (also Lightning checkpoints)."""
    import torch

    for key in ("state_dict", "model", "module"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise AestheticModelError(f"{path}: not a state dict of tensors; save the head's state_dict() as .safetensors")
    return dict(state)


def read_weights(path: str | Path, allow_pickle: bool = False) -> tuple[dict[str, Any], dict[str, str]]:
    """Tensors and metadata of a weights file; pickle files only with ``allow_pickle`` (tensors only)."""
    file = Path(path)
    suffix = file.suffix.lower()
    if suffix == ".safetensors":
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(file), framework="pt") as handle:
                return {key: handle.get_tensor(key) for key in handle.keys()}, dict(handle.metadata() or {})
        except (SafetensorError, OSError, ValueError) as err:
            raise AestheticModelError(f"{file}: unreadable safetensors file ({first_line(err)})") from None
    if suffix in PICKLE_SUFFIXES:
        if not allow_pickle:
            raise AestheticModelError(
                f"{file} is a pickle file, which can run code when loaded; convert it to .safetensors "
                "or pass --allow-pickle if you trust its source (it is then read with torch.load(weights_only=True))"
            )
        import pickle

        import torch

        try:
            state = torch.load(str(file), map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, OSError, EOFError) as err:
            raise AestheticModelError(f"{file}: cannot read it as tensors only ({first_line(err)})") from None
        return _unwrap(state, file), {}
    raise AestheticModelError(f"{file}: unknown weights format '{suffix}'; pass a .safetensors file or a model folder")


def _mlp_sizes(state: dict[str, Any], path: str) -> tuple[str, list[tuple[int, int]], dict[str, Any]] | None:
    """(layout, [(out, in)...], state with ``N.weight`` keys) for LAION's MLP heads; None if not one."""
    layers: dict[int, dict[str, Any]] = {}
    for key, tensor in state.items():
        if key.startswith(("vision_model.", "visual_projection.", "text_model.")):
            continue
        match = _LAYER_KEY.match(key)
        if match:
            layers.setdefault(int(match.group(1)), {})[match.group(2)] = tensor
    if not layers:
        return None
    indices = tuple(sorted(layers))
    layout = MLP_LAYOUTS.get(indices)
    if layout is None:
        raise AestheticModelError(
            f"{path}: head layers at indices {list(indices)}; expected LAION's MLP ({list(next(iter(MLP_LAYOUTS)))}) "
            f"or its ReLU variant ({list(list(MLP_LAYOUTS)[1])})"
        )
    sizes = [tuple(layers[i]["weight"].shape) for i in indices]
    for (out_prev, _), (_, in_next) in zip(sizes, sizes[1:]):
        if out_prev != in_next:
            raise AestheticModelError(f"{path}: head layer sizes {sizes} do not chain")
    if sizes[-1][0] != 1:
        raise AestheticModelError(f"{path}: the last head layer has {sizes[-1][0]} outputs, expected 1")
    renamed = {f"{i}.{name}": tensor for i in indices for name, tensor in layers[i].items()}
    return layout, [(int(o), int(i)) for o, i in sizes], renamed


def _linear_head(state: dict[str, Any], path: str) -> tuple[int, dict[str, Any]]:
    """(input size, state) of a single Linear(D, 1) head (keys ``weight``/``bias`` under any prefix)."""
    head = {k: v for k, v in state.items() if not k.startswith(("vision_model.", "visual_projection.", "text_model."))}
    weights = [k for k, v in head.items() if k.endswith("weight") and v.ndim == 2]
    if len(weights) != 1 or head[weights[0]].shape[0] != 1:
        found = ", ".join(sorted(head)[:6]) or "no tensors"
        raise AestheticModelError(
            f"{path}: not an aesthetic head (found {found}); expected LAION's MLP keys layers.0.weight... "
            "or a linear head weight/bias"
        )
    prefix = weights[0][: -len("weight")]
    bias = head.get(prefix + "bias")
    renamed = {"weight": head[weights[0]]}
    if bias is not None:
        renamed["bias"] = bias.reshape(1)
    return int(head[weights[0]].shape[1]), renamed


def build_head(state: dict[str, Any], path: str) -> tuple[str, int, Any]:
    """(layout, input size, module in eval mode) from a head's tensors."""
    import torch

    mlp = _mlp_sizes(state, path)
    if mlp is not None:
        layout, sizes, renamed = mlp
        input_dim = sizes[0][1]
    else:
        layout = "linear"
        input_dim, renamed = _linear_head(state, path)
        sizes = [(1, input_dim)]
    module = _head_module(layout, sizes)
    missing, unexpected = module.load_state_dict({k: v.to(torch.float32) for k, v in renamed.items()}, strict=False)
    if missing and not (layout == "linear" and missing == ["bias"]):
        raise AestheticModelError(f"{path}: head tensors missing: {', '.join(missing)}")
    if layout == "linear" and missing == ["bias"]:
        torch.nn.init.zeros_(module.bias)
    return layout, input_dim, module.eval()


# --------------------------------------------------------------------------- loading


def _snapshot(repo_id: str, allow_pickle: bool) -> Path:
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "*.safetensors", "*.txt"] + (["*.bin"] if allow_pickle else [])
    try:
        return Path(snapshot_download(repo_id, local_files_only=True, allow_patterns=patterns))
    except Exception as cached:  # not in the cache (any flavour of error)
        if not hub_reachable():
            reason = "HF_HUB_OFFLINE is set" if offline_by_env() else "the hub cannot be reached"
            raise AestheticModelError(
                f"aesthetic predictor '{repo_id}' is not in the local Hugging Face cache and {reason}; download it "
                f"where you have network (hf download {repo_id} --local-dir DIR) and pass {AESTHETIC_OPTION} DIR"
            ) from None
        try:
            return Path(snapshot_download(repo_id, allow_patterns=patterns))
        except Exception as err:
            raise AestheticModelError(f"cannot download aesthetic predictor '{repo_id}' ({first_line(err)}; cache: {first_line(cached)})") from None


def _folder_weights(folder: Path) -> Path:
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (folder / name).is_file():
            return folder / name
    files = sorted(folder.glob("*.safetensors"))
    if len(files) == 1:
        return files[0]
    raise AestheticModelError(
        f"{folder}: no weights (model.safetensors) found; pass the predictor's folder or its head .safetensors file"
    )


def _load_vision_tower(folder: Path, device: Any, allow_pickle: bool) -> VisionEmbedder:
    from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

    try:
        with quiet_transformers():
            # Safetensors only, unless the user allowed pickle files for this predictor.
            model = CLIPVisionModelWithProjection.from_pretrained(
                str(folder), local_files_only=True, use_safetensors=None if allow_pickle else True
            )
            processor = CLIPImageProcessor.from_pretrained(str(folder), local_files_only=True)
    except Exception as err:  # noqa: BLE001 - any loading failure means the files cannot be used
        raise AestheticModelError(f"cannot load the CLIP vision tower of {folder}: {first_line(err)}") from None
    return VisionEmbedder(str(folder), model.to(device).eval(), processor, device)


def _load_folder(folder: Path, allow_pickle: bool, device: Any) -> AestheticPredictor:
    weights = _folder_weights(folder)
    if not (folder / "config.json").is_file():
        state, metadata = read_weights(weights, allow_pickle)
        layout, dim, head = build_head(state, str(weights))
        return AestheticPredictor(str(weights), layout, dim, head, metadata.get(CLIP_METADATA_KEY), None, metadata)
    try:
        config = parse_json((folder / "config.json").read_bytes(), str(folder / "config.json"))
    except DataError as err:
        raise AestheticModelError(str(err)) from None
    if not isinstance(config, dict):
        raise AestheticModelError(f"{folder / 'config.json'}: expected a JSON object")
    if config.get("model_type") not in ("clip_vision_model", "clip"):
        raise AestheticModelError(
            f"{folder}: a '{config.get('model_type')}' model, not a CLIP aesthetic predictor "
            "(simple-aesthetics-predictor layout: CLIP vision tower + head)"
        )
    if weights.suffix != ".safetensors" and not allow_pickle:
        raise AestheticModelError(
            f"{weights} is a pickle file, which can run code when loaded; convert it to .safetensors "
            "or pass --allow-pickle if you trust its source (it is then read with torch.load(weights_only=True))"
        )
    state, metadata = read_weights(weights, allow_pickle)
    layout, dim, head = build_head(state, str(weights))
    embedder = _load_vision_tower(folder, device, allow_pickle)
    if embedder.embed_dim != dim:
        raise AestheticModelError(f"{folder}: head reads {dim}-d embeddings but the vision tower gives {embedder.embed_dim}-d")
    return AestheticPredictor(str(folder), layout, dim, head, str(folder), embedder, metadata)


def load_aesthetic(path: str | Path, allow_pickle: bool = False, device: str | None = None) -> AestheticPredictor:
    """Load aesthetic-predictor weights: a head file, a predictor folder, or a hub id of one."""
    source = str(path)
    target = resolve_device(device)
    file = Path(source).expanduser()
    if file.is_dir():
        return _load_folder(file, allow_pickle, target)
    if file.is_file():
        state, metadata = read_weights(file, allow_pickle)
        layout, dim, head = build_head(state, str(file))
        return AestheticPredictor(str(file), layout, dim, head, metadata.get(CLIP_METADATA_KEY), None, metadata)
    if looks_like_hub_id(source) and not source.endswith(PICKLE_SUFFIXES + (".safetensors",)):
        return _load_folder(_snapshot(source, allow_pickle), allow_pickle, target)
    raise AestheticModelError(f"aesthetic weights {source}: no such file or folder; check {AESTHETIC_OPTION}")


def default_clip_for(predictor: AestheticPredictor, clip_embed_dim: int | None, clip_source: str | None) -> tuple[str | None, str | None]:
    """(CLIP to embed images with, note) for a head file; (None, None) when the predictor brings its own.

    Order: the CLIP recorded in the file's metadata; the evaluation CLIP when its
    embedding size matches (noted as an assumption); LAION's CLIP for that size.
    """
    if predictor.embedder is not None:
        return None, None
    if predictor.clip_hint:
        return predictor.clip_hint, None
    if clip_embed_dim == predictor.input_dim and clip_source:
        return clip_source, (
            f"aesthetic head assumed to read {clip_source} embeddings (same {clip_embed_dim}-d size); "
            "pass --aesthetic-clip if it was trained on another CLIP"
        )
    guess = CLIP_FOR_DIM.get(predictor.input_dim)
    if guess is None:
        raise AestheticModelError(
            f"aesthetic head {predictor.path} reads {predictor.input_dim}-d embeddings; pass the CLIP it was trained on with --aesthetic-clip"
        )
    return guess, f"aesthetic head reads {predictor.input_dim}-d embeddings: using {guess}, the CLIP LAION's heads of that size use"
