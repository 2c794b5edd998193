"""``autoannotate check``: label parsing per line, pairing of labels with images, names, report and exit codes.

Every image is non-square (64 wide x 40 high, or 30 x 50). Expected problem lists are exact strings.
"""

from __future__ import annotations

import json
from pathlib import Path, PurePosixPath

import cv2
import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from autoannotate.cli.review import register
from autoannotate.dataset.yolo_seg import parse_label_lines
from autoannotate.errors import ConfigError, InputError
from autoannotate.review.check import check_labels, format_report, polygon_area_norm
from autoannotate.review.labels import find_data_yaml, iter_pairs, read_names

runner = CliRunner()

TRIANGLE = "0.1 0.1 0.5 0.1 0.5 0.5"  # shoelace area 0.08
RECTANGLE = "0.2 0.2 0.8 0.2 0.8 0.9 0.2 0.9"  # shoelace area 0.42


def _app() -> typer.Typer:
    app = typer.Typer()
    register(app)
    return app


def _image(path: Path, wh: tuple[int, int] = (64, 40)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    width, height = wh
    image = np.zeros((height, width, 3), dtype=np.uint8)
    image[:, : width // 2] = (40, 120, 200)
    assert cv2.imwrite(str(path), image)
    return path


def _label(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def _names(root: Path, text: str = "names:\n  0: person\n  1: car\n") -> Path:
    path = root / "data.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def _clean_tree(root: Path) -> tuple[Path, Path]:
    images, labels = root / "images", root / "labels"
    _image(images / "a.jpg")
    _image(images / "sub" / "b.png", (30, 50))
    _image(images / "negative.jpg")
    _label(labels / "a.txt", f"0 {TRIANGLE}\n1 {RECTANGLE}\n")
    _label(labels / "sub" / "b.txt", f"1 {TRIANGLE}\n1 {RECTANGLE}\n1 0.1 0.1 0.3 0.1 0.3 0.4 0.2 0.5 0.1 0.4\n")
    _label(labels / "negative.txt", "")
    _names(root)
    return labels, images


def _broken_tree(root: Path) -> tuple[Path, Path]:
    images, labels = root / "images", root / "labels"
    for stem in ("clean", "syntax", "coord", "twopoint", "unknown", "unlabeled"):
        _image(images / f"{stem}.jpg", (64, 40) if stem != "syntax" else (30, 50))
    _label(labels / "clean.txt", f"0 {TRIANGLE}\n1 {RECTANGLE}\n")
    _label(labels / "syntax.txt", f"0 {TRIANGLE}\n0 0.1 abc 0.3 0.3 0.1 0.3\n")
    _label(labels / "coord.txt", "1 0.1 0.1 1.2 0.1 0.5 0.5\n")
    _label(labels / "twopoint.txt", "0 0.1 0.1 0.2 0.2\n")
    _label(labels / "unknown.txt", f"7 {TRIANGLE}\n")
    _label(labels / "orphan.txt", f"0 {TRIANGLE}\n")
    _names(root)
    return labels, images


# ---------------------------------------------------------------------------------------------------------------
# Parsing, line by line
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "rows", "problems"),
    [
        # a triangle and a quad, blank lines skipped
        (f"0 {TRIANGLE}\n\n3 {RECTANGLE}\n", [(1, 0, 3), (3, 3, 4)], []),
        # class "2.0" is an integer, as ultralytics reads it
        (f"2.0 {TRIANGLE}", [(1, 2, 3)], []),
        (f"x {TRIANGLE}", [], [(1, "non-numeric value 'x'")]),
        (f"1.5 {TRIANGLE}", [], [(1, "class id '1.5' is not a non-negative integer")]),
        (f"-1 {TRIANGLE}", [], [(1, "class id '-1' is not a non-negative integer")]),
        ("0 0.1 0.1 0.2 0.2 0.3", [], [(1, "odd number of coordinates (5); expected x y pairs")]),
        ("0 0.1 0.1 0.2 0.2", [], [(1, "polygon has 2 points; at least 3 needed")]),
        ("0", [], [(1, "polygon has 0 points; at least 3 needed")]),
        ("0 0.1 nan 0.2 0.2 0.3 0.3", [], [(1, "coordinate is not a finite number")]),
        # out of range: reported, but the row still counts for statistics
        ("0 -0.1 0.1 1.5 0.2 0.3 1.25", [(1, 0, 3)], [(1, "coordinate -0.1 outside [0, 1] (+2 more)")]),
        # the second line is bad, the first and third still parse
        (
            f"0 {TRIANGLE}\n0 0.1\n1 {TRIANGLE}",
            [(1, 0, 3), (3, 1, 3)],
            [(2, "odd number of coordinates (1); expected x y pairs")],
        ),
    ],
    ids=[
        "valid",
        "float-class",
        "non-numeric",
        "fractional-class",
        "negative-class",
        "odd-count",
        "two-points",
        "no-points",
        "nan",
        "out-of-range",
        "bad-line-in-middle",
    ],
)
def test_parse_label_lines(text, rows, problems):
    parsed, found = parse_label_lines(text)
    assert [(r.line, r.class_id, len(r.polygon_norm)) for r in parsed] == rows
    assert [(p.line, p.message) for p in found] == problems


@pytest.mark.parametrize(
    ("polygon_norm", "area"),
    [
        ([[0.1, 0.1], [0.5, 0.1], [0.5, 0.5]], 0.08),
        ([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]], 1.0),
        # clockwise is the same area
        ([[0.0, 0.0], [0.0, 1.0], [1.0, 1.0], [1.0, 0.0]], 1.0),
        # an outer square with a hole joined by a zero-width cut (merge policy): 0.64 - 0.04
        (
            [
                [0.1, 0.1],
                [0.9, 0.1],
                [0.9, 0.9],
                [0.1, 0.9],
                [0.1, 0.1],
                [0.4, 0.4],
                [0.4, 0.6],
                [0.6, 0.6],
                [0.6, 0.4],
                [0.4, 0.4],
            ],
            0.60,
        ),
    ],
    ids=["triangle", "unit-square", "clockwise", "hole-with-cut"],
)
def test_polygon_area_norm(polygon_norm, area):
    assert polygon_area_norm(np.array(polygon_norm)) == pytest.approx(area)


