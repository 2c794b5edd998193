"""One ``autoannotate run``: resolve inputs and outputs, load the models, stream the images, then write what covers
the whole run (manifest, instances.jsonl, train/val lists, COCO, previews). The CLI drives it and does all
printing; this module only returns values and raises ``AutoAnnotateError`` subclasses.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any, TextIO

from autoannotate import __version__
from autoannotate.boxes_from import LabelBoxes, names_from_boxes
from autoannotate.config import RunSettings, parse_shard
from autoannotate.detect import Detector, DetectSettings
from autoannotate.device import ComputePlan, apply_threads, plan_compute, select_device
from autoannotate.errors import OutputError
from autoannotate.layout import DATA_YAML, FALLBACK_DATA_YAML, DatasetLayout, plan_layout, prepare_output
from autoannotate.pipeline import EMPTY, FAILED, OK, SKIPPED, Annotator, BoxSource, ImageOutcome
from autoannotate.polygons import PolygonMode, PolygonPolicy
from autoannotate.resume import (
    SIDECAR_NAME,
    Journal,
    LabelEntry,
    PreviousRun,
    image_signature,
    load_previous,
    run_file_names,
    settings_fingerprint,
)
from autoannotate.segment import BoxSegmenter, default_batch_size, resolve_sam_weights
from autoannotate.sources import ImageSource, SourceSpec, iter_images, resolve_data
from autoannotate.writers import dataset_yaml
from autoannotate.writers.atomic import write_text_atomic
from autoannotate.writers.manifest import file_sha256, format_manifest
from autoannotate.writers.sidecar import format_rows, instance_rows, score_summary

CHECKPOINT_SECONDS = 30.0
TRAIN_LIST, VAL_LIST = "train.txt", "val.txt"
COCO_NAME = "annotations.coco.json"


@dataclass(frozen=True)
class Summary:
    """Counts and timings of a finished run (the ``--json`` summary event, minus ``event``)."""

    images: int
    labeled: int  # label files written (ok + empty)
    instances: int
    failed: int
    skipped: int
    empty_masks: int
    dropped: int
    output_dir: str
    data_yaml: str
    seconds: float
    images_per_s: float
    sam_iou: dict[str, float] | None = None  # distribution of SAM's predicted IoU over written instances
    coco_json: str | None = None
    previews: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class LoadedModels:
    boxes: BoxSource  # the detector, or the label files of --boxes-from
    names: dict[int, str]
    segmenter: BoxSegmenter
    batch: int
    plan: ComputePlan
    model_records: dict[str, Any]
    class_ids: tuple[int, ...] | None


@dataclass
class _Done:
    """What the end-of-run outputs need of each image that has a label (written now or skipped)."""

    source: ImageSource
    label_key: str
    resolution_wh: tuple[int, int] | None
    rows: list[dict[str, Any]] = field(default_factory=list)


def in_shard(rel_path: PurePosixPath, shard: tuple[int, int] | None) -> bool:
    """Whether an image belongs to shard ``(I, N)``: a hash of its path relative to ``--data``, so the partition is
    stable when other files are added or removed, and every image is in exactly one shard."""
    if shard is None:
        return True
    index, count = shard
    digest = hashlib.sha1(rel_path.as_posix().encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % count == index


def in_val(rel_path: PurePosixPath, fraction: float) -> bool:
    """Deterministic train/val split by path (independent of the shard hash)."""
    digest = hashlib.sha1(b"val:" + rel_path.as_posix().encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def load_models(settings: RunSettings, plan: ComputePlan | None = None) -> LoadedModels:
    """Pick the device, load the box source and MobileSAM, resolve ``--classes``, size torch's thread pool.

    ``plan`` overrides the device's default compute plan (a distributed worker owns only some cores).
    """
    s = settings
    device = select_device(s.device)
    plan = plan or plan_compute(device)
    boxes: BoxSource
    if s.boxes_from is not None:
        from autoannotate.review.labels import find_data_yaml, read_names

        boxes_root = Path(s.boxes_from).expanduser()
        names_file = Path(s.names).expanduser() if s.names else find_data_yaml(boxes_root)
        names = read_names(names_file) if names_file is not None else names_from_boxes(boxes_root)
        label_boxes = LabelBoxes(boxes_root, names)
        class_ids = label_boxes.resolve_classes(s.classes)
        boxes, det_path = label_boxes, None
    else:
        detector = Detector.from_weights(s.det_model, device)
        names = detector.names
        class_ids = detector.resolve_classes(s.classes)
        boxes = detector.with_settings(
            DetectSettings(conf=s.conf, iou=s.iou, imgsz=s.imgsz, max_det=s.max_det, class_ids=class_ids, half=s.half)
        )
        det_path = detector.weights_path
    sam_weights = resolve_sam_weights(s.sam_model)
    segmenter = BoxSegmenter.from_weights(sam_weights, device, half=s.half)
    batch = s.batch or default_batch_size(device)
    apply_threads(plan)
    records = _model_records(s, det_path, sam_weights, segmenter.variant or "unknown")
    return LoadedModels(boxes, names, segmenter, batch, plan, records, class_ids)


def make_annotator(
    settings: RunSettings,
    models: LoadedModels,
    layout: DatasetLayout,
    previous: PreviousRun,
    fingerprint: str,
    journal: Journal | None,
) -> Annotator:
    """The pipeline for these settings and models (the local engine's, or one distributed worker's)."""
    s = settings
    return Annotator(
        models.boxes,
        models.segmenter,
        PolygonPolicy(PolygonMode(s.polygon), tolerance_px=s.tolerance, min_area_px=s.min_area),
        layout,
        batch=models.batch,
        infer_workers=models.plan.infer_workers,
        overwrite=s.overwrite,
        previous=previous,
        fingerprint=fingerprint,
        journal=journal,
        min_mask_score=s.min_mask_score,
        class_names=models.names,
        class_ids=models.class_ids,
    )


class AnnotationJob:
    """Construct (cheap, validates inputs and outputs), ``load()`` the models, then iterate ``run()``."""

    def __init__(self, settings: RunSettings, stdin: TextIO | None = None) -> None:
        self.settings = settings
        self.shard = parse_shard(settings.shard) if settings.shard else None
        self.spec: SourceSpec = resolve_data(settings.data, stdin)
        self.layout: DatasetLayout = plan_layout(self.spec, settings.data, settings.output_dir)
        self.models: LoadedModels | None = None
        self.data_yaml_path: Path = self.layout.output_dir / DATA_YAML
        self.notices: list[str] = []  # one-line warnings for the user (e.g. data.yaml written under another name)
        self.files = run_file_names(self.shard)
        self._summary: Summary | None = None
        self._previous: PreviousRun | None = None

    def images(self) -> Iterator[ImageSource]:
        """The images of this run (this shard's, with ``--shard``), streaming."""
        return (source for source in iter_images(self.spec) if in_shard(source.rel_path, self.shard))

    def load(self) -> LoadedModels:
        """Pick the device, load the models, resolve ``--classes``. Raises ModelError / ConfigError."""
        self.models = load_models(self.settings)
        return self.models

    def label_settings(self) -> dict[str, Any]:
        """Everything that decides label contents: a change re-annotates images on resume."""
        assert self.models is not None
        s = self.settings
        records = self.models.model_records
        return {
            "version": __version__,
            "det_model_sha256": records["detector"].get("sha256"),
            "boxes_from": str(Path(s.boxes_from).resolve()) if s.boxes_from else None,
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
            "min_mask_score": s.min_mask_score,
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
        if self.shard is not None and (self.settings.coco or self.settings.preview or self.settings.val_fraction):
            self.notices.append(
                "--coco, --preview and --val-fraction cover the whole dataset, so a shard does not write them: once"
                " every shard is done, rerun the same command without --shard (it skips every annotated image)"
            )
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
        models, s = self.models, self.settings
        started = time.perf_counter()
        started_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
        out = self.layout.output_dir
        label_settings = self.label_settings()
        fingerprint = settings_fingerprint(label_settings)
        entries: dict[str, LabelEntry] = {} if s.overwrite else dict(previous.entries)
        owned = set(previous.owned)
        counts = {"images": 0, OK: 0, EMPTY: 0, FAILED: 0, SKIPPED: 0, "instances": 0, "empty_masks": 0, "dropped": 0}
        done: list[_Done] = []

        def manifest(state: str) -> dict[str, Any]:
            return {
                "tool": "autoannotate",
                "version": __version__,
                "state": state,
                "started_at": started_at,
                "shard": s.shard,
                "settings": s.to_dict(),
                "label_settings": label_settings,
                "fingerprint": fingerprint,
                "device": str(models.plan.device),
                "batch": models.batch,
                "infer_workers": models.plan.infer_workers,
                "torch_threads": models.plan.torch_threads,
                "models": models.model_records,
                "data_yaml": str(self.data_yaml_path),
                "counts": dict(counts),
                "seconds": round(time.perf_counter() - started, 3),
                # labels an earlier run owned but which are not known done stay listed, so they stay ours
                "labels": {key: (entries[key].to_dict() if key in entries else {}) for key in sorted(owned)},
            }

        manifest_path = out / self.files.manifest
        write_text_atomic(manifest_path, format_manifest(manifest("running")))
        journal = Journal(out / self.files.journal)
        if s.engine == "ray":
            from autoannotate.engines.ray_engine import run_on_ray

            outcomes = run_on_ray(s, self.layout, previous, fingerprint, self.images(), self.files.journal)
        else:
            outcomes = make_annotator(s, models, self.layout, previous, fingerprint, journal).run(self.images())
        sidecar_partial = out / f".{self.files.sidecar}.partial"
        complete = False
        last_checkpoint = time.monotonic()
        try:
            with open(sidecar_partial, "w", encoding="utf-8") as sidecar:
                for outcome in outcomes:
                    counts["images"] += 1
                    counts[outcome.status] += 1
                    counts["instances"] += outcome.instances
                    counts["empty_masks"] += outcome.empty_masks
                    counts["dropped"] += outcome.dropped
                    if outcome.label_path is not None:
                        key = outcome.label_path.relative_to(out).as_posix()
                        if outcome.status == SKIPPED:
                            rows = previous.rows.get(key, [])
                        else:
                            signature = image_signature(outcome.source.path) or (0, 0)
                            entries[key] = LabelEntry(
                                str(outcome.source.path), outcome.status, outcome.instances, fingerprint, *signature
                            )
                            owned.add(key)
                            rows = instance_rows(str(outcome.source.path), key, outcome.quality, models.names)
                        sidecar.write(format_rows(rows))
                        done.append(_Done(outcome.source, key, outcome.resolution_wh, rows))
                    yield outcome
                    if time.monotonic() - last_checkpoint > CHECKPOINT_SECONDS:
                        write_text_atomic(manifest_path, format_manifest(manifest("running")))
                        last_checkpoint = time.monotonic()
            os.replace(sidecar_partial, out / self.files.sidecar)
            complete = True
        finally:
            with contextlib.suppress(OSError):
                sidecar_partial.unlink(missing_ok=True)
            # The journal may hold writes whose outcomes were never consumed: keep it unless the run completed.
            try:
                write_text_atomic(manifest_path, format_manifest(manifest("complete" if complete else "interrupted")))
            except OutputError:
                complete = False  # e.g. the disk is full: the last manifest and the journal still say it all
            journal.close(remove=complete)
            if complete:  # the distributed workers' journals are folded into the manifest too
                for worker_journal in out.glob(f"{Path(self.files.journal).stem}.worker-*.jsonl"):
                    worker_journal.unlink(missing_ok=True)
        coco_path = previews_dir = None
        if self.shard is None:
            if s.val_fraction > 0:
                self._write_split(done)
            if s.coco:
                coco_path = self._write_coco(done)
            if s.preview:
                previews_dir = self._write_previews(done)
        seconds = time.perf_counter() - started
        scores = [row["sam_iou"] for d in done for row in d.rows if not row.get("dropped") and row.get("lines")]
        self._summary = Summary(
            images=counts["images"],
            labeled=counts[OK] + counts[EMPTY],
            instances=counts["instances"],
            failed=counts[FAILED],
            skipped=counts[SKIPPED],
            empty_masks=counts["empty_masks"],
            dropped=counts["dropped"],
            output_dir=str(out),
            data_yaml=str(self.data_yaml_path),
            seconds=round(seconds, 3),
            images_per_s=round(counts["images"] / seconds, 3) if seconds > 0 else 0.0,
            sam_iou=score_summary(scores),
            coco_json=str(coco_path) if coco_path else None,
            previews=str(previews_dir) if previews_dir else None,
        )

    @property
    def summary(self) -> Summary:
        if self._summary is None:
            raise RuntimeError("summary is available once run() has been iterated to the end")
        return self._summary

    def _images_path(self, source: ImageSource) -> str:
        """The image's path as ultralytics will list it (under ``/images/``), relative to the output dir."""
        path = self.layout.image_link_path(source.rel_path) if self.layout.link == "files" else source.path
        return "./" + os.path.relpath(path, self.layout.output_dir).replace(os.sep, "/")

    def _write_split(self, done: list[_Done]) -> None:
        train: list[str] = []
        val: list[str] = []
        for item in done:
            (val if in_val(item.source.rel_path, self.settings.val_fraction) else train).append(
                self._images_path(item.source)
            )
        out = self.layout.output_dir
        write_text_atomic(out / TRAIN_LIST, "".join(f"{p}\n" for p in train))
        write_text_atomic(out / VAL_LIST, "".join(f"{p}\n" for p in val))
        if not val:
            self.notices.append(f"--val-fraction {self.settings.val_fraction} put no image in val.txt")

    def _write_coco(self, done: list[_Done]) -> Path:
        from autoannotate.review.labels import read_image_size_wh, read_label_file
        from autoannotate.writers.coco import CocoImage, CocoInstance, build_coco, write_coco

        assert self.models is not None
        images = []
        for item in done:
            resolution_wh = item.resolution_wh or read_image_size_wh(item.source.path)
            lines, _ = read_label_file(self.layout.output_dir / item.label_key)
            area_by_line = {row["line"]: row["mask_area"] for row in item.rows if row.get("line")}
            instances = tuple(
                CocoInstance(line.class_id, line.polygon_norm, area_by_line.get(line.line)) for line in lines
            )
            images.append(CocoImage(item.source.rel_path.as_posix(), resolution_wh, instances))
        path = self.layout.output_dir / COCO_NAME
        write_coco(path, build_coco(images, self.models.names), overwrite=self.settings.overwrite)
        return path

    def _write_previews(self, done: list[_Done]) -> Path:
        from autoannotate.review.labels import read_label_file
        from autoannotate.review.preview import PreviewSample, write_previews
        from autoannotate.sources import read_image_bgr

        assert self.models is not None
        # the N images with the smallest path hash: a deterministic sample, independent of the order of the run
        chosen = sorted(done, key=lambda d: hashlib.sha1(d.source.rel_path.as_posix().encode()).digest())
        samples = []
        for item in sorted(chosen[: self.settings.preview], key=lambda d: d.source.rel_path.as_posix()):
            lines, _ = read_label_file(self.layout.output_dir / item.label_key)
            score_by_line = {row["line"]: row["sam_iou"] for row in item.rows if row.get("line")}
            # split writes several lines per instance: each line takes the score of the instance it came from
            first_lines = sorted(score_by_line)
            instances: list[tuple[int, Any, float | None]] = []
            for line in lines:
                owner = max((n for n in first_lines if n <= line.line), default=None)
                instances.append((line.class_id, line.polygon_norm, score_by_line.get(owner) if owner else None))
            try:
                image = read_image_bgr(item.source.path)
            except Exception:  # the image vanished since it was annotated: leave it out of the previews
                continue
            samples.append(PreviewSample(item.source.rel_path, image, tuple(instances), normalized=True))
        out_dir = self.layout.output_dir / "previews"
        write_previews(samples, self.models.names, out_dir)
        return out_dir

    def _write_data_yaml(self) -> Path:
        """Write data.yaml, unless a data.yaml we did not write is there: then ours goes beside it."""
        assert self.models is not None
        if self.settings.val_fraction > 0:
            train, val = TRAIN_LIST, VAL_LIST
        else:
            train = val = self.layout.images_entry
        text = dataset_yaml.format_data_yaml(self.models.names, train, val, __version__)
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


def _model_records(settings: RunSettings, det_path: str | None, sam_path: Path, sam_variant: str) -> dict[str, Any]:
    """Each model's name as given, the file loaded, and its sha256 (for the manifest and the resume fingerprint)."""
    det_name = settings.det_model if settings.boxes_from is None else f"boxes from {settings.boxes_from}"
    records: dict[str, Any] = {}
    for role, name, path in (("detector", det_name, det_path), ("segmenter", settings.sam_model, sam_path)):
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


__all__ = ["SIDECAR_NAME", "AnnotationJob", "Summary", "in_shard", "in_val"]
