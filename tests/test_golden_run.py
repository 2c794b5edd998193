"""A golden run: whole ``autoannotate run``s with the stand-in models, whose outputs must stay byte-identical.

The expected files under ``tests/data/golden/<case>/`` were recorded with the code from before the package was
reshaped into plug-ins (commit b797367), so any refactor that changes a label, data.yaml, ``instances.jsonl``, the
COCO JSON, the train/val lists or a ``--json`` event fails here. Paths are written relative to the run's root
(``<ROOT>``) and the two timing fields of the summary are dropped; everything else is compared byte for byte, except
that where a label, ``instances.jsonl`` or the COCO file differs, it must still agree to a pixel: the random
stand-in's logits sit at the threshold over whole images, so another CPU's float rounding can move a mask pixel
(its masks, mask areas and boxes are compared within 16 pixels or 0.2%, its other figures within 0.01).

The random stand-in detector scores many boxes alike: the files were recorded with torchvision's NMS, which
``conftest.py`` has every test use (``AUTOANNOTATE_NMS=torchvision``).

To record them again (only when an output change is intended, and say so in the commit):
``AUTOANNOTATE_RECORD_GOLDEN=1 pytest tests/test_golden_run.py``.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from helpers import stand_in_model_args, synthetic_scene_bgr
from typer.testing import CliRunner

from autoannotate.cli import app

GOLDEN = Path(__file__).parent / "data" / "golden"
SAMPLE_DATA = Path(__file__).parent.parent / "sample_data" / "images"
RECORD = os.environ.get("AUTOANNOTATE_RECORD_GOLDEN") == "1"
TIMINGS = ("seconds", "images_per_s")
COMPARED = ("data.yaml", "instances.jsonl", "annotations.coco.json", "train.txt", "val.txt")


def _images(root: Path) -> Path:
    """sample_data's photos plus generated ones: non-square, grayscale, a subfolder, PNG and JPEG."""
    images = root / "images"
    shutil.copytree(SAMPLE_DATA, images)
    cv2.imwrite(str(images / "wide_scene.png"), synthetic_scene_bgr((180, 320), seed=1))
    cv2.imwrite(str(images / "street" / "tall_scene.jpg"), synthetic_scene_bgr((300, 170), seed=2))
    gray = cv2.cvtColor(synthetic_scene_bgr((240, 200), seed=3), cv2.COLOR_BGR2GRAY)
    cv2.imwrite(str(images / "gray_scene.png"), gray)
    return images


def _box_labels(root: Path, images: Path) -> Path:
    """YOLO detection labels (class cx cy w h) for every image, and a names file: the --boxes-from case."""
    labels = root / "boxes" / "labels"
    rng = np.random.default_rng(7)
    for image in sorted(p for p in images.rglob("*") if p.is_file()):
        rel = image.relative_to(images).with_suffix(".txt")
        (labels / rel).parent.mkdir(parents=True, exist_ok=True)
        rows = []
        for class_id in (0, 1, 0):
            cx, cy = rng.uniform(0.3, 0.7, 2)
            w, h = rng.uniform(0.15, 0.5, 2)
            rows.append(f"{class_id} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}\n")
        (labels / rel).write_text("".join(rows), encoding="utf-8")
    (root / "boxes" / "data.yaml").write_text("names:\n  0: cat\n  1: dog\n", encoding="utf-8")
    return labels


CASES = {
    # the detector, COCO and a train/val split
    "detector": lambda root, models: [
        "--data",
        str(root / "images"),
        *models,
        "--coco",
        "--val-fraction",
        "0.4",
    ],
    # --boxes-from label prompts, split polygons, exact contours, a class filter by name
    "boxes_from": lambda root, models: [
        "--data",
        str(root / "images"),
        "--boxes-from",
        str(root / "boxes" / "labels"),
        "--names",
        str(root / "boxes" / "data.yaml"),
        "--sam-model",
        models[models.index("--sam-model") + 1],
        "--output-dir",
        str(root / "seg"),
        "--polygon",
        "split",
        "--tolerance",
        "0",
        "--classes",
        "cat",
        "--coco",
    ],
}


def _pixel_slack(area: float) -> float:
    """How many mask pixels a re-rounded mask may differ by: 16, or 0.2% of its area."""
    return max(16.0, 0.002 * area)


def _image_hw(images: Path, label_rel: str) -> tuple[int, int]:
    stem = Path(label_rel).relative_to("labels").with_suffix("")
    (image,) = [p for p in images.glob(f"{stem}.*") if p.is_file()]
    return cv2.imread(str(image), cv2.IMREAD_UNCHANGED).shape[:2]


def _rasterised_by_class(text: str, hw: tuple[int, int]) -> tuple[list[int], dict[int, np.ndarray]]:
    """The class of each line, and per class the union of its lines' polygons filled into one ``(H, W)`` mask (one
    mask per class, not per line: a ``--polygon split`` label of the random stand-in has thousands of lines)."""
    from autoannotate.dataset.yolo_seg import parse_label_file

    classes: list[int] = []
    masks: dict[int, np.ndarray] = {}
    for class_id, polygon_norm in parse_label_file(text):
        classes.append(class_id)
        mask = masks.setdefault(class_id, np.zeros(hw, np.uint8))
        cv2.fillPoly(mask, [np.round(polygon_norm * [hw[1], hw[0]]).astype(np.int32)], 1)
    return classes, masks


