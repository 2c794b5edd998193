"""Wire the stages: images -> detections -> masks -> polygons -> label files. Yields one outcome per image.

Decoding, inference and writing overlap in three thread pools (see ``Annotator``); outcomes come out in input
order. One failing image never stops a run: it becomes a ``failed`` outcome with its reason. Nothing here prints.
"""

from __future__ import annotations

import errno
import gc
import math
import multiprocessing
import signal
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from autoannotate.dataset.layout import DatasetLayout
from autoannotate.dataset.yolo_seg import format_box_line, format_label_file, format_polygon_line
from autoannotate.errors import DeviceError, ImageError, OutputError, one_line
from autoannotate.inputs.base import InputItem
from autoannotate.polygons import PolygonPolicy, mask_to_polygons
from autoannotate.prompts.base import PromptSource
from autoannotate.quality import InstanceQuality, box_iou_xyxy, fill_iou
from autoannotate.resume import Journal, LabelEntry, LabelState, PreviousRun, bytes_sha256, label_state
from autoannotate.runtime.cores import available_cores
from autoannotate.segmenters.base import Segmenter
from autoannotate.types import Detections, ImageOutcome, MaskCrop, Masks, Status
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
    kept: Status | None = None  # EDITED or REVIEWED: a person's label (changed since, or imported): never redone
    job: Future[tuple[np.ndarray, Any, Any]] | None = None
    error: str | None = None
    image_bgr: np.ndarray | None = None
    for_prompts: Any = None  # what the prompt source's ``prepare`` made of the pixels (None: it has none)
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
        polygon_processes: int = 0,
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
        self.cpu_workers = cpu_workers or max(1, min(4, available_cores()))
        self._prompts_lock = threading.Lock()
        prepare = getattr(prompts, "prepare", None)  # optional (``prompts.base.PromptSource``)
        self._prepare_for_prompts: Callable[[np.ndarray], Any] | None = prepare if callable(prepare) else None
        self._batch_cap = batch  # lowered after running out of device memory
        self._device_fault: str | None = None  # set once the device failed: no later batch runs on it
        self.polygon_processes = polygon_processes
        self._shape_pool: ProcessPoolExecutor | None = None  # during run(), with polygon_processes

    def run(self, images: Iterable[InputItem]) -> Iterator[ImageOutcome]:
        """Annotate ``images`` in order, yielding one outcome each as soon as it and all before it are done."""
        claimed: set[Path] = set()
        max_in_flight = 2 * self.infer_workers + 2  # batches admitted but not yet yielded: bounds memory
        pending: deque[Future[list[Future[ImageOutcome]]]] = deque()
        decode_pool = ThreadPoolExecutor(self.cpu_workers, thread_name_prefix="autoannotate-decode")
        infer_pool = ThreadPoolExecutor(self.infer_workers, thread_name_prefix="autoannotate-infer")
        write_pool = ThreadPoolExecutor(self.cpu_workers, thread_name_prefix="autoannotate-write")
        if self.polygon_processes > 0:
            # spawned, not forked: the parent holds torch's threads and maybe a CUDA context, which a fork copies
            # broken; a child imports only numpy, OpenCV and the pipeline's torch-free modules
            self._shape_pool = ProcessPoolExecutor(
                self.polygon_processes, mp_context=multiprocessing.get_context("spawn"), initializer=_ignore_sigint
            )
        finished = False
        try:
            for batch in _batched(images, self.batch):
                items = [self._admit(source, claimed, decode_pool) for source in batch]
                pending.append(infer_pool.submit(self._infer_then_queue, items, write_pool))
                while len(pending) >= max_in_flight or (pending and _finished(pending[0])):
                    yield from (job.result() for job in pending.popleft().result())
            while pending:
                yield from (job.result() for job in pending.popleft().result())
            finished = True
        finally:
            # Stopped early (Ctrl-C, SIGTERM, an error, the consumer gone): drop the steps not started yet instead
            # of finishing every batch in flight, and wait only for the steps running now (no thread outlives the
            # run). The dropped images' labels are simply not written; the journal tells a rerun what was.
            for pool in (decode_pool, infer_pool, write_pool):
                pool.shutdown(wait=True, cancel_futures=not finished)
            if self._shape_pool is not None:
                self._shape_pool.shutdown(wait=True, cancel_futures=True)
                self._shape_pool = None

    def _admit(self, source: InputItem, claimed: set[Path], pool: ThreadPoolExecutor) -> _Item:
        """Check the label path is free for this image, then queue its decoding."""
        item = self._check(source, claim(self.layout, source, claimed))
        if item.error is None and item.skipped is None and item.kept is None:
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
            item.kept = Status.EDITED
        elif state is LabelState.REVIEWED:
            item.kept = Status.REVIEWED
        elif state is LabelState.DONE and source.in_dataset(self.layout):
            item.skipped = self.previous.entries[key]
        return item

    def process_batch(self, sources: Sequence[InputItem], duplicate_errors: Sequence[str | None]) -> list[ImageOutcome]:
        """One batch, start to end, in the calling thread: what a distributed worker runs (see ``engines/``).

        ``duplicate_errors``: the driver's ``claim`` verdict per image (it alone sees every image of the run).
        """
        items = [self._check(source, error) for source, error in zip(sources, duplicate_errors, strict=True)]
        for item in items:
            if item.error is None and item.skipped is None and item.kept is None:
                job: Future[tuple[np.ndarray, Any, Any]] = Future()
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
                item.image_bgr, item.for_prompts, item.prepared = item.job.result()
                live.append(item)
            except ImageError as err:
                item.error = str(err)
            except Exception as err:  # a decoder crash on one file must not stop the run
                item.error = f"cannot decode: {one_line(err, 300)}"
            item.job = None
        if self._device_fault is not None:  # a batch queued before the device failed: not run on it again
            raise DeviceError(self._device_fault)
        try:
            self._infer(live)
        except DeviceError as err:
            self._device_fault = str(err)
            raise
        return items

    def _infer_then_queue(self, items: list[_Item], write_pool: ThreadPoolExecutor) -> list[Future[ImageOutcome]]:
        """Inference stage, then each image's writing queued on its own: a batch's images are finished by as many
        write threads as are free (a GPU batch of 8 is not written by one thread while the others idle)."""
        return [write_pool.submit(self._finish_one, item) for item in self._infer_batch(items)]

    def _finish_batch(self, inferred: Future[list[_Item]]) -> list[ImageOutcome]:
        """Writing stage for a batch, in the calling thread, once its inference is done."""
        return [self._finish_one(item) for item in inferred.result()]

    def _finish_one(self, item: _Item) -> ImageOutcome:
        """Polygons and the label file of one image."""
        try:
            return self._finish(item)
        except OutputError:
            raise
        except Exception as err:  # one image's polygons must not take the run down
            return _outcome(item, Status.FAILED, error=f"writing labels failed: {one_line(err, 300)}")

    def _infer(self, items: list[_Item]) -> None:
        """Detect, then segment, ``items`` in chunks of at most the current batch cap.

        A chunk that fails is halved and retried, down to single images, so one bad image fails alone; a chunk whose
        segmenting fails keeps its detections (the detector is not run again). Running out of device memory also
        frees what the failed attempt held and lowers the cap for the rest of the run (halved on each out-of-memory
        error). Any other device error (an illegal address, a device-side assert) leaves the device in an unknown
        state: the run stops (``DeviceError``).
        """
        cap = self._batch_cap
        for start in range(0, len(items), cap):
            self._infer_chunk(items[start : start + cap])

    def _infer_chunk(self, items: list[_Item]) -> None:
        if not items:
            return
        detections, failure = _attempt(lambda: self._detect(items))
        if failure is not None:  # outside the except block: the failed attempt's frames and tensors are gone
            self._retry_in_halves(items, failure, self._infer_chunk)
            return
        to_segment: list[_Item] = []
        for item, det in zip(items, detections, strict=True):
            item.detections = det
            item.for_prompts = None
            if len(det) and not self.box_labels:
                to_segment.append(item)
            else:
                item.prepared = None
        self._segment_chunk(to_segment)

    def _detect(self, items: list[_Item]) -> list[Detections]:
        with self._prompts_lock:
            return self.prompts.boxes(
                [item.image_bgr if item.for_prompts is None else item.for_prompts for item in items],  # type: ignore[misc]
                [item.source.rel_path for item in items],
            )

    def _segment_chunk(self, items: list[_Item]) -> None:
        """Segment ``items`` (detected, each with boxes), halving on failure as ``_infer`` says."""
        if not items:
            return
        prompts = [item.detections for item in items if item.detections is not None]  # every one: detected first
        results, failure = _attempt(lambda: self.segmenter.segment([item.prepared for item in items], prompts))
        if failure is not None:
            self._retry_in_halves(items, failure, self._segment_chunk)
            return
        for item, result in zip(items, results, strict=True):
            item.image_bgr = None
            item.prepared = None
            item.masks = result

    def _retry_in_halves(self, items: list[_Item], failure: _Failure, again: Callable[[list[_Item]], None]) -> None:
        """After a failed step over ``items``: out of device memory, free what is left of the attempt and lower the
        batch cap; then ``again`` on each half, or fail the one image."""
        if failure.out_of_memory:
            gc.collect()  # anything of the attempt still held in a reference cycle
            self.segmenter.release_cached_memory()  # synchronise, then hand the cached blocks back
            with self._prompts_lock:
                self._batch_cap = max(1, min(self._batch_cap, len(items) // 2))
        if len(items) > 1:
            half = len(items) // 2
            again(items[:half])
            again(items[half:])
        else:
            items[0].error = failure.reason()

    def _finish(self, item: _Item) -> ImageOutcome:
        if item.skipped is not None:
            return _outcome(item, Status.SKIPPED, label_path=item.label_path, instances=item.skipped.instances)
        if item.kept is not None:
            return _outcome(item, item.kept, label_path=item.label_path, instances=_count_lines(item.label_path))
        if item.error is not None:
            return _outcome(item, Status.FAILED, error=item.error)
        det = item.detections if item.detections is not None else Detections.empty()
        masks = item.masks
        height, width = _image_hw(item)
        lines: list[str] = []
        quality: list[InstanceQuality] = []
        empty_masks = dropped = 0
        n = len(det) if not self.box_labels else 0
        if n and masks is None:  # cannot happen for a detection; keeps the types honest
            raise RuntimeError("a detection without masks")
        # 0 disables the filter: SAM's predicted IoU is a regression output and can fall below 0
        scores = [float(masks.scores[i]) for i in range(n)] if masks is not None else []
        skip = [self.min_mask_score > 0 and score < self.min_mask_score for score in scores]
        shapes = self._shapes(
            [masks.crop(i) for i in range(n)] if masks is not None else [],
            skip,
            [int(det.class_id[i]) for i in range(n)],
            (width, height),
        )
        for index, shape in enumerate(shapes):
            assert masks is not None  # n > 0
            sam_iou, is_dropped, class_id = scores[index], skip[index], int(det.class_id[index])
            dropped += is_dropped
            empty_masks += not is_dropped and not shape.lines
            quality.append(
                InstanceQuality(
                    line=len(lines) + 1 if shape.lines else None,
                    lines=len(shape.lines),
                    class_id=class_id,
                    det_conf=round(float(det.confidence[index]), 6),
                    sam_iou=round(sam_iou, 6),
                    stability=round(float(masks.stability[index]), 6),
                    mask_area=shape.area_px,
                    # no prompt box (points alone): nothing to compare the mask's box with
                    box_iou=round(box_iou_xyxy(shape.box_xyxy, det.xyxy[index].astype(np.float64)), 6)
                    if det.has_box(index)
                    else math.nan,
                    points=shape.points,
                    fill_iou=shape.fill_iou,
                    dropped=is_dropped,
                )
            )
            lines.extend(shape.lines)
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

    def _shapes(
        self, crops: list[MaskCrop], skip: list[bool], class_ids: list[int], resolution_wh: tuple[int, int]
    ) -> list[InstanceShape]:
        """``instance_shapes`` of one image's masks: in this thread, or, with ``polygon_processes``, in one of them
        while this thread waits without holding the GIL (for a many-core GPU host, whose write threads queue on the
        GIL for this Python work; ``runtime.device.plan_compute`` turns them on for GPU runs on 8 cores or more)."""
        if self._shape_pool is None or not crops:
            return instance_shapes(crops, skip, class_ids, self.policy, resolution_wh)
        return self._shape_pool.submit(instance_shapes, crops, skip, class_ids, self.policy, resolution_wh).result()

    def _decode(self, source: InputItem) -> tuple[np.ndarray, Any, Any]:
        """Worker-thread job: the item's pixels as ultralytics trains on them (BGR), the prompt source's CPU-side
        preparation of them (its optional ``prepare``, e.g. the detector's letterbox; None without one), and the
        segmenter's (RGB; e.g. SAM's resize to a longest side of 1024)."""
        image_bgr = source.read_bgr()
        for_prompts = self._prepare_for_prompts(image_bgr) if self._prepare_for_prompts is not None else None
        return image_bgr, for_prompts, self.segmenter.prepare(cv2.cvtColor(image_bgr, cv2.COLOR_BGR2RGB))


@dataclass(frozen=True)
class InstanceShape:
    """What one mask gives the label file and its figures, in the image's frame: its label lines (one per polygon),
    points, foreground box, area and the IoU of its rasterised polygons with it (rounded as written)."""

    lines: list[str]
    points: int
    box_xyxy: np.ndarray | None
    area_px: int
    fill_iou: float


def instance_shapes(
    crops: Sequence[MaskCrop],
    skip: Sequence[bool],
    class_ids: Sequence[int],
    policy: PolygonPolicy,
    resolution_wh: tuple[int, int],
) -> list[InstanceShape]:
    """Polygons, label lines and mask figures of one image's masks, each from the crop of its foreground: the work
    per instance follows the object, not the image (every figure is the same in the crop's frame, shifted by its
    corner). A ``skip``ped mask (dropped by its score) gets no polygon. Pure, so that it can run in another process."""
    out = []
    for crop, skipped, class_id in zip(crops, skip, class_ids, strict=True):
        corner = np.array([crop.x0, crop.y0], np.float64)
        local = [] if skipped or crop.pixels.size == 0 else mask_to_polygons(crop.pixels, policy)
        polygons = [polygon + corner for polygon in local]
        local_box = crop.local_box_xyxy  # no scan: the crop is the foreground's box
        out.append(
            InstanceShape(
                lines=[format_polygon_line(class_id, polygon, resolution_wh) for polygon in polygons],
                points=sum(len(p) for p in polygons),
                box_xyxy=None if local_box is None else local_box + np.concatenate([corner, corner]),
                area_px=int(crop.pixels.sum()),
                fill_iou=round(fill_iou(local, crop.pixels, local_box), 6),
            )
        )
    return out


def _ignore_sigint() -> None:
    """A polygon process leaves Ctrl-C (sent to the whole process group) to its parent, which stops the run."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


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


# What a CUDA (or cuDNN, cuBLAS) failure other than running out of memory says: after one the context is unusable
# or its state unknown, so retrying image by image would only fail (or corrupt) every later image.
_DEVICE_FAULTS = (
    "cuda error",
    "device-side assert",
    "illegal memory access",
    "illegal address",
    "unspecified launch failure",
    "misaligned address",
    "cublas_status",
    "cudnn_status",
    "cudnn error",
)


def _is_device_fault(err: BaseException) -> bool:
    if _is_out_of_memory(err):
        return False
    text = str(err).lower()
    return type(err).__name__ == "AcceleratorError" or any(fault in text for fault in _DEVICE_FAULTS)


@dataclass(frozen=True)
class _Failure:
    """What is kept of a failed inference call: no exception, so nothing it referenced (the attempt's frames and
    their tensors) outlives the ``except`` block."""

    out_of_memory: bool
    message: str

    def reason(self) -> str:
        what = "out of device memory even one image at a time" if self.out_of_memory else "inference failed"
        return f"{what}: {self.message}"


def _attempt(call: Callable[[], list[Any]]) -> tuple[list[Any], _Failure | None]:
    """``(call(), None)``, or ``([], failure)`` if it raised; a device fault raises ``DeviceError`` (one line)."""
    try:
        return call(), None
    except Exception as err:
        if _is_device_fault(err):
            raise DeviceError(
                f"the device failed ({one_line(err, 200)}): its state is unknown, so the run stops here; the labels"
                " written so far are kept, and the same command resumes after the device is reset"
            ) from None
        failure = _Failure(_is_out_of_memory(err), one_line(err, 300))
    return [], failure


def _finished(queued: Future[list[Future[ImageOutcome]]]) -> bool:
    """Whether a batch is inferred and every one of its images written."""
    return queued.done() and (queued.exception() is not None or all(job.done() for job in queued.result()))


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
