"""SAM 3 interactive segmenter: recognition of the real checkpoint layouts (SAM 3, SAM 3.1), the gated-weights
message, masks against Meta's reference predictor, batching, and one end-to-end run.

One random-weight model (474M parameters) is built per module. Its encoder takes ~1.5 min per image at 1008 px on one
CPU core, so the parity and batching tests run it at 336 px (``SAM3Model.set_imgsz``: the same modules and the same
code path, 9x fewer tokens); the end-to-end run loads the checkpoint file as a user's run does, at 1008 px, one image.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import torch

from autoannotate.errors import ModelError
from autoannotate.segmenters import load_segmenter
from autoannotate.segmenters.sam3_interactive import (
    Sam3Segmenter,
    build_sam3_model,
    checkpoint_state_dict,
    explain_sam3,
    recognise_sam3,
)
from autoannotate.types import Detections

SMALL_SIDE = 336  # 24 x 24 ViT tokens: one attention window
BOXES_XYXY = np.array([[5, 4, 60, 50], [30, 10, 90, 58], [0, 0, 95.5, 59.5]], np.float64)  # in a 60 x 96 image
SECOND_BOXES_XYXY = np.array([[4, 6, 40, 70], [10, 2, 30, 30.0]])  # in a 72 x 48 image


@pytest.fixture(scope="module")
def sam3_model() -> torch.nn.Module:
    """The random-weight interactive SAM 3 model (1008 px, as built)."""
    torch.manual_seed(0)
    return build_sam3_model()


@pytest.fixture(scope="module")
def file_layout(sam3_model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's tensors under the names a real ``sam3.pt`` gives them."""
    return checkpoint_state_dict(sam3_model)


@pytest.fixture(scope="module")
def sam3_checkpoint(tmp_path_factory: pytest.TempPathFactory, file_layout: dict[str, torch.Tensor]) -> Path:
    """``file_layout`` saved as a checkpoint (~1.9 GB), under a name that says nothing."""
    path = tmp_path_factory.mktemp("sam3") / "weights.pt"
    torch.save(file_layout, path)
    return path


@pytest.fixture(scope="module")
def small_model(sam3_model: torch.nn.Module, sam3_checkpoint: Path) -> torch.nn.Module:
    """``sam3_model`` switched to 336 px (after the checkpoint was written: the image size is no tensor in it)."""
    sam3_model.set_imgsz((SMALL_SIDE, SMALL_SIDE))
    return sam3_model


def _image(height: int = 60, width: int = 96, seed: int = 0) -> np.ndarray:
    """A smooth non-square ``(H, W, 3)`` uint8 RGB image."""
    rng = np.random.default_rng(seed)
    return cv2.GaussianBlur(rng.integers(0, 256, (height, width, 3)).astype(np.uint8), (7, 7), 0)


