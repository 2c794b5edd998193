"""Point prompts from label files (``--points-from``): the line grammar and its errors, the pixel frame, masks equal to
the reference ``mobile_sam.SamPredictor`` given the same points (and box), the CLI end to end with classes kept,
resume, and the one-line errors for conflicting flags and for segmenters that take boxes only."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path, PurePosixPath

import cv2
import numpy as np
import pytest
import torch
import yaml
from helpers import json_events, synthetic_scene_bgr
from typer.testing import CliRunner

from autoannotate.cli import app
from autoannotate.config import build_settings, read_config_file
from autoannotate.dataset.yolo_seg import parse_label_file
from autoannotate.errors import ConfigError, ImageError
from autoannotate.prompts import prompt_source_for
from autoannotate.prompts.points import LabelPoints, PointLineError, names_from_points, parse_point_lines
from autoannotate.segmenters.sam import BoxSegmenter

runner = CliRunner()
IMAGE = np.zeros((100, 200, 3), np.uint8)  # H 100, W 200

# --- the grammar --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "positive", "negative", "box"),
    [
        ("0 0.5 0.25", [[0.5, 0.25]], [], None),  # one click
        ("0 0.1 0.2 0.3 0.4 0.5 0.6", [[0.1, 0.2], [0.3, 0.4], [0.5, 0.6]], [], None),  # several positive points
        ("0 0.1 0.2 neg 0.3 0.4", [[0.1, 0.2]], [[0.3, 0.4]], None),  # a negative point
        ("0 0.1 0.2 neg 0.3 0.4 0 1", [[0.1, 0.2]], [[0.3, 0.4], [0.0, 1.0]], None),  # negatives, edges included
        ("0 0.5 0.5 box 0.2 0.1 0.8 0.9", [[0.5, 0.5]], [], [0.2, 0.1, 0.8, 0.9]),  # a point and a box
        ("0 box 0.2 0.1 0.8 0.9", [], [], [0.2, 0.1, 0.8, 0.9]),  # a box alone
        ("0 box 0.2 0.1 0.8 0.9 neg 0.5 0.5", [], [[0.5, 0.5]], [0.2, 0.1, 0.8, 0.9]),  # sections in either order
        ("0 0.4 0.4 neg 0.5 0.5 box 0 0 1 1", [[0.4, 0.4]], [[0.5, 0.5]], [0, 0, 1, 1]),  # every section
        ("3.0 0.5 0.5", [[0.5, 0.5]], [], None),  # a float-spelled class id, as YOLO readers accept
        ("  0\t0.5   0.5  ", [[0.5, 0.5]], [], None),  # any whitespace
    ],
    ids=["one", "several", "neg", "negs-edges", "point-box", "box", "box-neg", "all", "float-class", "spaces"],
)
def test_line_grammar(line: str, positive: list, negative: list, box: list | None):
    (row,) = parse_point_lines(f"\n{line}\n\n")
    assert row.line == 2
    np.testing.assert_array_equal(row.positive_norm, np.array(positive, np.float64).reshape(-1, 2))
    np.testing.assert_array_equal(row.negative_norm, np.array(negative, np.float64).reshape(-1, 2))
    assert (row.box_norm is None) if box is None else row.box_norm.tolist() == box


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("x 0.5 0.5", "class id 'x' is not a non-negative integer (expected"),  # no class
        ("-1 0.5 0.5", "class id '-1' is not a non-negative integer"),  # a negative class
        ("0.5 0.5 0.5", "class id '0.5' is not a non-negative integer"),  # the class forgotten
        ("0", "no positive point and no box to prompt with (expected"),  # nothing to prompt with
        ("0 neg 0.5 0.5", "no positive point and no box to prompt with"),  # negatives alone
        ("0 0.5", "odd number of point coordinates (1); expected x y pairs"),
        ("0 0.5 0.5 neg", "'neg' needs x y pairs, got 0 numbers"),
        ("0 0.5 0.5 neg 0.1", "'neg' needs x y pairs, got 1 numbers"),
        ("0 0.5 0.5 box 0.1 0.1 0.9", "'box' needs 4 numbers x1 y1 x2 y2, got 3"),
        ("0 box 0.1 0.1 0.9 0.9 0.5 0.5", "'box' needs 4 numbers x1 y1 x2 y2, got 6"),  # points after the box
        ("0 box 0.8 0.1 0.2 0.9", "box 0.8 0.1 0.2 0.9 needs x1 < x2 and y1 < y2"),
        ("0 box 0.1 0.5 0.9 0.5", "box 0.1 0.5 0.9 0.5 needs x1 < x2 and y1 < y2"),  # no height
        ("0 0.5 0.5 neg 0.1 0.1 neg 0.2 0.2", "'neg' given twice"),
        ("0 0.5 1.5", "coordinate 1.5 outside [0, 1] (coordinates are normalised)"),  # pixels, not normalised
        ("0 0.5 -0.1", "coordinate -0.1 outside [0, 1]"),
        ("0 0.5 nan", "coordinate 'nan' is not a finite number"),
        ("0 0.5 0.5 pos 0.1 0.1", "unexpected 'pos': expected a number, 'neg' or 'box'"),  # an unknown word
        ("0 0.5 0.5 NEG 0.1 0.1", "unexpected 'NEG': expected a number, 'neg' or 'box'"),  # words are lower case
    ],
    ids=[
        "text-class", "negative-class", "no-class", "bare-class", "neg-only", "odd", "empty-neg", "odd-neg",
        "short-box", "long-box", "flipped-box", "flat-box", "neg-twice", "over-one", "below-zero", "nan",
        "unknown-word", "upper-case",
    ],
)  # fmt: skip
def test_bad_lines_name_the_line(line: str, message: str, tmp_path: Path):
    with pytest.raises(PointLineError) as caught:
        parse_point_lines(f"0 0.5 0.5\n{line}\n")
    assert (caught.value.line, caught.value.message[: len(message)]) == (2, message)
    # through the prompt source: an ImageError naming the file and the line
    (tmp_path / "a.txt").write_text(f"0 0.5 0.5\n{line}\n")
    with pytest.raises(ImageError) as image_error:
        LabelPoints(tmp_path, {0: "a"}).boxes([IMAGE], [PurePosixPath("a.jpg")])
    assert str(image_error.value).startswith(f"point labels {str(tmp_path / 'a.txt')!r} line 2: {message}")


def test_prompts_in_pixels(tmp_path: Path):
    """Points in the pixel-index frame (``xn * W - 0.5``, as SAM's point_coords), positives then negatives; boxes in
    pixel edges (``xn * W``, as --boxes-from); xyxy of a point-only instance bounds its points."""
    (tmp_path / "a.txt").write_text(
        "1 0.5 0.5\n2 0.1 0.2 0.3 0.4 neg 0.25 0.5\n0 0.5 0.6 box 0.2 0.1 0.8 0.9\n2 box 0 0 1 1 neg 1 1\n"
    )
    det = LabelPoints(tmp_path, {0: "a", 1: "b", 2: "c"}).boxes([IMAGE], [PurePosixPath("a.jpg")])[0]
    assert det.class_id.tolist() == [1, 2, 0, 2] and det.confidence.tolist() == [1, 1, 1, 1]
    assert det.box_given is not None and det.box_given.tolist() == [False, False, True, True]
    assert det.points is not None
    np.testing.assert_allclose(det.points[0], [[99.5, 49.5, 1]])
    np.testing.assert_allclose(det.points[1], [[19.5, 19.5, 1], [59.5, 39.5, 1], [49.5, 49.5, 0]])
    np.testing.assert_allclose(det.points[2], [[99.5, 59.5, 1]])
    np.testing.assert_allclose(det.points[3], [[199.5, 99.5, 0]])
    assert all(p.dtype == np.float32 for p in det.points)
    np.testing.assert_allclose(det.xyxy, [[100, 50, 100, 50], [20, 20, 60, 50], [40, 10, 160, 90], [0, 0, 200, 100]])


def test_missing_file_is_a_negative_classes_filter_and_unknown_class(tmp_path: Path):
    source = LabelPoints(tmp_path, {0: "a", 1: "b"}, class_ids=(1,))
    assert len(source.boxes([IMAGE], [PurePosixPath("none.jpg")])[0]) == 0
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.txt").write_text("0 0.5 0.5\n1 0.2 0.2 neg 0.3 0.3\n")
    (det,) = source.boxes([IMAGE], [PurePosixPath("sub/a.png")])
    assert det.class_id.tolist() == [1] and det.points is not None and len(det.points[0]) == 2  # its points kept
    (tmp_path / "b.txt").write_text("5 0.5 0.5\n")
    with pytest.raises(ImageError, match=r"use class id 5, which the class names do not have \(ids 0\.\.1\)"):
        source.boxes([IMAGE], [PurePosixPath("b.jpg")])
    assert names_from_points(tmp_path) == {i: f"class{i}" for i in range(6)}
    with pytest.raises(ConfigError, match=r"--points-from '.*nope' is not a directory of point label files"):
        LabelPoints(tmp_path / "nope", {})


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"points_from": "p", "boxes_from": "b"}, "--boxes-from and --points-from both give the prompts; give one"),
        ({"points_from": "p", "prompts": "cat"}, "--points-from takes its points and classes from labels, so"),
        ({"points_from": ""}, "invalid --points-from '': expected a directory"),
    ],
    ids=["boxes-from", "prompts", "empty"],
)
def test_conflicting_settings(values: dict, message: str):
    with pytest.raises(ConfigError, match="^" + message.replace("(", r"\(")):
        build_settings(None, {"data": "imgs", **values})


def test_settings_pick_the_points_source_and_yaml_key(tmp_path: Path):
    config = tmp_path / "c.yaml"
    config.write_text("points-from: pts\nnames: d.yaml\n")
    settings = build_settings(read_config_file(config), {"data": "imgs"})
    assert settings.prompts.points_from == "pts" and prompt_source_for(settings).name == "points"
    assert "points_from" not in build_settings(None, {"data": "imgs"}).label_values()  # earlier runs still match


# --- parity with the reference predictor ----------------------------------------------------------------------------

# A mask pixel may differ only where the reference's full-resolution logit is this close to 0 (as
# test_segment_parity, which explains why), and only for a vanishing share of pixels.
LOGIT_TOLERANCE = 1e-4
THRESHOLD_BAND = 1e-4
MAX_FLIPPED_FRACTION = 1e-5
PARITY_HW = (270, 410)  # non-square
# One click, several clicks, clicks with a negative, a click in a box, a box with a negative, an edge point; two
# instances with one point each and two with three, so that the decoder batches instances of one prompt shape.
PARITY_LINES = [
    "0 0.5 0.45",
    "1 0.21 0.3 0.27 0.36 0.33 0.31",
    "2 0.62 0.61 0.7 0.72 neg 0.66 0.66",
    "1 0.45 0.5 box 0.3 0.35 0.61 0.8",
    "0 box 0.05 0.1 0.42 0.55 neg 0.2 0.3",
    "2 0 1",
    "0 0.8 0.2 0.85 0.25 neg 0.9 0.1",
]


def _reference_predictor(weights: Path):
    with warnings.catch_warnings():  # mobile_sam re-registers timm's TinyViT names on import
        warnings.simplefilter("ignore")
        mobile_sam = pytest.importorskip("mobile_sam")
    sam = mobile_sam.sam_model_registry["vit_t"]()
    sam.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True), strict=True)
    sam.eval()  # after loading, as the MobileSAM README does
    return mobile_sam.SamPredictor(sam), float(sam.mask_threshold)


def _reference_prompts(line: str, hw: tuple[int, int]) -> dict:
    """SamPredictor.predict's keyword arguments for one line, computed here from the documented frames: points at
    ``xn * W - 0.5`` (pixel-centre normalised -> SAM's pixel index), boxes at ``xn * W`` (pixel edges)."""
    h, w = hw
    fields = line.split()[1:]
    box = None
    if "box" in fields:
        at = fields.index("box")
        box = np.array([float(v) for v in fields[at + 1 : at + 5]]) * [w, h, w, h]
        fields = fields[:at] + fields[at + 5 :]
    negative: list[str] = []
    if "neg" in fields:
        at = fields.index("neg")
        fields, negative = fields[:at], fields[at + 1 :]
    pairs = [(float(x), float(y), 1) for x, y in zip(fields[::2], fields[1::2], strict=True)]
    pairs += [(float(x), float(y), 0) for x, y in zip(negative[::2], negative[1::2], strict=True)]
    if not pairs:
        return {"point_coords": None, "point_labels": None, "box": box}
    xy_label = np.array(pairs, np.float64)
    return {"point_coords": xy_label[:, :2] * [w, h] - 0.5, "point_labels": xy_label[:, 2], "box": box}


def test_masks_equal_the_reference_predictor_given_the_same_points(
    tmp_path: Path, mobile_sam_weights: Path, record_property
):
    image_bgr = synthetic_scene_bgr(PARITY_HW, seed=3)
    image_rgb = cv2.cvtColor(image_bgr, cv2.COLOR_BGR2RGB)
    (tmp_path / "scene.txt").write_text("\n".join(PARITY_LINES) + "\n")
    (det,) = LabelPoints(tmp_path, {0: "a", 1: "b", 2: "c"}).boxes([image_bgr], [PurePosixPath("scene.png")])
    ours = BoxSegmenter.from_weights(mobile_sam_weights, "cpu")
    prepared = ours.prepare(image_rgb)
    (result,) = ours.predict([prepared], [det.xyxy], points=[det.points], box_given=[det.box_given])
    (masks,) = ours.segment([prepared], [det])  # what the pipeline calls: the same masks

    predictor, threshold = _reference_predictor(mobile_sam_weights)
    predictor.set_image(image_rgb, image_format="RGB")
    for index, line in enumerate(PARITY_LINES):
        logits_full, iou, low_res = predictor.predict(
            **_reference_prompts(line, PARITY_HW), multimask_output=False, return_logits=True
        )
        expected = logits_full[0] > threshold
        low_res_diff = float(np.abs(result.low_res_logits[index] - low_res[0]).max())
        differs = result.mask(index) != expected
        record_property(f"low_res_diff_{index}", low_res_diff)
        assert low_res_diff <= LOGIT_TOLERANCE, (line, low_res_diff)
        assert abs(float(result.iou_pred[index]) - float(iou[0])) <= LOGIT_TOLERANCE, line
        outside_band = np.abs(logits_full[0]) >= THRESHOLD_BAND
        np.testing.assert_array_equal(result.mask(index)[outside_band], expected[outside_band], err_msg=line)
        assert differs.sum() <= MAX_FLIPPED_FRACTION * differs.size, line
        np.testing.assert_array_equal(masks.mask(index), result.mask(index))
        assert 0 < expected.sum() < expected.size, line  # a real mask, so that equality means something


# --- the command line ------------------------------------------------------------------------------------------------


@pytest.fixture()
def clicks_dataset(tmp_path: Path) -> Path:
    """images/ (a.png, sub/b.png, c.png without a point file), points/ with one file each for a and b, data.yaml
    beside points/ (found as --boxes-from finds it)."""
    root = tmp_path / "ds"
    for rel, hw, seed in [("a.png", (60, 96), 1), ("sub/b.png", (84, 56), 2), ("c.png", (50, 70), 3)]:
        (root / "images" / rel).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / "images" / rel), synthetic_scene_bgr(hw, seed))
    (root / "points" / "sub").mkdir(parents=True)
    (root / "points" / "a.txt").write_text("2 0.5 0.5\n0 0.2 0.3 0.25 0.3 neg 0.8 0.8 box 0.05 0.1 0.5 0.7\n")
    (root / "points" / "sub" / "b.txt").write_text("1 0.4 0.6 0.45 0.65\n")
    (root / "data.yaml").write_text("names:\n  0: cup\n  1: spoon\n  2: plate\n")
    return root


