"""CVAT exchange (``autoannotate.exchange.cvat``): the zips CVAT imports as "Ultralytics YOLO Segmentation 1.0" and
as "COCO 1.0", and the reader of CVAT's YOLO export after people corrected it.

Oracles: Ultralytics' own label reader (the format's definition; always installed) reads every YOLO zip line as one
segment; CVAT's Datumaro fork (cvat-ai/datumaro: the reader and writer CVAT runs for this format) does the same and
its exporter's output reads back, where that fork is installed (PyPI's ``datumaro`` has no YOLO segmentation
format, so those tests skip there). PyPI's ``datumaro`` reads the COCO zip as one polygon per label line: skipped
where it is not installed, failed on CI, which installs it (see ``DATUMARO_INSTALL``).
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest
from helpers import fake_run_dir

from autoannotate.dataset.yolo_seg import format_polygon_line, format_unit_values, parse_label_lines
from autoannotate.errors import InputError
from autoannotate.exchange import cvat
from autoannotate.exchange.apply import label_text
from autoannotate.polygons import PolygonPolicy, mask_to_polygons
from autoannotate.review.run_view import RunView, open_run

NAMES = {0: "person", 1: "traffic light"}
SIZES_WH = {"a.jpg": (200, 100), "sub/b.png": (90, 160), "neg.jpg": (64, 48)}
PERSON_A = "0 0.102500 0.105000 0.502500 0.105000 0.502500 0.505000"
LIGHT_A = "1 0.602500 0.205000 0.902500 0.205000 0.752500 0.905000"
LIGHT_B = "1 0.100000 0.200000 0.300000 0.200000 0.300000 0.400000 0.100000 0.400000"
# what CI runs (README's test command): PyPI's datumaro without its pins of opencv-python-headless, pandas and pillow,
# which would replace the project's own versions; these are the modules it needs to read COCO
DATUMARO_INSTALL = (
    "pip install --no-deps datumaro==1.13.12 orjson json-stream json-stream-rs-tokenizer shapely imagesize lxml"
    " defusedxml"
)


def _holed_line() -> str:
    """A "merge" polygon of a mask with a hole (outer ring and hole joined by a zero-width cut), as a run writes it
    for a 90 x 160 image."""
    mask = np.zeros((160, 90), np.uint8)
    cv2.rectangle(mask, (10, 60), (80, 150), 1, -1)
    cv2.rectangle(mask, (30, 90), (60, 120), 0, -1)
    (polygon,) = mask_to_polygons(mask.astype(bool), PolygonPolicy())
    line = format_polygon_line(0, polygon, (90, 160))
    points = parse_label_lines(line)[0][0].polygon_norm
    assert len({tuple(p) for p in points.tolist()}) < len(points)  # the cut repeats vertices
    return line


def _dataset(tmp_path: Path) -> RunView:
    """Non-square images, a subdirectory, a holed polygon and an empty label (a negative)."""
    labels = {
        "a.jpg": f"{PERSON_A}\n{LIGHT_A}\n",
        "sub/b.png": f"{_holed_line()}\n{LIGHT_B}\n",
        "neg.jpg": "",
    }
    return open_run(fake_run_dir(tmp_path / "out", labels, NAMES, sizes_wh=SIZES_WH))


def _members(data: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return {info.filename: archive.read(info) for info in archive.infolist()}


def _zip(path: Path, members: dict[str, bytes | str]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


# ---------------------------------------------------------------------------------------------------------------
# export


def test_zip_members_data_yaml_and_lines_are_golden_and_deterministic(tmp_path: Path):
    view = _dataset(tmp_path)
    data = cvat.build_zip(view)
    members = _members(data)
    assert list(members) == [
        "data.yaml",
        "labels/train/a.txt",
        "labels/train/neg.txt",
        "labels/train/sub/b.txt",
        "train.txt",
    ]
    assert members["data.yaml"].decode() == (
        "# autoannotate labels for CVAT: Actions > Upload annotations, format 'Ultralytics YOLO Segmentation 1.0'\n"
        "names:\n"
        "  0: person\n"
        "  1: traffic light\n"
        "train: train.txt\n"
    )
    assert members["train.txt"].decode() == "images/train/a.jpg\nimages/train/neg.jpg\nimages/train/sub/b.png\n"
    # every label line travels as the dataset has it; a negative is an empty file
    for key in ("a", "neg", "sub/b"):
        assert members[f"labels/train/{key}.txt"] == (view.output_dir / f"labels/{key}.txt").read_bytes()
    # the same dataset gives the same bytes, whatever the files' times
    for path in (view.output_dir / "labels").rglob("*.txt"):
        os.utime(path, (1e9, 1e9))
    assert cvat.build_zip(open_run(view.output_dir)) == data
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        assert {info.date_time for info in archive.infolist()} == {(1980, 1, 1, 0, 0, 0)}


def test_with_images_adds_the_images_under_images_train(tmp_path: Path):
    view = _dataset(tmp_path)
    members = _members(cvat.build_zip(view, with_images=True))
    for image in view.images:
        below = image.image_rel.relative_to("images").as_posix()
        assert members[f"images/train/{below}"] == image.image_path.read_bytes()
    assert len(members) == 5 + len(view.images)


def test_coco_zip_members_and_json_are_golden_and_deterministic(tmp_path: Path):
    view = _dataset(tmp_path)
    data = cvat.build_coco_zip(view)
    members = _members(data)
    # images/ is a folder: PyPI Datumaro's COCO reader refuses a dataset without one
    assert list(members) == ["annotations/instances_default.json", "images/"]
    coco = json.loads(members["annotations/instances_default.json"])
    # file_name is the path below OUT/images (CVAT matches frames by it), sizes are the images' own, not square
    assert [(i["id"], i["file_name"], i["width"], i["height"]) for i in coco["images"]] == [
        (1, "a.jpg", 200, 100),
        (2, "neg.jpg", 64, 48),
        (3, "sub/b.png", 90, 160),
    ]
    assert coco["categories"] == [
        {"id": 1, "name": "person", "supercategory": "none"},
        {"id": 2, "name": "traffic light", "supercategory": "none"},
    ]
    # one annotation per label line, each one polygon (the holed "merge" polygon included); the negative has none
    assert [(a["image_id"], a["category_id"], len(a["segmentation"])) for a in coco["annotations"]] == [
        (1, 1, 1),
        (1, 2, 1),
        (3, 1, 1),
        (3, 2, 1),
    ]
    assert coco["annotations"][0]["segmentation"] == [[20.5, 10.5, 100.5, 10.5, 100.5, 50.5]]  # PERSON_A x 200, 100
    for path in [*(view.output_dir / "labels").rglob("*.txt"), *(view.output_dir / "images").rglob("*.*")]:
        os.utime(path, (1e9, 1e9))
    assert cvat.build_coco_zip(open_run(view.output_dir)) == data
    with_images = cvat.build_coco_zip(view, with_images=True)
    assert list(_members(with_images)) == [
        "annotations/instances_default.json",
        "images/",
        "images/default/a.jpg",
        "images/default/neg.jpg",
        "images/default/sub/b.png",
    ]
    for image in view.images:
        below = image.image_rel.relative_to("images").as_posix()
        assert _members(with_images)[f"images/default/{below}"] == image.image_path.read_bytes()
    with zipfile.ZipFile(io.BytesIO(with_images)) as archive:
        assert {info.date_time for info in archive.infolist()} == {(1980, 1, 1, 0, 0, 0)}
        assert [info.filename for info in archive.infolist() if info.is_dir()] == ["images/"]


def test_coco_area_is_the_runs_mask_area_while_the_line_is_the_runs(tmp_path: Path):
    labels = {"a.jpg": f"{PERSON_A}\n{LIGHT_A}\n"}
    out = fake_run_dir(
        tmp_path / "out", labels, NAMES, sizes_wh=SIZES_WH, figures={"a.jpg": [{"line": 1, "mask_area": 777}]}
    )
    annotations = json.loads(_members(cvat.build_coco_zip(open_run(out)))["annotations/instances_default.json"])[
        "annotations"
    ]
    polygon_area = annotations[1]["area"]  # the second line has no mask area: its polygon's pixels
    assert annotations[0]["area"] == 777 and 0 < polygon_area != 777
    # a person edited the label: the run's figures no longer describe its lines
    (out / "labels/a.txt").write_text(f"{PERSON_A}\n{LIGHT_A}\n\n", encoding="utf-8")
    annotations = json.loads(_members(cvat.build_coco_zip(open_run(out)))["annotations/instances_default.json"])[
        "annotations"
    ]
    assert annotations[0]["area"] != 777 and annotations[1]["area"] == polygon_area


def test_write_zip_writes_build_zip_atomically(tmp_path: Path):
    view = _dataset(tmp_path)
    target = tmp_path / "exports" / "cvat.zip"
    cvat.write_zip(view, target)
    assert target.read_bytes() == cvat.build_zip(view)
    assert [p.name for p in target.parent.iterdir()] == ["cvat.zip"]


def test_labels_json_is_the_task_constructor_list():
    assert json.loads(cvat.labels_json({1: "traffic light", 0: "person"})) == [
        {"name": "person", "type": "polygon", "attributes": []},
        {"name": "traffic light", "type": "polygon", "attributes": []},
    ]


def test_export_writes_lines_cvat_reads(tmp_path: Path):
    out = fake_run_dir(tmp_path / "out", {"a.jpg": ""}, NAMES)
    # a byte-order mark, CRLF and runs of spaces go; the numbers stay as written; a box becomes its polygon
    (out / "labels/a.txt").write_bytes(b"\xef\xbb\xbf0  0.1 0.1   0.5 0.1 0.5 0.5\r\n\r\n1 0.5 0.5 0.2 0.4\r\n")
    text = _members(cvat.build_zip(open_run(out)))["labels/train/a.txt"].decode()
    assert (
        text == "0 0.1 0.1 0.5 0.1 0.5 0.5\n1 0.400000 0.300000 0.600000 0.300000 0.600000 0.700000 0.400000 0.700000\n"
    )
    coco = json.loads(_members(cvat.build_coco_zip(open_run(out)))["annotations/instances_default.json"])
    assert [a["segmentation"] for a in coco["annotations"]] == [  # 160 x 120 pixels
        [[16.0, 12.0, 80.0, 12.0, 80.0, 60.0]],
        [[64.0, 36.0, 96.0, 36.0, 96.0, 84.0, 64.0, 84.0]],
    ]


@pytest.mark.parametrize(
    ("labels", "names", "message"),
    [
        # a line CVAT's reader rejects would fail the whole upload
        ({"a.jpg": "0 0.1 0.2 0.3 0.4 0.5\n"}, NAMES, r"labels/a\.txt line 1: expected 'class cx cy w h'"),
        ({"a.jpg": "0 0.1 0.1 0.5 0.1 0.5 0.5\n0 0.1 x 0.5 0.1 0.5 0.5\n"}, NAMES, "line 2: non-numeric"),
        # CVAT matches labels by name: a class without one has no label there
        ({"a.jpg": "7 0.1 0.1 0.5 0.1 0.5 0.5\n"}, NAMES, "class 7 has no name"),
        ({"a.jpg": ""}, {0: "car", 1: "car"}, "both named 'car'"),
        ({"a.jpg": ""}, {0: " "}, "empty name"),
    ],
)
@pytest.mark.parametrize("build", [cvat.build_zip, cvat.build_coco_zip])
def test_export_refuses_what_cvat_would_refuse(tmp_path: Path, labels, names, message, build):
    view = open_run(fake_run_dir(tmp_path / "out", labels, names))
    with pytest.raises(InputError, match=message):
        build(view)


def test_coco_export_refuses_what_coco_cannot_hold(tmp_path: Path):
    out = fake_run_dir(tmp_path / "out", {"a.jpg": "0 0.1 0.1 1.02 0.1 0.5 0.5\n", "b.jpg": ""}, NAMES)
    # CVAT keeps a vertex past the edge, and so does the YOLO zip; COCO's pixels of the image cannot
    assert cvat.build_zip(open_run(out))
    with pytest.raises(InputError, match=r"labels/a\.txt line 1: a coordinate is outside \[0, 1\]"):
        cvat.build_coco_zip(open_run(out))
    (out / "labels/a.txt").write_text("")
    (out / "images/b.jpg").write_bytes(b"not an image")
    with pytest.raises(InputError, match=r"image 'images/b\.jpg': .*COCO needs every image's size"):
        cvat.build_coco_zip(open_run(out))


# ---------------------------------------------------------------------------------------------------------------
# oracles: readers of the format read the zip as one polygon per label line


def _expected(view: RunView) -> dict[str, tuple[tuple[int, ...], list[np.ndarray]]]:
    """Per image path below ``images/`` without suffix: its class ids and polygons (normalised)."""
    out = {}
    for image in view.images:
        key = image.image_rel.relative_to("images").with_suffix("").as_posix()
        out[key] = (tuple(i.class_id for i in image.instances), [i.polygon_norm for i in image.instances])
    return out


def _frame_sizes_hw(view: RunView) -> dict[str, tuple[int, int]]:
    """CVAT's item id -> the frame's ``(height, width)``, what CVAT's importer passes to Datumaro as ``image_info``
    (from the task, not from images in the zip)."""
    out = {}
    for image in view.images:
        below = image.image_rel.relative_to("images")
        width, height = SIZES_WH[below.as_posix()]
        out[below.with_suffix("").as_posix()] = (height, width)
    return out


def test_ultralytics_reads_one_segment_per_label_line(tmp_path: Path):
    try:
        from ultralytics.data.utils import img2label_paths, verify_image_label
    except ImportError:  # a dependency of the package: never skipped on CI
        if os.environ.get("CI") == "true":
            pytest.fail("ultralytics is not importable")
        pytest.skip("ultralytics is not importable")
    view = _dataset(tmp_path)
    root = tmp_path / "extracted"
    zipfile.ZipFile(io.BytesIO(cvat.build_zip(view, with_images=True))).extractall(root)
    expected = _expected(view)
    images = sorted(p for p in (root / "images" / "train").rglob("*") if p.is_file())
    assert len(images) == len(expected) == 3
    for image in images:
        (label,) = img2label_paths([str(image)])
        result = verify_image_label((str(image), label, "", False, len(NAMES), 0, 0, False))
        lb, segments, found, corrupt, message = result[1], result[3], result[6], result[8], result[9]
        assert (found, corrupt) == (1, 0), message
        classes, polygons = expected[image.relative_to(root / "images" / "train").with_suffix("").as_posix()]
        assert tuple(int(c) for c in lb[:, 0]) == classes
        assert len(segments) == len(polygons)
        for segment, polygon in zip(segments, polygons, strict=True):
            np.testing.assert_allclose(segment, polygon, atol=1e-6)


def _cvat_datumaro():
    """``(datumaro module, its YOLO segmentation format name)``; skips where no installed datumaro has that format
    (PyPI's ``datumaro`` 1.x has only a YOLO detection reader; CVAT's fork names the format
    ``yolo_ultralytics_segmentation``, ``yolov8_segmentation`` before its rename)."""
    try:
        import datumaro
        from datumaro.components.environment import Environment
    except ImportError:
        pytest.skip("datumaro is not installed (CVAT's fork, cvat-ai/datumaro, reads this format)")
    formats = set(Environment().importers)
    for name in ("yolo_ultralytics_segmentation", "yolov8_segmentation"):
        if name in formats:
            return datumaro, name
    pytest.skip(f"datumaro {datumaro.__version__} has no YOLO segmentation reader (CVAT's fork has)")


def test_cvat_datumaro_reads_one_polygon_per_label_line(tmp_path: Path):
    _, format_name = _cvat_datumaro()
    from datumaro.components.annotation import AnnotationType
    from datumaro.components.dataset import Dataset

    view = _dataset(tmp_path)
    root = tmp_path / "extracted"
    zipfile.ZipFile(io.BytesIO(cvat.build_zip(view))).extractall(root)
    expected = _expected(view)
    sizes_hw = _frame_sizes_hw(view)
    dataset = Dataset.import_from(str(root), format_name, image_info=sizes_hw)
    label_names = [label.name for label in dataset.categories()[AnnotationType.label]]
    assert sorted(item.id for item in dataset) == sorted(expected)
    for item in dataset:
        classes, polygons = expected[item.id]
        assert [a.type for a in item.annotations] == [AnnotationType.polygon] * len(polygons)
        assert [label_names[a.label] for a in item.annotations] == [NAMES[c] for c in classes]
        height, width = sizes_hw[item.id]
        for annotation, polygon in zip(item.annotations, polygons, strict=True):
            points_px = np.asarray(annotation.points, dtype=np.float64).reshape(-1, 2)
            np.testing.assert_allclose(points_px / [width, height], polygon, atol=1e-6)


def test_cvat_datumaro_export_after_edits_reads_back(tmp_path: Path):
    _, format_name = _cvat_datumaro()
    from datumaro.components.dataset import Dataset

    view = _dataset(tmp_path)
    root = tmp_path / "extracted"
    zipfile.ZipFile(io.BytesIO(cvat.build_zip(view))).extractall(root)
    imported = Dataset.import_from(str(root), format_name, image_info=_frame_sizes_hw(view))
    # the person deletes every instance of a.jpg; CVAT's exporter then writes no label file for it
    items = [item.wrap(annotations=[] if item.id == "a" else list(item.annotations)) for item in imported]
    exported = tmp_path / "exported"
    Dataset.from_iterable(items, categories=imported.categories()).export(str(exported), format_name)
    export_zip = tmp_path / "export.zip"
    _zip(export_zip, {p.relative_to(exported).as_posix(): p.read_bytes() for p in exported.rglob("*") if p.is_file()})
    result = cvat.read_zip(export_zip, view)
    assert result.warnings == ()
    got = {label.label_key: label for label in result.labels}
    assert got["labels/a.txt"].instances == () and got["labels/neg.txt"].instances == ()
    text = (view.output_dir / "labels/sub/b.txt").read_text()
    lines, _ = parse_label_lines(text)
    assert label_text(got["labels/sub/b.txt"].instances, lines, text) == text


def _pypi_datumaro():
    """PyPI's ``datumaro`` (openvinotoolkit's, which reads COCO): ``(Dataset, AnnotationType)``. Skips where it is not
    installed, fails on CI, which installs it (``DATUMARO_INSTALL``)."""
    try:
        from datumaro.components.annotation import AnnotationType
        from datumaro.components.dataset import Dataset
    except ImportError as err:
        if os.environ.get("CI") == "true":
            pytest.fail(f"datumaro is not importable on CI ({err}); install it with: {DATUMARO_INSTALL}")
        pytest.skip(f"datumaro is not installed ({DATUMARO_INSTALL})")
    return Dataset, AnnotationType


@pytest.mark.parametrize("with_images", [False, True])
def test_datumaro_reads_the_coco_zip_as_one_polygon_per_label_line(tmp_path: Path, with_images: bool):
    dataset_cls, annotation_type = _pypi_datumaro()
    view = _dataset(tmp_path)
    root = tmp_path / "extracted"
    zipfile.ZipFile(io.BytesIO(cvat.build_coco_zip(view, with_images=with_images))).extractall(root)
    # the format CVAT's "COCO 1.0" importer reads the extracted zip as
    dataset = dataset_cls.import_from(str(root), "coco_instances")
    expected = _expected(view)
    sizes_hw = _frame_sizes_hw(view)
    image_by_id = {image.image_rel.relative_to("images").with_suffix("").as_posix(): image for image in view.images}
    label_names = [label.name for label in dataset.categories()[annotation_type.label]]
    assert label_names == [NAMES[class_id] for class_id in sorted(NAMES)]
    # every image is an item, the negative and the one in a subdirectory too, named as CVAT matches frames
    assert sorted(item.id for item in dataset) == sorted(expected) == ["a", "neg", "sub/b"]
    for item in dataset:
        classes, polygons = expected[item.id]
        height, width = sizes_hw[item.id]
        assert item.media.size == (height, width)
        # PyPI's reader adds each annotation's box too (CVAT's fork reads "bbox" only without a segmentation)
        assert {a.type for a in item.annotations} <= {annotation_type.polygon, annotation_type.bbox}
        # in annotation-id order, which is line order (this reader lists an image's annotations last first)
        read = sorted((a for a in item.annotations if a.type == annotation_type.polygon), key=lambda a: a.id)
        assert len({a.id for a in read}) == len(read)
        assert [label_names[a.label] for a in read] == [NAMES[c] for c in classes]
        for annotation, polygon in zip(read, polygons, strict=True):
            points_px = np.asarray(annotation.points, dtype=np.float64).reshape(-1, 2)
            # pixels of the continuous image plane, rounded to 3 decimals; the holed polygon keeps its cut
            np.testing.assert_allclose(points_px, polygon * [width, height], rtol=0, atol=1e-3)
        if with_images:
            assert Path(item.media.path).read_bytes() == image_by_id[item.id].image_path.read_bytes()


# ---------------------------------------------------------------------------------------------------------------
# import


def _cvat_line(class_id: int, polygon_norm: np.ndarray, size_wh: tuple[int, int]) -> str:
    """A line as CVAT writes it: our values scaled to the frame's pixels on import, back and to "%.6f" on export."""
    width, height = size_wh
    points_px = np.asarray(polygon_norm, dtype=np.float64) * [width, height]
    return f"{class_id} " + " ".join(f"{v:.6f}" for v in (points_px / [width, height]).reshape(-1))


