"""``--engine ray``: the same pipeline as Ray Data batch inference, for clusters.

The driver lists the images (streaming) and claims their label paths (it alone sees them all); Ray Data streams
them through ``map_batches`` with an actor pool, one loaded model pair per actor; each actor runs
``Annotator.process_batch`` and writes its labels (atomically, journalled) straight to the output dir, which on a
cluster is a shared filesystem. Outcomes come back to the driver in input order, so the ``--json`` events, the
manifest and the labels are those of ``--engine local``. A killed worker leaves no partial label (atomic writes);
a rerun resumes from the manifest and the journals as usual.

Without ``--ray-address`` (and ``RAY_ADDRESS``) the run starts a local Ray of its own: as many CPUs as this process
may use, its session files in a private temporary dir (not ``/tmp/ray``), shut down and removed when the run ends,
interrupted or not. A Ray that the caller initialised, or a cluster, is used as it is and left running.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import shutil
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from autoannotate.config import CUDA_BATCH, RAY_INSTALL_HINT, RunSettings
from autoannotate.dataset.layout import DatasetLayout
from autoannotate.engines import EngineRun
from autoannotate.errors import ConfigError, OutputError
from autoannotate.inputs import InputItem, item_from_dict
from autoannotate.inputs.video import VideoFailure
from autoannotate.pipeline import claim
from autoannotate.resume import Journal, PreviousRun
from autoannotate.runtime.cores import available_cores
from autoannotate.types import ImageOutcome


def _import_ray() -> Any:
    try:
        import ray
        import ray.data
    except ImportError:
        raise ConfigError(RAY_INSTALL_HINT) from None
    return ray


class _AnnotateActor:
    """One Ray actor: loads the models once, then annotates batches of images and writes their labels."""

    def __init__(
        self,
        settings: RunSettings,
        layout: DatasetLayout,
        previous: PreviousRun,
        fingerprint: str,
        journal_name: str,
        torch_threads: int,
    ) -> None:
        import ray
        import torch

        from autoannotate.models import build_annotator, load_models
        from autoannotate.runtime.allocator import tune_host_allocator
        from autoannotate.runtime.device import ComputePlan, ray_worker_device

        # The GPU Ray assigned this actor, never --device's index (which names one of the driver's GPUs).
        device = ray_worker_device(ray.get_gpu_ids(), os.environ.get("CUDA_VISIBLE_DEVICES"))
        share = settings.engine.ray_gpus_per_worker
        if device.type == "cuda" and 0 < share < 1:  # actors sharing a GPU: each keeps to its part of the memory
            torch.cuda.set_per_process_memory_fraction(share, device)
        models = load_models(settings, ComputePlan(device, 1, max(1, torch_threads)))
        if device.type == "cpu":
            tune_host_allocator()  # the actor's process is its own entry point
        journal = Journal(layout.output_dir / journal_name.replace(".jsonl", f".worker-{uuid.uuid4().hex[:12]}.jsonl"))
        self.annotator = build_annotator(settings, models, layout, previous, fingerprint, journal)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        items = [item_from_dict(record) for record in batch["item"]]
        duplicates = [d or None for d in batch["duplicate"]]
        outcomes = self.annotator.process_batch(items, duplicates)
        return {"outcome": [outcome.to_dict() for outcome in outcomes]}


# Ray's longest unix socket path is <root>/aa-ray-XXXXXXXX/session_<date>_<time>_<us>_<pid>/sockets/plasma_store, 80
# bytes after <root> with a 7-digit pid, and Linux allows 107: under a longer TMPDIR the private dir goes in /tmp.
_MAX_RAY_TEMP_ROOT = 107 - 80


@contextlib.contextmanager
def _connected(ray: Any, address: str | None) -> Iterator[None]:
    """Ray for one run: the caller's, if initialised (left so); the cluster at ``address`` or ``RAY_ADDRESS``
    (disconnected at the end); else a local Ray started here and shut down at the end, its temp dir removed."""
    if ray.is_initialized():
        yield
        return
    options: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "logging_level": "ERROR"}
    temp_dir: str | None = None
    if address is None and not os.environ.get("RAY_ADDRESS"):
        root = tempfile.gettempdir()
        temp_dir = tempfile.mkdtemp(prefix="aa-ray-", dir=root if len(root) <= _MAX_RAY_TEMP_ROOT else "/tmp")
        # "local": a Ray of this run's own, even where `ray start` left one running
        options.update(num_cpus=available_cores(), _temp_dir=temp_dir)
        address = "local"
    try:
        ray.init(address=address, **options)
        yield
    finally:
        try:
            if ray.is_initialized():
                # wait (where Ray can: newer versions), so that no Ray process writes to the temp dir once removed
                waits = "wait_for_processes" in inspect.signature(ray.shutdown).parameters
                ray.shutdown(**({"wait_for_processes": True} if waits else {}))
        finally:
            if temp_dir is not None:
                # session logs and sockets only; a file left behind by a slow Ray process must not fail the run
                shutil.rmtree(temp_dir, ignore_errors=True)


def check_devices(settings: RunSettings) -> None:
    """Refuse, in one line, a ``--device`` that Ray's workers would not honour: a GPU with no GPU per worker (they
    would quietly run on the CPU), the CPU with GPUs per worker, or a device kind Ray does not schedule."""
    from autoannotate.runtime.device import requested_kind

    kind = requested_kind(settings.runtime.device)
    gpus = settings.engine.ray_gpus_per_worker
    if kind == "cuda" and gpus == 0:
        raise ConfigError(
            f"--device {settings.runtime.device!r} asks for a GPU, but --ray-gpus-per-worker is 0, so Ray's workers"
            " would run on the CPU: pass --ray-gpus-per-worker 1 (or a share such as 0.5), or --device cpu"
        )
    if kind == "cpu" and gpus > 0:
        raise ConfigError(
            f"--device cpu with --ray-gpus-per-worker {gpus:g}: Ray would hold GPUs the workers never use; drop one"
        )
    if kind not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"--engine ray runs on CUDA GPUs or the CPU, not --device {settings.runtime.device!r}")


def _portable(item: InputItem, layout: DatasetLayout) -> InputItem:
    """``item`` as an actor can read it from its dict: a video frame's JPEG is written into the dataset here, by the
    driver, which decodes each video once, in order (seeking is not exact in every container, and ``--skip-similar``
    decides each frame from the last kept one), so frames, not videos, are what actors share out. A frame whose
    JPEG cannot be placed (a file of someone else's is there) fails alone; an OS error (a full disk) stops the run."""
    try:
        return item.detach(layout)
    except OutputError as err:
        if err.errno is not None:
            raise
        return VideoFailure(Path(item.origin), item.rel_path, str(err))


def run(job: EngineRun) -> Iterator[ImageOutcome]:
    """Annotate ``job.items`` on Ray; yields one outcome per item, in input order (the driver's models and journal
    are not used: each actor loads its own models and keeps its own journal).

    Ray's driver prints cluster errors (``(raylet) Task ... failed``, in colour) to ``sys.stdout`` from a background
    thread, even with ``log_to_driver=False``; stdout carries the ``--json`` events, so while Ray runs here,
    ``sys.stdout`` is ``sys.stderr`` (the CLI writes its events to the stdout it held before the run).
    """
    check_devices(job.settings)
    ray = _import_ray()
    claimed: set[Path] = set()
    rows = [
        {"item": _portable(item, job.layout).to_dict(), "duplicate": claim(job.layout, item, claimed) or ""}
        for item in job.items
    ]
    if not rows:
        return
    settings = job.settings
    with contextlib.redirect_stdout(sys.stderr), _connected(ray, settings.engine.ray_address):
        yield from _annotate(ray, settings, job.layout, job.previous, job.fingerprint, rows, job.journal_name)


def _annotate(
    ray: Any,
    settings: RunSettings,
    layout: DatasetLayout,
    previous: PreviousRun,
    fingerprint: str,
    rows: list[dict[str, Any]],
    journal_name: str,
) -> Iterator[ImageOutcome]:
    resources = ray.cluster_resources()
    gpus = settings.engine.ray_gpus_per_worker
    if settings.engine.ray_workers:
        workers = settings.engine.ray_workers
    elif gpus > 0:
        workers = max(1, int(resources.get("GPU", 0) / gpus))
    else:
        workers = max(1, int(resources.get("CPU", 1)))
    cpus_per_worker = 1 if gpus > 0 else max(1, int(resources.get("CPU", 1)) // workers)
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True  # outcomes (and so --json events) in input order
    context.enable_progress_bars = False
    dataset = ray.data.from_items(rows).map_batches(
        _AnnotateActor,
        fn_constructor_kwargs={
            "settings": settings,
            "layout": layout,
            "previous": previous,
            "fingerprint": fingerprint,
            "journal_name": journal_name,
            "torch_threads": cpus_per_worker,
        },
        # the local engine's batches: one image on CPUs (and with --deterministic), the CUDA default on GPUs
        batch_size=settings.runtime.batch or (1 if settings.runtime.deterministic or gpus == 0 else CUDA_BATCH),
        batch_format="default",
        compute=ray.data.ActorPoolStrategy(size=workers),
        num_cpus=cpus_per_worker,
        num_gpus=gpus,
    )
    for row in dataset.iter_rows():
        yield ImageOutcome.from_dict(row["outcome"])
