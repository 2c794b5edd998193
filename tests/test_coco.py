"""COCO export: a golden dict, pycocotools reading our files back, the ``export coco`` command, image sizes.

Images are non-square (200 x 100, 800 x 600). pycocotools is the reference reader.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import typer
from PIL import Image
from pycocotools.coco import COCO
from typer.testing import CliRunner

from autoannotate.cli.review import register
from autoannotate.dataset.yolo_seg import format_label_file, format_polygon_line, parse_label_file
from autoannotate.errors import OutputError
from autoannotate.inputs.decode import read_image_bgr
from autoannotate.polygons import PolygonPolicy, mask_iou, mask_to_polygons, polygon_to_mask
from autoannotate.review.labels import read_image_size_wh
from autoannotate.writers.coco import CocoImage, CocoInstance, build_coco, is_ours, polygon_area_px, write_coco

runner = CliRunner()

# pycocotools (2.0.11) calls np.array(copy=False) on numpy 2; not ours to fix
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

NAMES = {0: "person", 1: "bicycle", 2: "car"}


def _app() -> typer.Typer:
    app = typer.Typer()
    register(app)
    return app


def _norm(points_px: list[list[int]], resolution_wh: tuple[int, int]) -> np.ndarray:
    """Pixel-index vertices -> the normalised polygon a label line holds (through the label text, as on disk)."""
    line = format_polygon_line(0, np.array(points_px, dtype=float), resolution_wh)
    return parse_label_file(line)[0][1]


def test_build_coco_golden():
    wh = (200, 100)
    rectangle = _norm([[10, 20], [59, 20], [59, 39], [10, 39]], wh)  # 50 x 20 pixels
    triangle = _norm([[100, 10], [150, 10], [150, 60]], wh)
    images = [
        CocoImage("street/a.jpg", wh, (CocoInstance(0, rectangle), CocoInstance(2, triangle, mask_area_px=321))),
        CocoImage("b.png", (30, 50)),  # a negative: an image entry, no annotation
    ]
    assert build_coco(images, NAMES, version="9.9.9") == {
        "info": {
            "description": "autoannotate 9.9.9: YOLO-seg labels as COCO instances; category_id = YOLO class id + 1; "
            "polygons in pixels, x = x_norm * width",
            "version": "9.9.9",
            "contributor": "autoannotate",
        },
        "licenses": [],
        "images": [
            {"id": 1, "file_name": "street/a.jpg", "width": 200, "height": 100},
            {"id": 2, "file_name": "b.png", "width": 30, "height": 50},
        ],
        "annotations": [
            {
                "id": 1,
                "image_id": 1,
                "category_id": 1,
                # pixel centres: column 10 is x = 10.5 in the continuous frame
                "segmentation": [[10.5, 20.5, 59.5, 20.5, 59.5, 39.5, 10.5, 39.5]],
                "area": 1000,  # the 50 x 20 pixels the label rasterises to
                "bbox": [10.5, 20.5, 49.0, 19.0],
                "iscrowd": 0,
            },
            {
                "id": 2,
                "image_id": 1,
                "category_id": 3,
                "segmentation": [[100.5, 10.5, 150.5, 10.5, 150.5, 60.5]],
                "area": 321,  # given by the caller (the mask's own area)
                "bbox": [100.5, 10.5, 50.0, 50.0],
                "iscrowd": 0,
            },
        ],
        "categories": [
            {"id": 1, "name": "person", "supercategory": "none"},
            {"id": 2, "name": "bicycle", "supercategory": "none"},
            {"id": 3, "name": "car", "supercategory": "none"},
        ],
    }


@pytest.mark.parametrize(
    ("instance", "error"),
    [
        (CocoInstance(5, np.array([[0.1, 0.1], [0.2, 0.1], [0.2, 0.2]])), "class 5 is not in the names"),
        (CocoInstance(0, np.array([[0.1, 0.1], [0.2, 0.1]])), "needs shape"),
        (CocoInstance(0, np.array([[0.1, 0.1], [1.2, 0.1], [0.2, 0.2]])), r"\[0, 1\]"),
    ],
    ids=["unknown-class", "two-points", "out-of-range"],
)
def test_build_coco_rejects(instance, error):
    with pytest.raises(ValueError, match=error):
        build_coco([CocoImage("a.jpg", (20, 10), (instance,))], NAMES)


@pytest.mark.parametrize(
    ("polygon_norm", "resolution_wh"),
    [
        ([[0.1, 0.1], [0.6, 0.2], [0.3, 0.9]], (200, 100)),
        # touching the right and bottom edges: x = W is outside the image, as on the full canvas
        ([[0.5, 0.5], [1.0, 0.5], [1.0, 1.0], [0.5, 1.0]], (37, 23)),
        ([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]], (30, 50)),
        # degenerate: a horizontal line still paints its pixels
        ([[0.1, 0.5], [0.9, 0.5], [0.5, 0.5]], (64, 40)),
    ],
    ids=["triangle", "edge-touching", "whole-image", "line"],
)
def test_polygon_area_px_matches_full_canvas(polygon_norm, resolution_wh):
    polygon_px = np.array(polygon_norm) * np.array(resolution_wh)
    expected = int(polygon_to_mask(polygon_px, resolution_wh).sum())
    assert expected > 0
    assert polygon_area_px(polygon_px, resolution_wh) == expected


def _dataset(root: Path) -> tuple[Path, Path, list[tuple[int, np.ndarray]]]:
    """One 800 x 600 image with an ellipse (class 0) and a box with a hole (class 1); a negative image."""
    width, height = 800, 600
    image = np.full((height, width, 3), 90, dtype=np.uint8)
    masks = [np.zeros((height, width), np.uint8) for _ in range(2)]
    cv2.ellipse(masks[0], (250, 300), (200, 140), 20, 0, 360, 1, -1)
    cv2.rectangle(masks[1], (460, 80), (760, 560), 1, -1)
    cv2.rectangle(masks[1], (560, 250), (640, 330), 0, -1)
    lines = [
        format_polygon_line(cid, mask_to_polygons(m, PolygonPolicy())[0], (width, height))
        for cid, m in enumerate(masks)
    ]
    (root / "images" / "sub").mkdir(parents=True)
    (root / "labels" / "sub").mkdir(parents=True)
    cv2.imwrite(str(root / "images" / "sub" / "scene.png"), image)
    cv2.imwrite(str(root / "images" / "empty.jpg"), image[:100, :300])
    text = format_label_file(lines)
    (root / "labels" / "sub" / "scene.txt").write_text(text)
    (root / "data.yaml").write_text("names:\n  0: person\n  1: car\n")
    return root / "labels", root / "images", parse_label_file(text)


def test_export_coco_reads_back_with_pycocotools(tmp_path):
    labels, images, rows = _dataset(tmp_path)
    result = runner.invoke(_app(), ["export", "coco", str(labels), "--data", str(images)])
    assert result.exit_code == 0, result.output
    path = tmp_path / "annotations.coco.json"  # default: LABELS/../annotations.coco.json
    assert result.stdout == f"wrote {path}: 2 images, 2 annotations, 2 categories (category_id = class id + 1)\n"

    coco = COCO(str(path))
    assert {c["id"]: c["name"] for c in coco.loadCats(coco.getCatIds())} == {1: "person", 2: "car"}
    by_name = {image["file_name"]: image for image in coco.loadImgs(coco.getImgIds())}
    assert set(by_name) == {"empty.jpg", "sub/scene.png"}
    assert (by_name["empty.jpg"]["width"], by_name["empty.jpg"]["height"]) == (300, 100)
    assert coco.getAnnIds(imgIds=[by_name["empty.jpg"]["id"]]) == []
    scene = by_name["sub/scene.png"]
    assert (scene["width"], scene["height"]) == (800, 600)
    anns = coco.loadAnns(coco.getAnnIds(imgIds=[scene["id"]]))
    assert len(anns) == len(rows)  # one annotation per label line
    for ann, (class_id, polygon_norm) in zip(anns, rows, strict=True):
        assert ann["category_id"] == class_id + 1
        ours = polygon_to_mask(polygon_norm * (800, 600), (800, 600))
        theirs = coco.annToMask(ann).astype(bool)
        assert theirs.shape == (600, 800)
        assert theirs.any()
        assert mask_iou(theirs, ours) >= 0.99
        # pycocotools fills the polygon's interior: it is inside our mask and misses only boundary pixels
        assert not (theirs & ~ours).any()
        interior = cv2.erode(ours.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
        assert not (interior & ~theirs).any()
        assert ann["area"] == int(ours.sum())


def test_export_coco_refuses_foreign_file(tmp_path):
    labels, images, _ = _dataset(tmp_path)
    out = tmp_path / "out.json"
    out.write_text('{"info": {"description": "COCO 2017"}}')
    args = ["export", "coco", str(labels), "--data", str(images), "--output", str(out)]
    result = runner.invoke(_app(), args)
    assert result.exit_code == 2
    assert (
        result.stderr
        == f"error: '{out}' exists and was not written by autoannotate; pass --overwrite or another --output\n"
    )
    assert out.read_text() == '{"info": {"description": "COCO 2017"}}'
    assert runner.invoke(_app(), [*args, "--overwrite"]).exit_code == 0
    assert is_ours(out.read_text())
    assert runner.invoke(_app(), args).exit_code == 0  # ours now: replaced without --overwrite


def test_export_coco_skips_bad_entries(tmp_path):
    labels, images, _ = _dataset(tmp_path)
    (labels / "orphan.txt").write_text("0 0.1 0.1 0.2 0.1 0.2 0.2\n")
    cv2.imwrite(str(images / "bad.jpg"), np.zeros((10, 20, 3), np.uint8))
    (labels / "bad.txt").write_text("0 0.1 0.1 0.2 0.1 0.2 0.2\n5 0.1 0.1 0.2 0.1 0.2 0.2\n")
    result = runner.invoke(_app(), ["export", "coco", str(labels), "--data", str(images)])
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        f"warning: {labels / 'bad.txt'}:2: class 5 is not in the names file",
        f"warning: {labels / 'bad.txt'}: skipped, with its image bad.jpg",
        f"warning: {labels / 'orphan.txt'}: no image for this label file; skipped",
        "warning: 2 of 4 entries skipped (listed above)",
    ]
    coco = json.loads((tmp_path / "annotations.coco.json").read_text())
    assert [image["file_name"] for image in coco["images"]] == ["empty.jpg", "sub/scene.png"]


def test_export_coco_needs_names(tmp_path):
    labels, images, _ = _dataset(tmp_path)
    (tmp_path / "data.yaml").unlink()
    result = runner.invoke(_app(), ["export", "coco", str(labels), "--data", str(images)])
    assert result.exit_code == 2
    assert result.stderr == f"error: no data.yaml beside '{labels}'; pass --names data.yaml with the class names\n"


def test_write_coco_refuses_directory(tmp_path):
    with pytest.raises(OutputError, match="is a directory"):
        write_coco(tmp_path, build_coco([], NAMES))


@pytest.mark.parametrize(
    ("suffix", "exif_orientation"),
    [(".jpg", None), (".png", None), (".bmp", None), (".tif", None), (".webp", None), (".jpg", 6), (".jpg", 1)],
    ids=["jpg", "png", "bmp", "tif", "webp", "jpg-rotated-exif", "jpg-identity-exif"],
)
def test_read_image_size_wh_matches_decoder(tmp_path, suffix, exif_orientation):
    path = tmp_path / f"image{suffix}"
    image = Image.new("RGB", (48, 20), (200, 30, 30))
    if exif_orientation is None:
        image.save(path)
    else:
        exif = Image.Exif()
        exif[0x0112] = exif_orientation
        image.save(path, exif=exif)
    decoded = read_image_bgr(path)
    assert read_image_size_wh(path) == (decoded.shape[1], decoded.shape[0])
    if exif_orientation == 6:
        assert read_image_size_wh(path) == (20, 48)  # rotated by a quarter turn, as the decoder gives it


def test_image_size_of_a_non_image_is_an_image_error_even_after_ultralytics_patched_pillow(tmp_path: Path):
    """ultralytics replaces ``PIL.Image.open`` with one that answers an unidentifiable file by installing and
    importing pi-heif; the header reader must not go there (offline: ModuleNotFoundError, a traceback)."""
    import subprocess
    import sys

    bad = tmp_path / "b.jpg"
    bad.write_bytes(b"not an image at all")
    code = (
        "import ultralytics.utils.patches, sys\n"
        "from autoannotate.errors import ImageError\n"
        "from autoannotate.review.labels import read_image_size_wh\n"
        "try:\n"
        f"    read_image_size_wh(__import__('pathlib').Path({str(bad)!r}))\n"
        "except ImageError as err:\n"
        "    print('ImageError', err)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.startswith("ImageError"), result.stderr[-500:]
