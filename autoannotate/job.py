"""One ``autoannotate run``: resolve inputs and outputs, load the models, stream the images, then write what covers
the whole run (manifest, instances.jsonl, train/val lists, COCO, previews). The CLI drives it and does all
printing; this module only returns values and raises ``AutoAnnotateError`` subclasses.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any, TextIO

from autoannotate import __version__
from autoannotate.config import EngineKind, RunSettings, parse_shard
from autoannotate.dataset.layout import DATA_YAML, FALLBACK_DATA_YAML, DatasetLayout, plan_layout, prepare_output
from autoannotate.errors import OutputError
from autoannotate.inputs.files import ImageSource, SourceSpec, iter_images, resolve_data
from autoannotate.lock import OutputLock, acquire_output_lock
from autoannotate.pipeline import EDITED, EMPTY, FAILED, OK, SKIPPED, Annotator, BoxSource, ImageOutcome
from autoannotate.polygons import PolygonMode, PolygonPolicy
from autoannotate.prompts.labels import LabelBoxes, names_from_boxes
from autoannotate.prompts.yolo import Detector, DetectSettings
from autoannotate.resume import (
    SIDECAR_NAME,
    Journal,
    LabelEntry,
    PreviousRun,
    bytes_sha256,
    bytes_sha256_of,
    image_signature,
    load_previous,
    run_file_names,
    settings_fingerprint,
)
from autoannotate.runtime.device import ComputePlan, apply_threads, plan_compute, select_device
from autoannotate.segmenters.sam import BoxSegmenter, default_batch_size, resolve_sam_weights
from autoannotate.writers import dataset_yaml
from autoannotate.writers.atomic import TEMP_PATTERN, remove_stale_temps, write_bytes_atomic, write_text_atomic
from autoannotate.writers.manifest import file_sha256, format_manifest
from autoannotate.writers.sidecar import format_rows, instance_rows, score_summary

CHECKPOINT_SECONDS = 30.0
TRAIN_LIST, VAL_LIST = "train.txt", "val.txt"
COCO_NAME = "annotations.coco.json"
PREVIEWS_DIR = "previews"


@dataclass(frozen=True)
class Summary:
    """Counts and timings of a finished run (the ``--json`` summary event, minus ``event``)."""

    images: int
    labeled: int  # label files written (ok + empty)
    instances: int
    failed: int
    skipped: int
    edited: int  # labels autoannotate wrote and a person changed since: kept as they are
    removed: int  # labels of ours removed because their image is gone
    other_settings: int  # labels in the output dir made by earlier runs with other settings (see `check`)
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
    """What the whole-dataset files need of each image with a label (written now, skipped, or from earlier runs)."""

    image: Path
    rel_path: PurePosixPath
    label_key: str
    resolution_wh: tuple[int, int] | None
    rows: list[dict[str, Any]] = field(default_factory=list)


def in_shard(rel_path: PurePosixPath, shard: tuple[int, int] | None) -> bool:
    """Whether an image belongs to shard ``(I, N)``: a hash of its path relative to ``--data``, so the partition is
    stable when other files are added or removed, and every image is in exactly one shard."""
    if shard is None:
        return True
    index, count = shard
    # The path without its suffix: images that map to one label file (a.jpg, a.png) fall in the same shard, so
    # every shard decides which of them gets the label the same way a single run does.
    text = rel_path.as_posix()
    stem = text[: len(text) - len(rel_path.suffix)] if rel_path.suffix else text
    digest = hashlib.sha1(stem.encode("utf-8")).digest()
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
    device = select_device(s.runtime.device)
    plan = plan or plan_compute(device)
    boxes: BoxSource
    if s.prompts.boxes_from is not None:
        from autoannotate.review.labels import find_data_yaml, read_names

        boxes_root = Path(s.prompts.boxes_from).expanduser()
        names_file = Path(s.prompts.names).expanduser() if s.prompts.names else find_data_yaml(boxes_root)
        names = read_names(names_file) if names_file is not None else names_from_boxes(boxes_root)
        label_boxes = LabelBoxes(boxes_root, names)
        class_ids = label_boxes.resolve_classes(s.prompts.classes)
        boxes, det_path = label_boxes, None
    else:
        detector = Detector.from_weights(s.prompts.det_model, device)
        names = detector.names
        class_ids = detector.resolve_classes(s.prompts.classes)
        boxes = detector.with_settings(
            DetectSettings(
                conf=s.prompts.conf,
                iou=s.prompts.iou,
                imgsz=s.prompts.imgsz,
                max_det=s.prompts.max_det,
                class_ids=class_ids,
                half=s.runtime.half,
            )
        )
        det_path = detector.weights_path
    sam_weights = resolve_sam_weights(s.segmenter.sam_model)
    segmenter = BoxSegmenter.from_weights(sam_weights, device, half=s.runtime.half)
    batch = s.runtime.batch or default_batch_size(device)
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
        PolygonPolicy(
            PolygonMode(s.polygons.polygon), tolerance_px=s.polygons.tolerance, min_area_px=s.polygons.min_area
        ),
        layout,
        batch=models.batch,
        infer_workers=models.plan.infer_workers,
        overwrite=s.output.overwrite,
        previous=previous,
        fingerprint=fingerprint,
        journal=journal,
        min_mask_score=s.segmenter.min_mask_score,
        class_names=models.names,
        class_ids=models.class_ids,
    )


class AnnotationJob:
    """Construct (cheap, validates inputs and outputs), ``load()`` the models, then iterate ``run()``; ``close()``
    (or use it as a context manager) releases the output dir's lock.

    The lock is taken before the models load, so a second run into the same dir is refused at once (see
    ``lock.py``); every whole-run file is checked for ownership before the first image (``begin``).
    """

    def __init__(self, settings: RunSettings, stdin: TextIO | None = None) -> None:
        self.settings = settings
        self.shard = parse_shard(settings.inputs.shard) if settings.inputs.shard else None
        self.spec: SourceSpec = resolve_data(settings.inputs.data, stdin)
        self.layout: DatasetLayout = plan_layout(self.spec, settings.inputs.data, settings.output.output_dir)
        refuse_overwriting_inputs(settings, self.layout)
        self.models: LoadedModels | None = None
        self.data_yaml_path: Path = self.layout.output_dir / DATA_YAML
        self.notices: list[str] = []  # one-line warnings for the user (e.g. data.yaml written under another name)
        self.files = run_file_names(self.shard)
        self._summary: Summary | None = None
        self._previous: PreviousRun | None = None
        self._lock: OutputLock | None = None

    def __enter__(self) -> AnnotationJob:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release the output dir's lock (idempotent)."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def images(self) -> Iterator[ImageSource]:
        """The images of this run (this shard's, with ``--shard``), streaming."""
        return (source for source in iter_images(self.spec) if in_shard(source.rel_path, self.shard))

    def acquire(self) -> None:
        """Create the output dir and lock it for this run (or shard); a whole run also removes the temporary files
        that killed runs left. Raises OutputError naming the run that holds the dir. Idempotent."""
        if self._lock is not None:
            return
        prepare_output(self.layout)
        self._lock = acquire_output_lock(self.layout.output_dir, self.shard)
        if self._lock.exclusive:  # no other run is writing here: every temporary file of ours is stale
            out = self.layout.output_dir
            for stale in out.glob(".*.partial"):  # the sidecar's partial file of older versions
                with contextlib.suppress(OSError):
                    stale.unlink()
            for name in os.listdir(out):
                path = out / name
                with contextlib.suppress(OSError):
                    if TEMP_PATTERN.fullmatch(name) and stat.S_ISREG(os.lstat(path).st_mode):
                        path.unlink()
            for tree in (self.layout.label_root, out / PREVIEWS_DIR):
                if tree.is_dir():
                    remove_stale_temps(tree)

    def load(self) -> LoadedModels:
        """Lock the output dir, pick the device, load the models, resolve ``--classes``. Raises ModelError,
        ConfigError, OutputError."""
        self.acquire()
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
            "boxes_from": str(Path(s.prompts.boxes_from).resolve()) if s.prompts.boxes_from else None,
            "sam_model_sha256": records["segmenter"].get("sha256"),
            "conf": s.prompts.conf,
            "iou": s.prompts.iou,
            "imgsz": s.prompts.imgsz,
            "max_det": s.prompts.max_det,
            "classes": list(self.models.class_ids) if self.models.class_ids is not None else None,
            "tolerance": s.polygons.tolerance,
            "min_area": s.polygons.min_area,
            "polygon": s.polygons.polygon.value,
            "half": s.runtime.half,
            "min_mask_score": s.segmenter.min_mask_score,
        }

    def begin(self) -> PreviousRun:
        """Lock, load models if needed, read earlier runs, check that every file the run will write is ours to write,
        write data.yaml; fills ``notices``.

        Idempotent; ``run()`` calls it, and the CLI calls it first to show the notices before any image.
        """
        if self._previous is not None:
            return self._previous
        self.acquire()
        if self.models is None:
            self.load()
        previous = load_previous(self.layout.output_dir)
        self._check_run_outputs(previous)
        label_settings = self.label_settings()
        fingerprint = settings_fingerprint(label_settings)
        if previous.entries and previous.fingerprint not in (None, fingerprint) and not self.settings.output.overwrite:
            self.notices.append(_changed_settings_notice(previous.settings, label_settings))
        if self.shard is not None and (
            self.settings.output.coco or self.settings.output.preview or self.settings.output.val_fraction
        ):
            self.notices.append(
                "--coco, --preview and --val-fraction cover the whole dataset, so a shard does not write them: once"
                " every shard is done, rerun the same command without --shard (it skips every annotated image)"
            )
        self.data_yaml_path = self._write_data_yaml()
        self._previous = previous
        return previous

    def _whole_run_files(self) -> list[str]:
        """The files (relative to the output dir) this run writes besides labels and links, data.yaml aside."""
        names = [self.files.sidecar]
        if self.shard is None:
            s = self.settings
            if s.output.val_fraction > 0:
                names += [TRAIN_LIST, VAL_LIST]
            if s.output.coco:
                names.append(COCO_NAME)
            previews = self.layout.output_dir / PREVIEWS_DIR
            if (
                s.output.preview and previews.is_dir()
            ):  # which previews a run writes depends on the sample: check them all
                out = self.layout.output_dir
                names += sorted(p.relative_to(out).as_posix() for p in previews.rglob("*") if not p.is_dir())
        return names

    def _check_run_outputs(self, previous: PreviousRun) -> None:
        """Refuse, before any image, a run that would replace a file autoannotate did not write (or that a person
        changed since), unless ``--overwrite``: the same rule as for labels and data.yaml."""
        if self.settings.output.overwrite:
            return
        out = self.layout.output_dir
        theirs = []
        manifest = out / self.files.manifest
        if manifest.exists() and not _is_our_manifest(manifest):
            theirs.append(self.files.manifest)
        for rel in self._whole_run_files():
            path = out / rel
            if (path.exists() or path.is_symlink()) and not previous.owns_file(rel, path):
                theirs.append(rel)
        if theirs:
            more = f" (and {len(theirs) - 1} more)" if len(theirs) > 1 else ""
            raise OutputError(
                f"{str(out / theirs[0])!r}{more} exists and was not written by autoannotate or was changed since;"
                " move it, choose another --output-dir, or pass --overwrite to replace it"
            )

    def run(self) -> Iterator[ImageOutcome]:
        """Annotate every image, resuming what earlier runs did. Raises OutputError up front.

        data.yaml and a first manifest are written before any label; the manifest is rewritten at checkpoints and
        at the end, and every label write is journalled as it happens (see ``resume.py``). A whole run then writes
        the files that cover the whole dataset (instances.jsonl, train/val lists, COCO, previews) over every label
        of the output dir, this run's and earlier ones', and releases the lock.
        """
        try:
            yield from self._run()
        finally:
            self.close()

    def _run(self) -> Iterator[ImageOutcome]:
        previous = self.begin()
        assert self.models is not None
        models, s = self.models, self.settings
        started = time.perf_counter()
        started_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
        out = self.layout.output_dir
        label_settings = self.label_settings()
        fingerprint = settings_fingerprint(label_settings)
        entries: dict[str, LabelEntry] = {} if s.output.overwrite else dict(previous.entries)
        owned = set(previous.owned)
        counts = dict.fromkeys(("images", OK, EMPTY, FAILED, SKIPPED, EDITED, "instances", "empty_masks"), 0)
        counts["dropped"] = 0
        done: dict[str, _Done] = {}  # by label key, this run's
        files: dict[str, str] = {}  # whole-dataset files and their sha256, for the manifest

        def manifest(state: str) -> dict[str, Any]:
            return {
                "tool": "autoannotate",
                "version": __version__,
                "state": state,
                "started_at": started_at,
                "shard": s.inputs.shard,
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
                "files": dict(sorted(files.items())),
                # labels an earlier run owned but which are not known done stay listed, so they stay ours
                "labels": {key: (entries[key].to_dict() if key in entries else {}) for key in sorted(owned)},
            }

        files.update(self._still_ours(previous))
        manifest_path = out / self.files.manifest
        write_text_atomic(manifest_path, format_manifest(manifest("running")))
        journal = Journal(out / self.files.journal)
        if s.engine.engine == EngineKind.RAY:
            from autoannotate.engines.ray_engine import run_on_ray

            outcomes = run_on_ray(s, self.layout, previous, fingerprint, self.images(), self.files.journal)
        else:
            outcomes = make_annotator(s, models, self.layout, previous, fingerprint, journal).run(self.images())
        complete = False
        last_checkpoint = time.monotonic()
        removed = 0
        try:
            for outcome in outcomes:
                counts["images"] += 1
                counts[outcome.status] += 1
                counts["instances"] += outcome.instances
                counts["empty_masks"] += outcome.empty_masks
                counts["dropped"] += outcome.dropped
                if outcome.label_path is not None:
                    key = outcome.label_path.relative_to(out).as_posix()
                    rows: list[dict[str, Any]] = []
                    if outcome.status == SKIPPED:
                        rows = previous.rows.get(key, [])
                    elif outcome.status != EDITED:  # a person's label: its old rows describe another label
                        signature = image_signature(outcome.source.path) or (0, 0)
                        entries[key] = LabelEntry(
                            str(outcome.source.path),
                            outcome.status,
                            outcome.instances,
                            fingerprint,
                            *signature,
                            outcome.label_sha256,
                        )
                        owned.add(key)
                        rows = instance_rows(str(outcome.source.path), key, outcome.quality, models.names)
                    done[key] = _Done(outcome.source.path, outcome.source.rel_path, key, outcome.resolution_wh, rows)
                yield outcome
                if time.monotonic() - last_checkpoint > CHECKPOINT_SECONDS:
                    write_text_atomic(manifest_path, format_manifest(manifest("running")))
                    last_checkpoint = time.monotonic()
            dataset = list(done.values())
            if self.shard is None:
                removed = self._forget_vanished(previous, entries, owned, done)
                dataset += self._untouched(previous, entries, done)
                dataset.sort(key=lambda d: d.label_key)
            changed = removed > 0 or any(counts[k] for k in (OK, EMPTY))
            files.update(self._write_dataset_files(dataset, changed))
            complete = True
        finally:
            # Stop the engine first (its pools, or Ray's actors), so that no label lands after the last manifest.
            close_engine = getattr(outcomes, "close", None)
            if close_engine is not None:
                close_engine()
            # The journal may hold writes whose outcomes were never consumed: keep it unless the run completed.
            try:
                write_text_atomic(manifest_path, format_manifest(manifest("complete" if complete else "interrupted")))
            except OutputError:
                if complete:
                    journal.close(remove=False)
                    raise  # e.g. the disk is full: the last manifest and the journal still say it all
            journal.close(remove=complete)
            if complete:  # the distributed workers' journals are folded into the manifest too
                for worker_journal in out.glob(f"{Path(self.files.journal).stem}.worker-*.jsonl"):
                    worker_journal.unlink(missing_ok=True)
        other_settings = sorted(k for k, e in entries.items() if e.fingerprint != fingerprint and k not in done)
        if other_settings and self.shard is None:
            self.notices.append(
                f"{len(other_settings)} label(s) in {str(out)!r} were made with other settings than this run's (e.g."
                f" {other_settings[0]!r}); `autoannotate check {str(out / 'labels')!r}` lists them"
            )
        seconds = time.perf_counter() - started
        scores = [
            row["sam_iou"] for d in done.values() for row in d.rows if not row.get("dropped") and row.get("lines")
        ]
        self._summary = Summary(
            images=counts["images"],
            labeled=counts[OK] + counts[EMPTY],
            instances=counts["instances"],
            failed=counts[FAILED],
            skipped=counts[SKIPPED],
            edited=counts[EDITED],
            removed=removed,
            other_settings=len(other_settings) if self.shard is None else 0,
            empty_masks=counts["empty_masks"],
            dropped=counts["dropped"],
            output_dir=str(out),
            data_yaml=str(self.data_yaml_path),
            seconds=round(seconds, 3),
            images_per_s=round(counts["images"] / seconds, 3) if seconds > 0 else 0.0,
            sam_iou=score_summary(scores),
            coco_json=str(out / COCO_NAME) if COCO_NAME in files and self.settings.output.coco else None,
            previews=str(out / PREVIEWS_DIR) if self.settings.output.preview and self.shard is None else None,
        )

    @property
    def summary(self) -> Summary:
        if self._summary is None:
            raise RuntimeError("summary is available once run() has been iterated to the end")
        return self._summary

    def _still_ours(self, previous: PreviousRun) -> dict[str, str]:
        """Whole-dataset files an earlier run wrote and nobody changed since, with their sha256 (they stay ours)."""
        out = self.layout.output_dir
        kept = {}
        for rel in previous.files:
            path = out / rel
            digest = bytes_sha256_of(path) if path.is_file() else None
            if digest is not None and digest in previous.files[rel]:
                kept[rel] = digest
        return kept

    def _forget_vanished(
        self, previous: PreviousRun, entries: dict[str, LabelEntry], owned: set[str], done: dict[str, _Done]
    ) -> int:
        """Labels of ours whose image is gone: remove the label (unless a person edited it), its image link and its
        manifest entry. Returns how many were removed. Only a whole run does this (it alone holds the dir)."""
        out = self.layout.output_dir
        removed = 0
        for key, entry in sorted(entries.items()):
            if key in done or os.path.lexists(entry.image):
                continue
            label = out / key
            digest = bytes_sha256_of(label) if label.is_file() else None
            if digest is not None and entry.sha256 is not None and digest != entry.sha256:
                continue  # a person's label: theirs to remove
            rel_path = self._rel_path_of(key, entry)
            if self.layout.link == "files" and rel_path is not None:
                link = self.layout.image_link_path(rel_path)
                if link.is_symlink() and not link.exists():  # only our dangling link, never a file
                    with contextlib.suppress(OSError):
                        link.unlink()
            with contextlib.suppress(OSError):
                label.unlink(missing_ok=True)
            del entries[key]
            owned.discard(key)
            removed += 1
        if removed:
            self.notices.append(f"removed {removed} label(s) whose image no longer exists")
        return removed

    def _untouched(self, previous: PreviousRun, entries: dict[str, LabelEntry], done: dict[str, _Done]) -> list[_Done]:
        """Labels of earlier runs that this run did not list (a subset rerun): still part of the dataset."""
        out = self.layout.output_dir
        rest = []
        for key, entry in sorted(entries.items()):
            if key in done or not (out / key).is_file():
                continue
            rel_path = self._rel_path_of(key, entry)
            if rel_path is None:  # written under another layout: not an image of this dataset's tree
                continue
            rows = previous.rows.get(key, [])
            if entry.sha256 is not None and bytes_sha256_of(out / key) != entry.sha256:
                rows = []  # edited by a person since
            rest.append(_Done(Path(entry.image), rel_path, key, None, rows))
        return rest

    def _rel_path_of(self, key: str, entry: LabelEntry) -> PurePosixPath | None:
        """The image's path relative to this layout's image root, from its label key and its image's suffix."""
        label = self.layout.output_dir / key
        try:
            stem = label.relative_to(self.layout.label_root).with_suffix("")
        except ValueError:
            return None
        return PurePosixPath(stem.as_posix() + Path(entry.image).suffix)

    def _write_dataset_files(self, dataset: list[_Done], changed: bool) -> dict[str, str]:
        """The sidecar, and for a whole run the train/val lists, COCO and previews over ``dataset``; ours that this
        run does not write are removed when the dataset changed, so none describes another set of labels.
        Returns each written file's sha256."""
        out = self.layout.output_dir
        s = self.settings
        written: dict[str, str] = {}

        def put(rel: str, data: bytes) -> None:
            write_bytes_atomic(out / rel, data)
            written[rel] = bytes_sha256(data)

        put(self.files.sidecar, format_rows(row for item in dataset for row in item.rows).encode("utf-8"))
        if self.shard is not None:
            return written
        previous = self._previous
        assert previous is not None
        if s.output.val_fraction > 0:
            train, val = self._split(dataset)
            put(TRAIN_LIST, train.encode("utf-8"))
            put(VAL_LIST, val.encode("utf-8"))
        else:
            self._remove_ours([TRAIN_LIST, VAL_LIST], previous)  # data.yaml no longer points at them
        if s.output.coco:
            put(COCO_NAME, self._coco(dataset).encode("utf-8"))
        elif changed:
            self._remove_ours([COCO_NAME], previous)
        preview_files = sorted(rel for rel in previous.files if rel.startswith(PREVIEWS_DIR + "/"))
        if s.output.preview:
            written.update(self._write_previews(dataset))
            self._remove_ours([rel for rel in preview_files if rel not in written], previous)
        elif changed:
            self._remove_ours(preview_files, previous)
        return written

    def _remove_ours(self, rels: list[str], previous: PreviousRun) -> None:
        out = self.layout.output_dir
        gone = []
        for rel in rels:
            path = out / rel
            if path.is_file() and rel in previous.files and previous.owns_file(rel, path):
                with contextlib.suppress(OSError):
                    path.unlink()
                    gone.append(rel)
        if gone:
            self.notices.append(
                f"removed {', '.join(gone[:3])}{' ...' if len(gone) > 3 else ''} from an earlier run: it no longer"
                " described this dataset (ask for it again to rebuild it)"
            )

    def _images_path(self, item: _Done) -> str:
        """The image's path as ultralytics will list it (under ``/images/``), relative to the output dir."""
        path = self.layout.image_link_path(item.rel_path) if self.layout.link == "files" else item.image
        return "./" + os.path.relpath(path, self.layout.output_dir).replace(os.sep, "/")

    def _split(self, dataset: list[_Done]) -> tuple[str, str]:
        train: list[str] = []
        val: list[str] = []
        for item in sorted(dataset, key=lambda d: d.rel_path.as_posix()):
            (val if in_val(item.rel_path, self.settings.output.val_fraction) else train).append(self._images_path(item))
        if not val:
            self.notices.append(f"--val-fraction {self.settings.output.val_fraction} put no image in val.txt")
        return "".join(f"{p}\n" for p in train), "".join(f"{p}\n" for p in val)

    def _coco(self, dataset: list[_Done]) -> str:
        from autoannotate.review.labels import read_image_size_wh, read_label_file
        from autoannotate.writers.coco import CocoImage, CocoInstance, build_coco, format_coco

        assert self.models is not None
        images = []
        for item in sorted(dataset, key=lambda d: d.rel_path.as_posix()):
            try:
                resolution_wh = item.resolution_wh or read_image_size_wh(item.image)
            except Exception:  # the image vanished or broke since it was annotated: leave it out
                continue
            lines, _ = read_label_file(self.layout.output_dir / item.label_key)
            area_by_line = {row["line"]: row["mask_area"] for row in item.rows if row.get("line")}
            instances = tuple(
                CocoInstance(line.class_id, line.polygon_norm, area_by_line.get(line.line)) for line in lines
            )
            images.append(CocoImage(item.rel_path.as_posix(), resolution_wh, instances))
        return format_coco(build_coco(images, self.models.names))

    def _write_previews(self, dataset: list[_Done]) -> dict[str, str]:
        from autoannotate.inputs.files import read_image_bgr
        from autoannotate.review.labels import read_label_file
        from autoannotate.review.preview import PreviewSample, write_previews

        assert self.models is not None
        # the N images with the smallest path hash: a deterministic sample, independent of the order of the run
        chosen = sorted(dataset, key=lambda d: hashlib.sha1(d.rel_path.as_posix().encode()).digest())
        samples = []
        for item in sorted(chosen[: self.settings.output.preview], key=lambda d: d.rel_path.as_posix()):
            lines, _ = read_label_file(self.layout.output_dir / item.label_key)
            score_by_line = {row["line"]: row["sam_iou"] for row in item.rows if row.get("line")}
            # split writes several lines per instance: each line takes the score of the instance it came from
            first_lines = sorted(score_by_line)
            instances: list[tuple[int, Any, float | None]] = []
            for line in lines:
                owner = max((n for n in first_lines if n <= line.line), default=None)
                instances.append((line.class_id, line.polygon_norm, score_by_line.get(owner) if owner else None))
            try:
                image = read_image_bgr(item.image)
            except Exception:  # the image vanished since it was annotated: leave it out of the previews
                continue
            samples.append(PreviewSample(item.rel_path, image, tuple(instances), normalized=True))
        if not samples:
            return {}
        out = self.layout.output_dir
        files = write_previews(samples, self.models.names, out / PREVIEWS_DIR)
        written = {}
        for path in (*files.overlays, files.contact_sheet):
            digest = bytes_sha256_of(path)
            if digest is not None:
                written[path.relative_to(out).as_posix()] = digest
        return written

    def _write_data_yaml(self) -> Path:
        """Write data.yaml, unless a data.yaml we did not write is there: then ours goes beside it."""
        assert self.models is not None
        if self.settings.output.val_fraction > 0:
            train, val = TRAIN_LIST, VAL_LIST
        else:
            train = val = self.layout.images_entry
        text = dataset_yaml.format_data_yaml(self.models.names, train, val, __version__)
        path = self.layout.output_dir / DATA_YAML
        if path.exists() and not self.settings.output.overwrite and not _is_our_data_yaml(path):
            path = self.layout.output_dir / FALLBACK_DATA_YAML
            if path.exists() and not _is_our_data_yaml(path):
                raise OutputError(
                    f"{str(path.parent / DATA_YAML)!r} and {str(path)!r} exist and were not written by autoannotate;"
                    " move one, choose another --output-dir, or pass --overwrite to replace data.yaml"
                )
            self.notices.append(
                f"{str(self.layout.output_dir / DATA_YAML)!r} was not written by autoannotate and is kept;"
                f" wrote {str(path)!r} instead (--overwrite replaces it)"
            )
        if path.is_dir():
            raise OutputError(f"{str(path)!r} is a directory; choose another --output-dir")
        write_text_atomic(path, text)
        return path


