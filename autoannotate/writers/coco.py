"""COCO instances JSON from YOLO-seg polygons: pure formatting, plus one atomic write.

Conventions (also written into ``info.description`` of every file):

- ``category_id = class_id + 1``. COCO ids are 1-based by convention and tools rely on it: ultralytics'
  ``convert_coco`` reads ``category_id - 1`` back as the YOLO class, and torchvision-style detectors keep label 0
  for the background. ``categories`` lists every class of the names dict, ``{"id": class_id + 1, "name": ...}``,
  sorted by id, whether or not it has an annotation.
- ``segmentation`` is one polygon ``[x1, y1, x2, y2, ...]`` per label line, in absolute pixel coordinates of the
  continuous image plane (pixel column ``x`` spans ``[x, x + 1)``): ``x_px = x_norm * W``, ``y_px = y_norm * H``.
  Our labels hold pixel centres, ``(x + 0.5) / W``, so the vertices land on pixel centres, ``x + 0.5``. Polygons that
  ``run --polygon merge`` joined with zero-width cuts stay one polygon: pycocotools fills them even-odd, so the cuts
  add nothing and holes stay holes. pycocotools fills the polygon's interior, so it covers about half of each boundary
  pixel that the polygon runs through the centre of; expect its masks to be smaller by about half the perimeter.
- ``bbox`` is ``[x, y, width, height]`` of the polygon's vertices in the same frame (as COCO's own boxes are
  derived from its polygons).
- ``area`` is a pixel count: the instance's mask area when the caller has it (``mask_area_px``), else the pixels of
  the polygon rasterised as ultralytics trains on it (``polygon_to_mask``).
- ids of images and annotations are 1-based, in input order. ``iscrowd`` is 0.
- Coordinates are rounded to 3 decimals (a label's 6 decimals are 0.004 px at 4000 px).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from autoannotate import __version__
from autoannotate.dataset.yolo_seg import parse_label_lines
from autoannotate.errors import OutputError
from autoannotate.polygons import polygon_to_local_mask
from autoannotate.writers.atomic import write_text_atomic

DESCRIPTION_PREFIX = "autoannotate"
CATEGORY_ID_OFFSET = 1
DECIMALS = 3


@dataclass(frozen=True)
class CocoInstance:
    """One instance: a YOLO class id, its polygon (float ``(K, 2)`` x, y normalised, pixel centres, K >= 3) and,
    when known, the pixel count of its mask."""

    class_id: int
    polygon_norm: np.ndarray
    mask_area_px: int | None = None


@dataclass(frozen=True)
class CocoImage:
    """One image: its path relative to the image root (POSIX), its decoded size and its instances."""

    file_name: str
    resolution_wh: tuple[int, int]
    instances: tuple[CocoInstance, ...] = ()


def category_id(class_id: int) -> int:
    """The COCO ``category_id`` of a YOLO class id (see the module docstring)."""
    return int(class_id) + CATEGORY_ID_OFFSET


def polygon_area_px(polygon_px: np.ndarray, resolution_wh: tuple[int, int]) -> int:
    """Pixels of ``polygon_to_mask(polygon_px, resolution_wh)``, drawn only over the polygon's bounding box.

    ``polygon_px`` is float ``(K, 2)`` x, y in the frame ``polygon_to_mask`` takes (see ``polygon_to_local_mask``).
    """
    drawn = polygon_to_local_mask(polygon_px, resolution_wh)
    return 0 if drawn is None else int(np.count_nonzero(drawn[2]))


def coco_image_from_label_text(
    rel_path: str, resolution_wh: tuple[int, int], label_text: str, rows: Iterable[Mapping[str, Any]] = ()
) -> CocoImage:
    """The COCO record of one image of a run, from its label text held in memory.

    Args:
        rel_path: the image's path relative to the image root, POSIX (the ``file_name``).
        resolution_wh: ``(width, height)`` of the decoded image, the frame the label is normalised in.
        label_text: the YOLO-seg label file's text (``dataset.yolo_seg.format_label_file``).
        rows: the image's rows of ``instances.jsonl``: ``line`` (1-based first line of the instance, falsy when it
            wrote none) and ``mask_area`` (pixels) are read.

    Returns:
        One ``CocoInstance`` per label line that parses, in line order; a line that is the first line of an instance
        takes its ``mask_area``, the other lines (the further parts of a ``split`` instance) none, so that their
        area is the pixels of their polygon (see ``build_coco``).
    """
    area_by_line = {row["line"]: row["mask_area"] for row in rows if row.get("line")}
    lines, _ = parse_label_lines(label_text, boxes=True)
    instances = tuple(CocoInstance(line.class_id, line.polygon_norm, area_by_line.get(line.line)) for line in lines)
    return CocoImage(rel_path, resolution_wh, instances)


def build_coco(images: Sequence[CocoImage], names: Mapping[int, str], *, version: str = __version__) -> dict[str, Any]:
    """A COCO instances dict (``info``, ``licenses``, ``images``, ``annotations``, ``categories``).

    Args:
        images: in the order their ids are given (1, 2, ...).
        names: class id -> name; every instance's class must be in it.
        version: written into ``info``.

    Raises ValueError for an instance whose class is not in ``names``, or whose polygon has fewer than 3 points or
    coordinates outside [0, 1].
    """
    scale_cache: dict[tuple[int, int], np.ndarray] = {}
    coco_images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for image_id, image in enumerate(images, start=1):
        width, height = image.resolution_wh
        coco_images.append({"id": image_id, "file_name": image.file_name, "width": width, "height": height})
        scale = scale_cache.setdefault(image.resolution_wh, np.array([width, height], dtype=np.float64))
        for instance in image.instances:
            if instance.class_id not in names:
                raise ValueError(f"{image.file_name}: class {instance.class_id} is not in the names")
            polygon = np.asarray(instance.polygon_norm, dtype=np.float64)
            if polygon.ndim != 2 or polygon.shape[1] != 2 or len(polygon) < 3:
                raise ValueError(f"{image.file_name}: a polygon needs shape (K>=3, 2), got {polygon.shape}")
            if not ((polygon >= 0.0) & (polygon <= 1.0)).all():
                raise ValueError(f"{image.file_name}: polygon coordinates must be normalised to [0, 1]")
            polygon_px = polygon * scale
            low, high = polygon_px.min(axis=0), polygon_px.max(axis=0)
            area = instance.mask_area_px
            if area is None:
                area = polygon_area_px(polygon_px, image.resolution_wh)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": category_id(instance.class_id),
                    "segmentation": [[_round(v) for v in polygon_px.reshape(-1)]],
                    "area": int(area),
                    "bbox": [_round(low[0]), _round(low[1]), _round(high[0] - low[0]), _round(high[1] - low[1])],
                    "iscrowd": 0,
                }
            )
    return {
        "info": {
            "description": f"{DESCRIPTION_PREFIX} {version}: YOLO-seg labels as COCO instances; "
            f"category_id = YOLO class id + {CATEGORY_ID_OFFSET}; polygons in pixels, x = x_norm * width",
            "version": version,
            "contributor": "autoannotate",
        },
        "licenses": [],
        "images": coco_images,
        "annotations": annotations,
        "categories": [
            {"id": category_id(cid), "name": str(name), "supercategory": "none"} for cid, name in sorted(names.items())
        ],
    }


def _round(value: float) -> float:
    rounded = round(float(value), DECIMALS)
    return rounded + 0.0  # no "-0.0" in the file


def format_coco(coco: Mapping[str, Any]) -> str:
    """The JSON text of a COCO dict: compact (COCO files get large), UTF-8, newline-terminated."""
    return json.dumps(coco, ensure_ascii=False, separators=(",", ":")) + "\n"


def is_ours(text: str) -> bool:
    """True when ``text`` is a COCO file this tool wrote (``info.description`` starts with "autoannotate")."""
    try:
        content = json.loads(text)
    except ValueError:
        return False
    info = content.get("info") if isinstance(content, dict) else None
    description = info.get("description") if isinstance(info, dict) else None
    return isinstance(description, str) and description.startswith(DESCRIPTION_PREFIX)


def write_coco(path: Path, coco: Mapping[str, Any], *, overwrite: bool = False) -> None:
    """Write ``coco`` to ``path`` atomically.

    Raises OutputError when ``path`` is a directory, or holds a file this tool did not write and ``overwrite`` is
    False.
    """
    if path.is_dir():
        raise OutputError(f"{str(path)!r} is a directory; pass a file name to --output")
    if path.exists() and not overwrite:
        try:
            existing = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            existing = ""
        if not is_ours(existing):
            raise OutputError(
                f"{str(path)!r} exists and was not written by autoannotate; pass --overwrite or another --output"
            )
    write_text_atomic(path, format_coco(coco))
