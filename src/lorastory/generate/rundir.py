"""Story run folders: what ``generate`` writes, reading its manifest back, and replacing it safely.

A run folder holds ``panel-NN.png``, ``storyboard.png``, ``manifest.json``, ``story.yaml`` and, in
the reference consistency modes, ``reference.png``. The rules that keep a user's files safe:

* an existing non-empty folder is written into only if it is an earlier run of ours (it has our
  ``manifest.json``) and the caller allows ``overwrite``; then only the files that run wrote are
  replaced, panels of a longer earlier run are removed, and any other file is left alone
  (a new file would replace one the earlier run did not write: refused);
* a run is rendered into a hidden staging folder and moved in at the end: into a new folder by
  one rename, into an existing one with a journal (:func:`lorastory.fileio.atomic_files`), so a
  crash leaves the earlier run or the new one, and a kill between renames is completed next time;
* a manifest written by someone else is checked field by field (:class:`RunManifest`) before anything is rendered.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from lorastory.config import read_text
from lorastory.errors import ConfigError, DataError, OutputError
from lorastory.fileio import (
    atomic_files,
    atomic_write_text,
    clean_stale_temps,
    display_path,
    finish_commit,
    parse_json,
)
from lorastory.generate.consistency_settings import REFERENCE_FILE
from lorastory.generate.manifest import RunManifest

MANIFEST_FILE = "manifest.json"
STORY_FILE = "story.yaml"
STORYBOARD_FILE = "storyboard.png"
MAX_MANIFEST_BYTES = 64 << 20
# Files of ours that a later run may delete when it no longer writes them.
_OWN_NAME = re.compile(r"^(panel-\d{2,}\.png|reference\.png)$")
_STAGE_PREFIX = ".lorastory-run"


# --------------------------------------------------------------------------- the manifest


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write ``obj`` as indented UTF-8 JSON atomically; NaN or Infinity is a bug, never written."""
    if isinstance(obj, RunManifest):
        obj = obj.model_dump(exclude_unset=True)
    atomic_write_text(path, json.dumps(obj, ensure_ascii=False, indent=2, allow_nan=False) + "\n")


def read_manifest(path: str | os.PathLike[str]) -> RunManifest:
    """A run's ``manifest.json``, checked (:class:`RunManifest`); any problem is one :class:`DataError` naming it."""
    file = Path(path)
    source = display_path(file)
    if not file.exists() and not file.is_symlink():
        raise DataError(f"{source}: no such file; pass a run folder that 'lorastory generate' wrote")
    try:
        if file.is_file() and file.stat().st_size > MAX_MANIFEST_BYTES:
            raise DataError(f"{source}: over {MAX_MANIFEST_BYTES >> 20} MiB, not a manifest lorastory wrote")
        text = read_text(file)  # a FIFO or folder: "not a regular file"; bad bytes: "not UTF-8 text"
    except ConfigError as err:
        raise DataError(str(err)) from None
    except OSError as err:
        raise DataError(f"{source}: {err.strerror}") from None
    return RunManifest.from_data(parse_json(text, source), source)


def manifest_files(manifest: RunManifest) -> set[str]:
    """The names of the files the run that wrote ``manifest`` put in its folder."""
    names = {MANIFEST_FILE, STORY_FILE, manifest.storyboard or STORYBOARD_FILE}
    names.update(record.file for record in manifest.panels)
    consistency = manifest.consistency
    reference = consistency.get("reference") if isinstance(consistency, dict) else None
    if isinstance(reference, dict) and reference.get("file") == REFERENCE_FILE:
        names.add(REFERENCE_FILE)
    return names


# --------------------------------------------------------------------------- writing a run


def prepare_output(out: str | os.PathLike[str], names: Iterable[str], overwrite: bool) -> set[str]:
    """Check that a run writing ``names`` may go to ``out``; return the earlier run's files it may replace.

    A missing or empty folder: fine. A non-empty one: only an earlier run of ours (it has our
    ``manifest.json``) with ``overwrite``; and none of ``names`` may be a file that run did not write.
    """
    folder = Path(out)
    where = display_path(folder)
    if not folder.exists() and not folder.is_symlink():
        return set()
    if not folder.is_dir():
        raise OutputError(f"--out {where} exists and is not a folder; choose a new --out")
    finish_commit(folder / MANIFEST_FILE)  # a run killed while moving its files in: complete it first
    clean_stale_temps(folder)
    if not any(os.scandir(folder)):
        return set()
    manifest = folder / MANIFEST_FILE
    if not manifest.exists():
        raise OutputError(f"--out {where} is not empty and not a lorastory run folder (no {MANIFEST_FILE}); "
                          "choose a new --out")
    if not overwrite:
        raise OutputError(f"--out {where} is not empty (an earlier run); choose a new --out or pass --overwrite")
    try:
        earlier = manifest_files(read_manifest(manifest))
    except DataError as err:
        raise OutputError(f"{err}; or choose a new --out") from None
    for name in names:
        target = folder / name
        if (target.exists() or target.is_symlink()) and name not in earlier:
            raise OutputError(f"{display_path(target)} is not a file of the earlier run in --out; "
                              "move it away or choose a new --out")
        if target.is_dir() and not target.is_symlink():
            raise OutputError(f"{display_path(target)} is a folder; move it away or choose a new --out")
    return earlier


def staging_dir(out: str | os.PathLike[str]) -> Path:
    """A new hidden folder to render into: inside ``out`` if it exists, else beside it (cleaned after a kill)."""
    folder = Path(out)
    try:
        if folder.is_dir():
            return Path(tempfile.mkdtemp(prefix=f"{_STAGE_PREFIX}.{os.getpid()}.", suffix=".tmp", dir=folder))
        folder.parent.mkdir(parents=True, exist_ok=True)
        clean_stale_temps(folder.parent, folder.name)
        return Path(tempfile.mkdtemp(prefix=f".{folder.name}.{os.getpid()}.", suffix=".tmp", dir=folder.parent))
    except OSError as err:
        raise OutputError(f"--out {display_path(folder)}: cannot write there ({err.strerror or err}); "
                          "choose another output") from None


def _dir_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o777 & ~umask


def commit_run(staging: Path, out: str | os.PathLike[str], earlier: set[str]) -> None:
    """Move a finished run from ``staging`` into ``out``: all its files, then remove the earlier run's extra panels."""
    folder = Path(out)
    if staging.parent != folder:  # a new folder: one rename
        os.chmod(staging, _dir_mode())
        try:
            os.rename(staging, folder)
        except OSError as err:  # another process made --out meanwhile
            raise OutputError(f"--out {display_path(folder)}: cannot move the finished run in ({err.strerror}); "
                              "choose a new --out") from None
        return
    names = sorted(p.name for p in staging.iterdir())
    order = [MANIFEST_FILE] + [n for n in names if n != MANIFEST_FILE]
    with atomic_files([folder / name for name in order]) as temps:
        for name, temp in zip(order, temps):
            os.replace(staging / name, temp)
    for name in sorted(earlier - set(names)):
        if _OWN_NAME.match(name):
            with contextlib.suppress(FileNotFoundError):
                (folder / name).unlink()


def remove_staging(staging: Path | None) -> None:
    if staging is not None:
        shutil.rmtree(staging, ignore_errors=True)