def _is_our_data_yaml(path: Path) -> bool:
    try:
        return dataset_yaml.is_ours(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError):
        return False


def _is_our_manifest(path: Path) -> bool:
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(manifest, dict) and manifest.get("tool") == "autoannotate"


def refuse_overwriting_inputs(settings: RunSettings, layout: DatasetLayout) -> None:
    """Whatever the flags, a run never writes over its own inputs: the ``--boxes-from`` labels and the ``--names``
    file. Raises OutputError (one line, with the fix)."""
    out = layout.output_dir
    if settings.prompts.boxes_from:
        source = Path(settings.prompts.boxes_from).expanduser()
        for labels in (layout.label_root, out / "labels"):
            if _overlaps(source, labels):
                raise OutputError(
                    f"--boxes-from {settings.prompts.boxes_from!r} is where this run would write its labels"
                    f" ({str(labels)!r}), so it would overwrite its own box prompts; write the segmentation dataset"
                    f" elsewhere: --output-dir {str(out.parent / (out.name + '_seg'))!r}"
                )
    if settings.prompts.names:
        names = Path(settings.prompts.names).expanduser()
        for written in (out / DATA_YAML, out / FALLBACK_DATA_YAML):
            if os.path.realpath(names) == os.path.realpath(written):
                raise OutputError(
                    f"--names {settings.prompts.names!r} is the data.yaml this run would write; write the dataset"
                    f" elsewhere: --output-dir {str(out.parent / (out.name + '_seg'))!r}"
                )


def _overlaps(a: Path, b: Path) -> bool:
    """True when one of the two directories is the other or lies inside it (symlinks resolved)."""
    real_a, real_b = os.path.realpath(a).rstrip(os.sep), os.path.realpath(b).rstrip(os.sep)
    return real_a == real_b or real_a.startswith(real_b + os.sep) or real_b.startswith(real_a + os.sep)


def _model_records(settings: RunSettings, det_path: str | None, sam_path: Path, sam_variant: str) -> dict[str, Any]:
    """Each model's name as given, the file loaded, and its sha256 (for the manifest and the resume fingerprint)."""
    det_name = (
        settings.prompts.det_model
        if settings.prompts.boxes_from is None
        else f"boxes from {settings.prompts.boxes_from}"
    )
    records: dict[str, Any] = {}
    for role, name, path in (("detector", det_name, det_path), ("segmenter", settings.segmenter.sam_model, sam_path)):
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
