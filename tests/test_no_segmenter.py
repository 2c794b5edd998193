"""``--sam-model none``: a segmentation detector's own masks become the polygons; a detection-only model gives box
labels, a plain YOLO detection dataset that ultralytics' own checker accepts."""

from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
from helpers import json_events, synthetic_scene_bgr
from typer.testing import CliRunner

from autoannotate.cli import app
from autoannotate.dataset.yolo_seg import format_box_line, parse_label_lines
from autoannotate.polygons import polygon_to_mask

runner = CliRunner()
HW = (48, 80)  # landscape: a frame mix-up between (h, w) and (w, h) shows


@pytest.fixture(scope="module")
def yolo_seg_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ``yolo11n-seg.pt``-style checkpoint of the YOLO11n-seg architecture with random weights; its class biases
    set to -3 (as if trained a little) so that it scores boxes above ``--conf 1e-4`` at all."""
    import torch
    from ultralytics import YOLO

    torch.manual_seed(0)
    model = YOLO("yolo11n-seg.yaml")
    for branch in model.model.model[-1].cv3:
        branch[-1].bias.data.fill_(-3.0)
    path = tmp_path_factory.mktemp("weights") / "yolo11n-seg_random.pt"
    model.save(str(path))
    return path


def _images(root: Path, n: int = 2) -> Path:
    root.mkdir(parents=True)
    for i in range(n):
        cv2.imwrite(str(root / f"im{i}.png"), synthetic_scene_bgr(HW, seed=i))
    return root


def _run(data: Path, det: Path, *extra: str) -> list[dict]:
    args = ["run", "--data", str(data), "--det-model", str(det), "--sam-model", "none", "--conf", "1e-4"]
    result = runner.invoke(app, [*args, "--max-det", "3", "--json", *extra])
    assert result.exit_code == 0, result.output
    return json_events(result.stdout)


def test_format_box_line_golden() -> None:
    # a box half outside the image is clipped to it before it is written
    line = format_box_line(2, np.array([-10.0, 12.0, 40.0, 36.0]), (80, 48))
    assert line == "2 0.250000 0.500000 0.500000 0.500000"


def test_detector_masks_equal_ultralytics_predictor(tmp_path: Path, yolo_seg_weights: Path) -> None:
    from ultralytics import YOLO

    from autoannotate.config import build_settings
    from autoannotate.models import load_models

    image = synthetic_scene_bgr(HW, seed=0)
    settings = build_settings(
        None,
        {
            "data": str(tmp_path),
            "det_model": str(yolo_seg_weights),
            "sam_model": "none",
            "conf": 1e-4,
            "max_det": 3,
            "device": "cpu",
        },
    )
    models = load_models(settings)
    assert models.box_labels is False and models.records["segmenter"]["labels"] == "detector masks"
    (det,) = models.prompts.boxes([image], [Path("x.png")])  # type: ignore[list-item]
    (masks,) = models.segmenter.segment([models.segmenter.prepare(image[..., ::-1])], [det])

    (reference,) = YOLO(str(yolo_seg_weights)).predict(
        image, conf=1e-4, max_det=3, retina_masks=True, verbose=False, device="cpu"
    )
    assert reference.masks is not None and len(reference.boxes) == 3 == len(det)
    np.testing.assert_allclose(det.xyxy, reference.boxes.xyxy.numpy(), atol=1e-4)
    expected = reference.masks.data.numpy() > 0.5
    assert expected.shape == (3, *HW) and expected.any()
    for i in range(3):
        np.testing.assert_array_equal(masks.mask(i), expected[i])
    assert np.isnan(masks.scores).all()


def test_seg_detector_masks_become_polygons(tmp_path: Path, yolo_seg_weights: Path) -> None:
    data = _images(tmp_path / "imgs")
    events = _run(data, yolo_seg_weights)
    assert events[-1]["instances"] > 0
    out = tmp_path / "imgs_auto_annotate"
    lines, problems = parse_label_lines((out / "labels" / "im0.txt").read_text())
    assert not problems and lines and all(len(line.polygon_norm) >= 3 for line in lines)
    text = (out / "instances.jsonl").read_text()
    rows = [json.loads(r) for r in text.splitlines()]
    assert "NaN" not in text and rows and all(r["sam_iou"] is None and r["stability"] is None for r in rows)
    manifest = json.loads((out / "autoannotate.json").read_text())
    assert manifest["models"]["segmenter"]["variant"] == "none"


def test_detection_model_writes_box_labels_ultralytics_accepts(tmp_path: Path, yolo_weights: Path) -> None:
    from ultralytics.data.utils import verify_image_label

    data = _images(tmp_path / "imgs")
    events = _run(data, yolo_weights)
    out = tmp_path / "imgs_auto_annotate"
    assert events[-1]["instances"] == 6
    for i in range(2):
        label = out / "labels" / f"im{i}.txt"
        text = label.read_text()
        rows = [line.split() for line in text.splitlines()]
        assert len(rows) == 3 and all(len(r) == 5 for r in rows), text
        # a plain detection dataset: ultralytics' checker reads it as boxes, with no segments and nothing corrupt
        result = verify_image_label((str(data / f"im{i}.png"), str(label), "", False, 80, 0, 0, False))
        _, lb, shape, segments, _, nm, nf, ne, nc, msg = result
        assert (nm, nf, ne, nc) == (0, 1, 0, 0), msg
        assert lb.shape == (3, 5) and segments == [] and tuple(shape) == HW
    rows = [json.loads(r) for r in (out / "instances.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and all(r["sam_iou"] is None and r["box_iou"] is None for r in rows)
    assert all(r["mask_area"] > 0 for r in rows)
    manifest = json.loads((out / "autoannotate.json").read_text())
    assert manifest["models"]["segmenter"]["labels"] == "boxes"
    # the same run again resumes: nothing is redone, nothing rewritten
    before = {p: p.read_bytes() for p in (out / "labels").iterdir()}
    again = _run(data, yolo_weights)
    assert again[-1]["skipped"] == 2
    assert {p: p.read_bytes() for p in (out / "labels").iterdir()} == before


def test_box_labels_rasterise_to_their_box(tmp_path: Path, yolo_weights: Path) -> None:
    # read back the way the other readers do (a box line is its 4 corners): the box it stands for, no more
    data = _images(tmp_path / "imgs", n=1)
    _run(data, yolo_weights)
    lines, problems = parse_label_lines(
        (tmp_path / "imgs_auto_annotate" / "labels" / "im0.txt").read_text(), boxes=True
    )
    assert not problems and len(lines) == 3
    for line in lines:
        polygon_px = line.polygon_norm * np.array([HW[1], HW[0]])
        assert polygon_to_mask(polygon_px, HW).any()
        assert not math.isnan(float(polygon_px.sum()))
