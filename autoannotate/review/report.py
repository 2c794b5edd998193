"""``autoannotate report``: one self-contained HTML page about a run's output dir (``write_report``).

The page shows the run's settings, version, model files and counts (by status, and labels automatic, reviewed or
edited by a person), inline-SVG plots (instances per class; histograms of ``sam_iou``, ``fill_iou`` and ``det_conf``,
each with its count and how many instances lack it) and a gallery of thumbnails with the masks drawn over them,
worst first, filterable by class and score. It makes no network request when opened (see ``report_html``).

Score, what "worst" means: an instance's score is the lower of its ``sam_iou`` (SAM's own estimate of the mask's
IoU) and ``fill_iou`` (how well the written polygons fill the mask), the ones it has (a missing or non-finite figure
is ignored); an instance with neither (a line a person wrote or changed, or a run that recorded neither) has no
score. An image's score is its lowest-scoring instance's. The gallery lists images by score, lowest first; images
without a score (no scored instance, or no instance at all) come after every scored one; ties by image path.

Scale: counts and plots use every image and instance, which costs only the label files ``open_run`` already read.
Images are decoded only for the gallery, which is capped at the worst ``gallery_limit`` images (the page says "worst
1,000 of 10,000 images shown; all instances are in instances.jsonl"): each is downscaled to at most
``THUMB_MAX_SIDE_PX`` on its longer side, JPEG-encoded and inlined as a base64 ``data:`` URI (~8 KB for a 640x480
photo-like scene), several at a time in threads (OpenCV releases the GIL), and its polygons are simplified to the
thumbnail's pixel grid. The page holds the gallery as one JSON array and its script builds 60 tiles at a time (pages),
so the DOM stays small whatever the gallery's size; what grows with the gallery is the file and the time to parse it
(``benchmarks/bench_report.py``: 1,000 images, 11 MB, first page shown ~0.5 s after navigation in headless Chromium).
"""

from __future__ import annotations

import base64
import math
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from autoannotate import __version__
from autoannotate.errors import ConfigError, ImageError, OutputError
from autoannotate.inputs.decode import read_image_bgr
from autoannotate.review.preview import class_color_bgr
from autoannotate.review.report_html import (
    GENERATOR_PREFIX,
    ClassBar,
    GalleryTile,
    Histogram,
    LabelCounts,
    Provenance,
    ReportContent,
    TileInstance,
    render_page,
)
from autoannotate.review.run_view import RunView, ViewImage, ViewInstance
from autoannotate.runtime.cores import available_cores
from autoannotate.writers.atomic import write_text_atomic

__all__ = [
    "DEFAULT_GALLERY_LIMIT",
    "HISTOGRAM_FIGURES",
    "REPORT_NAME",
    "SCORE_DEFINITION",
    "SCORE_FIGURES",
    "THUMB_MAX_SIDE_PX",
    "ReportStats",
    "build_content",
    "image_score",
    "instance_score",
    "is_report",
    "provenance_of",
    "worst_first",
    "write_report",
]

REPORT_NAME = "report.html"
DEFAULT_GALLERY_LIMIT = 1000
THUMB_MAX_SIDE_PX = 256
THUMB_JPEG_QUALITY = 75
#: An outline drawn on a 256 px thumbnail needs no vertex closer than this to the line it simplifies to.
THUMB_TOLERANCE_PX = 0.5
HISTOGRAM_BINS = 20
#: The figures whose minimum is an instance's score, and the figures plotted.
SCORE_FIGURES = ("sam_iou", "fill_iou")
HISTOGRAM_FIGURES = ("sam_iou", "fill_iou", "det_conf")
SCORE_DEFINITION = (
    "Score: an instance's is the lower of its sam_iou (SAM's estimate of its mask's IoU) and fill_iou (how well its "
    "polygons fill that mask), of those it has; an image's is its worst instance's. Worst first: lowest score first; "
    "images without any scored instance (lines a person wrote or changed, or no instances) come last."
)
#: How much of an existing file is read to recognise a report of ours (its generator tag is in the first 200 bytes).
SNIFF_BYTES = 4096
_GENERATOR_TAG = re.compile(rb'<meta name="generator" content="' + GENERATOR_PREFIX.encode() + rb'[ "]')
_MAX_THUMB_WORKERS = 8


@dataclass(frozen=True)
class ReportStats:
    """What ``write_report`` wrote: ``images``/``instances`` in the dataset, ``gallery_images`` shown in the
    gallery, ``bytes_written`` (the page's size), ``seconds`` it took."""

    images: int
    instances: int
    gallery_images: int
    bytes_written: int
    seconds: float


def figure_value(figures: Mapping[str, Any] | None, key: str) -> float | None:
    """``figures[key]`` as a finite float, or None when absent, null, not a number or not finite."""
    if figures is None:
        return None
    value = figures.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def instance_score(instance: ViewInstance) -> float | None:
    """The lower of the instance's ``sam_iou`` and ``fill_iou`` (of those it has), or None with neither."""
    values = [v for v in (figure_value(instance.figures, k) for k in SCORE_FIGURES) if v is not None]
    return min(values) if values else None


