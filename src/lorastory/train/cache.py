"""The latent and text-embedding cache.

Each item's latents and each caption's embeddings are one safetensors file
named by a hash of everything that determines them (model weights, image
file, placement; model, caption). A change to one caption or one crop
recomputes only that entry; an unchanged dataset is never re-encoded. After
caching, the trainer frees the VAE and text encoder.

Several processes fill one cache together: each encodes its share of the
missing entries (:func:`missing_share`). An entry is written to a uniquely
named temporary file and renamed into place, so readers, and other processes
or runs writing the same folder, only ever see complete entries. An entry that is
there but incomplete anyway (truncated by a full disk or a crash of the machine,
emptied, overwritten) counts as missing: it is re-encoded and listed in
:attr:`TensorCache.damaged`, never a crash.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import socket
import struct
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lorastory.errors import DataError
from lorastory.fileio import pid_alive
from lorastory.models.conditioning import encode_text
from lorastory.models.vae import encode_latents
from lorastory.train.data import Placement, TrainItem, load_pixels

if TYPE_CHECKING:
    import torch


def component_fingerprint(model_dir: str | None, component: str) -> str:
    """A hash of a pipeline component's config and weight files (name, size, mtime)."""
    digest = hashlib.sha256(component.encode())
    folder = Path(model_dir or "") / component
    if model_dir and folder.is_dir():
        for file in sorted(folder.iterdir()):
            stat = file.stat()
            digest.update(f"{file.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
            if file.suffix == ".json":
                digest.update(file.read_bytes())
    else:
        digest.update(str(model_dir).encode())
    return digest.hexdigest()


def _key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def latent_key(vae_fingerprint: str, item: TrainItem, placement: Placement) -> str:
    stat = os.stat(item.path)
    return _key("latents", vae_fingerprint, os.path.abspath(item.path), stat.st_size, stat.st_mtime_ns, asdict(placement))


def text_key(text_fingerprint: str, caption: str) -> str:
    return _key("text", text_fingerprint, caption)


class TensorCache:
    """A folder of safetensors files addressed by key."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.damaged: set[str] = set()  # keys whose file was there but incomplete (re-encoded)

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.safetensors"

    def has(self, key: str) -> bool:
        """Whether a complete entry is there; an incomplete one is remembered in :attr:`damaged`."""
        path = self.path(key)
        if not path.is_file():
            return False
        if complete_safetensors(path):
            return True
        self.damaged.add(key)
        return False

    def load(self, key: str) -> dict[str, torch.Tensor]:
        from safetensors.torch import load_file

        path = self.path(key)
        try:
            return load_file(str(path))
        except Exception as err:  # noqa: BLE001 - safetensors raises several types for a bad file
            raise DataError(f"cache entry {path} cannot be read ({type(err).__name__}); delete it and run again "
                            "to re-encode it") from None

    def save(self, key: str, tensors: dict[str, torch.Tensor]) -> None:
        from safetensors.torch import save_file

        target = self.path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        # Unique across processes and machines sharing the folder (pids alone are not).
        tmp = target.parent / f".{target.name}.{_HOST}-{os.getpid()}.{uuid.uuid4().hex}.tmp"
        try:
            save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp))
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise


_MAX_HEADER = 100 * 2**20
_HOST = re.sub(r"[^A-Za-z0-9_]", "_", socket.gethostname())[:64] or "host"
_TEMP = re.compile(r"^\..+\.safetensors\.(?:(?P<host>\w+)-(?P<pid>\d+)\.)?[0-9a-f]{32}\.tmp$")
_STALE_SECONDS = 24 * 3600


def clean_cache_temps(cache: TensorCache) -> int:
    """Remove temp files of killed writers: those of dead processes of this machine, and any a day old
    (another machine's, or of an older lorastory); return how many."""
    removed = 0
    try:
        folders = [e for e in os.scandir(cache.root) if e.is_dir(follow_symlinks=False) and len(e.name) == 2]
    except OSError:
        return 0
    for folder in folders:
        with contextlib.suppress(OSError):
            for entry in os.scandir(folder.path):
                match = _TEMP.match(entry.name)
                if match is None:
                    continue
                mine_dead = match["host"] == _HOST and not pid_alive(int(match["pid"]))
                if mine_dead or time.time() - entry.stat(follow_symlinks=False).st_mtime > _STALE_SECONDS:
                    with contextlib.suppress(OSError):
                        os.unlink(entry.path)
                        removed += 1
    return removed


def complete_safetensors(path: Path) -> bool:
    """Whether ``path`` is a whole safetensors file: its header parses and the file is exactly as
    long as the header's tensors say (a truncated or padded file is not), without reading the data."""
    try:
        with open(path, "rb") as handle:
            prefix = handle.read(8)
            if len(prefix) != 8:
                return False
            (header_size,) = struct.unpack("<Q", prefix)
            if not 2 <= header_size <= _MAX_HEADER:
                return False
            header = json.loads(handle.read(header_size))
            size = os.fstat(handle.fileno()).st_size
    except (OSError, ValueError, RecursionError):
        return False
    if not isinstance(header, dict):
        return False
    end = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        offsets = info.get("data_offsets") if isinstance(info, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
            return False
        end = max(end, offsets[1])
    return size == 8 + header_size + end


def missing_share(cache: TensorCache, keys: Iterable[str], processes: Any) -> list[str]:
    """The missing entries of ``keys`` that this process encodes: its part of them, split in order.

    ``processes`` is the ``Accelerator`` (or accelerate ``PartialState``). Every process calls
    this at the same point with the same keys; a barrier after the listing makes sure no process
    has started writing while another still looks, so all split the same list.
    """
    missing = [key for key in dict.fromkeys(keys) if not cache.has(key)]
    processes.wait_for_everyone()
    with processes.split_between_processes(missing) as mine:
        return list(mine)


def fill_latents(
    cache: TensorCache,
    vae: Any,
    jobs: Sequence[tuple[str, TrainItem, Placement]],
    batch_size: int = 4,
    on_step: Callable[[int], None] | None = None,
    workers: int | None = None,
    only: Iterable[str] | None = None,
) -> int:
    """Encode the (key, item, placement) jobs missing from the cache (or, given, the keys ``only``);
    return how many entries were written.

    ``jobs`` are all of the run's jobs: batches are cut from them in order, the same whatever is
    cached already, so an entry's bits never depend on which others a killed run had written
    (a batch of another size may round differently). A batch with one entry to write is encoded
    whole. Pictures are decoded and resized on ``workers`` threads (default: up to 8), one batch
    ahead of the VAE, so the GPU does not wait on PNG decoding.
    """
    import torch

    wanted = set(only) if only is not None else {job[0] for job in jobs if not cache.has(job[0])}
    by_size: dict[tuple[int, int], list[tuple[str, TrainItem, Placement]]] = {}
    for job in dict((job[0], job) for job in jobs).values():
        by_size.setdefault(job[2].target, []).append(job)
    chunks = [chunk for chunk in _batches(list(by_size.values()), batch_size) if any(k in wanted for k, _, _ in chunk)]
    if not chunks:
        return 0
    with ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 1),
                            thread_name_prefix="lorastory-decode") as pool:

        def load(chunk: list[tuple[str, TrainItem, Placement]]) -> list[Any]:
            return [pool.submit(load_pixels, item, placement) for _, item, placement in chunk]

        upcoming = load(chunks[0])
        for index, chunk in enumerate(chunks):
            pixels = torch.stack([future.result() for future in upcoming])
            if index + 1 < len(chunks):
                upcoming = load(chunks[index + 1])
            latents = encode_latents(vae, pixels)
            written = [(key, latent) for (key, _, _), latent in zip(chunk, latents) if key in wanted]
            for key, latent in written:
                cache.save(key, {"latents": latent})
            if on_step is not None:
                on_step(len(written))
    return sum(key in wanted for chunk in chunks for key, _, _ in chunk)


def _batches(groups: list[list[Any]], size: int) -> list[list[Any]]:
    return [group[start : start + size] for group in groups for start in range(0, len(group), size)]


def fill_text(
    cache: TensorCache,
    pipe: Any,
    jobs: Sequence[tuple[str, str]],
    device: torch.device | str,
    batch_size: int = 8,
    only: Iterable[str] | None = None,
    on_step: Callable[[int], None] | None = None,
) -> int:
    """Encode the (key, caption) jobs missing from the cache (or the keys ``only``); return how many
    entries were written. Batches are cut from all ``jobs`` in order, as in :func:`fill_latents`;
    ``on_step`` gets each batch's count of written entries."""
    every = list(dict(jobs).items())
    wanted = set(only) if only is not None else {key for key, _ in every if not cache.has(key)}
    chunks = [chunk for chunk in _batches([every], batch_size) if any(key in wanted for key, _ in chunk)]
    for chunk in chunks:
        encoded = encode_text(pipe, [caption for _, caption in chunk], device)
        for index, (key, _) in enumerate(chunk):
            if key in wanted:
                cache.save(key, {name: value[index] for name, value in encoded.items()})
        if on_step is not None:
            on_step(sum(key in wanted for key, _ in chunk))
    return sum(key in wanted for chunk in chunks for key, _ in chunk)
