"""Review and reuse inside ``run``: the quality sidecar, --min-mask-score, --coco, --preview, --val-fraction, and
--boxes-from checked against the reference MobileSAM predictor."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from autoannotate.cli import app
from autoannotate.dataset.yolo_seg import parse_label_file
from autoannotate.polygons import polygons_to_mask

runner = CliRunner()
ROW_KEYS = {
    "image",
    "label",
    "line",
    "lines",
    "class_id",
    "class_name",
    "det_conf",
    "sam_iou",
    "stability",
    "mask_area",
    "box_iou",
    "points",
    "fill_iou",
    "dropped",
}


def _scene(h: int, w: int, seed: int) -> tuple[np.ndarray, list[tuple[int, np.ndarray]]]:
    """A BGR scene with a square (class 0) and a disk (class 1); returns the image and (class, mask) pairs."""
    rng = np.random.default_rng(seed)
    image = np.full((h, w, 3), 60, np.uint8)
    image[..., 1] = np.linspace(40, 200, w, dtype=np.uint8)[None, :]
    square = np.zeros((h, w), np.uint8)
    x, y = int(rng.integers(2, w // 3)), int(rng.integers(2, h // 3))
    square[y : y + h // 3, x : x + w // 4] = 1
    disk = np.zeros((h, w), np.uint8)
    cv2.circle(disk, (int(w * 0.7), int(h * 0.6)), min(h, w) // 5, 1, -1)
    image[square > 0] = (30, 30, 220)
    image[disk > 0] = (220, 200, 40)
    return image, [(0, square.astype(bool)), (1, disk.astype(bool))]


def _yolo_box_line(class_id: int, mask: np.ndarray) -> str:
    ys, xs = np.nonzero(mask)
    h, w = mask.shape
    x1, x2, y1, y2 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
    return f"{class_id} {(x1 + x2) / 2 / w:.6f} {(y1 + y2) / 2 / h:.6f} {(x2 - x1) / w:.6f} {(y2 - y1) / h:.6f}"


@pytest.fixture(scope="module")
def detection_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """images/ (two non-square scenes, one in a subfolder), labels/ with boxes of the known masks, data.yaml."""
    root = tmp_path_factory.mktemp("detection_ds")
    for rel, (h, w), seed in [("a.png", (72, 120), 1), ("sub/b.png", (110, 80), 2)]:
        image, objects = _scene(h, w, seed)
        (root / "images" / rel).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / "images" / rel), image)
        label = (root / "labels" / rel).with_suffix(".txt")
        label.parent.mkdir(parents=True, exist_ok=True)
        label.write_text("".join(_yolo_box_line(cid, mask) + "\n" for cid, mask in objects))
    (root / "data.yaml").write_text("names:\n  0: square\n  1: disk\n")
    return root


def _reference_masks(weights: Path, image_bgr: np.ndarray, boxes_xyxy: np.ndarray) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mobile_sam = pytest.importorskip("mobile_sam")
    sam = mobile_sam.sam_model_registry["vit_t"]()
    sam.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True), strict=True)
    sam.eval()
    predictor = mobile_sam.SamPredictor(sam)
    predictor.set_image(cv2.cvtColor(image_bgr, cv2.COLOR_BGR2RGB), image_format="RGB")
    return np.stack([predictor.predict(box=box, multimask_output=False)[0][0] for box in boxes_xyxy])


def test_boxes_from_detection_dataset_matches_reference_masks(
    detection_dataset: Path, mobile_sam_weights: Path, tmp_path: Path
):
    out = tmp_path / "seg"
    result = runner.invoke(
        app,
        ["run", "--data", str(detection_dataset / "images"), "--boxes-from", str(detection_dataset / "labels")]
        + ["--names", str(detection_dataset / "data.yaml"), "--sam-model", str(mobile_sam_weights)]
        + ["--output-dir", str(out), "--polygon", "split", "--tolerance", "0", "--json"],
    )
    assert result.exit_code == 0, result.output
    assert yaml.safe_load((out / "data.yaml").read_text())["names"] == {0: "square", 1: "disk"}
    rows = [json.loads(line) for line in (out / "instances.jsonl").read_text().splitlines()]
    for rel in ["a.png", "sub/b.png"]:
        image = cv2.imread(str(detection_dataset / "images" / rel))
        h, w = image.shape[:2]
        box_lines = (detection_dataset / "labels" / rel).with_suffix(".txt").read_text().split("\n")[:2]
        boxes = []
        for line in box_lines:
            _, cx, cy, bw, bh = (float(v) for v in line.split())
            boxes.append([(cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h])
        expected = _reference_masks(mobile_sam_weights, image, np.array(boxes))
        label_key = f"labels/{Path(rel).with_suffix('.txt').as_posix()}"
        lines = parse_label_file((out / label_key).read_text())
        instances = [r for r in rows if r["label"] == label_key]
        assert [r["class_id"] for r in instances] == [0, 1]  # class ids kept, in box order
        assert [r["class_name"] for r in instances] == ["square", "disk"]
        for row, reference in zip(instances, expected, strict=True):
            own = lines[row["line"] - 1 : row["line"] - 1 + row["lines"]] if row["line"] else []
            assert all(cid == row["class_id"] for cid, _ in own)
            drawn = polygons_to_mask([p * [w, h] for _, p in own], (w, h))  # truncation lands on x
            union = (drawn | reference).sum()
            iou = (drawn & reference).sum() / union if union else 1.0
            assert iou >= 0.999, (rel, row["class_id"], iou, int(drawn.sum()), int(reference.sum()), row)
            assert row["mask_area"] == pytest.approx(int(reference.sum()), abs=max(3, 0.001 * h * w))


def test_sidecar_min_mask_score_coco_preview_and_split(
    tmp_path: Path, yolo_weights: Path, mobile_sam_weights: Path, detection_dataset: Path
):
    out = tmp_path / "out"
    common = ["--det-model", str(yolo_weights), "--sam-model", str(mobile_sam_weights), "--conf", "1e-4"]
    result = runner.invoke(
        app,
        ["run", "--data", str(detection_dataset / "images"), "--output-dir", str(out), "--max-det", "3", *common]
        + ["--coco", "--preview", "1", "--val-fraction", "0.5", "--json"],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.splitlines()[-1])
    rows = [json.loads(line) for line in (out / "instances.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and all(set(r) == ROW_KEYS for r in rows)  # one row per detection
    for row in rows:
        assert 0 <= row["fill_iou"] <= 1 and 0 <= row["box_iou"] <= 1 and 0 <= row["stability"] <= 1
        assert row["class_name"] == yaml.safe_load((out / "data.yaml").read_text())["names"][row["class_id"]]
        if row["lines"]:
            line = (out / row["label"]).read_text().splitlines()[row["line"] - 1]
            assert int(line.split()[0]) == row["class_id"]
            assert row["points"] >= 3
    assert set(summary["sam_iou"]) == {"min", "p10", "median", "p90", "max"}

    # COCO: pycocotools reads it; one annotation per label line; masks non-empty
    from pycocotools.coco import COCO

    assert summary["coco_json"] == str(out / "annotations.coco.json")
    coco = COCO(summary["coco_json"])
    lines_total = sum(len(p.read_text().splitlines()) for p in (out / "labels").rglob("*.txt"))
    assert len(coco.getAnnIds()) == lines_total == summary["instances"]
    assert all(coco.annToMask(a).sum() > 0 for a in coco.loadAnns(coco.getAnnIds()))
    assert {c["name"] for c in coco.loadCats(coco.getCatIds())} >= {"person"}

    # previews: one overlay and a contact sheet
    assert summary["previews"] == str(out / "previews")
    pngs = sorted(p.name for p in (out / "previews").rglob("*.png"))
    assert len(pngs) == 2 and "contact_sheet.png" in pngs

    # split: train.txt + val.txt cover every image once, data.yaml points at them, ultralytics accepts it
    train = (out / "train.txt").read_text().split()
    val = (out / "val.txt").read_text().split()
    assert sorted(train + val) == ["./images/a.png", "./images/sub/b.png"]
    data_yaml = yaml.safe_load((out / "data.yaml").read_text())
    assert (data_yaml["train"], data_yaml["val"]) == ("train.txt", "val.txt")
    from ultralytics.data.utils import check_det_dataset

    assert check_det_dataset(str(out / "data.yaml"), autodownload=False)["nc"] == 80

    # --min-mask-score above every score drops every instance: no lines, all listed as dropped
    strict = tmp_path / "strict"
    result = runner.invoke(
        app,
        ["run", "--data", str(detection_dataset / "images"), "--output-dir", str(strict), "--max-det", "3", *common]
        + ["--min-mask-score", "1.0", "--json"],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.splitlines()[-1])
    assert (summary["dropped"], summary["instances"]) == (6, 0)
    rows = [json.loads(line) for line in (strict / "instances.jsonl").read_text().splitlines()]
    assert all(r["dropped"] and r["line"] is None for r in rows)
    assert all(p.read_text() == "" for p in (strict / "labels").rglob("*.txt"))
