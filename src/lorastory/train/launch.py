"""Start training in several processes on this machine: what ``lorastory train --gpus N`` runs.

It is a shortcut for ``accelerate launch``: the parent resolves and checks the settings, writes
them to a temporary YAML file, and runs ``python -m accelerate.commands.launch --multi_gpu
--num_processes N -m lorastory train THAT.yaml`` with the same Python. Each process then trains
its share (``lorastory.train.trainer``). For several machines, or for launcher options of your
own, call ``accelerate launch`` or ``torchrun`` yourself (README, "Scaling out").

With ``ACCELERATE_USE_CPU=1`` the processes run on the CPU (gloo backend); the tests use that.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from lorastory.errors import LorastoryError
from lorastory.train.config import TrainConfig
from lorastory.train.data import metadata_file


class LaunchError(LorastoryError):
    """Several training processes cannot be started (or one of them failed)."""


def launched_processes() -> int | None:
    """The number of processes of the launcher this process runs under (``WORLD_SIZE``), or None."""
    value = os.environ.get("WORLD_SIZE")
    return int(value) if value and value.isdigit() else None


def is_main_process() -> bool:
    """Whether this is the main process (rank 0), or a process not started by a launcher."""
    return os.environ.get("RANK", "0") == "0"


def use_cpu() -> bool:
    """Whether ``ACCELERATE_USE_CPU`` asks for processes on the CPU (the true values accelerate reads)."""
    return os.environ.get("ACCELERATE_USE_CPU", "").lower() in {"1", "true", "yes", "y", "t", "on"}


def check_gpus(processes: int) -> None:
    """Refuse more GPUs than this machine has (any number of processes runs on the CPU when asked to)."""
    if use_cpu():
        return
    import torch

    available = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if processes > available:
        raise LaunchError(
            f"--gpus {processes}: this machine has {available} GPU(s); pass --gpus {max(available, 1)} or fewer "
            "(or set ACCELERATE_USE_CPU=1 to run the processes on the CPU)"
        )


def launch_command(processes: int, target: Sequence[str]) -> list[str]:
    """``accelerate launch`` with ``processes`` (2 or more) data-parallel processes on this machine, running ``target``.

    ``target`` is a script and its arguments, or ``["-m", module, ...]``. Every launcher setting
    that matters is given, so a user's accelerate config (DeepSpeed, FSDP, GPU ids) cannot change
    the kind of run; a free port is picked, so two runs on one machine do not collide. The
    trainer sets its own mixed precision, whatever the launcher says.
    """
    return [
        sys.executable, "-m", "accelerate.commands.launch",
        "--multi_gpu", "--num_processes", str(processes), "--num_machines", "1", "--gpu_ids", "all",
        "--main_process_port", str(_free_port()), "--mixed_precision", "no", "--dynamo_backend", "no",
        *target,
    ]


def _free_port() -> int:
    """A TCP port no one listens on now (what accelerate's ``--main_process_port 0`` does, for any version)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run_on_gpus(config: TrainConfig, gpus: int, debug: bool = False, say: Callable[[str], None] = print) -> bool:
    """Act on ``--gpus``: check it, and train in ``gpus`` processes when it asks for more than one.

    Returns True when the processes have run (the caller is done), False when the calling
    process trains itself: one GPU, or a process already started by a launcher of that size.
    """
    launched = launched_processes()
    if launched:
        if gpus != launched:
            raise LaunchError(f"--gpus {gpus} inside a launcher that started {launched} processes: drop --gpus "
                              "when you use accelerate launch or torchrun yourself")
        return False
    check_gpus(gpus)
    if gpus == 1:
        return False
    launch_training(config, gpus, debug=debug, say=say)
    return True


def launch_training(config: TrainConfig, processes: int, debug: bool = False,
                    say: Callable[[str], None] = print) -> None:
    """Run ``lorastory train`` with ``config`` in ``processes`` processes; raise if one fails."""
    for dataset in config.resolved_datasets():
        metadata_file(dataset.folder)  # a wrong --data fails here, once, not in every process
    say(f"Starting {processes} training processes (accelerate launch)...")
    fd, path = tempfile.mkstemp(prefix="lorastory-train-", suffix=".yaml")
    os.close(fd)
    try:
        config.save_yaml(path)
        command = launch_command(processes, ["-m", "lorastory", *(["--debug"] if debug else []), "train", path])
        code = subprocess.run(command, check=False).returncode
    finally:
        with contextlib.suppress(FileNotFoundError):
            Path(path).unlink()
    if code:
        raise LaunchError(f"a training process failed (exit code {code}); its own message is above the launcher's report")
