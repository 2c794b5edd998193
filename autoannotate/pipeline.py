"""Wire the stages: images -> detections -> masks -> polygons -> label files. Yields one outcome per image.

Decoding (and SAM's CPU-side resize) runs ahead in worker threads while the models work on the current batch.
One failing image never stops a run: it becomes a ``failed`` outcome with its reason. Nothing here prints.
"""

from __future__ import annotations

import os
import queue
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from autoannotate.detect import Detections, Detector
from autoannotate.errors import ImageError, OutputError, one_line
from autoannotate.layout import DatasetLayout, link_image
from autoannotate.polygons import PolygonPolicy, mask_to_polygons
from autoannotate.segment import BoxSegmenter, PreparedImage, prepare_image
from autoannotate.sources import ImageSource, read_image_bgr
from autoannotate.writers.atomic import write_text_atomic
from autoannotate.writers.yolo import format_label_file, format_polygon_line

OK, EMPTY, FAILED = "ok", "empty", "failed"


@dataclass(frozen=True)
class ImageOutcome:
    """What happened to one image. ``label_path`` is set whenever a label file was written."""

    source: ImageSource
    status: str  # "ok" (>= 1 instance written) | "empty" (empty label file written) | "failed"
    label_path: Path | None = None
    instances: int = 0
    detections: int = 0
    empty_masks: int = 0  # detections whose mask (after --min-area) had no polygon: no line written
    error: str | None = None


@dataclass
class _Item:
    """One image on its way through a batch."""

    source: ImageSource
    label_path: Path
    job: Future[tuple[np.ndarray, PreparedImage]] | None = None
    error: str | None = None
    image_bgr: np.ndarray | None = None
    prepared: PreparedImage | None = None
    detections: Detections | None = None
    masks: np.ndarray | None = None  # (N, H, W) bool, aligned with detections


def _decode(path: Path) -> tuple[np.ndarray, PreparedImage]:
    """Worker-thread job: decode as ultralytics trains (BGR) and resize for SAM (RGB, longest side 1024)."""
    image_bgr = read_image_bgr(path)
    prepared = prepare_image(cv2.cvtColor(image_bgr, cv2.COLOR_BGR2RGB))
    return image_bgr, prepared


class Annotator:
    """Runs the models over a stream of images and writes one label file per image.

    ``owned_labels``: label keys (see ``DatasetLayout.label_key``) an earlier run of this tool wrote; an existing
    label file not in it belongs to someone else and is only replaced with ``overwrite=True``.
    """

    def __init__(
        self,
        detector: Detector,
        segmenter: BoxSegmenter,
        policy: PolygonPolicy,
        layout: DatasetLayout,
        *,
        batch: int,
        overwrite: bool = False,
        owned_labels: frozenset[str] | set[str] = frozenset(),
        decode_workers: int | None = None,
    ) -> None:
        if batch < 1:
            raise ValueError(f"batch must be >= 1, got {batch}")
        self.detector = detector
        self.segmenter = segmenter
        self.policy = policy
        self.layout = layout
        self.batch = batch
        self.overwrite = overwrite
        self.owned_labels = owned_labels
        self.decode_workers = decode_workers or max(1, min(4, os.cpu_count() or 1))

    def run(self, images: Iterable[ImageSource]) -> Iterator[ImageOutcome]:
        """Annotate ``images`` in order, yielding one outcome each as soon as its batch is done."""
        claimed: set[Path] = set()
        lookahead = 2  # batches decoded ahead of the one the models work on
        pending: queue.SimpleQueue[list[_Item]] = queue.SimpleQueue()
        in_flight = 0
        with ThreadPoolExecutor(self.decode_workers, thread_name_prefix="autoannotate-decode") as pool:
            for batch in _batched(images, self.batch):
                pending.put([self._admit(source, claimed, pool) for source in batch])
                in_flight += 1
                if in_flight > lookahead:
                    yield from self._process(pending.get())
                    in_flight -= 1
            while in_flight:
                yield from self._process(pending.get())
                in_flight -= 1

    def _admit(self, source: ImageSource, claimed: set[Path], pool: ThreadPoolExecutor) -> _Item:
        """Check the label path is free for this image, then queue its decoding."""
        label_path = self.layout.label_path(source.rel_path)
        item = _Item(source, label_path)
        if label_path in claimed:
            item.error = (
                f"another image in this run already maps to label {str(label_path)!r} (same folder and stem,"
                " different extension); ultralytics cannot tell their labels apart, rename one"
            )
            return item
        claimed.add(label_path)
        key = self.layout.label_key(source.rel_path)
        if not self.overwrite and key not in self.owned_labels and (label_path.exists() or label_path.is_symlink()):
            item.error = f"label {str(label_path)!r} exists and was not written by autoannotate; pass --overwrite"
            return item
        item.job = pool.submit(_decode, source.path)
        return item

    def _process(self, items: list[_Item]) -> Iterator[ImageOutcome]:
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
                item.error = f"cannot decode: {type(err).__name__}: {err}"
            item.job = None
        self._infer(live)
        for item in items:
            yield self._finish(item)

    def _infer(self, items: list[_Item]) -> None:
        """Detect, then segment, for all ``items`` at once; on a batch failure, retry one by one to isolate it."""
        if not items:
            return
        try:
            detections = self.detector.detect([item.image_bgr for item in items])  # type: ignore[misc]
            with_boxes = [(item, det) for item, det in zip(items, detections, strict=True) if len(det)]
            results = self.segmenter.segment(
                [item.prepared for item, _ in with_boxes],  # type: ignore[misc]
                [det.xyxy for _, det in with_boxes],
            )
        except Exception as err:
            if len(items) > 1:
                for item in items:
                    self._infer([item])
                return
            items[0].error = f"inference failed: {one_line(err, 300)}"
            return
        for item, det in zip(items, detections, strict=True):
            item.detections = det
        for (item, _), result in zip(with_boxes, results, strict=True):
            item.prepared = None
            item.image_bgr = None
            item.masks = result.masks

    def _finish(self, item: _Item) -> ImageOutcome:
        if item.error is not None:
            return ImageOutcome(item.source, FAILED, error=item.error)
        det = item.detections if item.detections is not None else Detections.empty()
        masks = item.masks
        height, width = _image_hw(item)
        lines: list[str] = []
        empty_masks = 0
        for index in range(len(det)):
            polygons = mask_to_polygons(masks[index], self.policy) if masks is not None else []
            if not polygons:
                empty_masks += 1
            class_id = int(det.class_id[index])
            lines.extend(format_polygon_line(class_id, polygon, (width, height)) for polygon in polygons)
        try:
            link_image(self.layout, item.source.rel_path, item.source.path)
            write_text_atomic(item.label_path, format_label_file(lines))
        except OutputError as err:
            return ImageOutcome(item.source, FAILED, detections=len(det), error=str(err))
        return ImageOutcome(
            item.source,
            OK if lines else EMPTY,
            label_path=item.label_path,
            instances=len(lines),
            detections=len(det),
            empty_masks=empty_masks,
        )


def _image_hw(item: _Item) -> tuple[int, int]:
    if item.masks is not None:
        return int(item.masks.shape[1]), int(item.masks.shape[2])
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
