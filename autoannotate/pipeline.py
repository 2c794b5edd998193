"""Wire the stages: images -> detections -> masks -> polygons -> label files. Yields one outcome per image.

Decoding, inference and writing overlap in three thread pools (see ``Annotator``); outcomes come out in input
order. One failing image never stops a run: it becomes a ``failed`` outcome with its reason. Nothing here prints.
"""

from __future__ import annotations

import errno
import math
import os
import threading
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from autoannotate.dataset.layout import DatasetLayout
from autoannotate.dataset.yolo_seg import format_box_line, format_label_file, format_polygon_line
from autoannotate.errors import ImageError, OutputError, one_line
from autoannotate.inputs.base import InputItem
from autoannotate.polygons import PolygonPolicy, mask_to_polygons
from autoannotate.prompts.base import PromptSource
from autoannotate.quality import InstanceQuality, box_iou_xyxy, fill_iou, mask_box_xyxy
from autoannotate.resume import Journal, LabelEntry, LabelState, PreviousRun, bytes_sha256, label_state
from autoannotate.segmenters.base import Segmenter
from autoannotate.types import Detections, ImageOutcome, Masks, Status
from autoannotate.writers.atomic import write_text_atomic
from autoannotate.writers.sidecar import instance_rows

# A full disk, a read-only file system, an exhausted quota: the run stops (exit 2) instead of failing every image.
_FATAL_WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EROFS, errno.EDQUOT})


@dataclass
class _Item:
    """One input item on its way through a batch."""

    source: InputItem
    label_path: Path
    key: str = ""  # the label's manifest key
    signature: tuple[int, int] | None = None  # the item's resume signature when admitted
    skipped: LabelEntry | None = None  # done by an earlier run with the same settings: nothing to do
    edited: bool = False  # a label of ours that a person has changed since: kept, never redone
    job: Future[tuple[np.ndarray, Any]] | None = None
    error: str | None = None
    image_bgr: np.ndarray | None = None
    prepared: Any = None  # what the segmenter's ``prepare`` made of the pixels
    detections: Detections | None = None
    masks: Masks | None = None  # aligned with detections