# ---------------------------------------------------------------------------------------------------------------
# Names and pairing
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("names:\n  1: car\n  0: person\n", {0: "person", 1: "car"}),
        ("names: [person, car]\n", {0: "person", 1: "car"}),
        ("train: images\nnames:\n  '3': truck\n", {3: "truck"}),
        ("names: {}\n", ConfigError),
        ("train: images\n", ConfigError),
        ("names: [a\n", ConfigError),
        ("names:\n  x: person\n", ConfigError),
    ],
    ids=["mapping", "list", "string-key", "empty", "missing", "bad-yaml", "bad-key"],
)
def test_read_names(tmp_path, text, expected):
    path = tmp_path / "data.yaml"
    path.write_text(text, encoding="utf-8")
    if isinstance(expected, dict):
        assert read_names(path) == expected
    else:
        with pytest.raises(expected, match=r"data\.yaml"):
            read_names(path)


def test_find_data_yaml(tmp_path):
    labels = tmp_path / "ds" / "labels" / "train"
    labels.mkdir(parents=True)
    assert find_data_yaml(labels) is None
    (tmp_path / "ds" / "autoannotate.data.yaml").write_text("names: [a]\n")
    assert find_data_yaml(labels) == tmp_path / "ds" / "autoannotate.data.yaml"
    (tmp_path / "ds" / "data.yaml").write_text("names: [a]\n")
    assert find_data_yaml(labels) == tmp_path / "ds" / "data.yaml"
    (tmp_path / "ds" / "labels" / "data.yaml").write_text("names: [a]\n")  # the direct parent comes first
    assert find_data_yaml(labels) == tmp_path / "ds" / "labels" / "data.yaml"


