"""Settings -> the loaded models (a prompt source and a segmenter, through their registries) -> the annotator.

The one place that chooses the device: both models load on it. The local engine and every distributed worker build
their pipeline here (``load_models`` then ``build_annotator``), so they annotate alike.
"""

from __future__ import annotations

import contextlib
import os
import threading
from dataclasses import dataclass
from typing import Any

from autoannotate.config import NO_SEGMENTER, RunSettings
from autoannotate.dataset.layout import DatasetLayout
from autoannotate.errors import ConfigError
from autoannotate.pipeline import Annotator
from autoannotate.polygons import PolygonPolicy
from autoannotate.prompts import prompt_source_for
from autoannotate.prompts.base import PromptSource
from autoannotate.prompts.nms import AcrossClassesNMS
from autoannotate.resume import Journal, PreviousRun
from autoannotate.runtime.choice import choose_runtime, machine_prefers_openvino, requested_runtime
from autoannotate.runtime.device import (
    ComputePlan,
    activate,
    apply_threads,
    compute_record,
    make_deterministic,
    plan_compute,
    requested_kind,
    select_device,
    worker_compute_record,
)
from autoannotate.segmenters import load_segmenter
from autoannotate.segmenters.base import POINT_PROMPTS, Segmenter, prompt_kinds
from autoannotate.writers.manifest import file_sha256


@dataclass(frozen=True)
class Models:
    """What a run loaded: its prompt source and segmenter (on ``plan.device``), the images per step, the compute
    plan, and each model's record for the manifest (``{"detector": {...}, "segmenter": {...}}``)."""

    prompts: PromptSource
    segmenter: Segmenter
    batch: int
    plan: ComputePlan
    records: dict[str, Any]
    #: One-line notes for the user (e.g. OpenVINO asked for but unavailable: PyTorch runs it).
    notices: tuple[str, ...] = ()

    @property
    def runtime(self) -> str:
        """What runs the segmenter (as the manifest records it): ``"torch"``, or e.g.
        ``"openvino 2026.4.1 f32 (from the cache)"``."""
        return str(self.records["segmenter"].get("runtime", "torch"))

    @property
    def compute(self) -> dict[str, Any] | None:
        """A GPU run's device kind, dtypes and TF32 setting (``runtime.device.compute_record``); None on the CPU."""
        compute = self.records.get("compute")
        return dict(compute) if isinstance(compute, dict) else None

    @property
    def names(self) -> dict[int, str]:
        return self.prompts.names

    @property
    def class_ids(self) -> tuple[int, ...] | None:
        return self.prompts.class_ids

    @property
    def prompt_record(self) -> dict[str, Any] | None:
        """Which prompts set the classes (an open-vocabulary source), or None."""
        record = getattr(self.prompts, "prompt_record", None)
        return dict(record) if isinstance(record, dict) else None

    @property
    def box_labels(self) -> bool:
        """Whether the run writes box labels (``class cx cy w h``): ``--sam-model none`` with no detector masks."""
        return self.segmenter.variant == NO_SEGMENTER and not getattr(self.prompts, "gives_masks", False)

    def embeddings_npz(self) -> bytes | None:
        """Class embeddings the prompt source computed, as ``.npz`` bytes to save, or None."""
        make = getattr(self.prompts, "embeddings_npz", None)
        return make() if callable(make) else None


