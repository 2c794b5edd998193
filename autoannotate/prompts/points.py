"""Point prompts from label files instead of a detector: a dataset annotated by clicks or centre points becomes a
segmentation dataset, class ids kept. Each line is one instance, segmented by a segmenter that takes point prompts
(SAM, MobileSAM).

Label files mirror the images (``<points_root>/<rel path>.txt``, suffix replaced). Each non-blank line is::

    class x1 y1 [x2 y2 ...] [neg x y [x y ...]] [box x1 y1 x2 y2]

- ``class``: the class id, a non-negative integer.
- ``x1 y1 x2 y2 ...``: positive points (on the object), normalised to [0, 1] by the image's width and height.
- ``neg x y ...``: negative points (off the object), after the word ``neg``.
- ``box x1 y1 x2 y2``: a box prompt too, normalised corners (x1 < x2, y1 < y2), as ``--boxes-from`` boxes.

Sections ``neg`` and ``box`` come after the positive points, in either order, each at most once. An instance needs
at least one positive point or a box. Examples: ``0 0.5 0.5`` (one click), ``2 0.3 0.4 0.35 0.6 neg 0.32 0.5``
(two clicks, one negative between them), ``1 0.5 0.5 box 0.2 0.1 0.8 0.9`` (a click inside a box).

Frames: a normalised point is a pixel-centre coordinate, as the run's own labels write vertices
(``dataset.yolo_seg.polygon_px_to_norm``): ``x = xn * W - 0.5`` pixels, the pixel-index frame that
``Detections.points`` and SAM's ``SamPredictor.predict(point_coords=...)`` take (SAM adds the 0.5 back). A box is
pixel edges, ``x = xn * W``, as ``--boxes-from`` reads it. An image without a file is a negative sample.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from autoannotate.errors import ImageError
from autoannotate.prompts.labels import MirroredLabelFormat, MirroredLabels, build_mirrored_labels, names_from_labels
from autoannotate.types import Detections

if TYPE_CHECKING:
    from autoannotate.config import RunSettings

NEGATIVE_WORD = "neg"
BOX_WORD = "box"
#: The grammar of one line, as error messages quote it.
POINT_LINE = "class x y [x y ...] [neg x y ...] [box x1 y1 x2 y2]"


@dataclass(frozen=True)
class PointLine:
    """One parsed instance line, normalised coordinates.

    ``positive_norm``, ``negative_norm``: float64 ``(K, 2)`` x, y in [0, 1] (K may be 0); ``box_norm``: float64
    ``(4,)`` x1 y1 x2 y2 in [0, 1], or None.
    """

    line: int
    class_id: int
    positive_norm: np.ndarray
    negative_norm: np.ndarray
    box_norm: np.ndarray | None


class PointLineError(ValueError):
    """A line that does not parse: ``line`` (1-based) and ``message``."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(f"line {line}: {message}")
        self.line = line
        self.message = message


def parse_point_line(number: int, fields: Sequence[str]) -> PointLine:
    """One non-blank line's whitespace-separated ``fields`` -> ``PointLine``; PointLineError naming line ``number``
    otherwise (see the module docstring for the grammar)."""
    head = fields[0]
    try:
        class_value = float(head)
    except ValueError:
        class_value = -1.0
    if not (class_value.is_integer() and class_value >= 0):  # "3" or "3.0", as YOLO label readers accept
        raise PointLineError(number, f"class id {head!r} is not a non-negative integer (expected '{POINT_LINE}')")
    sections: dict[str, list[float]] = {"": []}
    current = ""
    for field in fields[1:]:
        if field in (NEGATIVE_WORD, BOX_WORD):
            if field in sections:
                raise PointLineError(number, f"{field!r} given twice")
            sections[field] = []
            current = field
            continue
        try:
            value = float(field)
        except ValueError:
            raise PointLineError(
                number, f"unexpected {field!r}: expected a number, {NEGATIVE_WORD!r} or {BOX_WORD!r}"
            ) from None
        if not math.isfinite(value):
            raise PointLineError(number, f"coordinate {field!r} is not a finite number")
        if not 0.0 <= value <= 1.0:
            raise PointLineError(number, f"coordinate {field} outside [0, 1] (coordinates are normalised)")
        sections[current].append(value)
    positive, negative, box = sections[""], sections.get(NEGATIVE_WORD), sections.get(BOX_WORD)
    if len(positive) % 2:
        raise PointLineError(number, f"odd number of point coordinates ({len(positive)}); expected x y pairs")
    if negative is not None and (not negative or len(negative) % 2):
        raise PointLineError(number, f"{NEGATIVE_WORD!r} needs x y pairs, got {len(negative)} numbers")
    if box is not None:
        if len(box) != 4:
            raise PointLineError(number, f"{BOX_WORD!r} needs 4 numbers x1 y1 x2 y2, got {len(box)}")
        if not (box[0] < box[2] and box[1] < box[3]):
            raise PointLineError(number, f"box {' '.join(fields[-4:])} needs x1 < x2 and y1 < y2")
    if not positive and box is None:
        raise PointLineError(number, f"no positive point and no box to prompt with (expected '{POINT_LINE}')")
    return PointLine(
        number,
        int(class_value),
        np.array(positive, np.float64).reshape(-1, 2),
        np.array(negative or [], np.float64).reshape(-1, 2),
        None if box is None else np.array(box, np.float64),
    )


