"""COCO records and preview samples built from a run's label text held in memory, not read back from disk.

``coco_image_from_label_text`` and ``preview_sample_from_label_text`` must give exactly what ``job.py``'s ``_coco``
and ``_write_previews`` computed by reading each label file back: ``finalize`` gives the same from the text held in
memory as from the file read back, and both equal golden values. Images are non-square (64 wide x 40 high, 30 x 50).
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Any

import cv2
import numpy as np
import pytest

from autoannotate.dataset.yolo_seg import format_label_file, format_polygon_line
from autoannotate.inputs.decode import read_image_bgr
from autoannotate.review.preview import PreviewFiles, PreviewSample, preview_sample_from_label_text
from autoannotate.writers.coco import CocoImage, build_coco, coco_image_from_label_text, format_coco

NAMES = {0: "person", 1: "car", 2: "dog"}


def _row(line: int | None, lines: int, mask_area: int, sam_iou: float) -> dict[str, Any]:
    """A row of instances.jsonl, as the run writes it (``line`` None for an instance that wrote no line)."""
    return {
        "line": line,
        "lines": lines,
        "class_id": 0,
        "det_conf": 0.5,
        "sam_iou": sam_iou,
        "stability": 0.9,
        "mask_area": mask_area,
        "box_iou": 0.8,
        "points": 4,
        "fill_iou": 1.0,
        "dropped": line is None,
    }


def _line(class_id: int, points_px: list[list[int]], resolution_wh: tuple[int, int]) -> str:
    return format_polygon_line(class_id, np.array(points_px, dtype=np.float64), resolution_wh)


# (rel_path, resolution_wh, label text, rows). "street/a.jpg": a split instance (lines 1-2, its first line carries
# the mask area and score), a dropped instance (no line), then a one-line instance (line 3). "b.png": a negative.
# "c.png": a line that no row claims comes first, then an instance on line 2.
CASES = [
    (
        "street/a.jpg",
        (64, 40),
        format_label_file(
            [
                _line(1, [[2, 3], [20, 3], [20, 15]], (64, 40)),
                _line(1, [[30, 20], [40, 20], [40, 30], [30, 30]], (64, 40)),
                _line(2, [[50, 5], [63, 5], [63, 39], [50, 39]], (64, 40)),
            ]
        ),
        [_row(1, 2, 250, 0.91), _row(None, 0, 17, 0.05), _row(3, 1, 480, 0.75)],
    ),
    ("b.png", (30, 50), "", []),
    (
        "c.png",
        (30, 50),
        format_label_file(
            [_line(0, [[0, 0], [29, 0], [29, 49]], (30, 50)), _line(2, [[5, 10], [25, 10], [15, 40]], (30, 50))]
        ),
        [_row(2, 1, 300, 0.66)],
    ),
]


def _images(root: Path) -> dict[str, Path]:
    paths = {}
    for rel_path, (width, height), _text, _rows in CASES:
        path = root / "images" / rel_path
        path.parent.mkdir(parents=True, exist_ok=True)
        image = np.zeros((height, width, 3), dtype=np.uint8)
        image[:, : width // 2] = (40, 120, 200)
        assert cv2.imwrite(str(path.with_suffix(".png")), image)
        paths[rel_path] = path.with_suffix(".png")
    return paths


def test_coco_image_from_label_text_golden():
    rel_path, resolution_wh, text, rows = CASES[0]
    image = coco_image_from_label_text(rel_path, resolution_wh, text, rows)
    assert (image.file_name, image.resolution_wh) == ("street/a.jpg", (64, 40))
    # the split instance's second line has no mask area of its own: build_coco rasterises its polygon
    assert [(i.class_id, i.mask_area_px) for i in image.instances] == [(1, 250), (1, None), (2, 480)]
    # pixel centres, to 6 decimals: (2 + 0.5) / 64 = 0.0390625 rounds half to even
    assert text.splitlines()[0] == "1 0.039062 0.087500 0.320312 0.087500 0.320312 0.387500"
    np.testing.assert_array_equal(
        image.instances[0].polygon_norm, [[0.039062, 0.0875], [0.320312, 0.0875], [0.320312, 0.3875]]
    )
    assert coco_image_from_label_text("b.png", (30, 50), "", []) == CocoImage("b.png", (30, 50), ())


def test_preview_sample_from_label_text_golden():
    rel_path, (width, height), text, rows = CASES[0]
    image_bgr = np.zeros((height, width, 3), dtype=np.uint8)
    sample = preview_sample_from_label_text(PurePosixPath(rel_path), image_bgr, text, rows)
    assert sample.rel_path == PurePosixPath("street/a.jpg") and sample.normalized and sample.image_bgr is image_bgr
    # both lines of the split instance take its score; the dropped instance has no line
    assert [(class_id, score) for class_id, _, score in sample.instances] == [(1, 0.91), (1, 0.91), (2, 0.75)]
    _, _, text_c, rows_c = CASES[2]
    sample = preview_sample_from_label_text(PurePosixPath("c.png"), image_bgr, text_c, rows_c)
    # a line before any instance's first line has no score
    assert [(class_id, score) for class_id, _, score in sample.instances] == [(0, None), (2, 0.66)]


def _same_coco_image(ours: CocoImage, theirs: CocoImage) -> None:
    assert (ours.file_name, ours.resolution_wh, len(ours.instances)) == (
        theirs.file_name,
        theirs.resolution_wh,
        len(theirs.instances),
    )
    for mine, other in zip(ours.instances, theirs.instances, strict=True):
        assert (mine.class_id, mine.mask_area_px) == (other.class_id, other.mask_area_px)
        assert mine.polygon_norm.dtype == other.polygon_norm.dtype
        np.testing.assert_array_equal(mine.polygon_norm, other.polygon_norm)


def _same_sample(ours: PreviewSample, theirs: PreviewSample) -> None:
    assert (ours.rel_path, ours.normalized, len(ours.instances)) == (
        theirs.rel_path,
        theirs.normalized,
        len(theirs.instances),
    )
    np.testing.assert_array_equal(ours.image_bgr, theirs.image_bgr)
    for (class_a, polygon_a, score_a), (class_b, polygon_b, score_b) in zip(
        ours.instances, theirs.instances, strict=True
    ):
        assert (class_a, score_a) == (class_b, score_b)
        np.testing.assert_array_equal(polygon_a, polygon_b)


def _entries(tmp_path: Path, held: bool) -> tuple[Any, list[Any]]:
    """``finalize.DatasetEntry`` for every case, its label file on disk; with ``held``, also its text in memory (as
    this run's labels are), else None (as an earlier run's are, read back from the file)."""
    from autoannotate.dataset.layout import DatasetLayout
    from autoannotate.finalize import DatasetEntry
    from autoannotate.inputs.image import ImageFile

    images = _images(tmp_path)
    out = tmp_path / ("held" if held else "read")
    layout = DatasetLayout(out, tmp_path, out / "labels", "images", "none")
    entries = []
    for rel_path, resolution_wh, text, rows in CASES:
        label_key = f"labels/{PurePosixPath(rel_path).with_suffix('.txt')}"
        (out / label_key).parent.mkdir(parents=True, exist_ok=True)
        (out / label_key).write_text(text, encoding="utf-8")
        item = ImageFile(images[rel_path], PurePosixPath(rel_path))
        entries.append(DatasetEntry(item, label_key, resolution_wh, rows, text if held else None))
    return layout, entries


def test_coco_from_memory_equals_the_label_files_read_back(tmp_path: Path):
    from autoannotate.finalize import coco_text

    layout, entries = _entries(tmp_path, held=True)
    held = coco_text(entries, layout, NAMES)
    layout, entries = _entries(tmp_path, held=False)
    read_back = coco_text(entries, layout, NAMES)
    assert held == read_back
    in_order = sorted(CASES, key=lambda case: case[0])  # images sorted by path
    ours = [coco_image_from_label_text(rel_path, wh, label, rows) for rel_path, wh, label, rows in in_order]
    assert any(i.mask_area_px is None for image in ours for i in image.instances)  # a rasterised area too
    assert format_coco(build_coco(ours, NAMES)) == held


def test_previews_from_memory_equal_the_label_files_read_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    import autoannotate.review.preview as preview
    from autoannotate.finalize import write_preview_files

    seen: list[list[PreviewSample]] = []

    def spy(samples, names, out_dir, **kwargs):
        seen.append(list(samples))
        return PreviewFiles((), out_dir / "not-written.png")

    monkeypatch.setattr(preview, "write_previews", spy)
    for held in (True, False):
        layout, entries = _entries(tmp_path, held)
        assert write_preview_files(entries, layout, NAMES, len(CASES), layout.output_dir / "previews") == {}
    held_samples, read_samples = ({str(s.rel_path): s for s in run} for run in seen)
    assert sorted(held_samples) == sorted(read_samples) == sorted(rel_path for rel_path, *_ in CASES)
    images = _images(tmp_path)
    for rel_path, _wh, label, rows in CASES:
        ours = preview_sample_from_label_text(PurePosixPath(rel_path), read_image_bgr(images[rel_path]), label, rows)
        _same_sample(ours, held_samples[rel_path])
        _same_sample(ours, read_samples[rel_path])