def load_models(
    settings: RunSettings, plan: ComputePlan | None = None, long_run: bool = False, on_cpu: bool = False
) -> Models:
    """Pick the device (``--device``, once), load the prompt source and the segmenter on it, choose the runtime
    (``--runtime``, ``runtime.choice``), size torch's threads.

    ``plan`` overrides the device's default compute plan, device included (a distributed worker owns some cores).
    ``long_run``: the run has at least ``runtime.choice.OPENVINO_AUTO_MIN_ITEMS`` items (``--runtime auto``).
    ``on_cpu``: load on the CPU whatever ``--device`` says (a driver whose workers load their own models); the
    spelling of ``--device`` is still checked.
    Raises ModelError, ConfigError.
    """
    if plan is None:
        if on_cpu:
            requested_kind(settings.runtime.device)  # its spelling is still checked
        plan = plan_compute(select_device("cpu" if on_cpu else settings.runtime.device))
    activate(plan.device)
    deterministic = settings.runtime.deterministic
    if deterministic:  # before the models: cuBLAS reads its workspace setting when it makes its first handle
        make_deterministic(plan.device)
    entry = prompt_source_for(settings)
    prompts = entry.build(settings, plan.device)
    if settings.prompts.agnostic_nms:  # every source: end-to-end detectors and label boxes have no NMS of their own
        prompts = AcrossClassesNMS(prompts, settings.prompts.iou)
    warming = _warm_up_in_background(prompts)
    try:
        segmenter = load_segmenter(settings.segmenter.sam_model, plan.device, half=settings.runtime.half)
        _check_prompt_kinds(entry.prompt_kinds, segmenter, settings.segmenter.sam_model)
        # --deterministic: one image per step, so that a rerun, a shard or a Ray worker never batches one differently
        batch = 1 if deterministic else settings.runtime.batch or segmenter.default_batch()
        records = _model_records(settings, prompts, segmenter)
        runtime, notices = _apply_runtime(settings, segmenter, plan, records["segmenter"].get("sha256"), long_run)
        records["segmenter"]["runtime"] = runtime
    finally:
        if warming is not None:
            warming.join()  # no thread outlives loading, and the first real call never races it
    if deterministic:
        make_deterministic(plan.device)  # again after building: ultralytics' SAM builder turns cuDNN autotuning on
    compute = (
        # a driver whose workers load their own models: what those workers' devices will compute in
        worker_compute_record(settings.engine.ray_gpus_per_worker, settings.runtime.half, deterministic)
        if on_cpu
        else compute_record(plan.device, settings.runtime.half)
    )
    if compute is not None:  # a GPU run: what decides its numbers besides the settings
        records["compute"] = compute
    apply_threads(plan)
    return Models(prompts, segmenter, batch, plan, records, notices)


def _warm_up_in_background(prompts: PromptSource) -> threading.Thread | None:
    """Start the prompt source's optional ``warm_up()`` (its first call's one-off costs) in a thread, to overlap
    the segmenter's loading. A warm-up that fails is ignored: the first real call fails the same way, reported as
    usual."""
    warm_up = getattr(prompts, "warm_up", None)
    if not callable(warm_up):
        return None

    def run() -> None:
        with contextlib.suppress(Exception):
            warm_up()

    thread = threading.Thread(target=run, name="autoannotate-warm-up", daemon=True)
    thread.start()
    return thread


def _apply_runtime(
    settings: RunSettings, segmenter: Segmenter, plan: ComputePlan, sha256: str | None, long_run: bool
) -> tuple[str, tuple[str, ...]]:
    """Move the segmenter's networks to OpenVINO where ``runtime.choice`` says so: ``(runtime, notices)``.

    A segmenter runs on OpenVINO through its ``use_openvino`` method (SAM/MobileSAM); one without it stays on
    PyTorch. Raises ConfigError for ``--runtime openvino`` on a GPU.
    """
    requested = requested_runtime(str(settings.runtime.runtime))
    on_cpu = plan.device.type == "cpu"
    if requested == "openvino" and not on_cpu:
        raise ConfigError(
            f"--runtime openvino runs on the CPU, but this run's device is {plan.device}: pass --device cpu, or"
            " --runtime auto"
        )
    from autoannotate.runtime.openvino_parts import openvino_version

    version = openvino_version() if requested != "torch" else None
    choice = choose_runtime(
        requested, on_cpu=on_cpu, installed=version is not None, x86_64=machine_prefers_openvino(), long_run=long_run
    )
    if not choice.openvino:
        return "torch", ()
    use_openvino = getattr(segmenter, "use_openvino", None)
    if not callable(use_openvino):
        note = f"--runtime openvino: {segmenter.variant} has no OpenVINO path; PyTorch runs it"
        return "torch", (note,) if choice.explicit else ()
    from autoannotate.runtime.openvino_parts import (
        OpenVinoSettings,
        OpenVinoUnavailable,
        bf16_supported,
        default_cache_root,
    )

    notices: list[str] = []
    precision = "f32"
    if settings.runtime.half:
        if bf16_supported():
            precision = "bf16"
        else:
            notices.append("--half: this CPU has no bf16 instructions; OpenVINO runs in float32")
    ov_settings = OpenVinoSettings(
        precision=precision,
        streams=plan.infer_workers,
        threads=plan.infer_workers * plan.torch_threads,
        cache_root=default_cache_root(),
    )
    try:
        runtime = str(use_openvino(ov_settings, sha256, convert=choice.convert))
    except OpenVinoUnavailable as err:
        if choice.explicit or choice.convert:  # auto without conversion only uses a cached one: no news
            notices.append(f"{err}; PyTorch runs the segmenter")
        return "torch", tuple(notices)
    return runtime, tuple(notices)


