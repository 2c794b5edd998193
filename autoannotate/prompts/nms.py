"""``--agnostic-nms``: one box per object across classes, for every prompt source.

Synonyms and overlapping prompts ("cart", "trolley") make an open-vocabulary detector give two boxes of two classes
for one object, and so two masks; a detector's own NMS runs per class (and end-to-end models such as YOLO26 and
YOLOE-26 run none). ``AcrossClassesNMS`` wraps any prompt source and keeps, of boxes overlapping by more than the
IoU threshold, the most confident (ties: the earlier). Nothing here imports torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import PurePosixPath

import numpy as np

from autoannotate.prompts.base import PromptSource
from autoannotate.quality import box_ious_xyxy
from autoannotate.types import Detections


def suppress_across_classes(detections: Detections, iou: float) -> Detections:
    """Greedy NMS that ignores classes: visiting boxes by confidence (highest first, ties in input order), drop
    each box whose IoU with a kept one is above ``iou``. The kept boxes stay in their input order."""
    n = len(detections)
    if n < 2:
        return detections
    order = np.argsort(-detections.confidence.astype(np.float64), kind="stable")
    keep = np.zeros(n, dtype=bool)
    suppressed = np.zeros(n, dtype=bool)
    for index in order:
        if suppressed[index]:
            continue
        keep[index] = True
        overlaps = box_ious_xyxy(detections.xyxy[index], detections.xyxy) > iou
        suppressed |= overlaps
    return detections.select(keep)


class AcrossClassesNMS:
    """A prompt source (``prompts.base.PromptSource``) that is ``source`` with ``suppress_across_classes`` applied
    to every image's boxes. Its names, class filter and weights are the wrapped source's."""

    def __init__(self, source: PromptSource, iou: float) -> None:
        self.source = source
        self.iou = iou

    @property
    def names(self) -> dict[int, str]:
        return self.source.names

    @property
    def class_ids(self) -> tuple[int, ...] | None:
        return self.source.class_ids

    @property
    def weights_path(self) -> str | None:
        return self.source.weights_path

    def __getattr__(self, name: str) -> object:
        # optional parts of the wrapped source (its prompt record, its embeddings) show through
        if name == "source":
            raise AttributeError(name)
        return getattr(self.source, name)

    def boxes(self, images_bgr: Sequence[np.ndarray], rel_paths: Sequence[PurePosixPath]) -> list[Detections]:
        return [suppress_across_classes(d, self.iou) for d in self.source.boxes(images_bgr, rel_paths)]