def _sam31_layout(file_layout: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """SAM 3.1's names: the point-prompt head under ``tracker.model.interactive*_``, the neck ``interactive_convs``."""
    renames = (
        ("tracker.sam_prompt_encoder.", "tracker.model.interactive_sam_prompt_encoder."),
        ("tracker.sam_mask_decoder.", "tracker.model.interactive_sam_mask_decoder."),
        ("tracker.no_mem_embed", "tracker.model.interactivity_no_mem_embed"),
    )
    out = {}
    for key, value in file_layout.items():
        for old, new in renames:
            key = key.replace(old, new)
        out[key.replace("sam2_convs", "interactive_convs")] = value
    return out


# --------------------------------------------------------------------------------------------------------------------
# Recognition and weights
# --------------------------------------------------------------------------------------------------------------------


def test_real_layouts_are_recognised(file_layout: dict[str, torch.Tensor], sam3_model: torch.nn.Module) -> None:
    assert any(k.startswith("detector.backbone.vision_backbone.trunk.") for k in file_layout)
    assert recognise_sam3(file_layout) == "sam3"
    assert recognise_sam3(_sam31_layout(file_layout)) == "sam3.1"
    assert recognise_sam3(sam3_model.state_dict()) == "sam3"  # SAM3Model.state_dict() saved as is


@pytest.mark.parametrize(
    ("drop", "fragment"),
    [
        ("tracker.sam_mask_decoder.", "sam_mask_decoder"),  # a detector-only export
        ("detector.backbone.vision_backbone.sam2_convs.", "sam2_convs"),  # no SAM-2 neck
    ],
)
def test_partial_sam3_checkpoints_are_explained(file_layout: dict[str, torch.Tensor], drop: str, fragment: str) -> None:
    partial = {k: v for k, v in file_layout.items() if not k.startswith(drop)}
    assert recognise_sam3(partial) is None
    why = explain_sam3(partial)
    assert why is not None and "SAM 3" in why and fragment in why


@pytest.mark.parametrize(
    "state_dict",
    [
        {"weight": torch.zeros(3), "bias": torch.zeros(3)},  # arbitrary tensors
        {"image_encoder.trunk.patch_embed.proj.weight": torch.zeros(1), "sam_mask_decoder.x": torch.zeros(1)},  # SAM 2
        {"image_encoder.patch_embed.proj.weight": torch.zeros(1), "mask_decoder.x": torch.zeros(1)},  # SAM
    ],
    ids=["tensors", "sam2", "sam"],
)
def test_other_checkpoints_are_not_sam3(state_dict: dict[str, torch.Tensor]) -> None:
    assert recognise_sam3(state_dict) is None and explain_sam3(state_dict) is None


def test_a_partial_sam3_file_fails_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "x.pt"
    torch.save({"detector.backbone.vision_backbone.trunk.w": torch.zeros(1), "tracker.y": torch.zeros(1)}, path)
    with pytest.raises(ModelError) as err:
        load_segmenter(path, "cpu")
    message = str(err.value)
    assert "\n" not in message and "x.pt" in message and "SAM 3 checkpoint without" in message
    assert "--sam-model" in message


@pytest.mark.parametrize(
    ("edit", "fragment"),
    [
        (lambda sd: sd.pop("tracker.sam_mask_decoder.iou_token.weight"), "1 missing"),
        (lambda sd: sd.update({"tracker.no_mem_embed": torch.zeros(1, 1, 128)}), "1 mis-shaped"),
        (lambda sd: sd.update({"tracker.sam_mask_decoder.extra.weight": torch.zeros(1)}), "1 unexpected"),
    ],
    ids=["missing", "mis-shaped", "unexpected"],
)
def test_weights_must_match_the_architecture(
    file_layout: dict[str, torch.Tensor],
    sam3_model: torch.nn.Module,
    monkeypatch: pytest.MonkeyPatch,
    edit: Any,
    fragment: str,
) -> None:
    from autoannotate.segmenters import sam3_interactive

    damaged = dict(file_layout)
    edit(damaged)
    assert recognise_sam3(damaged) == "sam3"  # still looks like SAM 3: the strict check is what refuses it
    monkeypatch.setattr(sam3_interactive, "read_state_dict", lambda path, mmap: damaged)
    monkeypatch.setattr(sam3_interactive, "build_sam3_model", lambda: sam3_model)  # no second 474M build
    with pytest.raises(ModelError) as err:
        sam3_interactive.load_sam3_model(Path("damaged.pt"))
    message = str(err.value)
    assert "\n" not in message and "does not match the SAM 3 interactive architecture" in message
    assert fragment in message and "--sam-model" in message


def test_missing_sam3_weights_say_where_to_request_them(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)  # no sam3.pt here
    calls: list[Any] = []

    def spy_download(*args: Any, **kwargs: Any) -> str:
        calls.append(args)
        raise AssertionError("gated weights must never be downloaded")

    with pytest.raises(ModelError) as err:
        load_segmenter("sam3.pt", "cpu", download=spy_download)
    message = str(err.value)
    assert "\n" not in message
    assert "https://huggingface.co/facebook/sam3" in message and "--sam-model /path/to/sam3.pt" in message
    assert calls == []


def test_a_local_sam3_pt_is_used(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A bare ``sam3.pt`` in the working directory is that file (here not a checkpoint: refused as such)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sam3.pt").write_text("not a checkpoint")
    with pytest.raises(ModelError, match="cannot be read as a PyTorch checkpoint"):
        load_segmenter("sam3.pt", "cpu")


# --------------------------------------------------------------------------------------------------------------------
# Masks
# --------------------------------------------------------------------------------------------------------------------


def _connected_components_cv2(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Meta's ``connected_components`` on CPU (scikit-image's ``label``, full connectivity, and each pixel's
    component size) computed with OpenCV, for an environment without scikit-image."""
    labels, sizes = [], []
    for plane in values.reshape(-1, *values.shape[-2:]).cpu().numpy().astype(np.uint8):
        _, label, stats, _ = cv2.connectedComponentsWithStats(plane, connectivity=8)
        area = stats[:, cv2.CC_STAT_AREA].copy()
        area[0] = 0
        labels.append(label)
        sizes.append(area[label])
    shape = values.shape
    return torch.from_numpy(np.stack(labels)).view(shape), torch.from_numpy(np.stack(sizes)).view(shape)


@pytest.fixture(scope="module")
def batched_masks(small_model: torch.nn.Module) -> list[Any]:
    """Our masks of two non-square images segmented in one batch (the first: ``BOXES_XYXY``)."""
    segmenter = Sam3Segmenter(small_model)
    images = [_image(), _image(72, 48, seed=1)]
    prompts = [Detections.from_boxes(BOXES_XYXY), Detections.from_boxes(SECOND_BOXES_XYXY)]
    return segmenter.segment([segmenter.prepare(im) for im in images], prompts)


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")  # Meta's transforms
def test_masks_equal_meta_reference_predictor(
    small_model: torch.nn.Module, batched_masks: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Meta's ``SAM3InteractiveImagePredictor`` (box prompts, ``multimask_output=False``, its default hole filling)
    over the same modules gives the same masks and predicted IoUs."""
    reference = pytest.importorskip("sam3.model.sam1_task_predictor")
    import sam3.perflib.connected_components as components

    monkeypatch.setattr(components, "connected_components", _connected_components_cv2)
    predictor = reference.SAM3InteractiveImagePredictor(small_model)
    side = SMALL_SIDE // 14
    predictor._bb_feat_sizes = [(4 * side, 4 * side), (2 * side, 2 * side), (side, side)]  # its 1008-px sizes
    predictor.set_image(_image())
    masks, iou, _ = predictor.predict(box=BOXES_XYXY.astype(np.float32), multimask_output=False)
    ours = batched_masks[0]
    assert len(ours) == len(BOXES_XYXY) and ours.original_hw == (60, 96)
    np.testing.assert_allclose(ours.scores, np.asarray(iou)[:, 0], atol=1e-5)
    for i in range(len(BOXES_XYXY)):
        mismatch = int((ours.mask(i) != np.asarray(masks)[i, 0].astype(bool)).sum())
        assert mismatch <= 2, f"box {i}: {mismatch} pixels differ"  # float rounding at the threshold only
    assert ((ours.stability >= 0) & (ours.stability <= 1)).all()


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")  # Meta's transforms
def test_box_and_point_prompts_equal_meta_reference_predictor(
    small_model: torch.nn.Module, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A box with a positive and a negative point per instance: the corners (labels 2, 3), then the points."""
    reference = pytest.importorskip("sam3.model.sam1_task_predictor")
    import sam3.perflib.connected_components as components

    monkeypatch.setattr(components, "connected_components", _connected_components_cv2)
    xy_label = np.array([[[20, 30, 1], [50, 10, 0]], [[60, 40, 1], [35, 50, 0]]], np.float64)  # (N, K, 3)
    boxes = BOXES_XYXY[:2]
    segmenter = Sam3Segmenter(small_model)
    prompts = dataclasses.replace(Detections.from_boxes(boxes), points=tuple(p.astype(np.float32) for p in xy_label))
    (ours,) = segmenter.segment([segmenter.prepare(_image())], [prompts])
    predictor = reference.SAM3InteractiveImagePredictor(small_model)
    side = SMALL_SIDE // 14
    predictor._bb_feat_sizes = [(4 * side, 4 * side), (2 * side, 2 * side), (side, side)]
    predictor.set_image(_image())
    masks, iou, _ = predictor.predict(
        point_coords=xy_label[..., :2].astype(np.float32),
        point_labels=xy_label[..., 2].astype(np.int64),
        box=boxes.astype(np.float32),
        multimask_output=False,
    )
    np.testing.assert_allclose(ours.scores, np.asarray(iou)[:, 0], atol=1e-5)
    for i in range(len(boxes)):
        assert int((ours.mask(i) != np.asarray(masks)[i, 0].astype(bool)).sum()) <= 2


def test_half_agrees_with_float32(small_model: torch.nn.Module, batched_masks: list[Any]) -> None:
    """bfloat16 autocast on CPU: the same masks up to rounding (random weights give speckled masks, so the
    agreement of real weights' blob-shaped masks is higher)."""
    segmenter = Sam3Segmenter(small_model, half=True)
    (half,) = segmenter.segment([segmenter.prepare(_image())], [Detections.from_boxes(BOXES_XYXY)])
    full = batched_masks[0]
    ious = []
    for i in range(len(BOXES_XYXY)):
        a, b = half.mask(i), full.mask(i)
        ious.append(np.logical_and(a, b).sum() / max(np.logical_or(a, b).sum(), 1))
    assert min(ious) > 0.9, ious


def test_batched_encoder_equals_one_image_at_a_time(small_model: torch.nn.Module, batched_masks: list[Any]) -> None:
    segmenter = Sam3Segmenter(small_model, decoder_batch_size=1)  # and the decoder one box at a time
    image = _image(72, 48, seed=1)
    (alone,) = segmenter.segment([segmenter.prepare(image)], [Detections.from_boxes(SECOND_BOXES_XYXY)])
    together = batched_masks[1]
    np.testing.assert_allclose(alone.scores, together.scores, atol=1e-4)
    for i in range(len(alone)):
        assert int((alone.mask(i) != together.mask(i)).sum()) <= 2


# --------------------------------------------------------------------------------------------------------------------
# End to end
# --------------------------------------------------------------------------------------------------------------------


def test_cli_run_with_a_sam3_checkpoint(tmp_path: Path, yolo_weights: Path, sam3_checkpoint: Path) -> None:
    """One tiny image through ``autoannotate run``, the checkpoint recognised from its contents (at 1008 px)."""
    from helpers import json_events, stand_in_model_args
    from typer.testing import CliRunner

    from autoannotate.cli import app

    data, out = tmp_path / "data", tmp_path / "out"
    data.mkdir()
    cv2.imwrite(str(data / "im.png"), _image(48, 80)[..., ::-1])
    args = ["run", "--data", str(data), "--output-dir", str(out), "--json"]
    result = CliRunner().invoke(app, [*args, *stand_in_model_args(yolo_weights, sam3_checkpoint, max_det=2)])
    assert result.exit_code == 0, result.output
    summary = json_events(result.stdout)[-1]
    assert (summary["images"], summary["failed"]) == (1, 0)
    manifest = json.loads((out / "autoannotate.json").read_text())
    assert manifest["models"]["segmenter"]["variant"] == "sam3"
    rows = [json.loads(line) for line in (out / "instances.jsonl").read_text().splitlines()]
    assert len(rows) == 2
    for row in rows:
        assert 0 <= row["sam_iou"] <= 1 and 0 <= row["stability"] <= 1
