"""Validate a YOLO-seg labels tree against its images and class names, and summarise it.

Problems found (each with the file, and the line when it is about one line):

- a line that does not parse: non-numeric value, class id not a non-negative integer, odd number of coordinates,
  fewer than 3 points, non-finite coordinate;
- a coordinate outside [0, 1];
- a class id that the names file does not define (when names are known);
- a line repeating an earlier line exactly (ultralytics drops the repeat);
- a label file without an image, an image without a label file, a label file shared by two images.

Ultralytics ignores a whole image when any line of its label file is bad, so one bad line costs the image.

Statistics are over every line that parses, problems or not: instances and images per class, points per polygon,
and polygon area as a fraction of the image, computed with the shoelace formula on the normalised coordinates
(holes joined by zero-width cuts run the other way round and are subtracted; no image is decoded).
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from autoannotate.dataset.yolo_seg import read_label_file
from autoannotate.review.labels import LabelPair

AREA_METHOD = "shoelace on normalised coordinates (fraction of the image)"


@dataclass(frozen=True)
class Problem:
    """One problem: ``path`` is the file it is in or about; ``line`` is 1-based or None for the whole file."""

    path: Path
    line: int | None
    message: str

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}" if self.line is not None else str(self.path)
        return f"{where}: {self.message}"


@dataclass(frozen=True)
class ClassStats:
    """Per class: label lines (instances) and images (label files) with at least one of them."""

    class_id: int
    name: str | None
    instances: int
    images: int


@dataclass(frozen=True)
class Summary:
    """Min, median and max of a sample."""

    min: float
    median: float
    max: float


@dataclass(frozen=True)
class CheckReport:
    """Everything ``check_labels`` found. ``names`` is None when no names file was given or found."""

    labels_root: Path
    images_root: Path
    names_file: Path | None
    problems: tuple[Problem, ...]
    classes: tuple[ClassStats, ...]
    label_files: int
    images: int
    empty_label_files: int
    instances: int
    points_per_polygon: Summary | None
    area_fraction: Summary | None
    names: Mapping[int, str] | None = field(default=None, repr=False)

    @property
    def ok(self) -> bool:
        return not self.problems


def polygon_area_norm(polygon_norm: np.ndarray) -> float:
    """Absolute shoelace area of a ``(K, 2)`` normalised polygon: the fraction of the image it encloses."""
    x, y = polygon_norm[:, 0], polygon_norm[:, 1]
    return float(abs(np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y)) / 2.0)


def check_labels(
    pairs: Iterable[LabelPair],
    labels_root: Path,
    images_root: Path,
    names: Mapping[int, str] | None = None,
    names_file: Path | None = None,
) -> CheckReport:
    """Check every pair (from ``autoannotate.review.labels.iter_pairs``) and gather statistics.

    ``names`` maps class id to name; None skips the class-id check. Problems come in pair order, then line order.
    """
    problems: list[Problem] = []
    instances_of: dict[int, int] = {}
    images_of: dict[int, int] = {}
    points: list[int] = []
    areas: list[float] = []
    label_files = images = empty = 0
    images_per_label: dict[Path, list[Path]] = {}
    for pair in pairs:
        if pair.image_path is not None:
            images += 1
        if pair.label_path is None:
            assert pair.image_path is not None  # a pair has an image or a label, by construction
            problems.append(Problem(pair.image_path, None, "no label file (ultralytics trains it as background)"))
            continue
        if pair.image_path is None:
            problems.append(Problem(pair.label_path, None, "no image for this label file"))
        else:
            images_per_label.setdefault(pair.label_path, []).append(pair.image_path)
            if len(images_per_label[pair.label_path]) > 1:
                continue  # the label file is checked once; the sharing is reported below
        label_files += 1
        rows, line_problems = read_label_file(pair.label_path)
        if not rows and not line_problems:
            empty += 1
        found = [(p.line, p.message) for p in line_problems]
        seen: dict[tuple[int, bytes], int] = {}
        for row in rows:
            # ultralytics compares rows as float32: equal there means dropped there
            key = (row.class_id, row.polygon_norm.astype(np.float32).tobytes())
            if key in seen:
                found.append((row.line, f"duplicate of line {seen[key]} (ultralytics drops it)"))
            else:
                seen[key] = row.line
            if names is not None and row.class_id not in names:
                found.append((row.line, f"class {row.class_id} is not in the names file ({_id_range(names)})"))
        for line, message in sorted(found, key=lambda item: item[0] or 0):
            problems.append(Problem(pair.label_path, line, message))
        for class_id in {row.class_id for row in rows}:
            images_of[class_id] = images_of.get(class_id, 0) + 1
        for row in rows:
            instances_of[row.class_id] = instances_of.get(row.class_id, 0) + 1
            points.append(len(row.polygon_norm))
            areas.append(polygon_area_norm(row.polygon_norm))
    for label_path, image_paths in images_per_label.items():
        if len(image_paths) > 1:
            shared = ", ".join(p.name for p in image_paths)
            problems.append(Problem(label_path, None, f"label file shared by {len(image_paths)} images: {shared}"))
    classes = tuple(
        ClassStats(cid, None if names is None else names.get(cid), instances_of[cid], images_of[cid])
        for cid in sorted(instances_of)
    )
    return CheckReport(
        labels_root=labels_root,
        images_root=images_root,
        names_file=names_file,
        problems=tuple(problems),
        classes=classes,
        label_files=label_files,
        images=images,
        empty_label_files=empty,
        instances=sum(instances_of.values()),
        points_per_polygon=_summary(points),
        area_fraction=_summary(areas),
        names=names,
    )


def _id_range(names: Mapping[int, str]) -> str:
    ids = sorted(names)
    if ids == list(range(len(ids))):
        return f"ids 0-{len(ids) - 1}" if len(ids) > 1 else "id 0"
    return "ids " + ", ".join(str(i) for i in ids)


def _summary(values: list[int] | list[float]) -> Summary | None:
    if not values:
        return None
    return Summary(float(min(values)), float(statistics.median(values)), float(max(values)))


def format_report(report: CheckReport) -> str:
    """Human-readable text: one ``path:line: message`` line per problem, then counts, per-class table, sizes."""
    lines = [str(problem) for problem in report.problems]
    if lines:
        lines.append("")
    lines.append(
        f"{report.label_files} label files, {report.images} images, {report.instances} instances, "
        f"{report.empty_label_files} empty label files (negative samples)"
    )
    if report.names_file is not None:
        lines.append(f"names: {report.names_file}")
    else:
        lines.append("names: no data.yaml given or found beside the labels; class ids not checked (pass --names)")
    if report.classes:
        width = max(len(_class_label(c)) for c in report.classes)
        lines.append(f"{'class':<{width}}  {'instances':>9}  {'images':>6}")
        for stats in report.classes:
            lines.append(f"{_class_label(stats):<{width}}  {stats.instances:>9}  {stats.images:>6}")
    if report.points_per_polygon is not None and report.area_fraction is not None:
        pts, area = report.points_per_polygon, report.area_fraction
        lines.append(f"points per polygon: min {pts.min:g}, median {pts.median:g}, max {pts.max:g}")
        lines.append(
            f"polygon area, fraction of the image (shoelace): "
            f"min {area.min:.6f}, median {area.median:.6f}, max {area.max:.6f}"
        )
    count = len(report.problems)
    lines.append("no problems" if count == 0 else f"{count} problem{'s' if count > 1 else ''}")
    return "\n".join(lines) + "\n"


def _class_label(stats: ClassStats) -> str:
    if stats.name is None:
        return str(stats.class_id)
    return f"{stats.class_id} {stats.name}"


def report_to_dict(report: CheckReport) -> dict[str, Any]:
    """JSON-ready dict of the report (the ``--json`` output)."""

    def summary(value: Summary | None) -> dict[str, float] | None:
        return None if value is None else {"min": value.min, "median": value.median, "max": value.max}

    area = summary(report.area_fraction)
    return {
        "ok": report.ok,
        "labels_root": str(report.labels_root),
        "images_root": str(report.images_root),
        "names_file": None if report.names_file is None else str(report.names_file),
        "problems": [{"path": str(p.path), "line": p.line, "message": p.message} for p in report.problems],
        "counts": {
            "label_files": report.label_files,
            "images": report.images,
            "empty_label_files": report.empty_label_files,
            "instances": report.instances,
        },
        "classes": [
            {"id": c.class_id, "name": c.name, "instances": c.instances, "images": c.images} for c in report.classes
        ],
        "points_per_polygon": summary(report.points_per_polygon),
        "area_fraction": None if area is None else {**area, "method": AREA_METHOD},
    }
