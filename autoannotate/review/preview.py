"""Preview images: instance masks drawn over their images, and a contact sheet of several previews.

Pure drawing functions (``render_overlay``, ``contact_sheet``) plus ``write_previews``, which writes PNG files
atomically. Polygons are rasterised as ultralytics trains on them (``autoannotate.polygons.polygon_to_mask``), so a
preview shows the pixels a model will be trained on, not an idealised outline.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import cv2
import numpy as np

from autoannotate.dataset.yolo_seg import LineProblem, parse_label_lines, read_label_file
from autoannotate.errors import OutputError
from autoannotate.inputs.decode import read_image_bgr
from autoannotate.polygons import polygon_to_local_mask
from autoannotate.review.labels import LabelPair
from autoannotate.writers.atomic import write_bytes_atomic

__all__ = [
    "ALPHA",
    "CONTACT_SHEET_NAME",
    "OverlayInstance",
    "PreviewFiles",
    "PreviewSample",
    "class_color_bgr",
    "contact_sheet",
    "load_sample",
    "preview_sample_from_label_text",
    "render_overlay",
    "sample_pairs",
    "write_previews",
]

ALPHA = 0.45
CONTACT_SHEET_NAME = "contact_sheet.png"

# (class_id, polygon (K, 2), score or None). The polygon is in pixels of the image (the frame polygon_to_mask
# takes, truncated to int: a label's polygon_norm * (W, H) is such a polygon) or, with normalized=True,
# normalised to [0, 1].
OverlayInstance = tuple[int, np.ndarray, float | None]

# Ultralytics' default palette (as RGB hex), so that colours look familiar; stored here as BGR.
_PALETTE_HEX = [
    "FF3838",
    "FF9D97",
    "FF701F",
    "FFB21D",
    "CFD231",
    "48F90A",
    "92CC17",
    "3DDB86",
    "1A9334",
    "00D4BB",
    "2C99A8",
    "00C2FF",
    "344593",
    "6473FF",
    "0018EC",
    "8438FF",
    "520085",
    "CB38FF",
    "FF95C8",
    "FF37C7",
]
_PALETTE_BGR = tuple((int(h[4:6], 16), int(h[2:4], 16), int(h[0:2], 16)) for h in _PALETTE_HEX)
_FONT = cv2.FONT_HERSHEY_SIMPLEX


def class_color_bgr(class_id: int) -> tuple[int, int, int]:
    """The colour of a class: a fixed palette of 20, cycled by class id."""
    return _PALETTE_BGR[int(class_id) % len(_PALETTE_BGR)]


@dataclass(frozen=True)
class _TextStyle:
    scale: float
    thickness: int
    line_px: int  # outline thickness
    pad: int


def _style_for(resolution_wh: tuple[int, int]) -> _TextStyle:
    """Font and line sizes that stay legible from thumbnails to 4K: text ~2.5% of the shorter side, >= ~8 px."""
    short = min(resolution_wh)
    scale = min(max(0.025 * short / 22.0, 0.35), 4.0)  # Hershey simplex is ~22 px tall at scale 1
    return _TextStyle(scale, max(1, round(scale * 1.6)), max(1, round(short / 400)), max(1, round(scale * 4)))


def render_overlay(
    image_bgr: np.ndarray,
    instances: Sequence[OverlayInstance],
    names: Mapping[int, str],
    *,
    normalized: bool = False,
    alpha: float = ALPHA,
) -> np.ndarray:
    """Draw instances over an image.

    Args:
        image_bgr: ``(H, W, 3)`` uint8 BGR; not modified.
        instances: ``(class_id, polygon, score)`` each; ``polygon`` float ``(K, 2)`` x, y in pixels (as
            ``polygon_to_mask`` takes them) or, with ``normalized``, in [0, 1]; ``score`` None for labels.
        names: class id -> name; a missing id is shown as its number.
        normalized: polygons are normalised (label coordinates) rather than pixels.
        alpha: opacity of the mask fill.

    Returns:
        A new ``(H, W, 3)`` uint8 BGR image: each mask filled with its class colour at ``alpha``, its outline in
        the full colour, and a label ``name score`` on a solid tag just above the mask's first pixel in raster
        order (its top row, leftmost), drawn after all masks so that no mask covers a label. Text and line sizes
        scale with the image.
    """
    if image_bgr.ndim != 3 or image_bgr.shape[2] != 3 or image_bgr.dtype != np.uint8:
        raise ValueError(f"image_bgr must be (H, W, 3) uint8; got {image_bgr.shape} {image_bgr.dtype}")
    height, width = image_bgr.shape[:2]
    resolution_wh = (width, height)
    style = _style_for(resolution_wh)
    out = image_bgr.copy()
    scale = np.array([width, height], dtype=np.float64) if normalized else np.ones(2)
    tags: list[tuple[str, tuple[int, int, int], int, int]] = []
    for class_id, polygon, score in instances:
        polygon_px = np.asarray(polygon, dtype=np.float64).reshape(-1, 2) * scale
        if len(polygon_px) == 0 or not np.isfinite(polygon_px).all():
            continue
        color = class_color_bgr(class_id)
        drawn = polygon_to_local_mask(polygon_px, resolution_wh)
        if drawn is not None and drawn[2].any():
            x0, y0, mask = drawn
            region = out[y0 : y0 + mask.shape[0], x0 : x0 + mask.shape[1]]
            blended = region.astype(np.float32) * (1.0 - alpha) + np.array(color, dtype=np.float32) * alpha
            region[mask] = np.round(blended[mask]).astype(np.uint8)
            # The outline of the pixels (not of the polygon), so merge cuts and holes show as they train.
            contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
            cv2.drawContours(out, contours, -1, color, style.line_px, cv2.LINE_AA, offset=(x0, y0))
            top = int(np.flatnonzero(mask.any(axis=1))[0])
            anchor = (x0 + int(np.flatnonzero(mask[top])[0]), y0 + top)  # the object's first pixel, raster order
        else:
            anchor = (
                int(np.clip(polygon_px[:, 0].min(), 0, width - 1)),
                int(np.clip(polygon_px[:, 1].min(), 0, height - 1)),
            )
        text = names.get(int(class_id), str(int(class_id)))
        if score is not None:
            text = f"{text} {score:.2f}"
        tags.append((_ascii(text), color, *anchor))
    for text, color, x, y in tags:
        _draw_tag(out, text, color, (x, y), style)
    return out


def _draw_tag(
    image: np.ndarray, text: str, color: tuple[int, int, int], anchor_xy: tuple[int, int], style: _TextStyle
) -> None:
    """A solid tag with text, its bottom-left at the anchor (or below it at the top edge), kept inside the image."""
    height, width = image.shape[:2]
    (text_w, text_h), baseline = cv2.getTextSize(text, _FONT, style.scale, style.thickness)
    box_w, box_h = text_w + 2 * style.pad, text_h + baseline + 2 * style.pad
    x = min(max(anchor_xy[0], 0), max(width - box_w, 0))
    y_top = anchor_xy[1] - box_h if anchor_xy[1] - box_h >= 0 else anchor_xy[1]
    y_top = min(max(y_top, 0), max(height - box_h, 0))
    cv2.rectangle(image, (x, y_top), (x + box_w - 1, y_top + box_h - 1), color, thickness=cv2.FILLED)
    luminance = 0.114 * color[0] + 0.587 * color[1] + 0.299 * color[2]
    ink = (0, 0, 0) if luminance > 150 else (255, 255, 255)
    origin = (x + style.pad, y_top + style.pad + text_h)
    cv2.putText(image, text, origin, _FONT, style.scale, ink, style.thickness, cv2.LINE_AA)


def _ascii(text: str) -> str:
    """OpenCV's Hershey fonts draw ASCII only: anything else becomes '?'."""
    return "".join(ch if 32 <= ord(ch) < 127 else "?" for ch in text)