def _assert_labels_agree(found: str, expected: str, hw: tuple[int, int], where: str) -> None:
    """Same number of lines per class, and per class the same pixels to within the slack (a pixel's move can reorder
    the parts that ``--polygon split`` writes as lines)."""
    (ours_classes, ours), (golden_classes, golden) = _rasterised_by_class(found, hw), _rasterised_by_class(expected, hw)
    assert sorted(ours_classes) == sorted(golden_classes), f"{where}: other lines than the golden run"
    for class_id, golden_mask in golden.items():
        differ = int((ours[class_id] != golden_mask).sum())
        assert differ <= _pixel_slack(golden_mask.sum()), f"{where} class {class_id}: {differ} pixels differ"


def _assert_instances_agree(found: str, expected: str, where: str) -> None:
    ours = [json.loads(line) for line in found.splitlines()]
    golden = [json.loads(line) for line in expected.splitlines()]
    assert len(ours) == len(golden), f"{where}: {len(ours)} rows, the golden run has {len(golden)}"
    for a, b in zip(ours, golden, strict=True):
        assert sorted(a) == sorted(b), where
        for key, value in b.items():
            if key == "mask_area":
                assert abs(a[key] - value) <= _pixel_slack(value), (where, key, a[key], value)
            elif key == "points":
                assert abs(a[key] - value) <= max(8, 0.02 * value), (where, key, a[key], value)
            elif isinstance(value, float):
                assert a[key] == pytest.approx(value, abs=0.01), (where, key, a[key], value)
            else:
                assert a[key] == value, (where, key, a[key], value)


def _assert_coco_agrees(found: str, expected: str, where: str) -> None:
    """Same images and categories; per image and category the same number of annotations and the same total area to
    within the slack (the polygons themselves are the label files', checked rasterised)."""
    ours, golden = json.loads(found), json.loads(expected)
    for key in ("info", "licenses", "images", "categories"):
        assert ours[key] == golden[key], f"{where}: {key}"

    def per_image_category(coco: dict) -> dict[tuple[int, int], tuple[int, float]]:
        totals: dict[tuple[int, int], tuple[int, float]] = {}
        for a in coco["annotations"]:
            count, area = totals.get((a["image_id"], a["category_id"]), (0, 0.0))
            totals[(a["image_id"], a["category_id"])] = (count + 1, area + a["area"])
        return totals

    ours_totals, golden_totals = per_image_category(ours), per_image_category(golden)
    assert sorted(ours_totals) == sorted(golden_totals), where
    for key, (count, area) in golden_totals.items():
        assert ours_totals[key][0] == count, (where, key, ours_totals[key], count)
        assert abs(ours_totals[key][1] - area) <= _pixel_slack(area), (where, key, ours_totals[key], area)


def _normalised(text: str, root: Path) -> str:
    return text.replace(str(root), "<ROOT>")


def _outputs(out: Path, stdout: str, root: Path) -> dict[str, str]:
    """Every compared file of the output dir (labels included), and the --json events, as normalised text."""
    found: dict[str, str] = {}
    for path in sorted((out / "labels").rglob("*.txt")):
        found[path.relative_to(out).as_posix()] = path.read_text(encoding="utf-8")
    for name in COMPARED:
        if (out / name).is_file():
            found[name] = _normalised((out / name).read_text(encoding="utf-8"), root)
    events = []
    for line in stdout.splitlines():
        event = json.loads(line)
        for key in TIMINGS:
            event.pop(key, None)
        events.append(json.dumps(event, ensure_ascii=False))
    found["events.jsonl"] = _normalised("".join(f"{e}\n" for e in events), root)
    return found


@pytest.mark.parametrize("case", sorted(CASES))
def test_golden_run_is_byte_identical(case: str, tmp_path: Path, yolo_weights: Path, mobile_sam_weights: Path) -> None:
    root = tmp_path / "golden"
    images = _images(root)
    _box_labels(root, images)
    args = CASES[case](root, stand_in_model_args(yolo_weights, mobile_sam_weights, 3))
    result = CliRunner().invoke(app, ["run", *args, "--json", "--quiet"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    out = root / "seg" if case == "boxes_from" else root
    found = _outputs(out, result.stdout, root)
    expected_dir = GOLDEN / case
    if RECORD:
        shutil.rmtree(expected_dir, ignore_errors=True)
        for rel, text in found.items():
            (expected_dir / rel).parent.mkdir(parents=True, exist_ok=True)
            (expected_dir / rel).write_text(text, encoding="utf-8")
    expected = {
        p.relative_to(expected_dir).as_posix(): p.read_text(encoding="utf-8")
        for p in sorted(expected_dir.rglob("*"))
        if p.is_file()
    }
    assert sorted(found) == sorted(expected)
    for rel in expected:
        if found[rel] == expected[rel]:
            continue
        # Not byte-identical: the random stand-in's logits sit at the threshold over whole images, so float rounding
        # of another CPU or library build can move a mask pixel. Masks, figures and boxes must still agree to a pixel.
        if rel.startswith("labels/"):
            _assert_labels_agree(found[rel], expected[rel], _image_hw(root / "images", rel), f"{case}: {rel}")
        elif rel == "instances.jsonl":
            _assert_instances_agree(found[rel], expected[rel], f"{case}: {rel}")
        elif rel == "annotations.coco.json":
            _assert_coco_agrees(found[rel], expected[rel], f"{case}: {rel}")
        else:
            pytest.fail(f"{case}: {rel} differs from the golden run")
    assert any(rel.startswith("labels/") and found[rel] for rel in found), "the golden run wrote no polygon"
