"""How much of this machine's memory is free for new data: the one reading the checks and the read-ahead share."""

from __future__ import annotations

import os


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
