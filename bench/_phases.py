"""Where a ``lorastory`` command's time goes: named phases timed by wrapping the functions that do them.

Installed by ``_step_timer.py --phases`` before the command runs in the same process. Each wrapper
synchronises CUDA when its call ends (on the main thread), so a phase's seconds include the GPU work it queued. Phases can
nest (the text encoding and the VAE decode run inside the pipeline call), so ``report`` also gives the
pipeline call's own part (the denoising loop).
"""

from __future__ import annotations

import functools
import importlib
import threading
import time
from typing import Any

# phase -> "module:attribute.path" of every function that does it (those that do not import are skipped).
PHASES: dict[str, list[str]] = {
    # the names as the calling modules imported them (a wrapper on the defining module would not be seen)
    "load": ["lorastory.generate.story:load_pipeline", "lorastory.train.trainer:load_for_training"],
    "speed setup": ["lorastory.generate.story:prepare_for_speed", "lorastory.train.trainer:prepare_fast_path"],
    "pipeline call": ["diffusers:KolorsPipeline.__call__", "diffusers:StableDiffusionXLPipeline.__call__"],
    "text encoding": ["diffusers:KolorsPipeline.encode_prompt", "diffusers:StableDiffusionXLPipeline.encode_prompt"],
    "vae decode": ["diffusers:AutoencoderKL.decode"],
    # panels are written on a PictureWriter's threads: their seconds add up the threads' (overlapping) time
    "png writing": ["lorastory.generate.render:save_png", "lorastory.generate.render:save_png_with_parameters",
                    "lorastory.generate.render:save_png_with_info"],
    "grid": ["lorastory.generate.story:save_storyboard"],
    # the run waiting for the last writes: its last end is when every picture is on disk
    "writes waited": ["lorastory.generate.writer:PictureWriter.wait"],
    "cache": ["lorastory.train.trainer:build_caches"],
}


class Phases:
    def __init__(self, started: float) -> None:
        self.started = started
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self.first_start: dict[str, float] = {}
        self.last_end: dict[str, float] = {}
        self._lock = threading.Lock()

    def wrap(self, name: str, fn: Any) -> Any:
        import torch

        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            self.first_start.setdefault(name, start - self.started)
            try:
                return fn(*args, **kwargs)
            finally:
                # a writer thread must not wait for the GPU work the main thread queues meanwhile
                if torch.cuda.is_available() and threading.current_thread() is threading.main_thread():
                    torch.cuda.synchronize()
                end = time.perf_counter()
                with self._lock:  # writer threads end calls at the same time
                    self.seconds[name] = self.seconds.get(name, 0.0) + end - start
                    self.calls[name] = self.calls.get(name, 0) + 1
                    self.last_end[name] = max(self.last_end.get(name, 0.0), end - self.started)

        return timed

    def report(self) -> dict[str, Any]:
        own = self.seconds.get("pipeline call", 0.0) - self.seconds.get("text encoding", 0.0) - self.seconds.get(
            "vae decode", 0.0)
        return {"seconds": {k: round(v, 2) for k, v in self.seconds.items()},
                "denoising_s": round(own, 2) if "pipeline call" in self.seconds else None,
                "calls": self.calls, "first_start_s": {k: round(v, 2) for k, v in self.first_start.items()},
                "last_end_s": {k: round(v, 2) for k, v in self.last_end.items()}}


def install(started: float) -> Phases:
    """Wrap every function of :data:`PHASES` that imports; return the collector."""
    phases = Phases(started)
    for name, targets in PHASES.items():
        for target in targets:
            module_name, path = target.split(":")
            try:
                owner: Any = importlib.import_module(module_name)
            except ImportError:
                continue
            *parents, attribute = path.split(".")
            for part in parents:
                owner = getattr(owner, part, None)
            if owner is None or not hasattr(owner, attribute):
                continue
            setattr(owner, attribute, phases.wrap(name, getattr(owner, attribute)))
    return phases
