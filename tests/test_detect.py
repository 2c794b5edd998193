"""The detector wrapper: settings reach ultralytics, batches are grouped by shape, outputs stay aligned, class
filters resolve names and ids, and ultralytics' thread reset is undone."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from autoannotate.errors import ConfigError, ModelError
from autoannotate.prompts.yolo import Detector, DetectSettings


class FakeYOLO:
    """Stands in for ``ultralytics.YOLO``: records predict calls, returns one box per image sized by its shape."""

    def __init__(self) -> None:
        self.names = {0: "person", 1: "bicycle", 2: "car"}
        self.calls: list[dict] = []

    def predict(self, images, **kwargs):
        self.calls.append({"shapes": [im.shape for im in images], **kwargs})
        torch.set_num_threads(1)  # what ultralytics' select_device does on CPU
        results = []
        for im in images:
            h, w = im.shape[:2]
            boxes = _Boxes(torch.tensor([[0.0, 0.0, w / 2, h / 2]]), torch.tensor([2.0]), torch.tensor([0.9]))
            results.append(SimpleNamespace(boxes=boxes))
        return results


class _Boxes:
    """Like ultralytics' Boxes: xyxy, cls and conf tensors, and a length."""

    def __init__(self, xyxy: torch.Tensor, cls: torch.Tensor, conf: torch.Tensor) -> None:
        self.xyxy, self.cls, self.conf = xyxy, cls, conf

    def __len__(self) -> int:
        return len(self.xyxy)


def test_settings_reach_predict_and_batches_group_by_shape():
    fake = FakeYOLO()
    settings = DetectSettings(conf=0.4, iou=0.6, imgsz=320, max_det=7, class_ids=(0, 2))
    detector = Detector(fake, settings, torch.device("cpu"))
    images = [np.zeros((40, 60, 3), np.uint8), np.zeros((60, 40, 3), np.uint8), np.zeros((40, 60, 3), np.uint8)]
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        out = detector.detect(images)
        assert torch.get_num_threads() == 2  # restored after the fake reset it to 1
    finally:
        torch.set_num_threads(before)
    assert [call["shapes"] for call in fake.calls] == [[(40, 60, 3), (40, 60, 3)], [(60, 40, 3)]]
    call = fake.calls[0]
    assert (call["conf"], call["iou"], call["imgsz"], call["max_det"], call["classes"]) == (0.4, 0.6, 320, 7, [0, 2])
    assert call["batch"] == 2 and call["verbose"] is False
    assert "half" not in call and "quantize" not in call  # fp32: no deprecated precision argument at all
    # aligned with the input order, in each image's own pixel frame
    np.testing.assert_allclose(out[1].xyxy, [[0, 0, 20, 30]])
    np.testing.assert_allclose(out[2].xyxy, [[0, 0, 30, 20]])
    assert out[0].class_id.dtype == np.int64 and out[0].class_id.tolist() == [2]
    assert detector.detect([]) == []


def test_resolve_classes():
    detector = Detector(FakeYOLO(), DetectSettings(), torch.device("cpu"))
    assert detector.resolve_classes(None) is None
    assert detector.resolve_classes(["Person", "2", "car"]) == (0, 2)
    with pytest.raises(ConfigError, match="unicorn"):
        detector.resolve_classes(["unicorn"])
    with pytest.raises(ConfigError, match=r"0\.\.2"):
        detector.resolve_classes(["9"])


def test_from_weights_errors(tmp_path: Path, mobile_sam_weights: Path):
    with pytest.raises(ModelError, match="--det-model"):
        Detector.from_weights(str(tmp_path / "missing.pt"), torch.device("cpu"))
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x80\x04 not a pickle")
    with pytest.raises(ModelError, match="not a loadable YOLO detector"):
        Detector.from_weights(str(garbage), torch.device("cpu"))
    with pytest.raises(ModelError) as info:
        Detector.from_weights(str(mobile_sam_weights), torch.device("cpu"))
    assert "\n" not in str(info.value)


def test_half_asks_ultralytics_for_fp16():
    fake = FakeYOLO()
    Detector(fake, DetectSettings(half=True), torch.device("cpu")).detect([np.zeros((8, 8, 3), np.uint8)])
    assert fake.calls[0].get("quantize") == 16 or fake.calls[0].get("half") is True


@pytest.mark.parametrize("agnostic", [False, True])
def test_agnostic_nms_is_always_passed_to_ultralytics(agnostic: bool):
    """Given either way: YOLOE's predict turns it on when it is left out."""
    fake = FakeYOLO()
    Detector(fake, DetectSettings(agnostic_nms=agnostic), torch.device("cpu")).detect([np.zeros((8, 8, 3), np.uint8)])
    assert fake.calls[0]["agnostic_nms"] is agnostic


