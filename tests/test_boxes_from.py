"""Box prompts from YOLO detection labels: boxes and polygon lines, negatives, class filter, bad lines."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import numpy as np
import pytest

from autoannotate.errors import ConfigError, ImageError
from autoannotate.prompts.base import resolve_classes
from autoannotate.prompts.labels import LabelBoxes, names_from_boxes

IMAGE = np.zeros((100, 200, 3), np.uint8)  # H 100, W 200


def _boxes(tmp_path: Path, text: str | None, class_ids=None):
    if text is not None:
        (tmp_path / "a.txt").write_text(text)
    (det,) = LabelBoxes(tmp_path, {0: "a", 1: "b", 2: "c"}, class_ids).boxes([IMAGE], [PurePosixPath("a.jpg")])
    return det


def test_box_and_polygon_lines_in_pixels(tmp_path: Path):
    det = _boxes(tmp_path, "1 0.5 0.5 0.2 0.4\n\n2 0.1 0.1 0.3 0.1 0.3 0.6\n")
    np.testing.assert_allclose(det.xyxy, [[80, 30, 120, 70], [20, 10, 60, 60]], atol=1e-4)
    assert det.class_id.tolist() == [1, 2] and det.confidence.tolist() == [1.0, 1.0]


def test_missing_label_is_a_negative_and_classes_filter(tmp_path: Path):
    assert len(_boxes(tmp_path, None)) == 0
    det = _boxes(tmp_path, "0 0.5 0.5 0.2 0.2\n1 0.5 0.5 0.4 0.4\n", class_ids=(1,))
    assert det.class_id.tolist() == [1]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("0 0.5 0.5 0.2\n", "expected 'class cx cy w h'"),
        ("x 0.5 0.5 0.2 0.2\n", "non-numeric"),
        ("-1 0 0 1 1\n", "class id"),
    ],
    ids=["short", "text", "negative-class"],
)
def test_bad_lines(tmp_path: Path, text: str, message: str):
    with pytest.raises(ImageError, match=message):
        _boxes(tmp_path, text)


def test_names_and_errors(tmp_path: Path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "x.txt").write_text("3 0.5 0.5 0.1 0.1\n0 0.2 0.2 0.1 0.1\n")
    assert names_from_boxes(tmp_path) == {0: "class0", 1: "class1", 2: "class2", 3: "class3"}
    with pytest.raises(ConfigError, match="--boxes-from"):
        LabelBoxes(tmp_path / "nope", {})
    assert resolve_classes(["car", "0"], {0: "Car"}, "--names") == (0,)
