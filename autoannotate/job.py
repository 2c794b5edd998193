"""One ``autoannotate run``: resolve inputs and outputs, load the models, stream the images, write data.yaml and the
run manifest. The CLI drives it and does all printing; this module only returns values and raises
``AutoAnnotateError`` subclasses.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TextIO

from autoannotate import __version__
from autoannotate.config import RunSettings
from autoannotate.detect import Detector, DetectSettings
from autoannotate.device import ComputePlan, apply_threads, plan_compute, select_device
from autoannotate.errors import OutputError
from autoannotate.layout import DATA_YAML, FALLBACK_DATA_YAML, DatasetLayout, plan_layout, prepare_output
from autoannotate.pipeline import EMPTY, FAILED, OK, SKIPPED, Annotator, ImageOutcome
from autoannotate.polygons import PolygonMode, PolygonPolicy
from autoannotate.resume import (
    JOURNAL_NAME,
    MANIFEST_NAME,
    Journal,
    LabelEntry,
    PreviousRun,
    image_signature,
    load_previous,
    settings_fingerprint,
)
from autoannotate.segment import BoxSegmenter, default_batch_size, resolve_sam_weights
from autoannotate.sources import SourceSpec, iter_images, resolve_data
from autoannotate.writers import dataset_yaml
from autoannotate.writers.atomic import write_text_atomic
from autoannotate.writers.manifest import file_sha256, format_manifest


@dataclass(frozen=True)
class Summary:
    """Counts and timings of a finished run (the ``--json`` summary event, minus ``event``)."""

    images: int
    labeled: int  # label files written (ok + empty)
    instances: int
    failed: int
    skipped: int
    empty_masks: int
    output_dir: str
    data_yaml: str
    seconds: float
    images_per_s: float

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class LoadedModels:
    detector: Detector
    segmenter: BoxSegmenter
    sam_weights: Path
    sam_variant: str
    batch: int
    plan: ComputePlan
    model_records: dict[str, Any]
    class_ids: tuple[int, ...] | None


class AnnotationJob:
    """Construct (cheap, validates inputs and outputs), ``load()`` the models, then iterate ``run()``."""

    def __init__(self, settings: RunSettings, stdin: TextIO | None = None) -> None:
        self.settings = settings
        self.spec: SourceSpec = resolve_data(settings.data, stdin)
        self.layout: DatasetLayout = plan_layout(self.spec, settings.data, settings.output_dir)
        self.models: LoadedModels | None = None
        self.data_yaml_path: Path = self.layout.output_dir / DATA_YAML
        self.notices: list[str] = []  # one-line warnings for the user (e.g. data.yaml written under another name)
        self._summary: Summary | None = None
        self._previous: PreviousRun | None = None

    def load(self) -> LoadedModels:
        """Pick the device, load both models, resolve ``--classes``. Raises ModelError / ConfigError."""
        s = self.settings
        device = select_device(s.device)
        plan = plan_compute(device)
        detector = Detector.from_weights(s.det_model, device)
        class_ids = detector.resolve_classes(s.classes)
        detector = detector.with_settings(
            DetectSettings(conf=s.conf, iou=s.iou, imgsz=s.imgsz, max_det=s.max_det, class_ids=class_ids, half=s.half)
        )
        sam_weights = resolve_sam_weights(s.sam_model)
        segmenter = BoxSegmenter.from_weights(sam_weights, device, half=s.half)
        batch = s.batch or default_batch_size(device)
        apply_threads(plan)
        self.models = LoadedModels(
            detector,
            segmenter,
            sam_weights,
            segmenter.variant or "unknown",
            batch,
            plan,
            model_records=_model_records(s, detector.weights_path, sam_weights, segmenter.variant or "unknown"),
            class_ids=class_ids,
        )
        return self.models

    def label_settings(self) -> dict[str, Any]:
        """Everything that decides label contents: a change re-annotates images on resume."""
        assert self.models is not None
        s = self.settings
        records = self.models.model_records
        return {
            "version": __version__,
            "det_model_sha256": records["detector"].get("sha256"),
            "sam_model_sha256": records["segmenter"].get("sha256"),
            "conf": s.conf,
            "iou": s.iou,
            "imgsz": s.imgsz,
            "max_det": s.max_det,
            "classes": list(self.models.class_ids) if self.models.class_ids is not None else None,
            "tolerance": s.tolerance,
            "min_area": s.min_area,
            "polygon": s.polygon,
            "half": s.half,
        }

    def begin(self) -> PreviousRun:
        """Load models if needed, create the output dir, read earlier runs, write data.yaml; fills ``notices``.

        Idempotent; ``run()`` calls it, and the CLI calls it first to show the notices before any image.
        """
        if self._previous is not None:
            return self._previous
        if self.models is None:
            self.load()
        prepare_output(self.layout)
        previous = load_previous(self.layout.output_dir)
        label_settings = self.label_settings()
        fingerprint = settings_fingerprint(label_settings)
        if previous.entries and previous.fingerprint not in (None, fingerprint) and not self.settings.overwrite:
            self.notices.append(_changed_settings_notice(previous.settings, label_settings))
        self.data_yaml_path = self._write_data_yaml()
        self._previous = previous
        return previous

    def run(self) -> Iterator[ImageOutcome]:
        """Annotate every image, resuming what earlier runs did. Raises OutputError up front.

        data.yaml and a first manifest are written before any label; the manifest is rewritten at checkpoints and
        at the end, and every label write is journalled as it happens (see ``resume.py``).
        """
        previous = self.begin()
        assert self.models is not None
        s = self.settings
        started = time.perf_counter()
        started_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
        out = self.layout.output_dir
        label_settings = self.label_settings()
        fingerprint = settings_fingerprint(label_settings)
        entries: dict[str, LabelEntry] = {} if s.overwrite else dict(previous.entries)
        owned = set(previous.owned)
        counts = {"images": 0, OK: 0, EMPTY: 0, FAILED: 0, SKIPPED: 0, "instances": 0, "empty_masks": 0}

        def manifest(state: str) -> dict[str, Any]:
            seconds = time.perf_counter() - started
            return {
                "tool": "autoannotate",
                "version": __version__,
                "state": state,
                "started_at": started_at,
                "settings": s.to_dict(),
                "label_settings": label_settings,
                "fingerprint": fingerprint,
                "device": str(self.models.plan.device) if self.models else None,
                "batch": self.models.batch if self.models else None,
                "infer_workers": self.models.plan.infer_workers if self.models else None,
                "torch_threads": self.models.plan.torch_threads if self.models else None,
                "models": self.models.model_records if self.models else None,
                "data_yaml": str(self.data_yaml_path),
                "counts": dict(counts),
                "seconds": round(seconds, 3),
                # labels an earlier run owned but which are not known done stay listed, so they stay ours
                "labels": {key: (entries[key].to_dict() if key in entries else {}) for key in sorted(owned)},
            }

        manifest_path = out / MANIFEST_NAME
        write_text_atomic(manifest_path, format_manifest(manifest("running")))
        journal = Journal(out / JOURNAL_NAME)
        annotator = Annotator(
            self.models.detector,
            self.models.segmenter,
            PolygonPolicy(PolygonMode(s.polygon), tolerance_px=s.tolerance, min_area_px=s.min_area),
            self.layout,
            batch=self.models.batch,
            infer_workers=self.models.plan.infer_workers,
            overwrite=s.overwrite,
            previous=previous,
            fingerprint=fingerprint,
            journal=journal,
        )
        complete = False
        last_checkpoint = time.monotonic()
        try:
            for outcome in annotator.run(iter_images(self.spec)):
                counts["images"] += 1
                counts[outcome.status] += 1
                counts["instances"] += outcome.instances
                counts["empty_masks"] += outcome.empty_masks
                if outcome.label_path is not None and outcome.status in (OK, EMPTY):
                    key = outcome.label_path.relative_to(out).as_posix()
                    signature = image_signature(outcome.source.path) or (0, 0)
                    entries[key] = LabelEntry(
                        str(outcome.source.path), outcome.status, outcome.instances, fingerprint, *signature
                    )
                    owned.add(key)
                yield outcome
                if time.monotonic() - last_checkpoint > CHECKPOINT_SECONDS:
                    write_text_atomic(manifest_path, format_manifest(manifest("running")))
                    last_checkpoint = time.monotonic()
            complete = True
        finally:
            # The journal may hold writes whose outcomes were never consumed: keep it unless the run completed.
            try:
                write_text_atomic(manifest_path, format_manifest(manifest("complete" if complete else "interrupted")))
            except OutputError:
                complete = False  # e.g. the disk is full: the last manifest and the journal still say it all
            journal.close(remove=complete)
        seconds = time.perf_counter() - started
        self._summary = Summary(
            images=counts["images"],
            labeled=counts[OK] + counts[EMPTY],
            instances=counts["instances"],
            failed=counts[FAILED],
            skipped=counts[SKIPPED],
            empty_masks=counts["empty_masks"],
            output_dir=str(out),
            data_yaml=str(self.data_yaml_path),
            seconds=round(seconds, 3),
            images_per_s=round(counts["images"] / seconds, 3) if seconds > 0 else 0.0,
        )

    @property
    def summary(self) -> Summary:
        if self._summary is None:
            raise RuntimeError("summary is available once run() has been iterated to the end")
        return self._summary

    def _write_data_yaml(self) -> Path:
        """Write data.yaml, unless a data.yaml we did not write is there: then ours goes beside it."""
        assert self.models is not None
        text = dataset_yaml.format_data_yaml(
            self.models.detector.names, self.layout.images_entry, self.layout.images_entry, __version__
        )
        path = self.layout.output_dir / DATA_YAML
        if path.exists() and not self.settings.overwrite:
            try:
                existing = path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError):
                existing = ""
            if not dataset_yaml.is_ours(existing):
                path = self.layout.output_dir / FALLBACK_DATA_YAML
                self.notices.append(
                    f"{str(self.layout.output_dir / DATA_YAML)!r} was not written by autoannotate and is kept;"
                    f" wrote {str(path)!r} instead (--overwrite replaces it)"
                )
        if path.is_dir():
            raise OutputError(f"{str(path)!r} is a directory; choose another --output-dir")
        write_text_atomic(path, text)
        return path


CHECKPOINT_SECONDS = 30.0


def _model_records(settings: RunSettings, det_path: str | None, sam_path: Path, sam_variant: str) -> dict[str, Any]:
    """Each model's name as given, the file loaded, and its sha256 (for the manifest and the resume fingerprint)."""
    records: dict[str, Any] = {}
    for role, name, path in (("detector", settings.det_model, det_path), ("segmenter", settings.sam_model, sam_path)):
        entry: dict[str, Any] = {"name": name, "path": str(path) if path else None}
        if path and os.path.exists(path):
            entry["sha256"] = file_sha256(path)
        records[role] = entry
    records["segmenter"]["variant"] = sam_variant
    return records


def _changed_settings_notice(before: dict[str, Any] | None, now: dict[str, Any]) -> str:
    """One line saying what changed since the last run, and that its labels will be redone."""
    previous = before or {}
    changed = [f"{k}: {previous.get(k)!r} -> {v!r}" for k, v in now.items() if previous.get(k) != v]
    what = "; ".join(changed[:4]) + (" ..." if len(changed) > 4 else "") if changed else "settings or models"
    return f"settings changed since the last run ({what}): its labels are redone"
