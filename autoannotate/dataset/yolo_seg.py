"""YOLO segmentation label lines: ``<class> x1 y1 x2 y2 ...`` with coordinates normalised to [0, 1].

Pure formatting and parsing; no file access.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np

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


def iter_label_rows(text: str) -> Iterator[tuple[int, int, list[float]]]:
    """``(line number, class id, the numbers after it)`` for each non-blank line of a YOLO label file.

    Raises ValueError naming the line for a non-numeric value or a class id that is not a non-negative integer.
    """
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        try:
            values = [float(v) for v in fields]
        except ValueError:
            raise ValueError(f"line {number}: non-numeric value") from None
        if not values[0].is_integer() or values[0] < 0:
            raise ValueError(f"line {number}: class id {fields[0]!r} is not a non-negative integer")
        yield number, int(values[0]), values[1:]


def parse_label_file(text: str) -> list[tuple[int, np.ndarray]]:
    """Parse YOLO-seg label text into ``(class_id, polygon_norm (K, 2))`` pairs. Raises ValueError naming the line."""
    rows: list[tuple[int, np.ndarray]] = []
    for number, class_id, coords in iter_label_rows(text):
        if len(coords) % 2 or len(coords) < 6:
            raise ValueError(f"line {number}: expected >= 3 x,y pairs, got {len(coords)} numbers")
        rows.append((class_id, np.array(coords, dtype=np.float64).reshape(-1, 2)))
    return rows
