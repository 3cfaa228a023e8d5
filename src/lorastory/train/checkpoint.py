"""Training checkpoints: everything needed to continue bit-exactly.

A checkpoint is a folder ``checkpoints/step-000123/`` written atomically:
the LoRA parameters (safetensors), optimizer and lr-scheduler state (our own
files, read back with ``weights_only=True``), every random generator's state,
and the data position (epoch, batches already consumed).
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
    batches_done: int  # batches of ``epoch`` already consumed
    fingerprint: str


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


def _rng_state(generator: torch.Generator) -> dict[str, Any]:
    numpy_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "generator": generator.get_state(),
        "python": random.getstate(),
        "numpy": (numpy_state[0], numpy_state[1].tolist(), *numpy_state[2:]),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _restore_rng(state: dict[str, Any], generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    generator.set_state(state["generator"])
    random.setstate(state["python"])
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), *rest))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    out: Path,
    position: Position,
    lora: dict[str, torch.Tensor],
    optimizer: Any,
    scheduler: Any,
    generator: torch.Generator,
    keep: int,
) -> Path:
    """Write a checkpoint for ``position`` and drop all but the newest ``keep``."""
    target = checkpoint_dir(out, position.global_step)
    with atomic_dir(target) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in lora.items()}, str(tmp / "lora_params.safetensors"))
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, tmp / "optimizer.pt")
        torch.save(_rng_state(generator), tmp / "rng.pt")
        (tmp / "state.json").write_text(json.dumps(asdict(position), indent=2) + "\n", encoding="utf-8")
    for _, old in list_checkpoints(out)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return target


def load_checkpoint(
    folder: Path, fingerprint: str, optimizer: Any, scheduler: Any, generator: torch.Generator
) -> tuple[Position, dict[str, torch.Tensor]]:
    """Restore optimizer, scheduler and RNG from ``folder``; return the position and LoRA tensors."""
    try:
        position = Position(**json.loads((folder / "state.json").read_text(encoding="utf-8")))
        lora = load_file(str(folder / "lora_params.safetensors"))
        states = torch.load(folder / "optimizer.pt", map_location="cpu", weights_only=True)
        rng = torch.load(folder / "rng.pt", map_location="cpu", weights_only=True)
    except (OSError, ValueError, TypeError, KeyError, RuntimeError) as err:
        raise CheckpointError(f"{folder}: damaged checkpoint ({err})") from None
    if position.fingerprint != fingerprint:
        raise CheckpointError(
            f"{folder} was written with different training settings; resume with the same config "
            "or start a new --out folder"
        )
    optimizer.load_state_dict(states["optimizer"])
    scheduler.load_state_dict(states["scheduler"])
    _restore_rng(rng, generator)
    return position, lora
