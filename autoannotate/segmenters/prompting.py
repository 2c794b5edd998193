"""Prompts of one image as the SAM-family decoders take them, checked: boxes as ``(N, 4)`` float64 pixel ``xyxy``,
and per instance its box flag and ``(K, 3)`` points, grouped by prompt shape so that each group decodes in one call.
Shared by every segmenter that takes point prompts (SAM/MobileSAM, SAM 2, SAM 3); numpy only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from autoannotate.types import Detections

__all__ = ["InstancePrompts", "checked_prompts", "instance_prompts", "prompt_arrays", "validated_boxes"]


@dataclass(frozen=True)
class InstancePrompts:
    """What prompts each instance of one image: its box (``with_box[i]``) and its ``(K, 3)`` points (K may be 0)."""

    with_box: tuple[bool, ...]
    points: tuple[np.ndarray, ...]

    def groups(self) -> list[tuple[bool, int, list[int]]]:
        """``(with_box, number of points, instance indices)`` per prompt shape, in order of first appearance."""
        by_shape: dict[tuple[bool, int], list[int]] = {}
        for i, (box, pts) in enumerate(zip(self.with_box, self.points, strict=True)):
            by_shape.setdefault((box, len(pts)), []).append(i)
        return [(box, k, members) for (box, k), members in by_shape.items()]


def instance_prompts(
    n: int, points: Sequence[np.ndarray] | None, box_given: np.ndarray | None, index: int
) -> InstancePrompts:
    """One image's per-instance prompts, checked: every instance needs its box or at least one point."""
    empty = np.zeros((0, 3), np.float64)
    pts = tuple(empty for _ in range(n)) if points is None else tuple(np.asarray(p, np.float64) for p in points)
    boxes = (True,) * n if box_given is None else tuple(bool(b) for b in np.asarray(box_given).reshape(-1))
    if len(pts) != n or len(boxes) != n:
        raise ValueError(f"image {index}: points and box_given need one entry per box ({n})")
    for i, (box, p) in enumerate(zip(boxes, pts, strict=True)):
        if p.ndim != 2 or p.shape[1] != 3 or not np.isfinite(p).all():
            raise ValueError(f"image {index}, instance {i}: points must be a finite (K, 3) array of x y label")
        if not box and not len(p):
            raise ValueError(f"image {index}, instance {i}: neither a box nor a point to prompt with")
    return InstancePrompts(boxes, pts)


def validated_boxes(boxes_xyxy: np.ndarray, index: int) -> np.ndarray:
    """``(N, 4)`` float64 copy of one image's boxes, or ValueError naming the image index."""
    boxes = np.asarray(boxes_xyxy)
    if boxes.size == 0:
        return np.zeros((0, 4), np.float64)
    if boxes.ndim != 2 or boxes.shape[1] != 4 or not np.issubdtype(boxes.dtype, np.number):
        raise ValueError(f"boxes_xyxy[{index}] must be an (N, 4) numeric array, got shape {boxes.shape}")
    boxes = boxes.astype(np.float64)
    if not np.isfinite(boxes).all():
        raise ValueError(f"boxes_xyxy[{index}] contains NaN or infinite coordinates")
    return boxes


def checked_prompts(
    images: Sequence[Any],
    boxes_xyxy: Sequence[np.ndarray],
    points: Sequence[Sequence[np.ndarray] | None] | None,
    box_given: Sequence[np.ndarray | None] | None,
) -> tuple[list[np.ndarray], list[InstancePrompts]]:
    """Every image's ``(N_i, 4)`` float64 boxes and its ``InstancePrompts``, checked (a predictor's ``predict``
    arguments: one box array per image, and per image None or one entry per box for ``points`` and ``box_given``).

    Raises:
        ValueError: ``images`` and ``boxes_xyxy`` differ in length, or a box or point array is malformed.
    """
    if len(images) != len(boxes_xyxy):
        raise ValueError(f"got {len(images)} images but {len(boxes_xyxy)} box arrays; pass one array per image")
    boxes = [validated_boxes(b, i) for i, b in enumerate(boxes_xyxy)]
    no_entries: list[None] = [None] * len(images)
    prompts = [
        instance_prompts(len(b), (points or no_entries)[i], (box_given or no_entries)[i], i)
        for i, b in enumerate(boxes)
    ]
    return boxes, prompts


def prompt_arrays(
    prompts: Sequence[Detections],
) -> tuple[list[np.ndarray], list[tuple[np.ndarray, ...] | None], list[np.ndarray | None]]:
    """``(boxes_xyxy, points, box_given)`` per image of the pipeline's ``Detections``, as ``predict`` takes them."""
    return [p.xyxy for p in prompts], [p.points for p in prompts], [p.box_given for p in prompts]