def test_iter_pairs(tmp_path):
    labels, images = tmp_path / "labels", tmp_path / "images"
    _image(images / "a.jpg")
    _image(images / "a.PNG")  # shares a.txt with a.jpg, as in ultralytics
    _image(images / "deep" / "x.y.jpg")
    _image(images / "lonely.jpg")
    _label(labels / "a.txt", "")
    _label(labels / "deep" / "x.y.txt", "")
    _label(labels / "orphan.txt", "")
    (labels / "notes.md").write_text("not a label")
    pairs = list(iter_pairs(labels, images))
    assert [(p.rel_stem.as_posix(), p.image_rel, p.label_path) for p in pairs] == [
        ("a", PurePosixPath("a.PNG"), labels / "a.txt"),
        ("a", PurePosixPath("a.jpg"), labels / "a.txt"),
        ("deep/x.y", PurePosixPath("deep/x.y.jpg"), labels / "deep" / "x.y.txt"),
        ("lonely", PurePosixPath("lonely.jpg"), None),
        ("orphan", None, labels / "orphan.txt"),
    ]
    assert pairs[0].image_path == images / "a.PNG"
    report = check_labels(pairs, labels, images)
    assert [str(p) for p in report.problems] == [
        f"{images / 'lonely.jpg'}: no label file (ultralytics trains it as background)",
        f"{labels / 'orphan.txt'}: no image for this label file",
        f"{labels / 'a.txt'}: label file shared by 2 images: a.PNG, a.jpg",
    ]


@pytest.mark.parametrize(
    ("missing", "error"),
    [("labels", "labels dir"), ("images", "--data")],
    ids=["no-labels-dir", "no-images"],
)
def test_iter_pairs_missing_roots(tmp_path, missing, error):
    (tmp_path / "labels").mkdir()
    (tmp_path / "images").mkdir()
    (tmp_path / missing).rmdir()
    with pytest.raises(InputError, match=error):
        list(iter_pairs(tmp_path / "labels", tmp_path / "images"))


# ---------------------------------------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------------------------------------


def test_check_broken_tree_lists_every_problem(tmp_path):
    labels, images = _broken_tree(tmp_path)
    result = runner.invoke(_app(), ["check", str(labels), "--data", str(images)])
    assert result.exit_code == 1, result.output
    problems = result.stdout.split("\n\n")[0].splitlines()
    assert problems == [
        f"{labels}/coord.txt:1: coordinate 1.2 outside [0, 1]",
        f"{labels}/orphan.txt: no image for this label file",
        f"{labels}/syntax.txt:2: non-numeric value 'abc'",
        f"{labels}/twopoint.txt:1: polygon has 2 points; at least 3 needed",
        f"{labels}/unknown.txt:1: class 7 is not in the names file (ids 0-1)",
        f"{images}/unlabeled.jpg: no label file (ultralytics trains it as background)",
    ]
    assert result.stdout.endswith("\n6 problems\n")
    assert f"names: {tmp_path / 'data.yaml'}\n" in result.stdout


def test_check_broken_tree_json(tmp_path):
    labels, images = _broken_tree(tmp_path)
    result = runner.invoke(_app(), ["check", str(labels), "--data", str(images), "--json"])
    assert result.exit_code == 1, result.output
    report = json.loads(result.stdout)
    assert report["ok"] is False
    assert report["problems"][0] == {
        "path": str(labels / "coord.txt"),
        "line": 1,
        "message": "coordinate 1.2 outside [0, 1]",
    }
    assert report["problems"][1] == {
        "path": str(labels / "orphan.txt"),
        "line": None,
        "message": "no image for this label file",
    }
    assert len(report["problems"]) == 6
    # the unknown class is counted, with no name
    assert {"id": 7, "name": None, "instances": 1, "images": 1} in report["classes"]