def parse_point_lines(text: str) -> list[PointLine]:
    """Every non-blank line of a point label file; PointLineError for the first that does not parse."""
    return [parse_point_line(number, line.split()) for number, line in enumerate(text.splitlines(), 1) if line.split()]


def point_detections(rows: Sequence[PointLine], resolution_wh: tuple[int, int]) -> Detections:
    """Prompts of an image of ``resolution_wh`` from its parsed lines, one instance per line, confidence 1.

    ``points``: per instance a float32 ``(K, 3)`` array, its positive then its negative points, ``x y label`` in the
    pixel-index frame (``xn * W - 0.5``; label 1 positive, 0 negative). ``xyxy``: the box prompt in pixel edges
    (``xn * W``) where a line has one (``box_given`` True), else the bounds of its points (``xn * W``, reports only).
    """
    width, height = resolution_wh
    size_wh = np.array([width, height], np.float64)
    xyxy, points, box_given = [], [], []
    for row in rows:
        coords_norm = np.concatenate([row.positive_norm, row.negative_norm])
        labels = np.concatenate([np.ones(len(row.positive_norm)), np.zeros(len(row.negative_norm))])
        points.append(np.column_stack([coords_norm * size_wh - 0.5, labels]).astype(np.float32))
        if row.box_norm is not None:
            xyxy.append(row.box_norm * np.tile(size_wh, 2))
        else:
            at = coords_norm * size_wh
            xyxy.append(np.concatenate([at.min(axis=0), at.max(axis=0)]))
        box_given.append(row.box_norm is not None)
    n = len(rows)
    return Detections(
        np.array(xyxy, np.float32).reshape(n, 4),
        np.array([row.class_id for row in rows], np.int64),
        np.ones(n, np.float32),
        points=tuple(points),
        box_given=np.array(box_given, bool),
    )


def read_point_labels(path: Path, resolution_wh: tuple[int, int]) -> Detections:
    """The instances of one point label file (``point_detections``); none without a file. ImageError naming the
    file and line for the first line that does not parse, or for a file that cannot be read."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        return Detections.empty()
    except (OSError, UnicodeDecodeError) as err:
        raise ImageError(f"cannot read point labels {str(path)!r}: {err}") from None
    try:
        rows = parse_point_lines(text)
    except PointLineError as err:
        raise ImageError(f"point labels {str(path)!r} line {err.line}: {err.message}") from None
    return point_detections(rows, resolution_wh)


def _point_line_class_ids(text: str) -> Iterator[int]:
    for number, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if fields:
            try:
                yield parse_point_line(number, fields).class_id
            except PointLineError:
                continue  # the run fails that image with the reason


#: ``--points-from``: point label files (the grammar above).
POINT_LABELS = MirroredLabelFormat(
    flag="--points-from",
    what="point labels",
    contents="a directory of point label files",
    read=read_point_labels,
    class_ids=_point_line_class_ids,
)


class LabelPoints(MirroredLabels):
    """The ``--points-from`` source over ``points_root``: ``MirroredLabels`` of ``POINT_LABELS``. The segmenter must
    take point prompts (its ``PROMPT_SOURCES`` entry says so, and ``models.load_models`` checks it)."""

    def __init__(self, points_root: Path, names: dict[int, str], class_ids: tuple[int, ...] | None = None) -> None:
        super().__init__(POINT_LABELS, points_root, names, class_ids)


def names_from_points(points_root: Path) -> dict[int, str]:
    """When no data.yaml is given: ``{id: "class<id>"}`` for ids 0..max of the point label lines that parse."""
    return names_from_labels(points_root, POINT_LABELS)


def build_label_points(settings: RunSettings) -> MirroredLabels:
    """The ``--points-from`` source (``labels.build_mirrored_labels``)."""
    assert settings.prompts.points_from is not None  # PROMPT_SOURCES picks this source only then
    return build_mirrored_labels(settings, settings.prompts.points_from, POINT_LABELS)