def test_read_zip_returns_exactly_the_edits_made_in_cvat(tmp_path: Path):
    labels = {
        "a.jpg": f"{PERSON_A}\n{LIGHT_A}\n",
        "sub/b.png": f"{_holed_line()}\n{LIGHT_B}\n",
        "neg.jpg": "",
        "c.jpg": f"{PERSON_A}\n",
        "d.jpg": f"{LIGHT_A}\n",
    }
    view = open_run(fake_run_dir(tmp_path / "out", labels, NAMES, sizes_wh=SIZES_WH))
    by_key = {image.label_key: image for image in view.images}
    (_, light_a) = by_key["labels/a.txt"].instances
    (holed, light_b) = by_key["labels/sub/b.txt"].instances
    moved = light_b.polygon_norm.copy()
    moved[0] = [0.5, 0.25]
    # CVAT's export: its own label order (and an extra label), "data/" list entries, no label file for a frame
    # without shapes (neg.jpg, and c.jpg whose only instance was deleted), a frame we do not have, d.jpg absent
    cvat_ids = {"person": 2, "traffic light": 0}
    export = _zip(
        tmp_path / "export.zip",
        {
            "data.yaml": "names:\n  0: traffic light\n  1: bicycle\n  2: person\npath: .\ntrain: train.txt\n",
            "train.txt": "".join(
                f"data/images/train/{n}\n" for n in ("a.jpg", "c.jpg", "extra.jpg", "neg.jpg", "sub/b.png")
            ),
            "labels/train/a.txt": _cvat_line(0, light_a.polygon_norm, (200, 100)) + "\n",
            "labels/train/sub/b.txt": "\n".join(
                [
                    _cvat_line(cvat_ids["person"], holed.polygon_norm, (90, 160)),
                    _cvat_line(cvat_ids["traffic light"], moved, (90, 160)),
                ]
            )
            + "\n",
            "labels/train/extra.txt": "1 0.1 0.1 0.2 0.1 0.2 0.2\n",
        },
    )
    result = cvat.read_zip(export, view)
    assert result.warnings == ("labels/train/extra.txt: no image of this dataset is named extra; skipped",)
    got = {label.label_key: label.instances for label in result.labels}
    assert list(got) == ["labels/a.txt", "labels/c.txt", "labels/neg.txt", "labels/sub/b.txt"]  # not d.jpg
    assert got["labels/c.txt"] == () and got["labels/neg.txt"] == ()
    assert [c for c, _ in got["labels/a.txt"]] == [1] and [c for c, _ in got["labels/sub/b.txt"]] == [0, 1]
    # unchanged polygons come back as the text they left as; the moved vertex is the one change
    assert format_unit_values(got["labels/a.txt"][0][1].reshape(-1)) == LIGHT_A.split(" ", 1)[1]
    assert "0 " + format_unit_values(got["labels/sub/b.txt"][0][1].reshape(-1)) == _holed_line()
    assert format_unit_values(got["labels/sub/b.txt"][1][1].reshape(-1)) == format_unit_values(moved.reshape(-1))
    text = (view.output_dir / "labels/a.txt").read_text()
    assert label_text(got["labels/a.txt"], parse_label_lines(text)[0], text) == f"{LIGHT_A}\n"


