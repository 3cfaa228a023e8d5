"""Training checkpoints: everything needed to continue bit-exactly.

A checkpoint is a folder ``checkpoints/step-000123/`` written atomically, once,
by the main process: the LoRA parameters (safetensors; identical on every
process under DDP), optimizer and lr-scheduler state (our own files, read back
with ``weights_only=True``), the LoRA's moving average when the run keeps one
(``ema_params.safetensors``, fp32), each process's global random generators, and the
data position in samples (see :mod:`lorastory.train.order`), so a run can go on
with another number of processes.

Every file is fsynced before the folder is renamed into place, so a kill or a power
cut leaves either a complete checkpoint or none. One that fails to load anyway
(truncated, emptied, overwritten) is moved aside as ``step-NNNNNN.broken-N``,
never deleted, and the previous good one is used (:func:`newest_good_checkpoint`).
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lorastory.errors import LorastoryError, first_line
from lorastory.fileio import atomic_dir, clean_stale_temps

if TYPE_CHECKING:
    import torch

_STEP_DIR = re.compile(r"^step-(\d+)$")
EMA_FILE = "ema_params.safetensors"
_STEP_LORA = re.compile(r"^step-(\d+)\.safetensors$")
# Each checkpoint also leaves its LoRA (the default layout) in OUT/loras/step-NNNNNN.safetensors: small next to
# the optimizer state, and never pruned by ``keep_checkpoints``, so every checkpoint can be scored and chosen
# afterwards (``lorastory eval checkpoints``).
LORAS_DIR = "loras"


class CheckpointError(LorastoryError):
    """A checkpoint is missing, damaged, or from a different configuration."""


@dataclass
class Checkpoint:
    """A checkpoint read completely into memory: nothing of it can fail to load later."""

    folder: Path
    position: Position
    lora: dict[str, torch.Tensor]
    states: dict[str, Any]  # optimizer and scheduler state dicts
    rng: list[dict[str, Any]]  # each writing process's generators
    ema: dict[str, torch.Tensor] | None = None  # the moving average of the LoRA weights, when the run keeps one


@dataclass
class Position:
    """Where training stands."""

    global_step: int
    epoch: int
    samples_done: int  # samples of ``epoch`` already trained on, over all processes
    global_batch: int  # batch size × processes the epoch is being cut with
    history: list[tuple[int, int]]  # earlier parts of the epoch cut with other global batches (order.py)
    fingerprint: str
    processes: int = 1  # informational: how many processes wrote it


def checkpoint_dir(out: Path, step: int) -> Path:
    return out / "checkpoints" / f"step-{step:06d}"


def checkpoint_lora_path(out: Path, step: int) -> Path:
    """Where the LoRA of the checkpoint at ``step`` is kept (never pruned)."""
    return out / LORAS_DIR / f"step-{step:06d}.safetensors"


def list_checkpoint_loras(out: Path) -> list[tuple[int, Path]]:
    """The kept checkpoint LoRAs under ``out`` as (step, file), oldest first."""
    root = out / LORAS_DIR
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), f) for f in root.iterdir() if (m := _STEP_LORA.match(f.name)) and f.is_file()]
    return sorted(found)


def list_checkpoints(out: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints under ``out`` as (step, folder), oldest first."""
    root = out / "checkpoints"
    if not root.is_dir():
        return []
    found = []
    for folder in root.iterdir():
        match = _STEP_DIR.match(folder.name)
        if match and (folder / "state.json").is_file():
            found.append((int(match.group(1)), folder))
    return sorted(found)


def rng_state() -> dict[str, Any]:
    """This process's global generators (torch, CUDA of its own device, Python, NumPy)."""
    import numpy as np
    import torch

    numpy_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": (numpy_state[0], numpy_state[1].tolist(), *numpy_state[2:]),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _restore_rng(state: dict[str, Any]) -> None:
    import numpy as np
    import torch

    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), *rest))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def save_checkpoint(
    out: Path,
    position: Position,
    lora: dict[str, torch.Tensor],
    optimizer: Any,
    scheduler: Any,
    rng_states: list[dict[str, Any]],
    keep: int,
    ema: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write a checkpoint for ``position`` and drop all but the newest ``keep``.

    ``rng_states`` holds every process's :func:`rng_state`, in process order; ``ema`` the
    moving average of the LoRA weights, when the run keeps one.
    """
    import torch
    from safetensors.torch import save_file

    target = checkpoint_dir(out, position.global_step)
    with atomic_dir(target) as tmp:
        names = ["lora_params.safetensors", "optimizer.pt", "rng.pt", "state.json"]
        save_file({k: v.detach().cpu().contiguous() for k, v in lora.items()}, str(tmp / "lora_params.safetensors"))
        if ema is not None:
            save_file({k: v.detach().cpu().contiguous() for k, v in ema.items()}, str(tmp / EMA_FILE))
            names.append(EMA_FILE)
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, tmp / "optimizer.pt")
        torch.save({"processes": rng_states}, tmp / "rng.pt")
        (tmp / "state.json").write_text(json.dumps(asdict(position), indent=2) + "\n", encoding="utf-8")
        for name in names:
            _fsync(tmp / name)
        _fsync(tmp)
    _fsync(target.parent)  # the rename itself
    for _, old in list_checkpoints(out)[:-keep]:
        _remove(old)
    return target


def _remove(folder: Path) -> None:
    """Delete an old checkpoint: renamed to a temp name first, so a kill half-way through leaves
    what :func:`clean_checkpoint_temps` removes, never a half checkpoint that looks whole."""
    doomed = folder.with_name(f".{folder.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        os.replace(folder, doomed)
    except OSError:
        return
    shutil.rmtree(doomed, ignore_errors=True)


def clean_checkpoint_temps(out: Path) -> list[Path]:
    """Remove the half-written or half-deleted checkpoint folders of killed runs."""
    return clean_stale_temps(out / "checkpoints")


def _fsync(path: Path) -> None:
    """Flush a file's or a folder's contents to the disk."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def read_checkpoint(folder: Path, fingerprint: str) -> Checkpoint:
    """Read every file of a checkpoint; :class:`DamagedCheckpoint` names the file that does not load,
    :class:`CheckpointError` refuses one written with other training settings."""
    from safetensors.torch import load_file

    position = read_position(folder, fingerprint)
    lora = _load_part(folder / "lora_params.safetensors", lambda p: load_file(str(p)))
    states = _load_part(folder / "optimizer.pt", _torch_load)
    rng = _load_part(folder / "rng.pt", _torch_load)
    if not isinstance(states, dict) or not {"optimizer", "scheduler"} <= set(states):
        raise DamagedCheckpoint(folder / "optimizer.pt", "no optimizer and scheduler state")
    saved = rng.get("processes") if isinstance(rng, dict) else None
    if not isinstance(saved, list) or not saved:
        raise DamagedCheckpoint(folder / "rng.pt", "no random generator states")
    if not isinstance(lora, dict) or not lora:
        raise DamagedCheckpoint(folder / "lora_params.safetensors", "no LoRA weights")
    ema = _load_part(folder / EMA_FILE, lambda p: load_file(str(p))) if (folder / EMA_FILE).exists() else None
    return Checkpoint(folder, position, lora, states, saved, ema)


def _torch_load(path: Path) -> Any:
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)


