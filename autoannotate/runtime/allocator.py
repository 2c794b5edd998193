"""Host memory allocator tuning for a long-running inference process (glibc only).

Why: every MobileSAM call allocates and frees tensors of 20 to 130 MB (the 256x256x256 stage-1 activations, the
image embedding repeated per box in the mask decoder). glibc serves allocations that large with a fresh ``mmap`` and
returns them with ``munmap`` on free, so each call starts by page-faulting its memory back in, 4 KiB at a time, and
the kernel zeroes every page. On our 2-core dev VM that was over 40% of the encoder's time (3.25M minor faults for
five encoder passes) and made elementwise ops such as GELU run 10x slower inside the model than on a warm buffer.
Keeping freed memory in the process (no mmap for large blocks, no trimming, one arena so that the inference
threads reuse each other's freed blocks) removes those faults: peak RSS stays about the same, it is simply not
returned to the system between images. ``benchmarks/bench_scaling.py --memory`` measures the RSS.

This is process-wide, so only an entry point calls it (the CLI's ``run`` and each Ray actor), before its inference
threads start. ``AUTOANNOTATE_MALLOC=system`` leaves the allocator as it is.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Mapping

__all__ = ["ENV_VAR", "tune_host_allocator"]

#: Environment variable that, set to ``system``, disables the tuning.
ENV_VAR = "AUTOANNOTATE_MALLOC"

# mallopt(3) parameter numbers from glibc's <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8
_TRIM_THRESHOLD_BYTES = 1 << 30


def tune_host_allocator(environ: Mapping[str, str] | None = None) -> bool:
    """Make glibc keep freed memory for reuse instead of unmapping it; True if applied.

    Does nothing (False) when ``AUTOANNOTATE_MALLOC=system`` (in ``environ``, default ``os.environ``) or the C
    library is not glibc (musl, macOS, Windows).
    """
    env = os.environ if environ is None else environ
    if env.get(ENV_VAR, "").strip().lower() == "system":
        return False
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 - only glibc has it; AttributeError elsewhere
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    applied = [
        mallopt(_M_MMAP_MAX, 0),  # large blocks come from the heap, so a freed block is reused, not unmapped
        mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD_BYTES),  # do not hand the heap top back after every image
        mallopt(_M_ARENA_MAX, 1),  # threads share one heap: a block freed by one worker serves the next
    ]
    return all(result == 1 for result in applied)