def test_check_duplicate_line(tmp_path):
    images, labels = tmp_path / "images", tmp_path / "labels"
    _image(images / "a.jpg")
    _label(labels / "a.txt", f"0 {TRIANGLE}\n1 {TRIANGLE}\n0 {TRIANGLE}\n")
    result = runner.invoke(_app(), ["check", str(labels), "--data", str(images), "--names", str(_names(tmp_path))])
    assert result.exit_code == 1
    assert result.stdout.startswith(f"{labels}/a.txt:3: duplicate of line 1 (ultralytics drops it)\n\n")


def test_check_clean_tree(tmp_path):
    labels, images = _clean_tree(tmp_path)
    result = runner.invoke(_app(), ["check", str(labels), "--data", str(images)])
    assert result.exit_code == 0, result.output
    assert result.stdout == (
        "3 label files, 3 images, 5 instances, 1 empty label files (negative samples)\n"
        f"names: {tmp_path / 'data.yaml'}\n"
        "class     instances  images\n"
        "0 person          1       1\n"
        "1 car             4       2\n"
        "points per polygon: min 3, median 4, max 5\n"
        "polygon area, fraction of the image (shoelace): min 0.070000, median 0.080000, max 0.420000\n"
        "no problems\n"
    )


def test_check_clean_tree_json_and_default_data(tmp_path):
    labels, _ = _clean_tree(tmp_path)
    # no --data: the images tree beside the labels tree
    result = runner.invoke(_app(), ["check", str(labels), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["ok"] is True
    assert report["problems"] == []
    assert report["counts"] == {"label_files": 3, "images": 3, "empty_label_files": 1, "instances": 5}
    assert report["classes"] == [
        {"id": 0, "name": "person", "instances": 1, "images": 1},
        {"id": 1, "name": "car", "instances": 4, "images": 2},
    ]
    assert report["points_per_polygon"] == {"min": 3.0, "median": 4.0, "max": 5.0}
    assert report["area_fraction"]["method"].startswith("shoelace")
    assert report["area_fraction"]["max"] == pytest.approx(0.42)


def test_check_without_names_skips_class_check(tmp_path):
    labels, images = _broken_tree(tmp_path)
    (tmp_path / "data.yaml").unlink()
    pairs = list(iter_pairs(labels, images))
    report = check_labels(pairs, labels, images, names=None)
    assert not any("class 7" in p.message for p in report.problems)
    assert "class ids not checked (pass --names)" in format_report(report)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["check", "{tmp}/nope", "--data", "{tmp}/images"], "error: labels dir '{tmp}/nope' does not exist"),
        (["check", "{tmp}/labels", "--data", "{tmp}/nope"], "error: --data '{tmp}/nope' does not exist"),
        (
            ["check", "{tmp}/labels", "--data", "{tmp}/images", "--names", "{tmp}/no.yaml"],
            "error: --names '{tmp}/no.yaml' is not a file",
        ),
        (
            ["check", "{tmp}/labels", "--data", "{tmp}/images", "--names", "{tmp}/bad.yaml"],
            "error: names file '{tmp}/bad.yaml' has no 'names'",
        ),
        (["check", "{tmp}/other"], "error: '{tmp}/other' is not inside a dir named 'labels'; pass --data"),
    ],
    ids=["no-labels-dir", "no-images", "no-names-file", "bad-names-file", "no-default-data"],
)
def test_check_usage_errors_exit_2(tmp_path, args, message):
    (tmp_path / "labels").mkdir()
    (tmp_path / "images").mkdir()
    (tmp_path / "other").mkdir()
    (tmp_path / "bad.yaml").write_text("train: x\n")
    result = runner.invoke(_app(), [a.format(tmp=tmp_path) for a in args])
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith(message.format(tmp=tmp_path))
    assert len(result.stderr.splitlines()) == 1
    assert "Traceback" not in result.output
