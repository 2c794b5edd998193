"""YOLO segmentation label text: the one writer and the one reader of it.

A label file holds one line per instance, ``<class> x1 y1 x2 y2 ... xK yK`` (K >= 3), coordinates normalised to
[0, 1] by the image's ``resolution_wh`` (pixel centres, see ``polygon_px_to_norm``). The run writes it
(``format_polygon_line``, ``format_label_file``); ``check``, ``preview``, ``export coco`` and ``--boxes-from`` read
it (``parse_label_lines``, ``read_label_file``), the last also accepting YOLO detection lines ``<class> cx cy w h``.

Formatting and parsing are pure; ``read_label_file`` is the only function that touches a file. Parsing is per line,
so that one bad line is reported with its number and the other lines are still read. It accepts what ultralytics
accepts when it loads a label (blank lines skipped, a class id such as ``2.0``, an optional UTF-8 byte-order mark)
and reports what ultralytics would reject or drop (non-numeric or non-finite values, fewer than 3 points, an odd
number of coordinates, coordinates outside [0, 1]).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "DECIMALS",
    "LabelLine",
    "LineProblem",
    "format_box_line",
    "format_label_file",
    "format_polygon_line",
    "format_unit_values",
    "iter_label_lines",
    "parse_label_file",
    "parse_label_lines",
    "polygon_px_to_norm",
    "read_label_file",
]

DECIMALS = 6


def polygon_px_to_norm(polygon_xy_px: np.ndarray, resolution_wh: tuple[int, int]) -> np.ndarray:
    """(K, 2) pixel-index x, y (pixel centres, as cv2.findContours gives them) -> (K, 2) float64 in [0, 1].

    Pixel ``x`` covers ``[x, x + 1)`` of the image, so its centre is ``(x + 0.5) / W`` in normalised coordinates.
    Writing the centre (not ``x / W``, as ultralytics' own ``masks.xyn`` does) is both the geometrically right
    value and the one that survives ultralytics' rasteriser, which scales by W and truncates to int: ``x / W``
    written to 6 decimals comes back as ``x - 1`` for a quarter to a half of all vertices on 640-1920 px images.
    """
    width, height = resolution_wh
    scale = np.array([width, height], dtype=np.float64)
    return np.clip((np.asarray(polygon_xy_px, dtype=np.float64) + 0.5) / scale, 0.0, 1.0)


def format_polygon_line(class_id: int, polygon_xy_px: np.ndarray, resolution_wh: tuple[int, int]) -> str:
    """One label line (no newline) for a polygon of >= 3 points in the pixel frame of a W x H image.

    >>> format_polygon_line(2, np.array([[0, 0], [50, 0], [50, 25]]), (200, 100))
    '2 0.002500 0.005000 0.252500 0.005000 0.252500 0.255000'
    """
    polygon = np.asarray(polygon_xy_px)
    if polygon.ndim != 2 or polygon.shape[1] != 2 or len(polygon) < 3:
        raise ValueError(f"a polygon needs shape (K>=3, 2), got {polygon.shape}")
    if class_id < 0:
        raise ValueError(f"class id must be >= 0, got {class_id}")
    coords = polygon_px_to_norm(polygon, resolution_wh).reshape(-1)
    return f"{int(class_id)} " + format_unit_values(coords)


def format_box_line(class_id: int, box_xyxy_px: np.ndarray, resolution_wh: tuple[int, int]) -> str:
    """One YOLO detection label line (no newline), ``class cx cy w h`` normalised, for a box in the continuous pixel
    frame of a W x H image (``x1 y1 x2 y2``, as detectors give them), clipped to the image first.

    >>> format_box_line(1, np.array([10.0, 20.0, 50.0, 60.0]), (200, 100))
    '1 0.150000 0.400000 0.200000 0.400000'
    """
    if class_id < 0:
        raise ValueError(f"class id must be >= 0, got {class_id}")
    width, height = resolution_wh
    size = np.array([width, height, width, height], dtype=np.float64)
    x1, y1, x2, y2 = np.clip(np.asarray(box_xyxy_px, dtype=np.float64).reshape(4), 0.0, size) / size
    return f"{int(class_id)} " + format_unit_values(np.array([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1]))


def format_unit_values(values: np.ndarray) -> str:
    """Values in [0, 1] as ``"0.123456 1.000000 ..."``: exactly ``" ".join(f"{v:.6f}")``, vectorised.

    Polygons of noisy masks have 10^5 vertices: formatting them one by one in Python costs more than the label is
    worth. Each value becomes 6 decimal digits of ``rint(v * 1e6)``; the few values whose product lies within
    1e-6 of a rounding tie are formatted by Python instead, so the result is always the correctly rounded string.
    """
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return ""
    scaled = values * 10**DECIMALS
    units = np.rint(scaled).astype(np.int64)
    digits = np.empty((values.size, 9), dtype=np.uint8)
    digits[:, 0] = 48 + units // 10**DECIMALS  # "0" or "1"
    digits[:, 1] = ord(".")
    for k in range(DECIMALS):
        digits[:, 2 + k] = 48 + (units // 10 ** (DECIMALS - 1 - k)) % 10
    digits[:, 8] = ord(" ")
    text = digits.tobytes()[:-1].decode("ascii")
    near_tie = np.flatnonzero(np.abs(scaled - np.floor(scaled) - 0.5) < 1e-6)
    if near_tie.size == 0:
        return text
    parts = text.split(" ")
    for index in near_tie.tolist():
        parts[index] = f"{values[index]:.{DECIMALS}f}"
    return " ".join(parts)


def format_label_file(lines: Iterable[str]) -> str:
    """The text of a label file: one line each, newline-terminated; empty for a negative sample."""
    return "".join(f"{line}\n" for line in lines)


@dataclass(frozen=True)
class LabelLine:
    """One parsed label line.

    Attributes:
        line: 1-based line number in the file.
        class_id: the YOLO class id (>= 0).
        polygon_norm: float64 ``(K, 2)`` x, y normalised to the image (pixel centres), K >= 3. A detection line
            ``class cx cy w h`` (read with ``boxes=True``) becomes its box's 4 corners ``(x1, y1), (x2, y1),
            (x2, y2), (x1, y2)``, so the bounding box of ``polygon_norm`` is the box in either case.
    """

    line: int
    class_id: int
    polygon_norm: np.ndarray


@dataclass(frozen=True)
class LineProblem:
    """A problem in a label file. ``line`` is 1-based, or None for the file as a whole."""

    line: int | None
    message: str


BOX_EDGE_SLACK = 1.5e-6  # how far a box line's corner may pass the image edge from rounding cx, w to 6 decimals


def iter_label_lines(text: str, *, boxes: bool = False) -> Iterator[LabelLine | LineProblem]:
    """Parse label text line by line: a ``LabelLine`` for each line that parses, a ``LineProblem`` for each that
    does not (in line order; blank lines are skipped).

    A line parses when it is ``class x1 y1 ... xK yK`` (K >= 3) of finite numbers and a non-negative integer class
    id; with ``boxes``, ``class cx cy w h`` (w, h >= 0) too. The range of the coordinates is not checked here (see
    ``parse_label_lines``).
    """
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if fields:
            yield _parse_fields(number, fields, boxes)


def _parse_fields(number: int, fields: list[str], boxes: bool) -> LabelLine | LineProblem:
    values: list[float] = []
    for field in fields:
        try:
            values.append(float(field))
        except ValueError:
            return LineProblem(number, f"non-numeric value {field!r}")
    if not values[0].is_integer() or values[0] < 0:
        return LineProblem(number, f"class id {fields[0]!r} is not a non-negative integer")
    coords = values[1:]
    if boxes and len(coords) != 4 and (len(coords) % 2 or len(coords) < 6):
        return LineProblem(number, f"expected 'class cx cy w h', got {len(coords) + 1} numbers")
    if len(coords) % 2:
        return LineProblem(number, f"odd number of coordinates ({len(coords)}); expected x y pairs")
    if len(coords) < 6 and not (boxes and len(coords) == 4):
        return LineProblem(number, f"polygon has {len(coords) // 2} points; at least 3 needed")
    if not all(math.isfinite(v) for v in coords):
        return LineProblem(number, "coordinate is not a finite number")
    if len(coords) == 4:
        cx, cy, w, h = coords
        if w < 0 or h < 0:
            return LineProblem(number, f"box width {w:g} and height {h:g} must be >= 0")
        corners = np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])
        # cx and w are each rounded to 6 decimals, so a box on the image edge can land up to 1e-6 past it
        near_edge = ((corners > -BOX_EDGE_SLACK) & (corners < 0.0)) | ((corners > 1.0) & (corners < 1 + BOX_EDGE_SLACK))
        x1, y1, x2, y2 = np.where(near_edge, np.clip(corners, 0.0, 1.0), corners).tolist()
        coords = [x1, y1, x2, y1, x2, y2, x1, y2]
    return LabelLine(number, int(values[0]), np.array(coords, dtype=np.float64).reshape(-1, 2))


def parse_label_lines(text: str, *, boxes: bool = False) -> tuple[list[LabelLine], list[LineProblem]]:
    """Parse YOLO label text line by line (see ``iter_label_lines``).

    Returns the lines that parse and a problem per line that does not. A line that parses can still have a problem:
    coordinates outside [0, 1] are reported and the line is kept (so statistics still count it).
    """
    rows: list[LabelLine] = []
    problems: list[LineProblem] = []
    for item in iter_label_lines(text, boxes=boxes):
        if isinstance(item, LineProblem):
            problems.append(item)
            continue
        coords = item.polygon_norm.reshape(-1)
        outside = coords[(coords < 0.0) | (coords > 1.0)]
        if outside.size:
            more = f" (+{outside.size - 1} more)" if outside.size > 1 else ""
            problems.append(LineProblem(item.line, f"coordinate {float(outside[0]):g} outside [0, 1]{more}"))
        rows.append(item)
    return rows, problems


def parse_label_file(text: str) -> list[tuple[int, np.ndarray]]:
    """Parse YOLO-seg label text strictly into ``(class_id, polygon_norm (K, 2))`` pairs, one per non-blank line.

    Raises ValueError ``"line <n>: <problem>"`` for the first line that does not parse (see ``iter_label_lines``);
    the range of the coordinates is not checked.
    """
    rows: list[tuple[int, np.ndarray]] = []
    for item in iter_label_lines(text):
        if isinstance(item, LineProblem):
            raise ValueError(f"line {item.line}: {item.message}")
        rows.append((item.class_id, item.polygon_norm))
    return rows


def read_label_file(path: Path, *, boxes: bool = False) -> tuple[list[LabelLine], list[LineProblem]]:
    """Read and parse one label file (UTF-8, an optional byte-order mark, as ultralytics reads it).

    Returns what ``parse_label_lines`` returns. An unreadable or non-UTF-8 file gives no rows and one file-level
    problem (``line`` None).
    """
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except OSError as err:
        return [], [LineProblem(None, f"cannot read: {err.strerror or err}")]
    except UnicodeDecodeError:
        return [], [LineProblem(None, "not UTF-8 text")]
    return parse_label_lines(text, boxes=boxes)