def test_read_zip_of_its_own_export_is_the_dataset(tmp_path: Path):
    view = _dataset(tmp_path)
    export = tmp_path / "own.zip"
    cvat.write_zip(view, export)
    result = cvat.read_zip(export, view)
    assert result.warnings == ()
    for label, image in zip(result.labels, sorted(view.images, key=lambda i: i.label_key), strict=True):
        assert label.label_key == image.label_key
        assert [c for c, _ in label.instances] == [i.class_id for i in image.instances]
        for (_, polygon), instance in zip(label.instances, image.instances, strict=True):
            np.testing.assert_array_equal(polygon, instance.polygon_norm)


SUB_B = "labels/sub/b.txt"


@pytest.mark.parametrize(
    ("members", "expected_keys", "warning"),
    [
        # the path below labels/<subset>/ is the image's path below images/
        ({"labels/train/sub/b.txt": "1 0.1 0.1 0.2 0.1 0.2 0.2\n"}, [SUB_B], None),
        # a task of another subset
        ({"labels/validation/sub/b.txt": ""}, [SUB_B], None),
        # a task made from an archive names frames by their path inside it: a leading root is dropped
        ({"labels/train/images/train/sub/b.txt": ""}, [SUB_B], None),
        # a task made from files picked one by one has flat names: the file stem, when one image has it
        ({"labels/train/b.txt": ""}, [SUB_B], None),
        # k.jpg is in two dirs: a flat k names neither
        ({"labels/train/k.txt": ""}, [], "labels/train/k.txt: no image of this dataset is named k; skipped"),
        ({"labels/train/x/k.txt": ""}, ["labels/x/k.txt"], None),
        # two files for one image: which holds the corrections? neither is applied
        (
            {"labels/train/sub/b.txt": "", "labels/val/sub/b.txt": ""},
            [],
            f"{SUB_B}: labels/train/sub/b.txt, labels/val/sub/b.txt all match this image; skipped",
        ),
        # the zip of the export's folder rather than of its contents
        (
            {"export/data.yaml": "names: [person, traffic light]\n", "export/labels/train/a.txt": ""},
            ["labels/a.txt"],
            None,
        ),
        # not CVAT's layout: said, not guessed at
        (
            {"labels/a.txt": ""},
            [],
            "labels/a.txt: not in a subset dir (labels/<subset>/...), as CVAT exports it; ignored",
        ),
        # images in the zip (an export with images) count as listed
        ({"images/train/a.jpg": b"\xff\xd8"}, ["labels/a.txt"], None),
    ],
)
def test_read_zip_matches_label_files_to_images(tmp_path: Path, members, expected_keys, warning):
    labels = {"a.jpg": "", "sub/b.png": "", "x/k.jpg": "", "y/k.jpg": ""}
    view = open_run(fake_run_dir(tmp_path / "out", labels, NAMES))
    if not any(name.endswith("data.yaml") for name in members):
        members = {"data.yaml": "names:\n  0: person\n  1: traffic light\n", **members}
    result = cvat.read_zip(_zip(tmp_path / "e.zip", members), view)
    assert [label.label_key for label in result.labels] == expected_keys
    assert result.warnings == ((warning,) if warning else ())


