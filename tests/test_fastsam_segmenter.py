"""FastSAM segmenter: recognised from the checkpoint's pickle opcodes (any file name), one mask per box equal to the
mask ultralytics' own ``FastSAM`` predictor gives for that box, batched equal to one image at a time, and an empty
mask per box where the model finds nothing. Random weights (YOLOv8-seg architectures, nc=1 as FastSAM), so a very
low confidence threshold stands in for trained scores."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from autoannotate.errors import ModelError
from autoannotate.segmenters import load_segmenter
from autoannotate.segmenters.fastsam import FastSAMSegmenter, FastSAMSettings, recognise_fastsam
from autoannotate.types import Detections

LOW = FastSAMSettings(conf=1e-4, max_det=30)  # random weights score ~0.01
# Several boxes on a non-square image: float corners (truncated to int as ultralytics does), one past the border,
# the whole image, and two that pick the same mask.
BOXES_XYXY = np.array(
    [[10, 10, 100, 100], [50.7, 60.2, 300, 200], [0, 0, 352, 240], [200, 5, 351.5, 80], [120, 100, 400, 260]],
    np.float32,
)


def _save_ultralytics_model(path: Path, cfg: str) -> Path:
    """A random ultralytics model pickled as its checkpoints are (``{"model": fp16 module, "train_args": ...}``)."""
    from ultralytics.nn.tasks import DetectionModel, SegmentationModel

    torch.manual_seed(0)
    task = "segment" if "-seg" in cfg else "detect"
    model = (SegmentationModel if task == "segment" else DetectionModel)(cfg, nc=1, verbose=False)
    torch.save({"model": model.half(), "train_args": {"task": task}}, path)
    return path


@pytest.fixture(scope="module")
def fastsam_s(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # A misleading name: recognition is by content.
    return _save_ultralytics_model(tmp_path_factory.mktemp("fastsam") / "weights.pt", "yolov8s-seg.yaml")


def _image(height: int = 240, width: int = 352, seed: int = 0) -> np.ndarray:
    """(H, W, 3) uint8 RGB: coloured rectangles on grey."""
    rng = np.random.default_rng(seed)
    image = np.full((height, width, 3), 90, np.uint8)
    for _ in range(6):
        x, y = int(rng.integers(0, width - 40)), int(rng.integers(0, height - 40))
        colour = tuple(int(c) for c in rng.integers(0, 255, 3))
        cv2.rectangle(image, (x, y), (x + int(rng.integers(20, 120)), y + int(rng.integers(20, 100))), colour, -1)
    return image


def test_fastsam_checkpoints_are_recognised_by_content(tmp_path: Path, fastsam_s: Path) -> None:
    assert recognise_fastsam(fastsam_s) == "fastsam_s"
    segmenter = load_segmenter(fastsam_s, "cpu")
    assert isinstance(segmenter, FastSAMSegmenter)
    assert (segmenter.variant, segmenter.weights_path) == ("fastsam_s", fastsam_s)
    # the x size from its stem width (80 channels), under a name that says nothing either
    assert recognise_fastsam(_save_ultralytics_model(tmp_path / "model.bin", "yolov8x-seg.yaml")) == "fastsam_x"


def test_other_files_are_not_fastsam(tmp_path: Path) -> None:
    detector = _save_ultralytics_model(tmp_path / "detector.pt", "yolov8n.yaml")
    other_width = _save_ultralytics_model(tmp_path / "nano_seg.pt", "yolov8n-seg.yaml")  # no FastSAM release
    state_dict = tmp_path / "state_dict.pt"
    torch.save({"image_encoder.weight": torch.zeros(2)}, state_dict)
    legacy = tmp_path / "legacy.pt"
    torch.save({"image_encoder.weight": torch.zeros(2)}, legacy, _use_new_zipfile_serialization=False)
    text = tmp_path / "text.pt"
    text.write_text("not a checkpoint")
    for path in (detector, other_width, state_dict, legacy, text):
        assert recognise_fastsam(path) is None, path
    # the registry goes on to read the detector as a state dict, which refuses the pickle in one line
    with pytest.raises(ModelError) as err:
        load_segmenter(detector, "cpu")
    message = str(err.value)
    assert "\n" not in message and "Ultralytics model checkpoint" in message and "--sam-model" in message


def test_masks_equal_ultralytics_fastsam_box_prompts(fastsam_s: Path) -> None:
    from ultralytics import FastSAM

    image_rgb = _image()
    segmenter = FastSAMSegmenter(fastsam_s, "cpu", variant="fastsam_s", settings=LOW)
    (masks,) = segmenter.segment([segmenter.prepare(image_rgb)], [Detections.from_boxes(BOXES_XYXY)])
    assert masks.held is not None and masks.held.shape == (len(BOXES_XYXY), 240, 352) and masks.held.dtype == bool
    assert np.isnan(masks.stability).all()

    reference = FastSAM(str(fastsam_s))
    image_bgr = np.ascontiguousarray(image_rgb[..., ::-1])
    picked_sizes = set()
    for index, box in enumerate(BOXES_XYXY):
        # one box per call: ultralytics' prompt() returns the union of the picked masks, not one per box
        (result,) = reference(
            image_bgr, bboxes=[box.tolist()], conf=LOW.conf, iou=LOW.iou, max_det=LOW.max_det, retina_masks=True
        )
        assert len(result) == 1
        np.testing.assert_array_equal(masks.mask(index), result.masks.data[0].bool().numpy())
        assert masks.scores[index] == np.float32(result.boxes.conf[0])
        picked_sizes.add(int(masks.mask(index).sum()))
    assert len(picked_sizes) > 1  # the boxes do pick different masks


def test_batched_equals_one_image_at_a_time(fastsam_s: Path) -> None:
    segmenter = FastSAMSegmenter(fastsam_s, "cpu", variant="fastsam_s", settings=LOW)
    images = [_image(seed=1), _image(seed=2), _image(200, 160, seed=3), _image(seed=4)]
    prompts = [
        Detections.from_boxes(BOXES_XYXY[:3]),
        Detections.from_boxes(BOXES_XYXY[2:]),
        Detections.from_boxes(np.array([[5, 5, 150, 120], [30, 40, 60, 190]], np.float32)),
        Detections.empty(),  # no box: not run through the model
    ]
    prepared = [segmenter.prepare(image) for image in images]
    batched = segmenter.segment(prepared, prompts)
    single = [segmenter.segment([p], [d])[0] for p, d in zip(prepared, prompts, strict=True)]
    assert [len(m) for m in batched] == [3, 3, 2, 0]
    for together, alone in zip(batched, single, strict=True):
        assert together.original_hw == alone.original_hw
        np.testing.assert_array_equal(together.held, alone.held)
        np.testing.assert_array_equal(together.scores, alone.scores)


def test_nothing_found_gives_an_empty_mask_per_box(fastsam_s: Path) -> None:
    segmenter = FastSAMSegmenter(fastsam_s, "cpu", variant="fastsam_s", settings=FastSAMSettings(conf=0.99))
    (masks,) = segmenter.segment([segmenter.prepare(_image())], [Detections.from_boxes(BOXES_XYXY[:2])])
    assert len(masks) == 2 and masks.original_hw == (240, 352)
    assert not masks.mask(0).any() and not masks.mask(1).any()
    assert np.isnan(masks.scores).all() and np.isnan(masks.stability).all()


def test_cli_run_with_a_fastsam_checkpoint(tmp_path: Path, yolo_weights: Path, fastsam_s: Path) -> None:
    """End to end at FastSAM's default confidence (no CLI flag sets it): random weights find no mask, so every box
    gets an empty mask and every image an empty label file; the manifest records the variant."""
    import json

    from helpers import json_events, stand_in_model_args
    from typer.testing import CliRunner

    from autoannotate.cli import app

    data, out = tmp_path / "data", tmp_path / "out"
    data.mkdir()
    for seed, hw in enumerate([(60, 96), (72, 48)]):
        cv2.imwrite(str(data / f"im{seed}.png"), _image(*hw, seed=seed)[..., ::-1])
    args = ["run", "--data", str(data), "--output-dir", str(out), "--json"]
    result = CliRunner().invoke(app, [*args, *stand_in_model_args(yolo_weights, fastsam_s, max_det=2)])
    assert result.exit_code == 0, result.output
    summary = json_events(result.stdout)[-1]
    assert (summary["images"], summary["failed"], summary["empty_masks"]) == (2, 0, 4)
    manifest = json.loads((out / "autoannotate.json").read_text())
    assert manifest["models"]["segmenter"]["variant"] == "fastsam_s"
