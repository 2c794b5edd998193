"""One ``autoannotate run``: resolve inputs and outputs, load the models, stream the images, then write what covers
the whole run (manifest, instances.jsonl, train/val lists, COCO, previews). The CLI drives it and does all
printing; this module only returns values and raises ``AutoAnnotateError`` subclasses.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any, TextIO

from autoannotate import __version__
from autoannotate.config import RunSettings, RuntimeKind, parse_shard
from autoannotate.dataset.layout import DATA_YAML, FALLBACK_DATA_YAML, DatasetLayout, plan_layout, prepare_output
from autoannotate.engines import EngineRun, engine_entry
from autoannotate.errors import ConfigError, OutputError
from autoannotate.finalize import DatasetEntry, coco_text, split_lists, write_preview_files
from autoannotate.inputs import InputItem, ListingContext, kind_for
from autoannotate.inputs.listing import SourceSpec, estimate_items, iter_items, resolve_data
from autoannotate.inputs.video import VideoOptions, frame_from_record
from autoannotate.inputs.video_sampling import VideoSampling
from autoannotate.lock import OutputLock, acquire_output_lock
from autoannotate.models import Models, load_models
from autoannotate.resume import (
    SIDECAR_NAME,
    Journal,
    LabelEntry,
    PreviousRun,
    VideoBook,
    bytes_sha256,
    bytes_sha256_of,
    load_previous,
    run_file_names,
    settings_fingerprint,
)
from autoannotate.runtime.choice import OPENVINO_AUTO_MIN_ITEMS, requested_runtime
from autoannotate.types import ImageOutcome, Status
from autoannotate.writers import dataset_yaml
from autoannotate.writers.atomic import TEMP_PATTERN, remove_stale_temps, write_bytes_atomic, write_text_atomic
from autoannotate.writers.manifest import format_manifest
from autoannotate.writers.sidecar import format_rows, instance_rows, score_summary

CHECKPOINT_SECONDS = 30.0
TRAIN_LIST, VAL_LIST = "train.txt", "val.txt"
COCO_NAME = "annotations.coco.json"
PREVIEWS_DIR = "previews"


@dataclass(frozen=True)
class Summary:
    """Counts and timings of a finished run (the ``--json`` summary event, minus ``event``)."""

    images: int  # images and video frames
    labeled: int  # label files written (ok + empty)
    instances: int
    failed: int
    skipped: int
    edited: int  # labels autoannotate wrote and a person changed since: kept as they are
    reviewed: int  # labels a person reviewed (``autoannotate import``): kept as they are
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
    report: str | None = None  # report.html, when --report asked for it
    prompts: list[str] | None = None  # the class prompts of an open-vocabulary run (data.yaml's names), else None
    videos: int = 0  # video files this run read (or found done)
    frames: int = 0  # of ``images``, the video frames

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _marks(previous: PreviousRun, redone: set[str]) -> dict[str, dict[str, str]]:
    """The manifest's ``reviewed`` section: earlier marks, less those of the labels this run wrote again."""
    return {key: mark.to_dict() for key, mark in sorted(previous.reviewed.items()) if key not in redone}


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
        if self.shard is not None and settings.output.overwrite_reviewed:
            # a shard's manifest would drop the marks of the labels it redid while the other shards' keep them
            raise ConfigError("--overwrite-reviewed redoes labels of the whole dataset; run it without --shard")
        self.models: Models | None = None
        self.data_yaml_path: Path = self.layout.output_dir / DATA_YAML
        self.notices: list[str] = []  # one-line warnings for the user (e.g. data.yaml written under another name)
        self.files = run_file_names(self.shard)
        self._summary: Summary | None = None
        self._previous: PreviousRun | None = None
        self._lock: OutputLock | None = None
        self._embeddings_npz: bytes | None = None  # class embeddings the prompt source computed, to save

    def __enter__(self) -> AnnotationJob:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release the output dir's lock (idempotent)."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def video_options(self) -> VideoOptions:
        v = self.settings.video
        sampling = VideoSampling(
            every=max(1, v.every), fps=v.fps or None, max_frames=v.max_frames, skip_similar=v.skip_similar
        )
        return VideoOptions(sampling, v.jpeg_quality)

    def images(self, book: VideoBook | None = None) -> Iterator[InputItem]:
        """The input items of this run (this shard's, with ``--shard``: by file, so a video is one unit), streaming:
        one per image, one per kept video frame. ``book``: the run's record of video scans (resume)."""
        context = ListingContext(self.layout, self.video_options(), book)
        return iter_items(self.spec, context, keep=lambda rel_path: in_shard(rel_path, self.shard))

    def estimate(self, stop_at: int | None = None) -> tuple[int, bool]:
        """How many items ``images`` yields, from the files' headers: ``(count, whether videos are among them)``
        (a video counts its frames to be kept, estimated from its frame count: an upper bound). ``stop_at``: stop
        counting there."""
        context = ListingContext(self.layout, self.video_options(), None)
        return estimate_items(self.spec, context, keep=lambda rel_path: in_shard(rel_path, self.shard), stop_at=stop_at)

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
            frames = out / "images" if self.layout.link == "files" else None  # video frames are written there
            for tree in (self.layout.label_root, out / PREVIEWS_DIR, frames):
                if tree is not None and tree.is_dir():
                    remove_stale_temps(tree)

    def load(self) -> Models:
        """Lock the output dir, pick the device, load the models, resolve ``--classes``. Raises ModelError,
        ConfigError, OutputError."""
        self.acquire()
        # only --runtime auto asks (the walk stops at the threshold, so a big folder costs a few file headers)
        long_run = (
            requested_runtime(str(self.settings.runtime.runtime)) == RuntimeKind.AUTO
            and self.estimate(stop_at=OPENVINO_AUTO_MIN_ITEMS)[0] >= OPENVINO_AUTO_MIN_ITEMS
        )
        per_worker = engine_entry(self.settings.engine.engine).per_worker_models
        self.models = load_models(self.settings, long_run=long_run and not per_worker, on_cpu=per_worker)
        self.notices.extend(self.models.notices)
        return self.models

    def label_settings(self) -> dict[str, Any]:
        """Everything that decides label contents: a change re-annotates images on resume."""
        assert self.models is not None
        s = self.settings
        records = self.models.records
        class_ids = self.models.class_ids
        return {
            "version": __version__,
            "det_model_sha256": records["detector"].get("sha256"),
            "sam_model_sha256": records["segmenter"].get("sha256"),
            **s.label_values(),
            # resolved: the same labels whatever the spelling (a relative path, class names or ids)
            "boxes_from": str(Path(s.prompts.boxes_from).resolve()) if s.prompts.boxes_from else None,
            # absent unless given, so that earlier runs' labels still match
            **({"points_from": str(Path(s.prompts.points_from).resolve())} if s.prompts.points_from else {}),
            "classes": list(class_ids) if class_ids is not None else None,
            # the classes prompts set: their names and embeddings' digest (absent for a detector's own classes, so
            # that earlier runs' labels still match)
            **({"prompts": _prompt_fingerprint(record)} if (record := self.models.prompt_record) is not None else {}),
            # a GPU run's device kind, dtypes and TF32 (absent on the CPU, so that CPU datasets keep their fingerprints)
            **({"compute": compute} if (compute := self.models.compute) is not None else {}),
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
        assert self.models is not None
        self._embeddings_npz = self.models.embeddings_npz()
        self._check_run_outputs(previous)
        label_settings = self.label_settings()
        fingerprint = settings_fingerprint(label_settings)
        if previous.entries and previous.fingerprint not in (None, fingerprint) and not self.settings.output.overwrite:
            self.notices.append(_changed_settings_notice(previous.settings, label_settings))
        o = self.settings.output
        if self.shard is not None and (o.coco or o.preview or o.val_fraction or o.report):
            self.notices.append(
                "--coco, --preview, --val-fraction and --report cover the whole dataset, so a shard does not write"
                " them: once every shard is done, rerun the same command without --shard (it skips every annotated"
                " image)"
            )
        self.data_yaml_path = self._write_data_yaml()
        self._previous = previous
        return previous

    def _whole_run_files(self) -> list[str]:
        """The files (relative to the output dir) this run writes besides labels and links, data.yaml aside."""
        names = [self.files.sidecar]
        if self._embeddings_npz is not None:
            names.append(self.files.embeddings)
        if self.shard is None:
            o = self.settings.output
            if o.val_fraction > 0:
                names += [TRAIN_LIST, VAL_LIST]
            if o.coco:
                names.append(COCO_NAME)
            previews = self.layout.output_dir / PREVIEWS_DIR
            if o.preview and previews.is_dir():  # which previews a run writes depends on the sample: check them all
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
        if self.settings.output.report and self.shard is None:
            from autoannotate.review.report import REPORT_NAME, is_report

            report = out / REPORT_NAME
            if (report.exists() or report.is_symlink()) and not is_report(report):  # ours says so in its head
                theirs.append(REPORT_NAME)
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
        started_at = datetime.now(UTC).isoformat(timespec="seconds")
        out = self.layout.output_dir
        label_settings = self.label_settings()
        fingerprint = settings_fingerprint(label_settings)
        entries: dict[str, LabelEntry] = {} if s.output.overwrite else dict(previous.entries)
        if s.output.overwrite:  # a person's reviewed labels stay, and stay known: only --overwrite-reviewed redoes them
            entries.update({k: e for k, e in previous.entries.items() if k in previous.reviewed})
        # what the stages see: with --overwrite-reviewed, no label is reviewed, and a reviewed label is ours to redo
        seen = previous
        if s.output.overwrite_reviewed:
            kept = {k: e for k, e in previous.entries.items() if k not in previous.reviewed}
            seen = replace(previous, reviewed={}, entries=kept, owned=previous.owned | set(previous.reviewed))
        redone: set[str] = set()  # labels this run wrote (a reviewed one among them is no longer reviewed)
        owned = set(previous.owned)
        counts = dict.fromkeys(("images", *Status, "instances", "empty_masks"), 0)
        counts["dropped"] = 0
        videos: set[str] = set()  # video files seen (by their frames or their failure)
        frames = 0
        done: dict[str, DatasetEntry] = {}  # by label key, this run's
        files: dict[str, str] = {}  # whole-dataset files and their sha256, for the manifest

        def manifest(state: str) -> dict[str, Any]:
            video_records = book.snapshot() if book is not None else {}
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
                "models": models.records,
                "prompts": models.prompt_record,
                "data_yaml": str(self.data_yaml_path),
                "counts": dict(counts),
                "seconds": round(time.perf_counter() - started, 3),
                "files": dict(sorted(files.items())),
                # labels an earlier run owned but which are not known done stay listed, so they stay ours
                "labels": {key: (entries[key].to_dict() if key in entries else {}) for key in sorted(owned)},
                # labels a person reviewed (absent when none, so that other manifests read as they always have)
                **({"reviewed": reviewed} if (reviewed := _marks(previous, redone)) else {}),
                # video scans (absent without videos, so that an image run's manifest reads as it always has)
                **({"videos": video_records} if video_records else {}),
            }

        files.update(self._still_ours(previous))
        engine_settings = s
        if self._embeddings_npz is not None:
            # saved before any label, so that workers (and later runs, offline) load them instead of recomputing
            write_bytes_atomic(out / self.files.embeddings, self._embeddings_npz)
            files[self.files.embeddings] = bytes_sha256(self._embeddings_npz)
            engine_settings = with_saved_embeddings(s, out / self.files.embeddings)
        manifest_path = out / self.files.manifest
        book: VideoBook | None = None
        write_text_atomic(manifest_path, format_manifest(manifest("running")))
        journal = Journal(out / self.files.journal)
        book = VideoBook(seen, journal, self.layout, fingerprint, overwrite=s.output.overwrite)
        items: dict[PurePosixPath, InputItem] = {}  # by key, as listed: the whole-dataset files read them again

        def listed() -> Iterator[InputItem]:
            for item in self.images(book):
                items[item.rel_path] = item
                yield item

        engine = engine_entry(s.engine.engine)
        outcomes = engine.run(
            EngineRun(engine_settings, self.layout, seen, fingerprint, listed(), models, journal, self.files.journal)
        )
        reviewed_keys = set(seen.reviewed)
        complete = False
        last_checkpoint = time.monotonic()
        removed = 0
        try:
            for outcome in outcomes:
                item = items.pop(outcome.rel_path, None)
                if outcome.frame is not None or (item is not None and item.kind == "video"):
                    videos.add(str(outcome.frame["video"]) if outcome.frame is not None else outcome.origin)
                    frames += outcome.frame is not None
                counts["images"] += 1
                counts[outcome.status] += 1
                counts["instances"] += outcome.instances
                counts["empty_masks"] += outcome.empty_masks
                counts["dropped"] += outcome.dropped
                if outcome.label_path is not None:
                    key = outcome.label_path.relative_to(out).as_posix()
                    rows: list[dict[str, Any]] = []
                    if outcome.status == Status.SKIPPED:
                        rows = previous.rows.get(key, [])
                    elif outcome.status not in (Status.EDITED, Status.REVIEWED):  # a person's: old rows are stale
                        redone.add(key)
                        signature = outcome.signature or (0, 0)
                        entries[key] = LabelEntry(
                            outcome.origin,
                            outcome.status,
                            outcome.instances,
                            fingerprint,
                            *signature,
                            outcome.label_sha256,
                            outcome.frame,
                        )
                        owned.add(key)
                        rows = instance_rows(outcome.origin, key, outcome.quality, models.names, outcome.frame)
                    if item is None:  # not listed by this run (cannot happen): rebuilt from its origin
                        item = _earlier_item(Path(outcome.origin), outcome.rel_path, outcome.frame)
                    done[key] = DatasetEntry(item, key, outcome.resolution_wh, rows, outcome.label_text)
                yield outcome
                if time.monotonic() - last_checkpoint > CHECKPOINT_SECONDS:
                    write_text_atomic(manifest_path, format_manifest(manifest("running")))
                    last_checkpoint = time.monotonic()
            dataset = list(done.values())
            if self.shard is None:
                removed = self._forget_vanished(previous, entries, owned, done, book)
                dataset += self._untouched(previous, entries, done)
                dataset.sort(key=lambda d: d.label_key)
            changed = removed > 0 or any(counts[k] for k in (Status.OK, Status.EMPTY))
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
        report = self._write_report() if s.output.report and self.shard is None else None
        if counts[Status.REVIEWED] and s.output.overwrite and not s.output.overwrite_reviewed:
            self.notices.append(
                f"kept {counts[Status.REVIEWED]} label(s) a person reviewed (autoannotate import) despite --overwrite;"
                " --overwrite-reviewed redoes them"
            )
        other_settings = sorted(
            k for k, e in entries.items() if e.fingerprint != fingerprint and k not in done and k not in reviewed_keys
        )
        if other_settings and self.shard is None:
            self.notices.append(
                f"{len(other_settings)} label(s) in {str(out)!r} were made with other settings than this run's (e.g."
                f" {other_settings[0]!r}); `autoannotate check {str(out / 'labels')!r}` lists them"
            )
        seconds = time.perf_counter() - started
        scores = [
            row["sam_iou"]
            for d in done.values()
            for row in d.rows
            if not row.get("dropped") and row.get("lines") and row.get("sam_iou") is not None
        ]
        self._summary = Summary(
            images=counts["images"],
            labeled=counts[Status.OK] + counts[Status.EMPTY],
            instances=counts["instances"],
            failed=counts[Status.FAILED],
            skipped=counts[Status.SKIPPED],
            edited=counts[Status.EDITED],
            reviewed=counts[Status.REVIEWED],
            removed=removed,
            other_settings=len(other_settings) if self.shard is None else 0,
            empty_masks=counts["empty_masks"],
            dropped=counts["dropped"],
            output_dir=str(out),
            data_yaml=str(self.data_yaml_path),
            seconds=round(seconds, 3),
            images_per_s=round(counts["images"] / seconds, 3) if seconds > 0 else 0.0,
            sam_iou=score_summary(scores),
            coco_json=str(out / COCO_NAME) if COCO_NAME in files and s.output.coco else None,
            previews=str(out / PREVIEWS_DIR) if s.output.preview and self.shard is None else None,
            report=str(report) if report is not None else None,
            prompts=list(record["names"]) if (record := models.prompt_record) is not None else None,
            videos=len(videos),
            frames=frames,
        )

    def _write_report(self) -> Path:
        """``OUT/report.html`` of the whole output dir, once its manifest is complete (``--report``); one of
        someone else's there was refused before the first image, or is replaced with ``--overwrite``."""
        from autoannotate.review.report import REPORT_NAME, is_report, write_report
        from autoannotate.review.run_view import open_run

        path = self.layout.output_dir / REPORT_NAME
        if self.settings.output.overwrite and (path.exists() or path.is_symlink()) and not is_report(path):
            with contextlib.suppress(OSError):
                path.unlink()
        write_report(open_run(self.layout.output_dir), path)
        return path

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
        self,
        previous: PreviousRun,
        entries: dict[str, LabelEntry],
        owned: set[str],
        done: dict[str, DatasetEntry],
        book: VideoBook | None = None,
    ) -> int:
        """Labels of ours whose image is gone: remove the label (unless a person edited it), its image link and its
        manifest entry. A video frame's image is gone when its video is, or when this run read its video to the end
        without keeping that frame (another sampling, another file): its JPEG goes too. Returns how many were
        removed. Only a whole run does this (it alone holds the dir)."""
        out = self.layout.output_dir
        removed = frames = 0
        # the frames kept by this run's scans that reached their video's end: any other frame of those is not kept
        scanned = {video: book.kept_indices(video) for video in book.ended} if book is not None else {}
        for key, entry in sorted(entries.items()):
            if key in done or key in previous.reviewed:  # a reviewed label is a person's: theirs to remove
                continue
            if entry.frame is None:
                if os.path.lexists(entry.image):  # the item's origin (an image file) is still there
                    continue
            elif not _frame_gone(entry.frame, scanned):
                continue
            label = out / key
            digest = bytes_sha256_of(label) if label.is_file() else None
            if digest is not None and entry.sha256 is not None and digest != entry.sha256:
                continue  # a person's label: theirs to remove
            rel_path = self._rel_path_of(key, entry)
            if entry.frame is not None:
                frame_image = Path(entry.image)  # the frame's JPEG, ours while it has the bytes we wrote
                if frame_image.is_file() and bytes_sha256_of(frame_image) == entry.frame.get("image_sha256"):
                    with contextlib.suppress(OSError):
                        frame_image.unlink()
                frames += 1
            elif self.layout.link == "files" and rel_path is not None:
                link = self.layout.image_link_path(rel_path)
                if link.is_symlink() and not link.exists():  # only our dangling link, never a file
                    with contextlib.suppress(OSError):
                        link.unlink()
            with contextlib.suppress(OSError):
                label.unlink(missing_ok=True)
            del entries[key]
            owned.discard(key)
            removed += 1
        if removed > frames:
            self.notices.append(f"removed {removed - frames} label(s) whose image no longer exists")
        if frames:
            self.notices.append(
                f"removed {frames} video frame(s), label and image, that their video no longer gives (the video is"
                " gone, changed, or sampled otherwise)"
            )
        return removed

    def _untouched(
        self, previous: PreviousRun, entries: dict[str, LabelEntry], done: dict[str, DatasetEntry]
    ) -> list[DatasetEntry]:
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
            # an earlier run's item: a frame from its record, else rebuilt by the input kind that reads its origin
            item = _earlier_item(Path(entry.image), rel_path, entry.frame)
            rest.append(DatasetEntry(item, key, None, rows))
        return rest

    def _rel_path_of(self, key: str, entry: LabelEntry) -> PurePosixPath | None:
        """The image's path relative to this layout's image root, from its label key and its image's suffix."""
        label = self.layout.output_dir / key
        try:
            stem = label.relative_to(self.layout.label_root).with_suffix("")
        except ValueError:
            return None
        return PurePosixPath(stem.as_posix() + Path(entry.image).suffix)

    def _write_dataset_files(self, dataset: list[DatasetEntry], changed: bool) -> dict[str, str]:
        """The sidecar, and for a whole run the train/val lists, COCO and previews over ``dataset``; ours that this
        run does not write are removed when the dataset changed, so none describes another set of labels.
        Returns each written file's sha256."""
        out = self.layout.output_dir
        s = self.settings.output
        written: dict[str, str] = {}

        def put(rel: str, data: bytes) -> None:
            write_bytes_atomic(out / rel, data)
            written[rel] = bytes_sha256(data)

        put(self.files.sidecar, format_rows(row for item in dataset for row in item.rows).encode("utf-8"))
        if self.shard is not None:
            return written
        previous = self._previous
        assert previous is not None
        if s.val_fraction > 0:
            train, val = split_lists(dataset, self.layout, s.val_fraction)
            if not val:
                self.notices.append(f"--val-fraction {s.val_fraction} put no image in val.txt")
            put(TRAIN_LIST, train.encode("utf-8"))
            put(VAL_LIST, val.encode("utf-8"))
        else:
            self._remove_ours([TRAIN_LIST, VAL_LIST], previous)  # data.yaml no longer points at them
        if s.coco:
            put(COCO_NAME, coco_text(dataset, self.layout, self._names()).encode("utf-8"))
        elif changed:
            self._remove_ours([COCO_NAME], previous)
        preview_files = sorted(rel for rel in previous.files if rel.startswith(PREVIEWS_DIR + "/"))
        if s.preview:
            written.update(write_preview_files(dataset, self.layout, self._names(), s.preview, out / PREVIEWS_DIR))
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

    def _names(self) -> dict[int, str]:
        assert self.models is not None
        return self.models.names

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


