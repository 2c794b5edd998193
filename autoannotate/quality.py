"""Per-instance quality figures for review: pure numpy functions over masks, boxes, logits and polygons."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from autoannotate.polygons import polygons_to_mask

STABILITY_OFFSET = 1.0  # SAM's automatic mask generator default


@dataclass(frozen=True)
class InstanceQuality:
    """One detection's figures (one row of ``instances.jsonl``, before the image and class names are added).

    ``line``: 1-based line of its first polygon in the label file (None when it wrote no line); ``lines``: how many
    lines it wrote (``split`` writes one per part). ``box_iou``: IoU of the mask's bounding box with the prompt box
    (NaN where there is none: point prompts alone, box labels).
    ``fill_iou``: IoU of ``cv2.fillPoly`` of the written polygons with the mask (what training will see).
    """

    line: int | None
    lines: int
    class_id: int
    det_conf: float
    sam_iou: float
    stability: float
    mask_area: int
    box_iou: float
    points: int
    fill_iou: float
    dropped: bool

    def to_dict(self) -> dict[str, Any]:
        """The row's fields; a NaN figure (one the segmenter does not give, e.g. ``--sam-model none``) as None, so
        that ``instances.jsonl`` stays strict JSON (``null``)."""
        return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, row: dict[str, Any]) -> InstanceQuality:
        """The inverse of ``to_dict`` (None figures back to NaN)."""
        nullable = ("sam_iou", "stability", "box_iou", "fill_iou")
        fields: dict[str, Any] = {k: math.nan if k in nullable and v is None else v for k, v in row.items()}
        return cls(**fields)


def low_res_image_hw(input_hw: tuple[int, int]) -> tuple[int, int]:
    """The image's area in SAM's ``(256, 256)`` low-res logits, ``(h, w)``: the resized input scaled by 1/4."""
    return max(1, round(input_hw[0] / 4)), max(1, round(input_hw[1] / 4))


def stability_score(low_res_logits: np.ndarray, input_hw: tuple[int, int], threshold: float = 0.0) -> float:
    """SAM's stability score: IoU of the mask thresholded at ``threshold +- 1``, on the ``(256, 256)`` low-res logits
    cropped to the image's area (the padding is not part of the image). 1.0 for an empty mask."""
    h, w = low_res_image_hw(input_hw)
    crop = low_res_logits[:h, :w]
    strict = int((crop > threshold + STABILITY_OFFSET).sum())
    loose = int((crop > threshold - STABILITY_OFFSET).sum())
    return 1.0 if loose == 0 else strict / loose


def mask_box_xyxy(mask: np.ndarray) -> np.ndarray | None:
    """Pixel-edge box ``x1 y1 x2 y2`` of a ``(H, W)`` mask's foreground (x2, y2 exclusive), None when empty."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return np.array([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1], dtype=np.float64)


def box_ious_xyxy(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one ``(4,)`` ``xyxy`` box with each of ``(N, 4)`` boxes, in float64 (0 where the union is empty).
    The one box-IoU of the package (``box_iou_xyxy`` is its one-to-one form)."""
    box, boxes = box.astype(np.float64), boxes.astype(np.float64)
    width = np.clip(np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]), 0, None)
    height = np.clip(np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]), 0, None)
    inter = width * height
    area = max(box[2] - box[0], 0.0) * max(box[3] - box[1], 0.0)
    areas = np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)
    union = area + areas - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def box_iou_xyxy(a: np.ndarray | None, b: np.ndarray) -> float:
    """IoU of two ``x1 y1 x2 y2`` boxes (0.0 when ``a`` is None)."""
    if a is None:
        return 0.0
    return float(box_ious_xyxy(np.asarray(a), np.asarray(b).reshape(1, 4))[0])


def fill_iou(polygons_xy_px: list[np.ndarray], mask: np.ndarray, mask_box: np.ndarray | None) -> float:
    """IoU between the rasterised polygons and the mask, computed over their joint bounding box only."""
    if not polygons_xy_px:
        return 0.0 if mask_box is not None else 1.0
    points = np.concatenate(polygons_xy_px)
    x1, y1 = np.floor(points.min(axis=0)).astype(int)
    x2, y2 = np.ceil(points.max(axis=0)).astype(int) + 1
    if mask_box is not None:
        x1, y1 = min(x1, int(mask_box[0])), min(y1, int(mask_box[1]))
        x2, y2 = max(x2, int(mask_box[2])), max(y2, int(mask_box[3]))
    h, w = mask.shape
    x1, y1, x2, y2 = max(0, x1), max(0, y1), min(w, x2), min(h, y2)
    offset = np.array([x1, y1], dtype=np.float64)
    filled = polygons_to_mask([p - offset for p in polygons_xy_px], (x2 - x1, y2 - y1))
    crop = mask[y1:y2, x1:x2].astype(bool)
    union = int((filled | crop).sum())
    return 1.0 if union == 0 else int((filled & crop).sum()) / union