def _run(ds: Path, out: Path, *extra: str) -> list[str]:
    return ["run", "--data", str(ds / "images"), "--points-from", str(ds / "points")] + [
        "--output-dir", str(out), "--polygon", "split", "--json", *extra,
    ]  # fmt: skip


def test_cli_run_writes_segmentation_labels_with_classes_kept_and_resumes(
    clicks_dataset: Path, mobile_sam_weights: Path, tmp_path: Path
):
    out = tmp_path / "seg"
    args = _run(clicks_dataset, out, "--sam-model", str(mobile_sam_weights))
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    events = json_events(result.stdout)
    status = {e["path"].rsplit("images/", 1)[1]: e["status"] for e in events if e["event"] == "image"}
    assert status == {"a.png": "ok", "sub/b.png": "ok", "c.png": "empty"}  # no point file: a negative sample
    assert yaml.safe_load((out / "data.yaml").read_text())["names"] == {0: "cup", 1: "spoon", 2: "plate"}
    assert (out / "labels" / "c.txt").read_text() == ""
    rows = [json.loads(line) for line in (out / "instances.jsonl").read_text().splitlines()]
    by_label = {key: [r for r in rows if r["label"] == key] for key in ("labels/a.txt", "labels/sub/b.txt")}
    assert [(r["class_id"], r["class_name"]) for r in by_label["labels/a.txt"]] == [(2, "plate"), (0, "cup")]
    assert [(r["class_id"], r["class_name"]) for r in by_label["labels/sub/b.txt"]] == [(1, "spoon")]
    # a box IoU only where a box prompted the mask
    assert [r["box_iou"] is None for r in by_label["labels/a.txt"]] == [True, False]
    for key, instances in by_label.items():
        lines = parse_label_file((out / key).read_text())
        for row in instances:
            own = lines[row["line"] - 1 : row["line"] - 1 + row["lines"]] if row["line"] else []
            assert all(cid == row["class_id"] for cid, _ in own)
        assert {cid for cid, _ in lines} <= {r["class_id"] for r in instances}
    manifest = json.loads((out / "autoannotate.json").read_text())
    assert manifest["label_settings"]["points_from"] == str((clicks_dataset / "points").resolve())
    assert manifest["models"]["detector"]["name"] == f"points from {clicks_dataset / 'points'}"

    again = runner.invoke(app, args)  # the same command: every image is done
    assert again.exit_code == 0, again.output
    assert {e["status"] for e in json_events(again.stdout) if e["event"] == "image"} == {"skipped"}

    moved = tmp_path / "other_points"  # other prompts (another folder): the labels are redone
    shutil.copytree(clicks_dataset / "points", moved)
    redo = runner.invoke(app, [*args, "--points-from", str(moved)])
    assert redo.exit_code == 0, redo.output
    assert {e["status"] for e in json_events(redo.stdout) if e["event"] == "image"} == {"ok", "empty"}