def _caption_height(tile_h: int) -> int:
    return max(14, round(tile_h * 0.09))


def contact_sheet(
    images: Sequence[np.ndarray],
    tile_wh: tuple[int, int] = (320, 240),
    columns: int = 4,
    captions: Sequence[str] | None = None,
) -> np.ndarray:
    """Tile images into one sheet.

    Args:
        images: ``(H, W, 3)`` uint8 BGR each, any sizes.
        tile_wh: ``(width, height)`` of a tile; each image is scaled to fit it, aspect kept, centred on a dark
            background (letterboxed).
        columns: tiles per row (fewer when there are fewer images).
        captions: one per image (e.g. file names), drawn in a strip under each tile; long ones keep their end.

    Returns:
        ``(rows * (tile_h + caption_h), min(columns, n) * tile_w, 3)`` uint8 BGR, where ``rows = ceil(n / columns)``
        and ``caption_h`` is ``max(14, round(0.09 * tile_h))`` with captions, else 0.
    """
    if not images:
        raise ValueError("contact_sheet needs at least one image")
    if columns < 1:
        raise ValueError(f"columns must be >= 1; got {columns}")
    if captions is not None and len(captions) != len(images):
        raise ValueError(f"got {len(captions)} captions for {len(images)} images")
    tile_w, tile_h = tile_wh
    cols = min(columns, len(images))
    rows = math.ceil(len(images) / cols)
    caption_h = _caption_height(tile_h) if captions is not None else 0
    cell_h = tile_h + caption_h
    sheet = np.full((rows * cell_h, cols * tile_w, 3), 32, dtype=np.uint8)
    for index, image in enumerate(images):
        top, left = (index // cols) * cell_h, (index % cols) * tile_w
        sheet[top : top + tile_h, left : left + tile_w] = _letterbox(image, tile_wh)
        if captions is not None:
            _draw_caption(sheet[top + tile_h : top + cell_h, left : left + tile_w], captions[index])
    return sheet


def _letterbox(image: np.ndarray, tile_wh: tuple[int, int]) -> np.ndarray:
    tile_w, tile_h = tile_wh
    height, width = image.shape[:2]
    scale = min(tile_w / width, tile_h / height)
    new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    resized = cv2.resize(image, (new_w, new_h), interpolation=interpolation)
    tile = np.full((tile_h, tile_w, 3), 48, dtype=np.uint8)
    y0, x0 = (tile_h - new_h) // 2, (tile_w - new_w) // 2
    tile[y0 : y0 + new_h, x0 : x0 + new_w] = resized
    return tile


def _draw_caption(strip: np.ndarray, caption: str) -> None:
    """Caption text fitted into ``strip`` (modified in place); too long ones are cut at the start with '...'."""
    height, width = strip.shape[:2]
    scale = (height * 0.6) / 22.0
    text = _ascii(caption)
    fitted = text
    while fitted and cv2.getTextSize(fitted, _FONT, scale, 1)[0][0] > width - 6:
        text = text[1:]
        fitted = "..." + text
    (_, text_h), _baseline = cv2.getTextSize(fitted, _FONT, scale, 1)
    cv2.putText(strip, fitted, (3, (height + text_h) // 2), _FONT, scale, (235, 235, 235), 1, cv2.LINE_AA)


@dataclass(frozen=True)
class PreviewSample:
    """One image to preview: its path relative to the image root (names the output file), the decoded image
    (``(H, W, 3)`` uint8 BGR) and its instances (see ``render_overlay``; ``normalized`` says their frame)."""

    rel_path: PurePosixPath
    image_bgr: np.ndarray
    instances: tuple[OverlayInstance, ...]
    normalized: bool = True


@dataclass(frozen=True)
class PreviewFiles:
    """What ``write_previews`` wrote: one overlay per sample, in sample order, and the contact sheet."""

    overlays: tuple[Path, ...]
    contact_sheet: Path


def overlay_path(out_dir: Path, rel_path: PurePosixPath) -> Path:
    """``a/b.jpg`` -> ``<out_dir>/a/b.jpg.png``: the original name kept, so ``b.jpg`` and ``b.png`` never collide,
    and no overlay can be named ``contact_sheet.png`` at the top."""
    return out_dir / rel_path.parent / f"{rel_path.name}.png"


def write_previews(
    samples: Sequence[PreviewSample],
    names: Mapping[int, str],
    out_dir: Path,
    *,
    tile_wh: tuple[int, int] = (320, 240),
    columns: int = 4,
) -> PreviewFiles:
    """Write one overlay PNG per sample (see ``overlay_path``) and ``<out_dir>/contact_sheet.png`` of them all.

    Files are written atomically. Raises OutputError when a file cannot be written, ValueError for no samples.
    """
    if not samples:
        raise ValueError("write_previews needs at least one sample")
    overlays: list[np.ndarray] = []
    paths: list[Path] = []
    for sample in samples:
        overlay = render_overlay(sample.image_bgr, sample.instances, names, normalized=sample.normalized)
        path = overlay_path(out_dir, sample.rel_path)
        _write_png(path, overlay)
        overlays.append(overlay)
        paths.append(path)
    sheet = contact_sheet(overlays, tile_wh, columns, captions=[s.rel_path.as_posix() for s in samples])
    sheet_path = out_dir / CONTACT_SHEET_NAME
    _write_png(sheet_path, sheet)
    return PreviewFiles(tuple(paths), sheet_path)


def _write_png(path: Path, image_bgr: np.ndarray) -> None:
    ok, encoded = cv2.imencode(".png", image_bgr)
    if not ok:
        raise OutputError(f"cannot encode {str(path)!r} as PNG")
    write_bytes_atomic(path, encoded.tobytes())


def preview_sample_from_label_text(
    rel_path: PurePosixPath, image_bgr: np.ndarray, label_text: str, rows: Iterable[Mapping[str, Any]] = ()
) -> PreviewSample:
    """The preview of one image of a run, from its label text held in memory.

    Args:
        rel_path: the image's path relative to the image root (names the overlay file).
        image_bgr: the decoded image, ``(H, W, 3)`` uint8 BGR, the frame the label is normalised in.
        label_text: the YOLO-seg label file's text (``dataset.yolo_seg.format_label_file``).
        rows: the image's rows of ``instances.jsonl``: ``line`` (1-based first line of the instance, falsy when it
            wrote none) and ``sam_iou`` are read.

    Returns:
        A sample with one normalised instance per label line that parses, in line order, scored with the
        ``sam_iou`` of the instance it belongs to: ``split`` writes several lines per instance, so a line takes the
        score of the nearest instance whose first line is at or before it (None before any).
    """
    score_by_line = {row["line"]: row["sam_iou"] for row in rows if row.get("line")}
    first_lines = sorted(score_by_line)
    lines, _ = parse_label_lines(label_text, boxes=True)
    instances: list[OverlayInstance] = []
    for line in lines:
        owner = max((n for n in first_lines if n <= line.line), default=None)
        instances.append((line.class_id, line.polygon_norm, score_by_line.get(owner) if owner else None))
    return PreviewSample(rel_path, image_bgr, tuple(instances), normalized=True)


def sample_pairs(pairs: Sequence[LabelPair], n: int, seed: int) -> list[LabelPair]:
    """Up to ``n`` pairs that have an image, drawn without replacement by ``seed`` from them sorted by image path,
    returned in that order: the same files, seed and n always give the same sample."""
    with_images = sorted((p for p in pairs if p.image_path is not None), key=lambda p: str(p.image_rel))
    if n >= len(with_images):
        return with_images
    chosen = sorted(random.Random(seed).sample(range(len(with_images)), n))
    return [with_images[i] for i in chosen]


def load_sample(pair: LabelPair) -> tuple[PreviewSample, list[LineProblem]]:
    """Decode a pair's image and read its label lines (normalised polygons, no scores).

    Lines that do not parse are left out and returned as problems. Raises ImageError for an undecodable image.
    """
    if pair.image_path is None or pair.image_rel is None:
        raise ValueError(f"{pair.rel_stem}: a preview needs an image")
    image = read_image_bgr(pair.image_path)
    rows, problems = read_label_file(pair.label_path, boxes=True) if pair.label_path is not None else ([], [])
    instances = tuple((row.class_id, row.polygon_norm, None) for row in rows)
    return PreviewSample(pair.image_rel, image, instances, normalized=True), problems
