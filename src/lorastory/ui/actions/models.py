"""Which models the app offers and how a choice becomes what the library loads: workspace folders,
single files or a hub id, and the embedded toy models written on first start."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lorastory.errors import ConfigError, LorastoryError
from lorastory.hub import hub_reachable, looks_like_hub_id
from lorastory.models.fp8 import check_base_dtype
from lorastory.models.ip_adapter import DEFAULT_IP_ADAPTERS
from lorastory.models.registry import declared_family
from lorastory.models.toy import write_toy_model
from lorastory.ui.workspace import PathRefused, Workspace

DEFAULT_MODEL = "models/toy-kolors"
DEFAULT_CLIP = "models/toy-clip"


def ensure_default_model(ws: Workspace, say: Callable[[str], None] = print) -> Path:
    """The workspace's default model: the embedded toy Kolors (and toy CLIP for scoring), written
    there when missing."""
    target = ws.resolve(DEFAULT_MODEL)
    for folder, component in ((target, "kolors"), (ws.resolve(DEFAULT_CLIP), "clip")):
        if not any(folder.glob("*.json")):
            say(f"writing the embedded toy {component} model to {folder} (the default until you add a real one)...")
            write_toy_model(folder, component)
    return target


def model_choices(ws: Workspace) -> list[str]:
    """Diffusion models in ``models/``: diffusers folders of a registered family (:mod:`lorastory.models.registry`)
    and single .safetensors files. A folder of a pipeline no family knows is left out: it would not load."""
    found = [p for p in ws.list("models", "*", dirs=True) if _known_family(ws.root / p)]
    found += [p for p in ws.list("models", "*.safetensors") if "lora" not in Path(p).name.lower()]
    return found


def _known_family(folder: Path) -> bool:
    if not (folder / "model_index.json").is_file():
        return False
    try:
        return declared_family(folder) is not None
    except LorastoryError:  # an unreadable model_index.json
        return False


def clip_choices(ws: Workspace) -> list[str]:
    """CLIP / Chinese-CLIP folders in ``models/`` (what evaluation scores with)."""
    found = []
    for rel in ws.list("models", "*", dirs=True):
        config = ws.root / rel / "config.json"
        try:
            kind = json.loads(config.read_text(encoding="utf-8")).get("model_type", "")
        except (OSError, ValueError):
            continue
        if "clip" in str(kind):
            found.append(rel)
    return found


def resolve_model(ws: Workspace, value: str | None) -> str:
    """A model choice as the library wants it: a workspace path, or a hub id (never another local path)."""
    value = (value or "").strip() or DEFAULT_MODEL
    try:
        return str(ws.resolve(value, must_exist=True))
    except PathRefused:
        if looks_like_hub_id(value) and not os.path.exists(value):
            return value
        raise


def in_hub_cache(repo_id: str) -> bool:
    """Whether the local Hugging Face cache holds a download of ``repo_id`` (any files of it)."""
    from huggingface_hub import constants

    return (Path(constants.HF_HUB_CACHE) / f"models--{repo_id.replace('/', '--')}" / "snapshots").is_dir()


def check_hub_id(repo_id: str, what: str) -> None:
    """Refuse a hub id now, before a job is queued, when it is not cached and the hub cannot be reached
    (the job would fail only after its turn, or wait on retries). A path passes."""
    if Path(repo_id).is_absolute() or not looks_like_hub_id(repo_id):
        return
    if not in_hub_cache(repo_id) and not hub_reachable():
        raise ConfigError(f"{what} '{repo_id}' is not downloaded and there is no network here; put it in models/ "
                          "(a folder in the workspace) and choose it from the list")


def go_offline_without_network() -> bool:
    """Without network, tell the Hugging Face libraries so (``HF_HUB_OFFLINE``): a missing file then
    fails at once instead of after half a minute of retries. Return whether the app is offline."""
    if hub_reachable():
        return False
    os.environ["HF_HUB_OFFLINE"] = "1"
    from huggingface_hub import constants

    constants.HF_HUB_OFFLINE = True  # read once, when huggingface_hub was imported
    return True


def lora_choices(ws: Workspace) -> list[str]:
    """LoRA files: trained runs' ``lora*.safetensors`` and any in ``models/``."""
    return ws.list("runs", "*/lora*.safetensors") + ws.list("models", "*lora*.safetensors")


def ip_adapter_choices(ws: Workspace) -> list[str]:
    """IP-Adapter folders in ``models/``: those with a CLIP image encoder where the published layouts keep it."""
    encoders = sorted({spec.image_encoder for spec in DEFAULT_IP_ADAPTERS.values()})
    return [p for p in ws.list("models", "*", dirs=True) if any((ws.root / p / e).is_dir() for e in encoders)]


def job_device() -> Any:
    """Where the app's jobs run: the CUDA GPU when there is one, else the CPU (as the library chooses)."""
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def check_machine(base_dtype: str | None, offload: bool = False, device: Any = None) -> None:
    """Refuse now, in the library's one line, a base dtype or offload this machine cannot run (no CUDA, no
    torchao, an fp8 matmul the GPU lacks), before a job is queued to fail after its turn."""
    target = job_device() if device is None else device
    check_base_dtype(base_dtype or "default", target)
    if offload and getattr(target, "type", str(target)) != "cuda":
        raise ConfigError("--offload moves models on and off a CUDA GPU; this machine has none: leave it out")
