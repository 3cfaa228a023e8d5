"""Reading a local model's weight files into memory while the model libraries import.

A load starts with seconds of imports (torch's compiler stack, diffusers' model zoo, transformers)
before the first byte of a weight file is read; then it reads every file (Kolors: 16.6 GB) in turn.
:func:`prefetch_weights` reads the files the load will open in a background thread, into the
operating system's page cache, so a model on a cold disk is read while the imports run instead of
after them; the load then finds the pages in memory. (``posix_fadvise(WILLNEED)`` would be the
polite way, but Linux reads only one readahead window of the range for it: 8 MB here.) The thread
reads through one 64 MB buffer and holds no GIL while it waits on the disk. Files whose total is more
than half the memory available are left alone (reading them ahead would push out the ones read
first), and so are hub ids.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from lorastory.memory import host_available_memory

WEIGHT_SUFFIX = ".safetensors"
# At most this share of the memory the system reports available is read ahead.
MEMORY_SHARE = 0.5
_BUFFER = 64 << 20  # one GIL hand-over per 64 MB read: the imports keep the interpreter
# Files already handed to a reader in this process: a command asks as early as it can, the load asks again.
_asked: set[Path] = set()
_lock = threading.Lock()


def weight_files(model: str | os.PathLike[str]) -> list[Path]:
    """The safetensors files a load of ``model`` (a diffusers folder or a single file) reads.

    In a folder, each component folder's files; where a component has both plain files and a variant's
    (``diffusion_pytorch_model.fp16.safetensors``, ``model.fp16-00001-of-00002.safetensors``), the plain
    ones, which a load without ``variant`` reads.
    """
    path = Path(os.path.expanduser(str(model)))
    if path.is_file():
        return [path] if path.suffix == WEIGHT_SUFFIX else []
    if not (path / "model_index.json").is_file():
        return []
    files: list[Path] = []
    for component in sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")):
        found = sorted(f for f in component.glob(f"*{WEIGHT_SUFFIX}") if f.is_file())
        plain = [f for f in found if "." not in f.name.removesuffix(WEIGHT_SUFFIX)]
        files += plain or found
    return files


def prefetch_weights(model: str | os.PathLike[str], memory: int | None = None) -> list[Path]:
    """Start reading ``model``'s weight files into the page cache in the background; return the files asked for.

    Returns at once (an empty list when nothing is read ahead, or when this process asked for them
    already); the reads go on in a daemon thread. ``memory`` (bytes available) is for tests; by default
    the system's figure.
    """
    try:
        files = weight_files(model)
        total = sum(f.stat().st_size for f in files)
    except OSError:
        return []  # an unreadable folder: the load says so in its own words
    memory = host_available_memory() if memory is None else memory
    if not files or memory is None or total > memory * MEMORY_SHARE:
        return []
    with _lock:
        files = [f for f in files if f.resolve() not in _asked]
        _asked.update(f.resolve() for f in files)
    if not files:
        return []
    threading.Thread(target=_read_ahead, args=(files,), name="lorastory-prefetch-weights", daemon=True).start()
    return files


def _read_ahead(files: list[Path]) -> None:
    buffer = bytearray(_BUFFER)
    for file in files:
        try:
            with open(file, "rb", buffering=0) as handle:
                while handle.readinto(buffer):
                    pass
        except OSError:
            continue  # the load itself reports a missing or unreadable file
