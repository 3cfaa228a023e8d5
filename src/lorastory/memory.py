"""How much of this machine's memory is free for new data: the one reading the checks and the read-ahead share."""

from __future__ import annotations

import os
from typing import Any


def host_available_memory() -> int | None:
    """Bytes of host memory available for new data (the kernel's MemAvailable: page cache that can be dropped
    included), or ``None`` where the system does not say."""
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def device_memory_budget(device: Any) -> int | None:
    """Bytes a run may still allocate on ``device``: on a CUDA GPU the free memory plus what torch's allocator
    holds unused, within any cap set with ``torch.cuda.set_per_process_memory_fraction``; on the CPU the host's
    available memory; ``None`` where neither can be read."""
    kind = getattr(device, "type", str(device))
    if kind != "cuda":
        return host_available_memory() if kind == "cpu" else None
    import torch

    # torch.device("cuda") names no GPU, and get_per_process_memory_fraction refuses it (torch 2.11): use the index.
    index = getattr(device, "index", None)
    index = torch.cuda.current_device() if index is None else index
    free, total = torch.cuda.mem_get_info(index)
    allocated = torch.cuda.memory_allocated(index)
    budget = free + torch.cuda.memory_reserved(index) - allocated
    fraction = getattr(torch.cuda, "get_per_process_memory_fraction", None)
    if fraction is not None:  # the cap bounds what the allocator reserves, ours included
        budget = min(budget, int(fraction(index) * total) - allocated)
    return max(0, budget)
