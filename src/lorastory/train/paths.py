"""Where a training run writes, checked before anything loads: outputs apart from the inputs, writable
folders, and a ``family`` the model folder's configs do not contradict."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from lorastory.errors import OutputError
from lorastory.fileio import check_outputs_apart, display_path, real_path
from lorastory.models.registry import check_family, get_family
from lorastory.train.config import TrainConfig


def check_run_paths(config: TrainConfig) -> None:
    """Refuse, before anything loads, outputs that cannot be written or would land in an input,
    and a ``family`` the model folder's configs contradict.

    ``--out`` must not be, contain or lie inside the data or model folder; ``--cache-dir`` (which
    only adds hash-named files) must not be or contain them.
    """
    out = Path(config.out)
    cache = Path(config.cache_dir) if config.cache_dir else None
    inputs = [("--data", d.folder) for d in config.resolved_datasets()] + ([("--model", config.model)] if Path(config.model).exists() else [])
    check_outputs_apart([("--out", out)], inputs)
    if cache is not None:
        for label, given in inputs:
            if real_path(given) == real_path(cache) or real_path(cache) in real_path(given).parents:
                raise OutputError(f"--cache-dir {display_path(cache)} is or contains the input {label} "
                                  f"{display_path(given)}; choose a cache folder apart from it")
    _check_writable_folder("--out", out)
    if cache is not None:
        _check_writable_folder("--cache-dir", cache)
    if config.family and Path(config.model).is_dir():
        check_family(config.model, get_family(config.family))


def _check_writable_folder(label: str, folder: Path) -> None:
    """A folder that exists or can be made, and takes files; one line saying why not. Nothing is
    left behind: the test folder is made in the nearest existing folder and removed."""
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"{label} {display_path(folder)} is a file, not a folder: choose a folder")
    existing = next(p for p in (folder.absolute(), *folder.absolute().parents) if p.exists())
    if not existing.is_dir():
        raise OutputError(f"{label} {display_path(folder)} cannot be written ({display_path(existing)} is a file, "
                          "not a folder): choose another folder")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".lorastory-write-test.", dir=existing))
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise OutputError(f"{label} {display_path(folder)} cannot be written ({reason}): choose another folder") from None