@pytest.mark.parametrize(
    ("text", "expected", "warning"),
    [
        # CRLF, a byte-order mark, a class id written as a float: what ultralytics accepts
        (b"\xef\xbb\xbf2.0 0.1 0.1 0.5 0.1 0.5 0.5\r\n", [(0, [[0.1, 0.1], [0.5, 0.1], [0.5, 0.5]])], None),
        # a detection line: its box's 4 corners
        (b"1 0.5 0.5 0.2 0.4\n", [(1, [[0.4, 0.3], [0.6, 0.3], [0.6, 0.7], [0.4, 0.7]])], None),
        # CVAT lets a shape leave the image: clipped to it
        (b"2 -0.1 0.2 1.3 0.2 0.5 0.9\n", [(0, [[0.0, 0.2], [1.0, 0.2], [0.5, 0.9]])], None),
        # a class of the export that this dataset lacks: the image is skipped, never half-applied
        (b"2 0.1 0.1 0.5 0.1 0.5 0.5\n3 0.1 0.1 0.5 0.1 0.5 0.5\n", None, "line 2: class 'dog' is not a class"),
        (b"9 0.1 0.1 0.5 0.1 0.5 0.5\n", None, "line 1: class 9 is not in the zip's data.yaml names"),
        (b"2 0.1 0.1 0.5 0.1 0.5 0.5\n2 0.1 0.1 0.5\n", None, "line 2: expected 'class cx cy w h'"),
        (b"2 0.1 0.1 nan 0.1 0.5 0.5\n", None, "line 1: coordinate is not a finite number"),
        (b"\xff\xfe2 0.1\n", None, "not UTF-8 text"),
    ],
)
def test_read_zip_lines_and_the_images_it_skips(tmp_path: Path, text: bytes, expected, warning):
    view = open_run(fake_run_dir(tmp_path / "out", {"a.jpg": "", "b.jpg": f"{PERSON_A}\n"}, NAMES))
    export = _zip(
        tmp_path / "e.zip",
        {
            "data.yaml": "names: [bicycle, traffic light, person, dog]\n",
            "labels/train/a.txt": text,
            "labels/train/b.txt": "",
        },
    )
    result = cvat.read_zip(export, view)
    got = {label.label_key: label.instances for label in result.labels}
    assert got["labels/b.txt"] == ()  # the other image is read whatever happens to this one
    if expected is None:
        assert "labels/a.txt" not in got
        (message,) = result.warnings
        assert message.startswith("labels/train/a.txt: ") and warning in message and message.endswith("image skipped")
    else:
        assert result.warnings == ()
        assert [c for c, _ in got["labels/a.txt"]] == [c for c, _ in expected]
        for (_, polygon), (_, points) in zip(got["labels/a.txt"], expected, strict=True):
            np.testing.assert_allclose(polygon, points, atol=1e-12)


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


