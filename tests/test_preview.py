"""Previews: overlays change the object's pixels and nothing far away, contact sheet geometry, the command.

Images are non-square (150 wide x 90 high, 60 x 140, 640 x 360).
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import cv2
import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from autoannotate.cli.review import register
from autoannotate.polygons import polygon_to_mask
from autoannotate.review.labels import LabelPair
from autoannotate.review.preview import (
    ALPHA,
    PreviewSample,
    class_color_bgr,
    contact_sheet,
    render_overlay,
    sample_pairs,
    write_previews,
)

runner = CliRunner()

GRAY = 100
SQUARE_PX = np.array([[20.0, 40.0], [59.0, 40.0], [59.0, 79.0], [20.0, 79.0]])  # 40 x 40 pixels, lower left


def _app() -> typer.Typer:
    app = typer.Typer()
    register(app)
    return app


def _gray(hw: tuple[int, int] = (90, 150)) -> np.ndarray:
    return np.full((*hw, 3), GRAY, dtype=np.uint8)


def test_overlay_fills_inside_and_leaves_far_pixels():
    image = _gray()
    before = image.copy()
    out = render_overlay(image, [(2, SQUARE_PX, 0.87)], {2: "car"})
    np.testing.assert_array_equal(image, before)  # the input is not modified
    inside = polygon_to_mask(SQUARE_PX, (150, 90))
    inside[40:50, 20:60] = False  # leave out the rows under the top edge, where the outline is drawn
    inside[:, 20:22] = inside[:, 58:60] = False
    inside[78:80, :] = False
    color = np.array(class_color_bgr(2), dtype=np.float64)
    expected = np.round(GRAY * (1 - ALPHA) + color * ALPHA).astype(np.uint8)
    assert (out[inside] == expected).all()  # translucent fill in the class colour
    np.testing.assert_array_equal(out[:, 100:], before[:, 100:])  # far right: untouched (the tag is at the left)
    assert (out[:40, 20:60] != GRAY).any()  # the tag "car 0.87" sits above the square


def test_overlay_normalized_equals_pixels():
    image = _gray()
    polygon_norm = (SQUARE_PX + 0.5) / np.array([150, 90])  # a label's pixel-centre coordinates
    in_px = render_overlay(image, [(0, SQUARE_PX, None)], {})
    in_norm = render_overlay(image, [(0, polygon_norm, None)], {}, normalized=True)
    np.testing.assert_array_equal(in_px, in_norm)


@pytest.mark.parametrize(
    "instances",
    [[], [(1, np.zeros((0, 2)), None)], [(1, np.array([[500.0, 500.0], [600.0, 500.0], [600.0, 600.0]]), None)]],
    ids=["none", "empty-polygon", "outside-image"],
)
def test_overlay_without_visible_instances(instances):
    out = render_overlay(_gray(), instances, {})
    assert out.shape == (90, 150, 3)
    assert (out[45:, :100] == GRAY).all()  # nothing filled (a tag of an off-image polygon stays at the corner)


@pytest.mark.parametrize(
    ("count", "tile_wh", "columns", "captions", "shape"),
    [
        (5, (320, 240), 4, True, (2 * (240 + 22), 4 * 320, 3)),
        (4, (100, 60), 2, False, (2 * 60, 2 * 100, 3)),
        (2, (320, 240), 4, True, (262, 2 * 320, 3)),  # fewer images than columns: as many columns as images
        (3, (64, 100), 1, True, (3 * (100 + 14), 64, 3)),  # small tiles: captions at least 14 px high
    ],
    ids=["two-rows", "no-captions", "one-row", "one-column"],
)
def test_contact_sheet_shape(count, tile_wh, columns, captions, shape):
    images = [np.full((90 + 10 * i, 150 - 20 * i, 3), 200, np.uint8) for i in range(count)]
    names = [f"dir/image_{i}.jpg" for i in range(count)] if captions else None
    sheet = contact_sheet(images, tile_wh, columns, names)
    assert sheet.shape == shape
    assert sheet.dtype == np.uint8


def test_contact_sheet_letterboxes_and_captions():
    tall = np.full((140, 60, 3), 200, np.uint8)
    sheet = contact_sheet([tall], (320, 240), 4, ["a/very/long/path/that/cannot/fit/in/the/caption/strip/x.jpg"])
    # scaled to 240 high: 103 wide, centred in 320; bars on both sides keep the letterbox colour
    assert (sheet[:240, 108:211] == 200).all()
    assert (sheet[:240, :100] == 48).all() and (sheet[:240, 220:] == 48).all()
    assert (sheet[240:] != 32).any()  # caption text drawn in the strip


def test_sample_pairs_is_deterministic():
    pairs = [
        LabelPair(PurePosixPath(f"img{i:02d}"), Path(f"/d/img{i:02d}.jpg"), PurePosixPath(f"img{i:02d}.jpg"), None)
        for i in range(20)
    ]
    pairs.append(LabelPair(PurePosixPath("orphan"), None, None, Path("/l/orphan.txt")))
    first = sample_pairs(pairs, 5, seed=0)
    assert first == sample_pairs(list(reversed(pairs)), 5, seed=0)  # order of the input does not matter
    assert len(first) == 5
    assert [p.image_rel for p in first] == sorted(p.image_rel for p in first)
    assert sample_pairs(pairs, 5, seed=1) != first
    assert len(sample_pairs(pairs, 50, seed=0)) == 20  # all images, never the orphan label


def test_write_previews(tmp_path):
    samples = [
        PreviewSample(PurePosixPath("a/b.jpg"), _gray(), ((0, (SQUARE_PX + 0.5) / [150, 90], None),)),
        PreviewSample(PurePosixPath("b.png"), _gray((140, 60)), ()),
    ]
    files = write_previews(samples, {0: "person"}, tmp_path / "out", tile_wh=(100, 80), columns=4)
    assert files.overlays == (tmp_path / "out" / "a" / "b.jpg.png", tmp_path / "out" / "b.png.png")
    assert files.contact_sheet == tmp_path / "out" / "contact_sheet.png"
    overlay = cv2.imread(str(files.overlays[0]))
    np.testing.assert_array_equal(
        overlay, render_overlay(samples[0].image_bgr, samples[0].instances, {0: "person"}, normalized=True)
    )
    assert cv2.imread(str(files.contact_sheet)).shape == (80 + 14, 200, 3)


def _scene_dataset(root: Path, count: int) -> tuple[Path, Path]:
    for i in range(count):
        width, height = (640, 360) if i % 2 else (60, 140)
        image = np.full((height, width, 3), 60 + 10 * i, np.uint8)
        sub = "sub/" if i % 3 == 0 else ""
        (root / "images" / sub).mkdir(parents=True, exist_ok=True)
        (root / "labels" / sub).mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / "images" / f"{sub}img{i}.jpg"), image)
        (root / "labels" / f"{sub}img{i}.txt").write_text(f"{i % 2} 0.1 0.2 0.6 0.2 0.6 0.7 0.1 0.7\n")
    (root / "data.yaml").write_text("names:\n  0: person\n  1: car\n")
    return root / "labels", root / "images"


def test_preview_command(tmp_path):
    labels, images = _scene_dataset(tmp_path, 7)
    result = runner.invoke(_app(), ["preview", str(labels), "--data", str(images), "--n", "4", "--seed", "3"])
    assert result.exit_code == 0, result.output
    printed = [Path(line) for line in result.stdout.splitlines()]
    out = tmp_path / "previews"  # default: LABELS/../previews
    assert len(printed) == 5
    assert printed[-1] == out / "contact_sheet.png"
    assert all(p.is_file() and p.parent.is_relative_to(out) and p.suffix == ".png" for p in printed)
    assert sorted(p for p in out.rglob("*.png")) == sorted(printed)
    assert cv2.imread(str(printed[-1])).shape == (240 + 22, 4 * 320, 3)
    again = runner.invoke(
        _app(),
        [
            "preview",
            str(labels),
            "--data",
            str(images),
            "-n",
            "4",
            "--seed",
            "3",
            "--output-dir",
            str(tmp_path / "again"),
        ],
    )
    assert [Path(p).relative_to(tmp_path / "again") for p in again.stdout.splitlines()] == [
        p.relative_to(out) for p in printed
    ]


def test_preview_command_reports_bad_lines_and_images(tmp_path):
    labels, images = _scene_dataset(tmp_path, 2)
    (labels / "img1.txt").write_text("0 0.1 0.1 0.2\n1 0.1 0.2 0.6 0.2 0.6 0.7\n")
    (images / "broken.jpg").write_bytes(b"not an image")
    result = runner.invoke(_app(), ["preview", str(labels), "--data", str(images), "--output-dir", str(tmp_path / "p")])
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        f"warning: {images / 'broken.jpg'}: not a decodable image; skipped",
        f"warning: {labels / 'img1.txt'}:1: expected 'class cx cy w h', got 4 numbers (not drawn)",
    ]
    assert len(result.stdout.splitlines()) == 3  # two overlays and the contact sheet


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["preview", "{tmp}/nope"], "error: labels dir '{tmp}/nope' does not exist"),
        (["preview", "{tmp}/labels", "--n", "0"], "error: --n must be at least 1; got 0"),
        (["preview", "{tmp}/labels", "--data", "{tmp}/empty"], "error: no image found under '{tmp}/empty'"),
    ],
    ids=["no-labels-dir", "zero", "no-images"],
)
def test_preview_usage_errors(tmp_path, args, message):
    _scene_dataset(tmp_path, 1)
    (tmp_path / "empty").mkdir()
    result = runner.invoke(_app(), [a.format(tmp=tmp_path) for a in args])
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith(message.format(tmp=tmp_path))