def test_cli_bad_line_fails_its_image_only(clicks_dataset: Path, mobile_sam_weights: Path, tmp_path: Path):
    (clicks_dataset / "points" / "sub" / "b.txt").write_text("1 0.4 0.6\n1 0.4\n")
    result = runner.invoke(app, _run(clicks_dataset, tmp_path / "seg", "--sam-model", str(mobile_sam_weights)))
    assert result.exit_code == 1, result.output
    failed = [e for e in json_events(result.stdout) if e["event"] == "image" and e["status"] == "failed"]
    assert [e["error"] for e in failed] == [  # the pipeline's prefix for an error of the prompt stage
        "inference failed: ImageError: "
        f"point labels {str(clicks_dataset / 'points' / 'sub' / 'b.txt')!r} line 2: odd number of point coordinates"
        " (1); expected x y pairs"
    ]


def _save_fastsam_s(path: Path) -> Path:
    """A random FastSAM-s checkpoint as ultralytics pickles it (YOLOv8s-seg, nc=1; see test_fastsam_segmenter)."""
    from ultralytics.nn.tasks import SegmentationModel

    torch.manual_seed(0)
    torch.save({"model": SegmentationModel("yolov8s-seg.yaml", nc=1, verbose=False).half()}, path)
    return path


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--boxes-from", "{ds}/points"], "error: --boxes-from and --points-from both give the prompts; give one of"
         " them"),
        (["--prompts", "cup"], "error: --points-from takes its points and classes from labels, so --prompts has no"
         " detector to prompt; drop one of them"),
        (["--sam-model", "none"], "error: --points-from needs a segmenter that takes point prompts (MobileSAM, SAM,"
         " SAM 2, SAM 3); --sam-model none has no segmenter to prompt: pass --sam-model mobile_sam.pt"),
        (["--sam-model", "{fastsam}"], "error: --points-from needs a segmenter that takes point prompts (MobileSAM,"
         " SAM, SAM 2, SAM 3); fastsam_s (--sam-model {fastsam}) takes boxes only: pass --sam-model mobile_sam.pt"),
    ],
    ids=["boxes-from", "prompts", "no-segmenter", "fastsam"],
)  # fmt: skip
def test_cli_refuses_before_any_image(clicks_dataset: Path, tmp_path: Path, extra: list[str], message: str):
    fastsam = str(_save_fastsam_s(tmp_path / "model.pt")) if "{fastsam}" in " ".join(extra) else ""
    extra = [e.format(ds=clicks_dataset, fastsam=fastsam) for e in extra]
    out = tmp_path / "seg"
    result = runner.invoke(app, _run(clicks_dataset, out, *extra))
    assert result.exit_code == 2, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == [message.format(fastsam=fastsam)]
    assert not (out / "labels").exists()


def test_cli_refuses_writing_over_its_point_labels(clicks_dataset: Path, mobile_sam_weights: Path):
    (clicks_dataset / "labels").symlink_to(clicks_dataset / "points")
    args = ["run", "--data", str(clicks_dataset / "images"), "--points-from", str(clicks_dataset / "labels")]
    result = runner.invoke(app, [*args, "--sam-model", str(mobile_sam_weights), "--output-dir", str(clicks_dataset)])
    assert result.exit_code != 0
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert "--points-from" in line and "overwrite its own point prompts" in line
    assert (clicks_dataset / "points" / "a.txt").read_text().startswith("2 0.5 0.5\n")