def test_pose_and_classification_models(tmp_path: Path) -> None:
    """A pose model (a person detector with keypoints, as yolo11n-pose.pt is) gives its boxes as prompts, exactly
    the boxes ultralytics' own predict gives; a classifier has no boxes and is refused in one line."""
    from ultralytics import YOLO

    # All five boxes score the same: ultralytics' NMS and torchvision's keep different ones of tied boxes, so both
    # use torchvision's (AUTOANNOTATE_NMS=torchvision, set by conftest.py; its predict below imports torchvision).
    torch.manual_seed(0)
    pose = YOLO("yolo11n-pose.yaml")
    for branch in pose.model.model[-1].cv3:  # scores above --conf 1e-4, as if trained a little
        branch[-1].bias.data.fill_(-3.0)
    pose_path = tmp_path / "pose_random.pt"
    pose.save(str(pose_path))
    detector = Detector.from_weights(str(pose_path), torch.device("cpu"), onednn=False).with_settings(
        DetectSettings(conf=1e-4, iou=0.45, imgsz=320, max_det=5)
    )
    image = np.random.default_rng(0).integers(0, 255, (96, 128, 3), dtype=np.uint8)
    ours = detector.detect([image])[0]
    theirs = YOLO(str(pose_path)).predict(image, conf=1e-4, iou=0.45, imgsz=320, max_det=5, verbose=False)[0].boxes
    assert len(ours.xyxy) == len(theirs) == 5
    np.testing.assert_allclose(ours.xyxy, theirs.xyxy.numpy(), atol=1e-3)

    classifier = YOLO("yolo11n-cls.yaml")
    cls_path = tmp_path / "cls_random.pt"
    classifier.save(str(cls_path))
    with pytest.raises(ModelError, match=r"is a YOLO 'classify' model, not a detector") as info:
        Detector.from_weights(str(cls_path), torch.device("cpu"))
    assert "\n" not in str(info.value)