DATA_YAML = "names: [person, traffic light]\n"


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: _write(d / "e.zip", b"names: [person]\n"), "is not a zip file"),
        (lambda d: d / "missing.zip", "does not exist"),
        (lambda d: d, "is a directory"),
        (lambda d: _zip(d / "e.zip", {"labels/train/a.txt": ""}), "has no data.yaml"),
        # paths that would leave the extraction dir (zip-slip), in every spelling
        (lambda d: _zip(d / "e.zip", {"data.yaml": DATA_YAML, "../evil.txt": ""}), "outside the zip's root"),
        (lambda d: _zip(d / "e.zip", {"data.yaml": DATA_YAML, "labels/train/../../x.txt": ""}), "outside"),
        (lambda d: _zip(d / "e.zip", {"data.yaml": DATA_YAML, "/etc/labels/train/a.txt": ""}), "outside"),
        (lambda d: _zip(d / "e.zip", {"data.yaml": DATA_YAML, "C:/labels/a.txt": ""}), "outside"),
        (lambda d: _zip(d / "e.zip", {"data.yaml": DATA_YAML, "..\\evil.txt": ""}), "outside"),
        # data.yaml that names no classes usably
        (lambda d: _zip(d / "e.zip", {"data.yaml": "names: [unclosed\n"}), "not valid YAML"),
        (lambda d: _zip(d / "e.zip", {"data.yaml": "train: train.txt\n"}), "has no 'names'"),
        (lambda d: _zip(d / "e.zip", {"data.yaml": "names: {0: [a, b]}\n"}), "not a string"),
        (lambda d: _zip(d / "e.zip", {"data.yaml": "names: {-1: a}\n"}), "integers >= 0"),
        (lambda d: _zip(d / "e.zip", {"data.yaml": "a: &a [1]\nnames: {x: *a}\n"}), "integers >= 0"),
        (lambda d: _zip(d / "e.zip", {"data.yaml": "#" * (2 << 20)}), "larger than 1048576 bytes"),
        # enormous members: declared, or deflated from a few kilobytes (bounded by max_read_bytes below)
        (lambda d: _zip(d / "e.zip", {"data.yaml": DATA_YAML, "labels/train/a.txt": "0 " * 600_000}), "past"),
        (
            lambda d: _zip(d / "e.zip", {"data.yaml": f"{DATA_YAML}train: train.txt\n", "train.txt": "\n" * 1_200_000}),
            "past",
        ),
    ],
)
def test_hostile_zips_are_refused_with_one_line_and_nothing_written(tmp_path: Path, make, message):
    view = open_run(fake_run_dir(tmp_path / "out", {"a.jpg": f"{PERSON_A}\n"}, NAMES))
    work = tmp_path / "work"
    work.mkdir()
    path = make(work)
    before = (_tree(tmp_path / "out"), _tree(work))
    with pytest.raises(InputError, match=message) as raised:
        cvat.read_zip(path, view, max_read_bytes=1 << 20)
    assert "\n" not in str(raised.value)
    assert (_tree(tmp_path / "out"), _tree(work)) == before