class Annotator:
    """Runs the models over a stream of images and writes one label file per image.

    Three stages overlap, each in its own thread pool: decoding (and the segmenter's CPU-side ``prepare``),
    inference (prompt source then segmenter, a batch of ``batch`` images at a time), and polygons plus label writing.
    On a GPU one inference worker feeds the device while the other stages keep it busy; on a CPU, ``infer_workers``
    images are inferred at once, each on its own core (see ``runtime.device.plan_compute``), which beats splitting
    every operator across cores for MobileSAM's many small ops. Prompt-source calls are serialised (the YOLO
    detector is not thread-safe).

    ``previous``: what earlier runs wrote (``resume.load_previous``). A label it lists as done with the same
    ``fingerprint`` for an unchanged image is skipped; an existing label file it does not own belongs to someone
    else and is only replaced with ``overwrite=True`` (which also redoes everything). ``journal`` records each
    label write as it happens.

    ``box_labels``: write each instance's box as a YOLO detection line (``class cx cy w h``) instead of segmenting
    it (``--sam-model none`` with a detection-only prompt source); the segmenter is then never called.
    """

    def __init__(
        self,
        prompts: PromptSource,
        segmenter: Segmenter,
        policy: PolygonPolicy,
        layout: DatasetLayout,
        *,
        batch: int,
        overwrite: bool = False,
        previous: PreviousRun | None = None,
        fingerprint: str = "",
        journal: Journal | None = None,
        min_mask_score: float = 0.0,
        class_names: Mapping[int, str] | None = None,
        infer_workers: int = 1,
        cpu_workers: int | None = None,
        box_labels: bool = False,
    ) -> None:
        if batch < 1:
            raise ValueError(f"batch must be >= 1, got {batch}")
        if infer_workers < 1:
            raise ValueError(f"infer_workers must be >= 1, got {infer_workers}")
        self.prompts = prompts
        self.segmenter = segmenter
        self.policy = policy
        self.layout = layout
        self.batch = batch
        self.overwrite = overwrite
        self.previous = previous or PreviousRun({}, frozenset(), {}, None, None)
        self.fingerprint = fingerprint
        self.journal = journal
        self.min_mask_score = min_mask_score
        self.class_names = class_names or {}
        self.infer_workers = infer_workers
        self.box_labels = box_labels
        self.cpu_workers = cpu_workers or max(1, min(4, os.cpu_count() or 1))
        self._prompts_lock = threading.Lock()
        self._batch_cap = batch  # lowered after running out of device memory

    def run(self, images: Iterable[InputItem]) -> Iterator[ImageOutcome]:
        """Annotate ``images`` in order, yielding one outcome each as soon as it and all before it are done."""
        claimed: set[Path] = set()
        max_in_flight = 2 * self.infer_workers + 2  # batches admitted but not yet yielded: bounds memory
        pending: deque[Future[list[ImageOutcome]]] = deque()
        decode_pool = ThreadPoolExecutor(self.cpu_workers, thread_name_prefix="autoannotate-decode")
        infer_pool = ThreadPoolExecutor(self.infer_workers, thread_name_prefix="autoannotate-infer")
        write_pool = ThreadPoolExecutor(self.cpu_workers, thread_name_prefix="autoannotate-write")
        finished = False
        try:
            for batch in _batched(images, self.batch):
                items = [self._admit(source, claimed, decode_pool) for source in batch]
                inferred = infer_pool.submit(self._infer_batch, items)
                pending.append(write_pool.submit(self._finish_batch, inferred))
                while len(pending) >= max_in_flight or (pending and pending[0].done()):
                    yield from pending.popleft().result()
            while pending:
                yield from pending.popleft().result()
            finished = True
        finally:
            # Stopped early (Ctrl-C, SIGTERM, an error, the consumer gone): drop the steps not started yet instead
            # of finishing every batch in flight, and wait only for the steps running now (no thread outlives the
            # run). The dropped images' labels are simply not written; the journal tells a rerun what was.
            for pool in (decode_pool, infer_pool, write_pool):
                pool.shutdown(wait=True, cancel_futures=not finished)

    def _admit(self, source: InputItem, claimed: set[Path], pool: ThreadPoolExecutor) -> _Item:
        """Check the label path is free for this image, then queue its decoding."""
        item = self._check(source, claim(self.layout, source, claimed))
        if item.error is None and item.skipped is None and not item.edited:
            item.job = pool.submit(self._decode, source)
        return item

    def _check(self, source: InputItem, duplicate_error: str | None) -> _Item:
        """Decide whether an image is skipped (done before), refused (a label that is not ours) or to be done."""
        label_path = self.layout.label_path(source.rel_path)
        item = _Item(source, label_path, error=source.failure or duplicate_error)
        if item.error is not None:
            return item
        if "\n" in source.rel_path.as_posix() or "\r" in source.rel_path.as_posix():
            item.error = "its path has a line break, which the dataset's image lists cannot hold; rename it"
            return item
        item.key = key = self.layout.label_key(source.rel_path)
        item.signature = source.signature()
        state = label_state(self.previous, key, label_path, self.fingerprint, item.signature, overwrite=self.overwrite)
        if state is LabelState.THEIRS:
            item.error = f"label {str(label_path)!r} exists and was not written by autoannotate; pass --overwrite"
        elif state is LabelState.EDITED:
            item.edited = True
        elif state is LabelState.DONE and source.in_dataset(self.layout):
            item.skipped = self.previous.entries[key]
        return item

    def process_batch(self, sources: Sequence[InputItem], duplicate_errors: Sequence[str | None]) -> list[ImageOutcome]:
        """One batch, start to end, in the calling thread: what a distributed worker runs (see ``engines/``).

        ``duplicate_errors``: the driver's ``claim`` verdict per image (it alone sees every image of the run).
        """
        items = [self._check(source, error) for source, error in zip(sources, duplicate_errors, strict=True)]
        for item in items:
            if item.error is None and item.skipped is None and not item.edited:
                job: Future[tuple[np.ndarray, Any]] = Future()
                try:
                    job.set_result(self._decode(item.source))
                except Exception as err:
                    job.set_exception(err)
                item.job = job
        done: Future[list[_Item]] = Future()
        done.set_result(self._infer_batch(items))
        return self._finish_batch(done)

    def _infer_batch(self, items: list[_Item]) -> list[_Item]:
        """Inference stage: wait for the decoded images, then detect and segment them."""
        live: list[_Item] = []
        for item in items:
            if item.job is None:
                continue
            try:
                item.image_bgr, item.prepared = item.job.result()
                live.append(item)
            except ImageError as err:
                item.error = str(err)
            except Exception as err:  # a decoder crash on one file must not stop the run
                item.error = f"cannot decode: {one_line(err, 300)}"
            item.job = None
        self._infer(live)
        return items

    def _finish_batch(self, inferred: Future[list[_Item]]) -> list[ImageOutcome]:
        """Writing stage: polygons and label files for a batch, once its inference is done."""
        outcomes = []
        for item in inferred.result():
            try:
                outcomes.append(self._finish(item))
            except OutputError:
                raise
            except Exception as err:  # one image's polygons must not take the run down
                outcomes.append(_outcome(item, Status.FAILED, error=f"writing labels failed: {one_line(err, 300)}"))
        return outcomes

    def _infer(self, items: list[_Item]) -> None:
        """Detect, then segment, ``items`` in chunks of at most the current batch cap.

        A chunk that fails is halved and retried, down to single images, so one bad image fails alone. Running out of
        device memory also lowers the cap for the rest of the run (halved on each out-of-memory error).
        """
        cap = self._batch_cap
        for start in range(0, len(items), cap):
            self._infer_chunk(items[start : start + cap])

    def _infer_chunk(self, items: list[_Item]) -> None:
        if not items:
            return
        try:
            with self._prompts_lock:
                detections = self.prompts.boxes(
                    [item.image_bgr for item in items],  # type: ignore[misc]
                    [item.source.rel_path for item in items],
                )
            with_boxes = [
                (item, det) for item, det in zip(items, detections, strict=True) if len(det) and not self.box_labels
            ]
            results = (
                []
                if not with_boxes
                else self.segmenter.segment([item.prepared for item, _ in with_boxes], [det for _, det in with_boxes])
            )
        except Exception as err:
            out_of_memory = _is_out_of_memory(err)
            if out_of_memory:
                self.segmenter.release_cached_memory()
                with self._prompts_lock:
                    self._batch_cap = max(1, min(self._batch_cap, len(items) // 2))
            if len(items) > 1:
                half = len(items) // 2
                self._infer_chunk(items[:half])
                self._infer_chunk(items[half:])
                return
            reason = "out of device memory even one image at a time" if out_of_memory else "inference failed"
            items[0].error = f"{reason}: {one_line(err, 300)}"
            return
        for item, det in zip(items, detections, strict=True):
            item.detections = det
            item.prepared = None
        for (item, _), result in zip(with_boxes, results, strict=True):
            item.image_bgr = None
            item.masks = result

    def _finish(self, item: _Item) -> ImageOutcome:
        if item.skipped is not None:
            return _outcome(item, Status.SKIPPED, label_path=item.label_path, instances=item.skipped.instances)
        if item.edited:
            return _outcome(item, Status.EDITED, label_path=item.label_path, instances=_count_lines(item.label_path))
        if item.error is not None:
            return _outcome(item, Status.FAILED, error=item.error)
        det = item.detections if item.detections is not None else Detections.empty()
        masks = item.masks
        height, width = _image_hw(item)
        lines: list[str] = []
        quality: list[InstanceQuality] = []
        empty_masks = dropped = 0
        for index in range(len(det) if not self.box_labels else 0):
            if masks is None:  # cannot happen for a detection; keeps the types honest
                raise RuntimeError("a detection without masks")
            # one full-size mask at a time: a huge image with many boxes never holds them all
            mask = masks.mask(index)
            sam_iou = float(masks.scores[index])
            # 0 disables the filter: SAM's predicted IoU is a regression output and can fall below 0
            is_dropped = self.min_mask_score > 0 and sam_iou < self.min_mask_score
            polygons = [] if is_dropped else mask_to_polygons(mask, self.policy)
            dropped += is_dropped
            empty_masks += not is_dropped and not polygons
            class_id = int(det.class_id[index])
            box = mask_box_xyxy(mask)
            quality.append(
                InstanceQuality(
                    line=len(lines) + 1 if polygons else None,
                    lines=len(polygons),
                    class_id=class_id,
                    det_conf=round(float(det.confidence[index]), 6),
                    sam_iou=round(sam_iou, 6),
                    stability=round(float(masks.stability[index]), 6),
                    mask_area=int(mask.sum()),
                    # no prompt box (points alone): nothing to compare the mask's box with
                    box_iou=round(box_iou_xyxy(box, det.xyxy[index].astype(np.float64)), 6)
                    if det.has_box(index)
                    else math.nan,
                    points=sum(len(p) for p in polygons),
                    fill_iou=round(fill_iou(polygons, mask, box), 6),
                    dropped=is_dropped,
                )
            )
            lines.extend(format_polygon_line(class_id, polygon, (width, height)) for polygon in polygons)
        if self.box_labels:
            empty_masks = _box_lines(det, (width, height), lines, quality)
        status = Status.OK if lines else Status.EMPTY
        text = format_label_file(lines)
        label_sha256 = bytes_sha256(text.encode("utf-8"))
        try:
            item.source.place(self.layout)
            if self.journal is not None:
                self.journal.pending(item.key)
            write_text_atomic(item.label_path, text)
            frame = item.source.frame_record()  # after place(): a frame's JPEG digest is known once written
            if self.journal is not None and item.signature is not None:
                entry = LabelEntry(
                    item.source.origin, status, len(lines), self.fingerprint, *item.signature, label_sha256, frame
                )
                rows = instance_rows(item.source.origin, item.key, quality, self.class_names, frame)
                self.journal.done(item.key, entry, rows)
        except OutputError as err:
            if err.errno in _FATAL_WRITE_ERRNOS:  # every further write would fail too: stop with one line
                raise
            return _outcome(item, Status.FAILED, detections=len(det), error=str(err))
        return _outcome(
            item,
            status,
            label_path=item.label_path,
            instances=len(lines),
            detections=len(det),
            empty_masks=empty_masks,
            dropped=dropped,
            resolution_wh=(width, height),
            quality=tuple(quality),
            label_sha256=label_sha256,
            label_text=text,
            frame=frame,
        )

    def _decode(self, source: InputItem) -> tuple[np.ndarray, Any]:
        """Worker-thread job: the item's pixels as ultralytics trains on them (BGR), and the segmenter's CPU-side
        preparation of them (RGB; e.g. SAM's resize to a longest side of 1024)."""
        image_bgr = source.read_bgr()
        return image_bgr, self.segmenter.prepare(cv2.cvtColor(image_bgr, cv2.COLOR_BGR2RGB))


def _box_lines(
    det: Detections, resolution_wh: tuple[int, int], lines: list[str], quality: list[InstanceQuality]
) -> int:
    """Append each instance's box as a detection line (``format_box_line``) and its figures; returns how many boxes
    had no area inside the image (no line written, like an empty mask). ``mask_area`` is the box's area in pixels
    (COCO's ``area``); figures that only a mask has are NaN."""
    width, height = resolution_wh
    size = np.array([width, height, width, height], np.float64)
    empty = 0
    for index in range(len(det)):
        x1, y1, x2, y2 = np.clip(det.xyxy[index].astype(np.float64), 0.0, size)
        has_area = x2 > x1 and y2 > y1
        empty += not has_area
        class_id = int(det.class_id[index])
        quality.append(
            InstanceQuality(
                line=len(lines) + 1 if has_area else None,
                lines=int(has_area),
                class_id=class_id,
                det_conf=round(float(det.confidence[index]), 6),
                sam_iou=math.nan,
                stability=math.nan,
                mask_area=round(float((x2 - x1) * (y2 - y1))) if has_area else 0,
                box_iou=math.nan,
                points=0,
                fill_iou=math.nan,
                dropped=False,
            )
        )
        if has_area:
            lines.append(format_box_line(class_id, det.xyxy[index], resolution_wh))
    return empty


def _count_lines(path: Path) -> int:
    """Non-blank lines of a (person-edited) label file; 0 when it cannot be read."""
    try:
        return sum(1 for line in path.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip())
    except OSError:
        return 0


def _outcome(item: _Item, status: Status, **fields: Any) -> ImageOutcome:
    fields.setdefault("frame", item.source.frame_record())
    return ImageOutcome(item.source.rel_path, item.source.origin, status, signature=item.signature, **fields)


def claim(layout: DatasetLayout, source: InputItem, claimed: set[Path]) -> str | None:
    """Reserve the image's label path in ``claimed``; the reason it cannot have one, if another image has it. An item
    that failed when it was listed (``failure``) has no label and claims nothing."""
    if source.failure is not None:
        return None
    label_path = layout.label_path(source.rel_path)
    if label_path in claimed:
        return (
            f"another image in this run already maps to label {str(label_path)!r} (same folder and stem,"
            " different extension); ultralytics cannot tell their labels apart, rename one"
        )
    claimed.add(label_path)
    return None


def _is_out_of_memory(err: BaseException) -> bool:
    """torch.cuda.OutOfMemoryError (or the RuntimeError older torch raises), told apart without importing torch."""
    return type(err).__name__ == "OutOfMemoryError" or "out of memory" in str(err).lower()


def _image_hw(item: _Item) -> tuple[int, int]:
    if item.masks is not None:
        return item.masks.original_hw
    if item.image_bgr is not None:
        return int(item.image_bgr.shape[0]), int(item.image_bgr.shape[1])
    return 0, 0


def _batched(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    batch: list[Any] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
