"""Run a training script unchanged and record when each optimizer step finishes, and the peak GPU memory.

    python bench/_step_timer.py OUT.json [--memory-gb N] [--phases] -- SCRIPT.py ARGS...
    python bench/_step_timer.py OUT.json -- -m MODULE ARGS...

The same clock is put on every tool the peer benchmarks compare (``bench/peer_kohya.py``): a global
optimizer step post-hook (``torch.optim.optimizer.register_optimizer_step_post_hook``) synchronises
CUDA and notes the time, whichever trainer calls ``step``. Steady-state images per second come from
the later steps, so model loading, caching and compilation are left out for every tool alike.
``--memory-gb`` caps this process's GPU memory (``torch.cuda.set_per_process_memory_fraction``), so a
configuration "under 24 GB" either fits or fails with an out-of-memory error. ``LORASTORY_BENCH_NO_CUDNN_SDPA=1``
in the environment turns cuDNN's SDPA backend off before the script starts. Peak memory is written for the
whole process and, as ``peak_after_first_step_gb``, for the steps after the first (training alone: loading and
caching left out). ``--phases`` also times
the phases of a ``lorastory`` command (load, text encoding, denoising, VAE, PNG writing, grid, cache;
``_phases.py``).
"""

from __future__ import annotations

import atexit
import json
import os
import runpy
import sys
import time
from pathlib import Path

# Set to "1": cuDNN's fused attention is left out of scaled_dot_product_attention for the whole run (torch picks
# flash, efficient or math instead), for a trainer that meets cuDNN's attention-backward defect on its own.
NO_CUDNN_SDPA = "LORASTORY_BENCH_NO_CUDNN_SDPA"


def main() -> None:
    argv = sys.argv[1:]
    if "--" not in argv or not argv:
        raise SystemExit(__doc__)
    split = argv.index("--")
    out, options, target = argv[0], argv[1:split], argv[split + 1:]
    memory_gb = float(options[options.index("--memory-gb") + 1]) if "--memory-gb" in options else None
    phases = None
    installed_s = None

    import torch

    times: list[float] = []
    started = time.perf_counter()

    before_steps = {"allocated": 0.0, "reserved": 0.0}  # peaks up to the first step's end (loading, caching)

    def on_step(optimizer: object, args: object, kwargs: object) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
        if len(times) == 1 and torch.cuda.is_available():  # from here on the peak is the training steps' own
            before_steps.update(allocated=torch.cuda.max_memory_allocated() / 1024**3,
                                reserved=torch.cuda.max_memory_reserved() / 1024**3)
            torch.cuda.reset_peak_memory_stats()

    from torch.optim.optimizer import register_optimizer_step_post_hook

    register_optimizer_step_post_hook(on_step)
    if "--phases" in options:
        from _phases import install

        phases = install(started)
        # Installing imports the wrapped modules (diffusers, transformers, lorastory's stages): most of what the
        # command itself would import before loading. Recorded so "load starts at" can be read against it.
        installed_s = time.perf_counter() - started
    if os.environ.get(NO_CUDNN_SDPA) == "1":  # the whole process, whichever trainer runs (bench/flux_peers.py)
        torch.backends.cuda.enable_cudnn_sdp(False)
    if memory_gb is not None and torch.cuda.is_available():
        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, memory_gb * 1024**3 / total))

    def write() -> None:
        steps_peak = torch.cuda.max_memory_allocated() / 1024**3 if torch.cuda.is_available() else 0.0
        reserved = torch.cuda.max_memory_reserved() / 1024**3 if torch.cuda.is_available() else 0.0
        with open(out, "w", encoding="utf-8") as handle:
            json.dump({"step_times": times, "peak_allocated_gb": max(steps_peak, before_steps["allocated"]),
                       "peak_reserved_gb": max(reserved, before_steps["reserved"]),
                       "peak_after_first_step_gb": steps_peak if len(times) > 1 else None,
                       "phases_installed_s": installed_s,
                       "wall_s": time.perf_counter() - started, "memory_cap_gb": memory_gb,
                       "phases": phases.report() if phases else None}, handle)

    atexit.register(write)
    if target[0] == "-m":
        sys.argv = [target[1], *target[2:]]
        runpy.run_module(target[1], run_name="__main__", alter_sys=True)
    else:
        sys.argv = target
        sys.path.insert(0, str(Path(target[0]).resolve().parent))
        runpy.run_path(target[0], run_name="__main__")


if __name__ == "__main__":
    main()
