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
from autoannotate.pipeline import EMPTY, FAILED, OK, Annotator, ImageOutcome
from autoannotate.polygons import PolygonMode, PolygonPolicy
from autoannotate.segment import BoxSegmenter, default_batch_size, resolve_sam_weights
from autoannotate.sources import SourceSpec, iter_images, resolve_data
from autoannotate.writers import dataset_yaml
from autoannotate.writers.atomic import write_text_atomic
from autoannotate.writers.manifest import MANIFEST_NAME, file_sha256, format_manifest, read_written_labels


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
        self.models = LoadedModels(detector, segmenter, sam_weights, segmenter.variant or "unknown", batch, plan)
        return self.models

    def run(self) -> Iterator[ImageOutcome]:
        """Annotate every image; data.yaml is written first, the manifest last. Raises OutputError up front."""
        if self.models is None:
            self.load()
        assert self.models is not None
        s = self.settings
        started = time.perf_counter()
        started_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
        prepare_output(self.layout)
        self.data_yaml_path = self._write_data_yaml()
        manifest_path = self.layout.output_dir / MANIFEST_NAME
        annotator = Annotator(
            self.models.detector,
            self.models.segmenter,
            PolygonPolicy(PolygonMode(s.polygon), tolerance_px=s.tolerance, min_area_px=s.min_area),
            self.layout,
            batch=self.models.batch,
            infer_workers=self.models.plan.infer_workers,
            overwrite=s.overwrite,
            owned_labels=read_written_labels(manifest_path),
        )
        counts = {"images": 0, OK: 0, EMPTY: 0, FAILED: 0, "instances": 0, "empty_masks": 0}
        labels: dict[str, dict[str, Any]] = {}
        for outcome in annotator.run(iter_images(self.spec)):
            counts["images"] += 1
            counts[outcome.status] += 1
            counts["instances"] += outcome.instances
            counts["empty_masks"] += outcome.empty_masks
            if outcome.label_path is not None:
                key = outcome.label_path.relative_to(self.layout.output_dir).as_posix()
                labels[key] = {
                    "image": str(outcome.source.path),
                    "status": outcome.status,
                    "instances": outcome.instances,
                }
            yield outcome
        seconds = time.perf_counter() - started
        self._summary = Summary(
            images=counts["images"],
            labeled=counts[OK] + counts[EMPTY],
            instances=counts["instances"],
            failed=counts[FAILED],
            skipped=0,
            empty_masks=counts["empty_masks"],
            output_dir=str(self.layout.output_dir),
            data_yaml=str(self.data_yaml_path),
            seconds=round(seconds, 3),
            images_per_s=round(counts["images"] / seconds, 3) if seconds > 0 else 0.0,
        )
        manifest = {
            "tool": "autoannotate",
            "version": __version__,
            "started_at": started_at,
            "settings": s.to_dict(),
            "device": str(self.models.detector.device),
            "batch": self.models.batch,
            "infer_workers": self.models.plan.infer_workers,
            "torch_threads": self.models.plan.torch_threads,
            "models": self._model_records(),
            "counts": self._summary.to_dict(),
            "labels": labels,
        }
        write_text_atomic(manifest_path, format_manifest(manifest))

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

    def _model_records(self) -> dict[str, Any]:
        assert self.models is not None
        records: dict[str, Any] = {}
        for role, name, path in (
            ("detector", self.settings.det_model, self.models.detector.weights_path),
            ("segmenter", self.settings.sam_model, str(self.models.sam_weights)),
        ):
            entry: dict[str, Any] = {"name": name, "path": path}
            if path and os.path.exists(path):
                entry["sha256"] = file_sha256(path)
            records[role] = entry
        records["segmenter"]["variant"] = self.models.sam_variant
        return records