def test_warm_up_overlaps_the_segmenter_loading_and_changes_no_detection(
    tmp_path: Path, yolo_weights: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``load_models`` starts the detector's first-call costs in a thread while the segmenter loads, and joins it
    before returning: the predictor is then set up, and the boxes equal those of a detector never warmed up."""
    import threading

    from autoannotate import models as models_module
    from autoannotate.config import build_settings

    started = threading.Event()
    real_warm_up, real_load = Detector.warm_up, models_module.load_segmenter

    def warm_up(self: Detector) -> None:
        started.set()
        real_warm_up(self)

    def load_segmenter(*args: object, **kwargs: object) -> object:
        assert started.wait(60)  # the warm-up runs meanwhile
        return real_load(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Detector, "warm_up", warm_up)
    monkeypatch.setattr(models_module, "load_segmenter", load_segmenter)
    options = {"data": str(tmp_path), "det_model": str(yolo_weights), "sam_model": "none", "device": "cpu"}
    settings = build_settings(None, {**options, "conf": 1e-4, "max_det": 4})
    models = models_module.load_models(settings)
    assert not [t for t in threading.enumerate() if t.name == "autoannotate-warm-up"]
    assert models.prompts.model.predictor is not None  # type: ignore[attr-defined]
    image = np.random.default_rng(3).integers(0, 255, (96, 128, 3), dtype=np.uint8)
    cold = Detector.from_weights(str(yolo_weights), torch.device("cpu")).with_settings(models.prompts.settings)  # type: ignore[attr-defined]
    (warm_boxes,) = models.prompts.boxes([image], [Path("x.png")])  # type: ignore[list-item]
    (cold_boxes,) = cold.detect([image])
    assert len(warm_boxes.xyxy) == 4
    np.testing.assert_array_equal(warm_boxes.xyxy, cold_boxes.xyxy)
    np.testing.assert_array_equal(warm_boxes.confidence, cold_boxes.confidence)


def test_cpu_detector_skips_ultralytics_warm_up_and_its_torchvision_import(yolo_weights: Path) -> None:
    """On CPU ultralytics' warm-up runs no forward and only imports torchvision (2-3 s with ``torch._dynamo``): it is
    marked done through the public ``on_predict_start`` callback, so a whole detection never imports torchvision.
    In a fresh interpreter, since torchvision stays imported once anything imported it."""
    import subprocess
    import sys

    script = f"""
import sys, numpy as np, torch
from autoannotate.prompts.yolo import Detector, DetectSettings
d = Detector.from_weights({str(yolo_weights)!r}, torch.device("cpu"))
d = d.with_settings(DetectSettings(conf=1e-4, max_det=5))
d.warm_up()
(found,) = d.detect([np.full((96, 128, 3), 90, np.uint8)])
print(len(found.xyxy), d.model.predictor.done_warmup, "torchvision" in sys.modules)
"""
    env = {key: value for key, value in os.environ.items() if key != "AUTOANNOTATE_NMS"}  # the default
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["5", "True", "False"]
    kept = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=300,
        env=env | {"AUTOANNOTATE_NMS": "torchvision"},
    )
    assert kept.returncode == 0, kept.stderr
    assert kept.stdout.split() == ["5", "True", "True"]  # ultralytics' own warm-up: torchvision imported


def test_letterboxed_ahead_gives_a_direct_calls_boxes_and_batches_by_letterboxed_shape(yolo_weights: Path) -> None:
    """``prepare`` (run in the decode pool) letterboxes as the predictor would; ``detect`` then batches images of
    different sizes that share a letterboxed shape (1080p, 4K and 720p frames) in one call, and maps their boxes
    back to each image: classes and scores as a one-image call on the raw pixels gives, boxes within float32
    rounding, in the image's frame."""
    from autoannotate.prompts.yolo import Letterboxed

    detector = Detector.from_weights(str(yolo_weights), torch.device("cpu"))
    detector = detector.with_settings(DetectSettings(conf=1e-4, max_det=12))
    rng = np.random.default_rng(7)
    shapes = [(1080, 1920), (2160, 3840), (720, 1280), (600, 800), (333, 500)]
    images = [rng.integers(0, 255, (h, w, 3), dtype=np.uint8) for h, w in shapes]
    assert detector.prepare(images[0]) is images[0]  # no predictor set up yet: the image as it is
    detector.warm_up()
    direct = [detector.detect([image])[0] for image in images]
    prepared = [detector.prepare(image) for image in images]
    assert all(isinstance(p, Letterboxed) for p in prepared)
    assert [p.pixels_bgr.shape[:2] for p in prepared] == [(384, 640)] * 3 + [(480, 640), (448, 640)]  # type: ignore[union-attr]
    calls: list[int] = []
    predict = detector.model.predict  # type: ignore[attr-defined]

    def counting_predict(images, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(len(images))
        return predict(images, **kwargs)

    detector.model.predict = counting_predict  # type: ignore[attr-defined]
    batched = detector.detect(prepared)
    assert calls == [3, 1, 1]  # the three 16:9 frames in one call
    for (h, w), want, got in zip(shapes, direct, batched, strict=True):
        assert len(got) == len(want) == 12
        np.testing.assert_array_equal(got.class_id, want.class_id)
        np.testing.assert_allclose(got.confidence, want.confidence, rtol=0, atol=1e-5)
        np.testing.assert_allclose(got.xyxy, want.xyxy, rtol=0, atol=2e-3)
        assert got.xyxy.dtype == np.float32
        assert (got.xyxy >= 0).all() and (got.xyxy[:, [0, 2]] <= w).all() and (got.xyxy[:, [1, 3]] <= h).all()
    # alone, a letterboxed image gives the direct call's boxes exactly
    (alone,) = detector.detect([prepared[3]])
    np.testing.assert_array_equal(alone.xyxy, direct[3].xyxy)
    np.testing.assert_array_equal(alone.confidence, direct[3].confidence)


def test_masks_wanted_an_export_or_no_warm_up_are_not_letterboxed_ahead(tmp_path: Path) -> None:
    """A segmentation model asked for its masks gets the image itself (its masks come at the size of the pixels
    given), so does a model that is not a torch module (an export: its backend fixes its input on first use) and a
    detector never warmed up; a segmentation model used for its boxes alone is letterboxed."""
    from ultralytics import YOLO

    from autoannotate.prompts.yolo import Letterboxed

    torch.manual_seed(0)
    path = tmp_path / "yolo11n-seg_random.pt"
    YOLO("yolo11n-seg.yaml").save(str(path))
    image = np.zeros((100, 160, 3), np.uint8)
    loaded = Detector.from_weights(str(path), torch.device("cpu"))
    masks = loaded.with_settings(DetectSettings(masks=True))
    masks.warm_up()
    assert masks.gives_masks and masks.prepare(image) is image
    boxes_only = loaded.with_settings(DetectSettings())
    assert boxes_only.prepare(image) is image  # not warmed up
    boxes_only.warm_up()
    assert isinstance(boxes_only.prepare(image), Letterboxed)
    export = Detector(SimpleNamespace(task="detect", model="model.onnx"), DetectSettings(), torch.device("cpu"))
    export.warm_up()  # runs nothing: an export's backend may fix its batch on its first call
    assert export.prepare(image) is image
