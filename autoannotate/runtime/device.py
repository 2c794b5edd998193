"""Device choice and how the CPU is shared: which torch device, how many images in flight, how many threads each.

On a CPU, MobileSAM's TinyViT encoder is a long chain of small operators that two threads speed up by well under
2x, while two images encoded at once on one thread each keep both cores busy. So on CPU several images are
inferred concurrently (one inference worker per core, up to 8) with torch's intra-op pool sized to the rest; on a
GPU one worker feeds the device and batching does the rest.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

import torch

from autoannotate.errors import ConfigError, excerpt, logs_held, one_line

MAX_CPU_WORKERS = 8


@dataclass(frozen=True)
class ComputePlan:
    """``infer_workers`` images (batches) inferred concurrently, torch using ``torch_threads`` threads."""

    device: torch.device
    infer_workers: int
    torch_threads: int


def available_cores() -> int:
    """CPU cores this process may run on (affinity-aware, e.g. under taskset or a container's cpuset)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


_DEVICE_HINT = "use '', 'cpu', 'cuda:0' or '0'"
# What --device may name: ultralytics' own spellings (a CUDA index or a comma-separated list of them, cpu, mps,
# npu/xpu with an optional index list); anything else is refused here, before ultralytics logs a banner for it.
_DEVICE_SPEC = re.compile(r"(|cpu|mps(:0)?|\d+(,\d+)*|(npu|xpu)(:\d+(,\d+)*)?)")


def select_device(device: str) -> torch.device:
    """``''`` (auto: first CUDA device, else CPU), ``cpu``, ``cuda:0`` or ``0`` to a torch device. ConfigError."""
    from ultralytics.utils.torch_utils import select_device as ultralytics_select_device

    spec = device.strip().lower()
    if spec.startswith("cuda:"):
        spec = spec[len("cuda:") :]
    if spec == "cuda":
        spec = "0"
    shown = excerpt(device)
    if not _DEVICE_SPEC.fullmatch(spec):
        raise ConfigError(f"invalid --device {shown}: not a device name; {_DEVICE_HINT}")
    if spec[:1].isdigit():
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        wanted = max(int(index) for index in spec.split(","))
        if count == 0:
            raise ConfigError(
                f"invalid --device {shown}: this machine has no CUDA device that torch sees; use '' or 'cpu'"
            )
        if wanted >= count:
            raise ConfigError(
                f"invalid --device {shown}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}"
            )
    try:
        with logs_held():  # ultralytics logs its banner before it raises: the error below is the one line
            selected: torch.device = ultralytics_select_device(spec, verbose=False)
    except (ValueError, RuntimeError, AssertionError) as err:
        raise ConfigError(f"invalid --device {shown}: {one_line(err, 100)} ({_DEVICE_HINT})") from None
    return selected


def plan_compute(device: torch.device, cores: int | None = None) -> ComputePlan:
    """How to use ``device``: see the module docstring. Every core is used (ultralytics leaves one idle)."""
    cores = cores or available_cores()
    if device.type != "cpu":
        return ComputePlan(device, 1, cores)
    workers = min(cores, MAX_CPU_WORKERS)
    return ComputePlan(device, workers, max(1, cores // workers))


def apply_threads(plan: ComputePlan) -> None:
    """Size torch's intra-op thread pool (process-wide: called once, by the run that owns the process)."""
    torch.set_num_threads(plan.torch_threads)
