"""Loading evaluation models from a local folder, the Hugging Face cache, or the hub.

Order: a local folder is loaded as is; a hub id is tried in the local cache
first, then on the hub if it can be reached. Without network (or with
``HF_HUB_OFFLINE=1``) a missing model fails at once with a message naming the
id and how to download it, instead of half a minute of retries.
"""

from __future__ import annotations

import functools
import os
import re
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from lorastory.errors import LorastoryError, first_line

_TRUE = {"1", "on", "yes", "true"}


# Weights files that are Python pickles: loading one can run code, so each is refused unless allowed.
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".pkl")


# owner/name as the Hugging Face hub spells them: letters, digits, '_', '-', '.'; no leading '.', no "..".
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[A-Za-z0-9_\-][\w.\-]*$")


def looks_like_hub_id(source: str) -> bool:
    """``owner/name`` that cannot be read as a path outside the current folder."""
    return bool(_HUB_ID.match(source)) and ".." not in source


def offline_by_env() -> bool:
    """True when the user asked for offline mode (``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE``)."""
    return any(os.environ.get(name, "").strip().lower() in _TRUE for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


@functools.lru_cache(maxsize=1)
def _endpoint_reachable() -> bool:
    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    host = url.hostname or "huggingface.co"
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=3):
            return True
    except OSError:
        return False


def hub_reachable() -> bool:
    """Whether downloading from the hub can work now (a 3-second probe, remembered per process)."""
    return not offline_by_env() and _endpoint_reachable()


def download_hint(repo_id: str, option: str) -> str:
    """How to get ``repo_id`` onto an offline machine."""
    return (
        f"download it where you have network (hf download {repo_id} --local-dir DIR, or huggingface-cli download) "
        f"and pass {option} DIR"
    )


def resolve_source(source: str, what: str, option: str, error: type[LorastoryError]) -> tuple[str, bool]:
    """(source to load, whether it is a local folder); a missing path or bad id raises ``error``."""
    path = Path(source).expanduser()
    if path.is_dir():
        return str(path), True
    if path.exists():
        raise error(f"{what} {source} is a file; pass a model folder (with config.json) or a hub id to {option}")
    if not looks_like_hub_id(source):
        raise error(f"{what} '{source}': no such folder, and not a hub id (owner/name); check {option}")
    return source, False


def from_pretrained(cls: Any, source: str, local: bool, what: str, option: str, error: type[LorastoryError], **kwargs: Any) -> Any:
    """``cls.from_pretrained(source)`` from the folder, the cache, or the hub; failures raise ``error``.

    Any exception while loading (missing or truncated files, a corrupt safetensors
    header, mismatched shapes) means the files cannot be used: it becomes ``error``.
    """
    try:
        return cls.from_pretrained(source, local_files_only=True, **kwargs)
    except Exception as err:  # noqa: BLE001 - every loading failure is the files' fault, reported in one line
        if local:
            raise error(f"cannot load {what} from {source}: {first_line(err)}") from None
        cached_error = err
    if not hub_reachable():
        reason = "HF_HUB_OFFLINE is set" if offline_by_env() else "the hub cannot be reached"
        raise error(f"{what} '{source}' is not in the local Hugging Face cache and {reason}; {download_hint(source, option)}") from None
    try:
        return cls.from_pretrained(source, **kwargs)
    except Exception as err:  # noqa: BLE001 - as above
        raise error(f"cannot load {what} '{source}' from the hub ({first_line(err)}; cache: {first_line(cached_error)})") from None


def check_source(source: str, what: str, option: str, error: type[LorastoryError]) -> None:
    """Fail early (before any work) when a model folder or hub id cannot be loaded from here.

    A folder needs ``config.json``; a hub id must be in the local cache or the hub
    must be reachable (its ``config.json`` is fetched now; the weights when loading).
    """
    path, local = resolve_source(source, what, option, error)
    if local:
        if not (Path(path) / "config.json").is_file():
            raise error(f"{what} {source}: no config.json; pass a model folder as save_pretrained writes it to {option}")
        return
    from huggingface_hub import hf_hub_download, try_to_load_from_cache

    if isinstance(try_to_load_from_cache(source, "config.json"), str):
        return
    if not hub_reachable():
        reason = "HF_HUB_OFFLINE is set" if offline_by_env() else "the hub cannot be reached"
        raise error(f"{what} '{source}' is not in the local Hugging Face cache and {reason}; {download_hint(source, option)}")
    try:
        hf_hub_download(source, "config.json")
    except Exception as err:  # missing repo, auth, network: all end the same way
        raise error(f"cannot find {what} '{source}' on the hub ({first_line(err)})") from None
