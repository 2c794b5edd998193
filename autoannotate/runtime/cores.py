"""How many CPU cores this process may use: torch-free, for the pipeline's thread pools and the device plan."""

from __future__ import annotations

import os


def available_cores() -> int:
    """CPU cores this process may run on (affinity-aware, e.g. under taskset or a container's cpuset)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)