def _check_prompt_kinds(needed: frozenset[str], segmenter: Segmenter, sam_model: str) -> None:
    """ConfigError (one line, before any image) when the segmenter cannot take a kind of prompt the source gives."""
    if POINT_PROMPTS in needed and POINT_PROMPTS not in prompt_kinds(segmenter):
        which = (
            "--sam-model none has no segmenter to prompt"
            if segmenter.variant == NO_SEGMENTER
            else f"{segmenter.variant} (--sam-model {sam_model}) takes boxes only"
        )
        raise ConfigError(
            f"--points-from needs a segmenter that takes point prompts (MobileSAM, SAM, SAM 2, SAM 3); {which}:"
            " pass --sam-model mobile_sam.pt"
        )


def build_annotator(
    settings: RunSettings,
    models: Models,
    layout: DatasetLayout,
    previous: PreviousRun,
    fingerprint: str,
    journal: Journal | None,
) -> Annotator:
    """The pipeline for these settings and models (the local engine's, or one distributed worker's)."""
    s = settings
    return Annotator(
        models.prompts,
        models.segmenter,
        PolygonPolicy(s.polygons.polygon, tolerance_px=s.polygons.tolerance, min_area_px=s.polygons.min_area),
        layout,
        batch=models.batch,
        infer_workers=models.plan.infer_workers,
        cpu_workers=models.plan.host_workers,
        polygon_processes=models.plan.polygon_processes,
        overwrite=s.output.overwrite,
        previous=previous,
        fingerprint=fingerprint,
        journal=journal,
        min_mask_score=s.segmenter.min_mask_score,
        class_names=models.names,
        box_labels=models.box_labels,
    )


def _model_records(settings: RunSettings, prompts: PromptSource, segmenter: Segmenter) -> dict[str, Any]:
    """Each model's name as given, the file loaded, and its sha256 (for the manifest and the resume fingerprint)."""
    p = settings.prompts
    det_name = (
        f"boxes from {p.boxes_from}"
        if p.boxes_from is not None
        else f"points from {p.points_from}"
        if p.points_from is not None
        else p.det_model
    )
    sam_path = segmenter.weights_path
    records: dict[str, Any] = {}
    for role, name, path in (
        ("detector", det_name, prompts.weights_path),
        ("segmenter", settings.segmenter.sam_model, sam_path),
    ):
        entry: dict[str, Any] = {"name": name, "path": str(path) if path else None}
        if path and os.path.exists(path):
            entry["sha256"] = file_sha256(path)
        records[role] = entry
    records["segmenter"]["variant"] = segmenter.variant or "unknown"
    if segmenter.variant == NO_SEGMENTER:
        gives_masks = bool(getattr(prompts, "gives_masks", False))
        records["segmenter"]["labels"] = "detector masks" if gives_masks else "boxes"
    return records
