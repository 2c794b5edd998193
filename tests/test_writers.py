"""File formats: exact golden strings for label lines and data.yaml; the one YOLO label reader; atomic writes."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from autoannotate.dataset.yolo_seg import (
    LabelLine,
    LineProblem,
    format_label_file,
    format_polygon_line,
    iter_label_lines,
    parse_label_file,
    parse_label_lines,
    read_label_file,
)
from autoannotate.errors import OutputError
from autoannotate.writers.atomic import write_text_atomic
from autoannotate.writers.dataset_yaml import format_data_yaml, is_ours
from autoannotate.writers.manifest import file_sha256


@pytest.mark.parametrize(
    ("class_id", "polygon_xy_px", "resolution_wh", "expected"),
    [
        # non-square 200x100 image: pixel centres, (x + 0.5) / 200 and (y + 0.5) / 100
        (2, [[0, 0], [50, 0], [50, 25]], (200, 100), "2 0.002500 0.005000 0.252500 0.005000 0.252500 0.255000"),
        # portrait 30x70: thirds and sevenths round to 6 decimals
        (0, [[10, 10], [20, 10], [20, 34]], (30, 70), "0 0.350000 0.150000 0.683333 0.150000 0.683333 0.492857"),
        # points outside the image are clipped to [0, 1]
        (7, [[-3, 5], [250, 5], [100, 120]], (200, 100), "7 0.000000 0.055000 1.000000 0.055000 0.502500 1.000000"),
    ],
    ids=["landscape", "portrait-rounding", "clipped"],
)
def test_format_polygon_line_golden(class_id, polygon_xy_px, resolution_wh, expected):
    assert format_polygon_line(class_id, np.array(polygon_xy_px, dtype=float), resolution_wh) == expected


@pytest.mark.parametrize(
    ("polygon", "class_id"),
    [([[0, 0], [1, 1]], 0), ([[0, 0, 0], [1, 1, 1], [2, 2, 2]], 0), ([[0, 0], [1, 0], [1, 1]], -1)],
    ids=["two-points", "three-columns", "negative-class"],
)
def test_format_polygon_line_rejects_bad_input(polygon, class_id):
    with pytest.raises(ValueError):
        format_polygon_line(class_id, np.array(polygon, dtype=float), (10, 10))


def test_label_file_round_trip():
    lines = [
        format_polygon_line(1, np.array([[0, 0], [10, 0], [10, 5]], float), (20, 10)),
        format_polygon_line(0, np.array([[2, 2], [4, 2], [4, 4], [2, 4]], float), (20, 10)),
    ]
    text = format_label_file(lines)
    assert text == lines[0] + "\n" + lines[1] + "\n"
    parsed = parse_label_file(text)
    assert [cid for cid, _ in parsed] == [1, 0]
    np.testing.assert_allclose(parsed[0][1], [[0.025, 0.05], [0.525, 0.05], [0.525, 0.55]])
    assert format_label_file([]) == ""


@pytest.mark.parametrize(
    "text", ["0 0.1 0.1 0.2", "x 0.1 0.1 0.2 0.2 0.3 0.3", "1.5 0.1 0.1 0.2 0.2 0.3 0.3", "0 0.1 0.1 0.2 0.2 0.3"]
)
def test_parse_label_file_rejects(text):
    with pytest.raises(ValueError, match="line 1"):
        parse_label_file(text)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("0 0.1 0.1 0.2", "line 1: odd number of coordinates (3); expected x y pairs"),
        ("x 0.1 0.1 0.2 0.2 0.3 0.3", "line 1: non-numeric value 'x'"),
        ("1.5 0.1 0.1 0.2 0.2 0.3 0.3", "line 1: class id '1.5' is not a non-negative integer"),
        # a detection line is not a polygon
        ("\n0 0.5 0.5 0.2 0.2", "line 2: polygon has 2 points; at least 3 needed"),
        ("0 0.1 0.1 0.2 inf 0.3 0.3", "line 1: coordinate is not a finite number"),
    ],
    ids=["odd-count", "non-numeric", "fractional-class", "box-line", "infinite"],
)
def test_parse_label_file_messages(text, message):
    with pytest.raises(ValueError) as err:
        parse_label_file(text)
    assert str(err.value) == message


def test_parse_label_file_keeps_out_of_range_coordinates():
    """The strict parser checks syntax only; the range is for ``parse_label_lines`` to report."""
    ((class_id, polygon_norm),) = parse_label_file("3 -0.5 0.1 1.5 0.1 0.5 0.5\n")
    assert class_id == 3
    np.testing.assert_array_equal(polygon_norm, [[-0.5, 0.1], [1.5, 0.1], [0.5, 0.5]])


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # a box line becomes its 4 corners (x1 y1, x2 y1, x2 y2, x1 y2): cx 0.5 cy 0.25 w 0.5 h 0.25
        ("1 0.5 0.25 0.5 0.25", [(1, 1, [[0.25, 0.125], [0.75, 0.125], [0.75, 0.375], [0.25, 0.375]])]),
        # a polygon line is kept as it is; blank lines are skipped but counted
        ("\n2 0.1 0.2 0.3 0.2 0.3 0.4\n", [(2, 2, [[0.1, 0.2], [0.3, 0.2], [0.3, 0.4]])]),
        # a zero-size box is a box; the class id 4.0 is an integer
        ("4.0 0.5 0.5 0 0", [(1, 4, [[0.5, 0.5], [0.5, 0.5], [0.5, 0.5], [0.5, 0.5]])]),
        ("0 0.5 0.5 0.2", [(1, "expected 'class cx cy w h', got 4 numbers")]),
        ("0 0.1 0.1 0.2 0.2 0.3 0.3 0.4", [(1, "expected 'class cx cy w h', got 8 numbers")]),
        ("0 0.5 0.5 -0.2 0.1", [(1, "box width -0.2 and height 0.1 must be >= 0")]),
        ("0 0.5 nan 0.2 0.1", [(1, "coordinate is not a finite number")]),
        (
            "-1 0 0 1 1\n0 0.5 0.5 x 1",
            [(1, "class id '-1' is not a non-negative integer"), (2, "non-numeric value 'x'")],
        ),
    ],
    ids=["box", "polygon", "empty-box", "short", "odd-polygon", "negative-width", "nan", "bad-class-and-text"],
)
def test_iter_label_lines_with_boxes(text, expected):
    """``--boxes-from`` reads YOLO detection lines ``class cx cy w h`` as well as polygon lines."""
    got = []
    for item in iter_label_lines(text, boxes=True):
        if isinstance(item, LineProblem):
            got.append((item.line, item.message))
        else:
            assert item.polygon_norm.dtype == np.float64
            got.append((item.line, item.class_id, item.polygon_norm.tolist()))
    assert got == expected


def test_parse_label_lines_reports_range_and_keeps_the_line():
    rows, problems = parse_label_lines("0 0.1 0.1 0.5 0.1 0.5 0.5\n0 0.1\n1 1.5 0.2 0.5 -0.25 0.5 0.5\n")
    assert [(r.line, r.class_id, r.polygon_norm.shape) for r in rows] == [(1, 0, (3, 2)), (3, 1, (3, 2))]
    assert problems == [
        LineProblem(2, "odd number of coordinates (1); expected x y pairs"),
        LineProblem(3, "coordinate 1.5 outside [0, 1] (+1 more)"),
    ]


@pytest.mark.parametrize(
    ("content", "rows", "problems"),
    [
        # ultralytics' UTF-8 byte-order mark is accepted
        (b"\xef\xbb\xbf0 0.1 0.1 0.5 0.1 0.5 0.5\n", [(1, 0)], []),
        (b"\xff\xfe0 0.1", [], [LineProblem(None, "not UTF-8 text")]),
        (None, [], [LineProblem(None, "cannot read: No such file or directory")]),
    ],
    ids=["bom", "not-utf8", "missing"],
)
def test_read_label_file(tmp_path: Path, content, rows, problems):
    path = tmp_path / "a.txt"
    if content is not None:
        path.write_bytes(content)
    parsed, found = read_label_file(path)
    assert all(isinstance(r, LabelLine) for r in parsed)
    assert [(r.line, r.class_id) for r in parsed] == rows
    assert found == problems


def test_data_yaml_golden():
    text = format_data_yaml({1: "car", 0: "person", 2: "traffic: light"}, "images/train", "images/train", "9.9.9")
    assert text == (
        "# Written by autoannotate 9.9.9. Train with: yolo segment train data=<this file>\n"
        "train: images/train\n"
        "val: images/train\n"
        "nc: 3\n"
        "names:\n"
        "  0: person\n"
        "  1: car\n"
        "  2: 'traffic: light'\n"
    )
    assert is_ours(text)
    assert not is_ours("path: /data\ntrain: images\n")


def test_write_text_atomic_replaces_and_leaves_no_temp(tmp_path: Path):
    target = tmp_path / "deep" / "dir" / "a.txt"
    write_text_atomic(target, "one\n")
    write_text_atomic(target, "two\n")
    assert target.read_text() == "two\n"
    assert os.listdir(target.parent) == ["a.txt"]


def test_write_text_atomic_read_only_dir_keeps_old_file(tmp_path: Path):
    if os.geteuid() == 0:
        pytest.skip("root ignores directory permissions")
    target = tmp_path / "a.txt"
    target.write_text("old\n")
    tmp_path.chmod(0o555)
    try:
        with pytest.raises(OutputError, match="cannot write"):
            write_text_atomic(target, "new\n")
    finally:
        tmp_path.chmod(0o755)
    assert target.read_text() == "old\n"


def test_write_text_atomic_error_is_one_line(tmp_path: Path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OutputError) as info:
        write_text_atomic(blocker / "sub" / "a.txt", "x")  # parent is a file
    assert "\n" not in str(info.value)
    assert blocker.read_text() == "x"


def test_manifest_helpers(tmp_path: Path):
    f = tmp_path / "w.bin"
    f.write_bytes(b"abc")
    assert file_sha256(f) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


@pytest.mark.parametrize("resolution_wh", [(1920, 1080), (640, 480), (333, 777)], ids=["1920x1080", "640x480", "odd"])
def test_written_polygons_rasterise_back_exactly_as_ultralytics_reads_them(resolution_wh):
    """Mask -> polygon -> label line -> ultralytics' polygon2mask at the image size gives the same pixels."""
    import cv2
    from ultralytics.data.utils import polygon2mask

    from autoannotate.polygons import PolygonPolicy, mask_to_polygons

    width, height = resolution_wh
    mask = np.zeros((height, width), np.uint8)
    cv2.ellipse(mask, (width // 2, height // 2), (width // 3, height // 4), 20, 0, 360, 1, -1)
    cv2.rectangle(mask, (width // 2 - 5, height // 2 - 5), (width // 2 + 7, height // 2 + 9), 0, -1)  # a hole
    (polygon,) = mask_to_polygons(mask, PolygonPolicy(tolerance_px=0))
    line = format_polygon_line(0, polygon, resolution_wh)
    ((_, polygon_norm),) = parse_label_file(line)
    points = (polygon_norm.astype(np.float32) * np.array([width, height], np.float32)).reshape(1, -1)
    rebuilt = polygon2mask((height, width), points, color=1, downsample_ratio=1)
    assert np.array_equal(rebuilt.astype(bool), mask.astype(bool))


@settings(max_examples=200, deadline=None)
@given(
    width=st.integers(1, 5000),
    height=st.integers(1, 5000),
    class_id=st.integers(0, 999),
    data=st.data(),
)
def test_label_writer_reader_round_trip(width, height, class_id, data):
    """Any in-image polygon written and read back lands on the same pixel centres, within the 6-decimal rounding."""
    n = data.draw(st.integers(3, 40))
    xs = data.draw(st.lists(st.integers(0, width - 1), min_size=n, max_size=n))
    ys = data.draw(st.lists(st.integers(0, height - 1), min_size=n, max_size=n))
    polygon = np.stack([xs, ys], axis=1).astype(float)
    line = format_polygon_line(class_id, polygon, (width, height))
    assert "\n" not in line and len(line.split()) == 1 + 2 * n
    ((parsed_class, polygon_norm),) = parse_label_file(format_label_file([line]))
    assert parsed_class == class_id
    assert polygon_norm.min() >= 0 and polygon_norm.max() <= 1
    back_px = polygon_norm * np.array([width, height]) - 0.5
    np.testing.assert_allclose(back_px, polygon, atol=5e-7 * 5000 + 1e-9)
    # and ultralytics' truncating rasteriser lands on the same integer pixel
    truncated = (polygon_norm.astype(np.float32) * np.array([width, height], np.float32)).astype(np.int32)
    np.testing.assert_array_equal(truncated, polygon.astype(np.int32))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.floats(0.0, 1.0, allow_nan=False), min_size=1, max_size=50))
def test_vectorised_formatting_equals_python_formatting(values):
    from autoannotate.dataset.yolo_seg import format_unit_values

    assert format_unit_values(np.array(values)) == " ".join(f"{v:.6f}" for v in values)


@pytest.mark.parametrize("width", [1, 2, 3, 7, 640, 1920, 4000, 8192])
def test_vectorised_formatting_on_every_pixel_centre(width):
    """Every value a label can hold for an image of this width (including exact rounding ties)."""
    from autoannotate.dataset.yolo_seg import format_unit_values

    values = (np.arange(width) + 0.5) / width
    assert format_unit_values(values) == " ".join(f"{v:.6f}" for v in values)
    ties = np.array([0.0000005, 0.0000015, 0.1234565, 0.9999995, 0.5, 1.0, 0.0])
    assert format_unit_values(ties) == " ".join(f"{v:.6f}" for v in ties)
