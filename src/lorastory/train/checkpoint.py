"""Training checkpoints: everything needed to continue bit-exactly.

A checkpoint is a folder ``checkpoints/step-000123/`` written atomically, once,
by the main process: the LoRA parameters (safetensors; identical on every
process under DDP), optimizer and lr-scheduler state (our own files, read back
with ``weights_only=True``), each process's global random generators, and the
data position in samples (see :mod:`lorastory.train.order`), so a run can go on
with another number of processes.
"""

from __future__ import annotations

import json
import random
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from lorastory.errors import LorastoryError
from lorastory.fileio import atomic_dir

_STEP_DIR = re.compile(r"^step-(\d+)$")


class CheckpointError(LorastoryError):
    """A checkpoint is missing, damaged, or from a different configuration."""


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
) -> Path:
    """Write a checkpoint for ``position`` and drop all but the newest ``keep``.

    ``rng_states`` holds every process's :func:`rng_state`, in process order.
    """
    target = checkpoint_dir(out, position.global_step)
    with atomic_dir(target) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in lora.items()}, str(tmp / "lora_params.safetensors"))
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, tmp / "optimizer.pt")
        torch.save({"processes": rng_states}, tmp / "rng.pt")
        (tmp / "state.json").write_text(json.dumps(asdict(position), indent=2) + "\n", encoding="utf-8")
    for _, old in list_checkpoints(out)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return target


def read_position(folder: Path, fingerprint: str) -> Position:
    """The data position a checkpoint was written at; refuses one from other training settings."""
    try:
        data = json.loads((folder / "state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{folder}: damaged checkpoint ({err})") from None
    if "batches_done" in data:
        raise CheckpointError(f"{folder} was written by an older lorastory that counted batches; start a new --out folder")
    try:
        position = Position(**data)
    except TypeError as err:
        raise CheckpointError(f"{folder}: damaged checkpoint ({err})") from None
    if position.fingerprint != fingerprint:
        raise CheckpointError(
            f"{folder} was written with different training settings; resume with the same config "
            "or start a new --out folder"
        )
    return position


def load_checkpoint(
    folder: Path, optimizer: Any, scheduler: Any, process_index: int = 0
) -> dict[str, torch.Tensor]:
    """Restore optimizer, scheduler and this process's generators from ``folder``; return the LoRA tensors.

    Process ``i`` takes the generators process ``i`` saved; with more processes than wrote the
    checkpoint, process ``i`` takes those of process ``i mod n``.
    """
    try:
        lora = load_file(str(folder / "lora_params.safetensors"))
        states = torch.load(folder / "optimizer.pt", map_location="cpu", weights_only=True)
        rng = torch.load(folder / "rng.pt", map_location="cpu", weights_only=True)
        saved = rng["processes"]
    except (OSError, ValueError, TypeError, KeyError, RuntimeError) as err:
        raise CheckpointError(f"{folder}: damaged checkpoint ({err})") from None
    optimizer.load_state_dict(states["optimizer"])
    scheduler.load_state_dict(states["scheduler"])
    _restore_rng(saved[process_index % len(saved)])
    return lora
