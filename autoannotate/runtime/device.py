"""Device choice and how the CPU is shared: which torch device, how many images in flight, how many threads each.

On a CPU, MobileSAM's TinyViT encoder is a long chain of small operators that two threads speed up by well under
2x, while two images encoded at once on one thread each keep both cores busy. So on CPU several images are
inferred concurrently (one inference worker per core, up to 8) with torch's intra-op pool sized to the rest; on a
GPU one worker feeds the device and batching does the rest.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from autoannotate.errors import ConfigError, excerpt
from autoannotate.runtime.cores import available_cores

MAX_CPU_WORKERS = 8
#: torch intra-op threads on a GPU run (see ``plan_compute``).
GPU_HOST_TORCH_THREADS = 2
#: Most decode (and write) threads on a GPU run.
MAX_GPU_HOST_WORKERS = 32
#: A GPU run on at least this many cores makes its polygons in processes (see ``plan_compute``) ...
POLYGON_PROCESSES_MIN_CORES = 8
#: ... and in at most this many.
MAX_POLYGON_PROCESSES = 8


@dataclass(frozen=True)
class ComputePlan:
    """``infer_workers`` images (batches) inferred concurrently, torch using ``torch_threads`` threads;
    ``host_workers`` threads each for decoding and for polygons and writing; ``polygon_processes`` processes for the
    polygons and label lines (0: the write threads make them)."""

    device: torch.device
    infer_workers: int
    torch_threads: int
    host_workers: int = 4
    polygon_processes: int = 0


_DEVICE_HINT = "use '', 'cpu', 'cuda:0' or '0'"
# What --device may name: a CUDA index (or a comma-separated list of them, as ultralytics takes: the first is used),
# cuda, cpu, mps, npu/xpu with an optional index list; anything else is refused here.
_DEVICE_SPEC = re.compile(r"(|cpu|cuda|mps(:0)?|\d+(,\d+)*|(npu|xpu)(:\d+(,\d+)*)?)")


def _spec(device: str) -> str:
    """``--device`` lower-cased, ``cuda:`` dropped before an index; ConfigError for a name that is no device."""
    spec = device.strip().lower()
    if spec.startswith("cuda:"):
        spec = spec[len("cuda:") :]
    if not _DEVICE_SPEC.fullmatch(spec):
        raise ConfigError(f"invalid --device {excerpt(device)}: not a device name; {_DEVICE_HINT}")
    return spec


def requested_kind(device: str) -> str:
    """What ``--device`` asks for, without looking at this machine: ``auto`` (``''``), ``cpu``, ``cuda`` (an index,
    a list of them, ``cuda`` or ``cuda:N``), ``mps``, ``npu`` or ``xpu``. ConfigError for a name that is no device."""
    spec = _spec(device)
    if spec == "":
        return "auto"
    if spec == "cuda" or spec[:1].isdigit():
        return "cuda"
    return spec.partition(":")[0]


def select_device(device: str) -> torch.device:
    """``''`` (auto: the current CUDA device, else CPU), ``cpu``, ``cuda``, ``cuda:1`` or ``1``, ``mps``,
    ``xpu:0`` to a torch device. ConfigError (one line) for a name that is no device or one this machine lacks.

    Built here, never through ultralytics' ``select_device``: some of its versions rewrite ``CUDA_VISIBLE_DEVICES``
    for an index, which in a Ray actor (whose visible GPUs Ray has set) moves every actor onto physical GPU 0, and in
    a driver narrows what a local Ray sees. The environment is never touched; CUDA indices are torch's, counted
    within whatever ``CUDA_VISIBLE_DEVICES`` the caller set. Making it the current device is ``activate``'s job.
    """
    spec = _spec(device)
    shown = excerpt(device)
    if spec == "cpu":
        return torch.device("cpu")
    if spec in ("", "cuda"):
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        if spec == "cuda":
            raise ConfigError(f"invalid --device {shown}: this machine has no CUDA device that torch sees; use 'cpu'")
        return torch.device("cpu")
    if spec[:1].isdigit():
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = int(spec.split(",")[0])
        if count == 0:
            raise ConfigError(
                f"invalid --device {shown}: this machine has no CUDA device that torch sees; use '' or 'cpu'"
            )
        wanted = max(int(i) for i in spec.split(","))
        if wanted >= count:
            raise ConfigError(
                f"invalid --device {shown}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}"
            )
        return torch.device("cuda", index)
    kind, _, indices = spec.partition(":")
    backend = getattr(torch, kind, None)
    is_available = getattr(backend, "is_available", None)
    if not callable(is_available) or not is_available():
        raise ConfigError(f"invalid --device {shown}: this torch has no {kind.upper()} backend available; use 'cpu'")
    if kind == "mps":
        return torch.device("mps")
    index = int(indices.split(",")[0]) if indices else 0
    count = int(backend.device_count())  # type: ignore[union-attr]
    if index >= count:
        raise ConfigError(f"invalid --device {shown}: this machine has {count} {kind.upper()} device(s)")
    return torch.device(kind, index)


def activate(device: torch.device) -> None:
    """Make ``device`` the process's current CUDA device, so that an indexless ``cuda`` tensor (in ultralytics or
    a library it calls) lands on it rather than on cuda:0. Nothing on other devices."""
    if device.type == "cuda":
        torch.cuda.set_device(device)


def page_locked(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``tensor`` (on the host) in page-locked memory when it is bound for a CUDA ``device``, else as it is.
    The segmenters' ``prepare`` calls it in the pipeline's decode threads, so that the inference thread, which
    launches the kernels, neither copies into pinned memory nor waits on a pageable transfer."""
    if device.type != "cuda" or tensor.is_pinned():
        return tensor
    return tensor.pin_memory()