def image_score(image: ViewImage) -> float | None:
    """The lowest score of the image's instances, or None when none has a score."""
    scores = [s for s in (instance_score(i) for i in image.instances) if s is not None]
    return min(scores) if scores else None


def worst_first(images: Iterable[ViewImage]) -> list[ViewImage]:
    """``images`` by ``image_score``, lowest first; images without a score after all scored ones; ties by path."""
    keyed = [(image_score(image), image) for image in images]
    keyed.sort(key=lambda item: (item[0] is None, item[0] if item[0] is not None else 0.0, item[1].image_rel))
    return [image for _score, image in keyed]


def provenance_of(image: ViewImage) -> Provenance:
    """``reviewed`` when ``autoannotate import`` marked it (changed by hand since or not: runs keep it as
    ``reviewed``, and ``check`` counts it so), else ``edited`` when a person changed it since autoannotate wrote it,
    else ``automatic``."""
    if image.reviewed is not None:
        return "reviewed"
    return "edited" if image.edited else "automatic"


def is_report(path: Path) -> bool:
    """True when ``path`` is a regular file whose first ``SNIFF_BYTES`` hold our generator tag (a report we wrote)."""
    if not path.is_file():  # a FIFO or device would block or never end
        return False
    try:
        with open(path, "rb") as handle:
            head = handle.read(SNIFF_BYTES)
    except OSError:
        return False
    return _GENERATOR_TAG.search(head) is not None


def write_report(view: RunView, path: Path, *, gallery_limit: int = DEFAULT_GALLERY_LIMIT) -> ReportStats:
    """Write the report of ``view`` to ``path`` (normally ``OUT/report.html``) atomically.

    ``gallery_limit``: how many images (the worst) the gallery shows, 0 for none. Raises ConfigError for a negative
    limit, OutputError when ``path`` is a directory or an existing file that is not a report of ours (left as it
    is), or when it cannot be written.
    """
    started = time.perf_counter()
    path = Path(path)
    if gallery_limit < 0:
        raise ConfigError(f"--gallery must be 0 or more (the number of images in the gallery); got {gallery_limit}")
    if path.is_dir():
        raise OutputError(f"{str(path)!r} is a directory; pass a file name to --output")
    if (path.exists() or path.is_symlink()) and not is_report(path):
        raise OutputError(
            f"{str(path)!r} exists and is not an autoannotate report; pass --output elsewhere or delete it"
        )
    content = build_content(view, gallery_limit=gallery_limit)
    write_text_atomic(path, render_page(content))
    return ReportStats(
        images=content.counts.images,
        instances=content.counts.instances,
        gallery_images=len(content.gallery),
        bytes_written=path.stat().st_size,
        seconds=time.perf_counter() - started,
    )


def build_content(
    view: RunView, *, gallery_limit: int = DEFAULT_GALLERY_LIMIT, written_at: str | None = None
) -> ReportContent:
    """Everything the page shows (``report_html.ReportContent``); decodes the gallery's images only."""
    images = view.images
    chosen = worst_first(images)[:gallery_limit]
    gallery = _gallery_tiles(chosen)
    class_ids = {i.class_id for image in images for i in image.instances}
    return ReportContent(
        output_dir=str(view.output_dir),
        generator=f"{GENERATOR_PREFIX} {__version__}",
        written_at=written_at or datetime.now(UTC).isoformat(timespec="seconds"),
        model_version=view.model_version,
        manifest=view.manifest,
        counts=_label_counts(view),
        classes=_class_bars(images, view.names),
        histograms=tuple(_histogram(images, figure) for figure in HISTOGRAM_FIGURES),
        gallery=gallery,
        names=dict(view.names),
        class_colors={class_id: _hex(class_color_bgr(class_id)) for class_id in sorted(class_ids)},
        score_definition=SCORE_DEFINITION,
    )


def _label_counts(view: RunView) -> LabelCounts:
    kinds = [provenance_of(image) for image in view.images]
    return LabelCounts(
        images=len(view.images),
        instances=sum(len(image.instances) for image in view.images),
        automatic=kinds.count("automatic"),
        reviewed=kinds.count("reviewed"),
        edited=kinds.count("edited"),
        problem_labels=sum(1 for image in view.images if image.problems),
        orphans=len(view.orphans),
    )


def _class_bars(images: Sequence[ViewImage], names: Mapping[int, str]) -> tuple[ClassBar, ...]:
    instances: dict[int, int] = {}
    with_class: dict[int, int] = {}
    for image in images:
        for instance in image.instances:
            instances[instance.class_id] = instances.get(instance.class_id, 0) + 1
        for class_id in {i.class_id for i in image.instances}:
            with_class[class_id] = with_class.get(class_id, 0) + 1
    order = sorted(instances, key=lambda k: (-instances[k], k))
    return tuple(
        ClassBar(
            k, names.get(k, f"class {k} (not in data.yaml)"), _hex(class_color_bgr(k)), instances[k], with_class[k]
        )
        for k in order
    )