def _frame_gone(frame: dict[str, Any], scanned: dict[str, set[int]]) -> bool:
    """Whether an earlier run's video frame is no longer part of the dataset: its video is gone, or this run read the
    video to its end (``scanned``: video -> frame indices kept) without keeping that frame (another sampling,
    another file). A frame this run kept stays, even if annotating it failed now."""
    video = str(frame.get("video", ""))
    if not os.path.lexists(video):
        return True
    return video in scanned and frame.get("index") not in scanned[video]


def _earlier_item(image: Path, rel_path: PurePosixPath, frame: dict[str, Any] | None) -> InputItem:
    """The item of a label made earlier: a video frame from its record, else what the image's kind makes of it."""
    if frame is not None:
        return frame_from_record(image, rel_path, frame)
    return next(kind_for(image).items(image, rel_path, ListingContext()))


def _prompt_fingerprint(record: dict[str, Any]) -> dict[str, Any]:
    """The part of an open-vocabulary source's prompt record that decides labels: names and embeddings digest."""
    return {"names": record.get("names"), "embeddings_sha256": record.get("embeddings_sha256")}


def with_saved_embeddings(settings: RunSettings, embeddings: Path) -> RunSettings:
    """``settings`` with the classes taken from the embeddings this run saved: what a distributed worker loads, so
    that it never runs the text encoder or the exemplars (nor downloads anything) itself."""
    prompts = dataclasses.replace(
        settings.prompts, prompts=None, prompts_file=None, exemplars=None, names=None, prompt_embeddings=str(embeddings)
    )
    return dataclasses.replace(settings, prompts=prompts)


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
    """Whatever the flags, a run never writes over its own inputs: the ``--boxes-from`` or ``--points-from`` labels
    and the ``--names`` file. Raises OutputError (one line, with the fix)."""
    out = layout.output_dir
    names_file = settings.prompts.names
    for flag, given, what in (
        ("--boxes-from", settings.prompts.boxes_from, "box"),
        ("--points-from", settings.prompts.points_from, "point"),
    ):
        if not given:
            continue
        source = Path(given).expanduser()
        for labels in (layout.label_root, out / "labels"):
            if _overlaps(source, labels):
                raise OutputError(
                    f"{flag} {given!r} is where this run would write its labels"
                    f" ({str(labels)!r}), so it would overwrite its own {what} prompts; write the segmentation"
                    f" dataset elsewhere: --output-dir {str(out.parent / (out.name + '_seg'))!r}"
                )
    if names_file:
        names = Path(names_file).expanduser()
        for written in (out / DATA_YAML, out / FALLBACK_DATA_YAML):
            if os.path.realpath(names) == os.path.realpath(written):
                raise OutputError(
                    f"--names {names_file!r} is the data.yaml this run would write; write the dataset elsewhere:"
                    f" --output-dir {str(out.parent / (out.name + '_seg'))!r}"
                )


def _overlaps(a: Path, b: Path) -> bool:
    """True when one of the two directories is the other or lies inside it (symlinks resolved)."""
    real_a, real_b = os.path.realpath(a).rstrip(os.sep), os.path.realpath(b).rstrip(os.sep)
    return real_a == real_b or real_a.startswith(real_b + os.sep) or real_b.startswith(real_a + os.sep)


def _changed_settings_notice(before: dict[str, Any] | None, now: dict[str, Any]) -> str:
    """One line saying what changed since the last run, and that its labels will be redone."""
    previous = before or {}
    changed = [f"{k}: {previous.get(k)!r} -> {v!r}" for k, v in now.items() if previous.get(k) != v]
    what = "; ".join(changed[:4]) + (" ..." if len(changed) > 4 else "") if changed else "settings or models"
    return f"settings changed since the last run ({what}): its labels are redone"


__all__ = ["SIDECAR_NAME", "AnnotationJob", "Summary", "in_shard"]