def host_to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``tensor`` on ``device``: on CUDA an asynchronous copy from page-locked memory (pinned first if ``prepare``
    did not do it already)."""
    if device.type != "cuda":
        return tensor.to(device)
    return page_locked(tensor, device).to(device, non_blocking=True)


def half_dtype(device: torch.device) -> torch.dtype:
    """What ``--half`` computes in on ``device``: bfloat16 on the CPU and on GPUs that have it (Ampere and later:
    float32's exponent range, so SAM's ViT encoders, known to overflow float16, stay finite), float16 on older
    GPUs and other accelerators. A non-finite result is redone in float32 either way (the segmenters check)."""
    if device.type == "cpu":
        return torch.bfloat16
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16


def compute_record(device: torch.device, half: bool) -> dict[str, object] | None:
    """What decides a GPU run's numbers besides the settings, for the resume fingerprint and the manifest: the
    device kind, the segmenter's and the detector's dtype and whether TF32 is allowed. None on the CPU, whose
    numbers the settings already decide (so CPU datasets keep the fingerprints they were written with)."""
    if device.type == "cpu":
        return None
    record: dict[str, object] = {
        "device": device.type,
        "dtype": str(half_dtype(device) if half else torch.float32).removeprefix("torch."),
        # ultralytics converts the detector to float16 for half on CUDA (and leaves it float32 on the CPU)
        "detector_dtype": "float16" if half and device.type == "cuda" else "float32",
    }
    if device.type == "cuda":
        record["name"] = torch.cuda.get_device_name(device)
        record["tf32"] = bool(torch.backends.cuda.matmul.allow_tf32 or torch.backends.cudnn.allow_tf32)
        record["deterministic"] = torch.are_deterministic_algorithms_enabled()
    return record


def worker_compute_record(gpus_per_worker: float, half: bool, deterministic: bool) -> dict[str, object] | None:
    """``compute_record`` as a driver states it for workers that load their own models on GPUs it may not have
    (``--engine ray``): the device kind, the precision asked for and the TF32 setting the workers run with (on,
    torch's cuDNN default, unless ``--deterministic`` turns it off). A worker's GPU decides between bfloat16 and
    float16 itself, so ``half`` is recorded as such; the GPU's name is not known here (a cluster may mix kinds). None
    for CPU workers, whose numbers the settings decide, as on the CPU."""
    if gpus_per_worker <= 0:
        return None
    return {
        "device": "cuda",
        "dtype": "half" if half else "float32",
        "detector_dtype": "float16" if half else "float32",
        "tf32": not deterministic,
        "deterministic": deterministic,
        "workers": "ray",
    }


def make_deterministic(device: torch.device) -> None:
    """``--deterministic`` on a GPU: deterministic kernels (cuDNN's and torch's, cuBLAS with a fixed workspace),
    no TF32, no cuDNN autotuning. Process-wide; ``models.load_models`` calls it before loading (cuBLAS reads its
    workspace setting when it makes its first handle) and again after (building ultralytics' SAM turns cuDNN's
    autotuning back on). An operation with no deterministic CUDA kernel warns once rather than failing the run.
    Nothing on the CPU, whose kernels already give the same bytes for the same image and batch;
    ``--deterministic`` also fixes every batch at one image (``models.load_models``)."""
    if device.type != "cuda":
        return
    # read when cuBLAS makes its first handle: set before any model ran (see load_models), harmless if already set
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


def release_device_memory(device: torch.device) -> None:
    """After running out of memory on ``device``: wait for its queued work, then hand the caching allocator's free
    blocks back, so the retry (and anything else on the GPU) can have them. Nothing to do on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()


def ray_worker_device(gpu_ids: Sequence[object], visible: str | None) -> torch.device:
    """The device of a Ray worker that Ray gave the GPUs ``gpu_ids`` (``ray.get_gpu_ids()``): the first of them;
    the CPU for a worker given none (the driver refuses a CUDA ``--device`` without ``--ray-gpus-per-worker``).

    Ray normally narrows the worker's ``CUDA_VISIBLE_DEVICES`` (``visible``) to its GPUs, so torch sees the assigned
    GPU at its place in that list (cuda:0 for one GPU); where Ray leaves it unset
    (``RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES``), the assigned GPU's own index. ``--device``'s index names one of
    the driver's GPUs and never chooses a worker's.
    """
    if not gpu_ids:
        return torch.device("cpu")
    assigned = str(gpu_ids[0])
    if visible is not None and visible.strip():
        names = [name.strip() for name in visible.split(",")]
        return torch.device("cuda", names.index(assigned) if assigned in names else 0)
    return torch.device("cuda", int(assigned))


def plan_compute(device: torch.device, cores: int | None = None) -> ComputePlan:
    """How to use ``device``: see the module docstring. Every core is used (ultralytics leaves one idle).

    On a GPU torch's host pool gets few threads (``GPU_HOST_TORCH_THREADS``): the host side there is decoding,
    polygons and writing in thread pools of their own, and an intra-op pool as wide as the machine would only contend
    with them (and with the thread launching kernels) for the cores.
    """
    cores = cores or available_cores()
    if device.type != "cpu":
        # decoding, polygons and writing must keep up with ~80 images/s: every core but the launching thread's
        host = max(2, min(MAX_GPU_HOST_WORKERS, cores - 1))
        # Polygons are Python and NumPy over small arrays, so write threads queue on the GIL: a second core adds
        # nothing at 300 boxes (0.94x, benchmarks/bench_host_capacity.py), and one core of polygon work (~0.26 ms a
        # box) is ~13 images/s at 300 boxes against the ~80 the device does. Processes do not share the GIL. On few
        # cores they cost more than they give (0.60x the threads on 2: spawning, pickling, two more processes on
        # cores that also decode), so only a many-core host makes its polygons in processes, half the cores left
        # after the launching and main threads, at most MAX_POLYGON_PROCESSES (~7 cores of polygons: 300 boxes at
        # 12 ms an image).
        processes = 0
        if cores >= POLYGON_PROCESSES_MIN_CORES:
            processes = min(MAX_POLYGON_PROCESSES, (cores - 2) // 2)
        return ComputePlan(device, 1, max(1, min(GPU_HOST_TORCH_THREADS, cores)), host, processes)
    workers = min(cores, MAX_CPU_WORKERS)
    # on a CPU the inference workers own the cores; the host pools only overlap their waits
    return ComputePlan(device, workers, max(1, cores // workers), max(1, min(4, cores)))


def apply_threads(plan: ComputePlan) -> None:
    """Size torch's intra-op thread pool (process-wide: called once, by the run that owns the process)."""
    torch.set_num_threads(plan.torch_threads)