def _histogram(images: Sequence[ViewImage], figure: str, lo: float = 0.0, hi: float = 1.0) -> Histogram:
    values: list[float] = []
    missing_person = missing_auto = 0
    for image in images:
        for instance in image.instances:
            if instance.figures is None:
                missing_person += 1
                continue
            value = figure_value(instance.figures, figure)
            if value is None:
                missing_auto += 1
            else:
                values.append(value)
    array = np.asarray(values, dtype=np.float64)
    below, above = int((array < lo).sum()), int((array > hi).sum())
    counts, _edges = np.histogram(np.clip(array, lo, hi), bins=HISTOGRAM_BINS, range=(lo, hi))
    return Histogram(figure, tuple(int(c) for c in counts), lo, hi, below, above, missing_person, missing_auto)


def _gallery_tiles(images: Sequence[ViewImage]) -> tuple[GalleryTile, ...]:
    """One tile per image, thumbnails made in threads (decoding and resizing release the GIL), in order."""
    if not images:
        return ()
    workers = max(1, min(_MAX_THUMB_WORKERS, available_cores(), len(images)))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return tuple(pool.map(_tile, images))


def _tile(image: ViewImage) -> GalleryTile:
    try:
        thumb_bgr, image_wh = _thumbnail_bgr(image.image_path)
        data_uri = _jpeg_data_uri(thumb_bgr)
    except ImageError as err:
        instances = tuple(TileInstance(i.class_id, _rounded(instance_score(i)), ()) for i in image.instances)
        return _make_tile(image, instances, image_wh=None, thumb_wh=None, data_uri=None, error=str(err))
    thumb_wh = (int(thumb_bgr.shape[1]), int(thumb_bgr.shape[0]))
    instances = tuple(
        TileInstance(i.class_id, _rounded(instance_score(i)), _thumb_points(i.polygon_norm, thumb_wh))
        for i in image.instances
    )
    return _make_tile(image, instances, image_wh=image_wh, thumb_wh=thumb_wh, data_uri=data_uri, error=None)


def _make_tile(
    image: ViewImage,
    instances: tuple[TileInstance, ...],
    *,
    image_wh: tuple[int, int] | None,
    thumb_wh: tuple[int, int] | None,
    data_uri: str | None,
    error: str | None,
) -> GalleryTile:
    return GalleryTile(
        image_rel=image.image_rel.as_posix(),
        score=_rounded(image_score(image)),
        provenance=provenance_of(image),
        instances=instances,
        problems=len(image.problems),
        image_wh=image_wh,
        thumb_wh=thumb_wh,
        data_uri=data_uri,
        error=error,
    )


def _thumbnail_bgr(image_path: Path) -> tuple[np.ndarray, tuple[int, int]]:
    """The image decoded as training sees it (EXIF applied: the frame the polygons are normalised in), downscaled
    to at most ``THUMB_MAX_SIDE_PX`` on its longer side; ``(H', W', 3)`` uint8 BGR and the decoded ``(W, H)``."""
    image_bgr = read_image_bgr(image_path)
    height, width = image_bgr.shape[:2]
    scale = THUMB_MAX_SIDE_PX / max(height, width)
    if scale >= 1.0:
        return image_bgr, (width, height)
    thumb_wh = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(image_bgr, thumb_wh, interpolation=cv2.INTER_AREA), (width, height)


def _jpeg_data_uri(image_bgr: np.ndarray) -> str:
    ok, encoded = cv2.imencode(".jpg", image_bgr, [cv2.IMWRITE_JPEG_QUALITY, THUMB_JPEG_QUALITY])
    if not ok:
        raise ImageError("cannot encode its thumbnail as JPEG")
    return "data:image/jpeg;base64," + base64.b64encode(encoded.tobytes()).decode("ascii")


def _thumb_points(polygon_norm: np.ndarray, thumb_wh: tuple[int, int]) -> tuple[int, ...]:
    """``polygon_norm`` (K, 2) in [0, 1] as flat integer ``x, y`` thumbnail pixels, simplified to what a thumbnail
    can show (a real mask's polygon has hundreds to thousands of vertices; a thumbnail needs tens)."""
    points: np.ndarray = np.asarray(polygon_norm, np.float32).reshape(-1, 2) * np.asarray(thumb_wh, np.float32)
    if len(points) > 3:
        points = cv2.approxPolyDP(points.reshape(-1, 1, 2), THUMB_TOLERANCE_PX, True).reshape(-1, 2)
    pixels = np.rint(points).astype(np.int64)
    if len(pixels) > 1:  # consecutive duplicates left by rounding
        keep = np.ones(len(pixels), dtype=bool)
        keep[1:] = np.any(pixels[1:] != pixels[:-1], axis=1)
        pixels = pixels[keep]
    return tuple(int(v) for v in pixels.ravel())


def _rounded(score: float | None) -> float | None:
    return None if score is None else round(score, 4)


def _hex(color_bgr: tuple[int, int, int]) -> str:
    blue, green, red = color_bgr
    return f"#{red:02x}{green:02x}{blue:02x}"