def _load_part(path: Path, load: Callable[[Path], Any]) -> Any:
    try:
        return load(path)
    except Exception as err:  # noqa: BLE001 - safetensors, zipfile, pickle and torch raise many types for a bad file
        raise DamagedCheckpoint(path, first_line(err)) from None


class DamagedCheckpoint(CheckpointError):
    """A checkpoint file that does not load: truncated, empty or not what it should be."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path}: cannot be read ({reason})")
        self.path = path


def move_aside(folder: Path) -> Path:
    """Rename a damaged checkpoint to ``NAME.broken-N`` (kept for inspection, never deleted)."""
    for number in range(1, 10_000):
        aside = folder.with_name(f"{folder.name}.broken-{number}")
        if not aside.exists():
            os.replace(folder, aside)
            return aside
    raise CheckpointError(f"{folder}: damaged, and too many damaged copies beside it; remove the *.broken-* folders")


def newest_good_checkpoint(out: Path, fingerprint: str, say: Callable[[str], None],
                           move: bool = True) -> Checkpoint | None:
    """The newest checkpoint under ``out`` that loads completely; damaged newer ones are named,
    moved aside (when ``move``, i.e. on the main process) and skipped with a warning."""
    for _, folder in reversed(list_checkpoints(out)):
        try:
            return read_checkpoint(folder, fingerprint)
        except DamagedCheckpoint as err:
            where = f"moved aside to {move_aside(folder).name}" if move else "skipped"
            say(f"warning: checkpoint {folder.name} is damaged: {err}; {where}")
    return None


def read_position(folder: Path, fingerprint: str) -> Position:
    """The data position a checkpoint was written at; refuses one from other training settings."""
    try:
        data = json.loads((folder / "state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as err:
        raise DamagedCheckpoint(folder / "state.json", first_line(err)) from None
    if not isinstance(data, dict):
        raise DamagedCheckpoint(folder / "state.json", "not a JSON object")
    if "batches_done" in data:
        raise CheckpointError(f"{folder} was written by an older lorastory that counted batches; start a new --out folder")
    try:
        position = Position(**data)
    except TypeError as err:
        raise DamagedCheckpoint(folder / "state.json", first_line(err)) from None
    if not isinstance(position.fingerprint, str) or not all(
        isinstance(v, int) and v >= 0 for v in (position.global_step, position.epoch, position.samples_done)
    ) or not isinstance(position.global_batch, int) or position.global_batch < 1:
        raise DamagedCheckpoint(folder / "state.json", "position fields are not counts")
    if position.fingerprint != fingerprint:
        raise CheckpointError(
            f"{folder} was written with different training settings; resume with the same config "
            "or start a new --out folder"
        )
    return position


def apply_checkpoint(checkpoint: Checkpoint, optimizer: Any, scheduler: Any, process_index: int = 0) -> None:
    """Restore optimizer, scheduler and this process's generators from a read checkpoint.

    Process ``i`` takes the generators process ``i`` saved; with more processes than wrote the
    checkpoint, process ``i`` takes those of process ``i mod n``.
    """
    try:
        optimizer.load_state_dict(checkpoint.states["optimizer"])
        scheduler.load_state_dict(checkpoint.states["scheduler"])
        _restore_rng(checkpoint.rng[process_index % len(checkpoint.rng)])
    except (ValueError, TypeError, KeyError, IndexError, RuntimeError) as err:
        raise CheckpointError(f"{checkpoint.folder}: its optimizer or generator state does not fit this run "
                              f"({first_line(err)}); resume with the same config or start a new --out folder") from None