def test_a_member_lying_about_its_size_is_refused(tmp_path: Path):
    view = open_run(fake_run_dir(tmp_path / "out", {"a.jpg": ""}, NAMES))
    path = _zip(tmp_path / "e.zip", {"data.yaml": DATA_YAML, "labels/train/a.txt": "0 0.1 0.1 0.5 0.1 0.5 0.5\n" * 40})
    # the central directory claims 10 bytes: the reader stops there and the checksum gives the lie away
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo("labels/train/a.txt")
    central = data.find(b"labels/train/a.txt", data.find(b"PK\x01\x02")) - 46  # the name follows a 46-byte header
    assert data[central : central + 4] == b"PK\x01\x02"
    data[central + 24 : central + 28] = (10).to_bytes(4, "little")
    local = info.header_offset
    data[local + 22 : local + 26] = (10).to_bytes(4, "little")
    path.write_bytes(bytes(data))
    with pytest.raises(InputError, match=r"cannot read 'labels/train/a\.txt'"):
        cvat.read_zip(path, view)


def test_read_zip_refuses_a_dataset_whose_names_repeat(tmp_path: Path):
    view = open_run(fake_run_dir(tmp_path / "out", {"a.jpg": ""}, {0: "car", 1: "car"}))
    with pytest.raises(InputError, match="both named 'car'"):
        cvat.read_zip(_zip(tmp_path / "e.zip", {"data.yaml": DATA_YAML}), view)
