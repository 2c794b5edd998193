"""Acceptance test: ``BoxSegmenter`` reproduces the MobileSAM reference predictor (``mobile_sam.SamPredictor``).

Both sides get the same random weights (the ``mobile_sam_weights`` fixture), the same images and the same boxes. The
reference is used as its README shows: build ``vit_t``, load the state dict, ``eval()``, ``set_image`` on the RGB
image, then ``predict(box=..., multimask_output=False)`` one box at a time. Ours batches the three images through the
encoder in one call and decodes all boxes of an image at once; it must give the same low-res logits (<= 1e-4) and
the same boolean masks, and also when the images are passed one by one.

Why masks are compared outside a +-1e-4 logit band rather than bit for bit: the preprocessing is bit-identical (checked
below), and ultralytics' TinyViT, prompt encoder and decoder compute the same thing as the reference with one rounding
difference: its ``LayerNorm2d`` (encoder neck, decoder upscaling) calls the fused ``F.layer_norm`` where the reference
spells out mean/variance. With the reference's formula swapped in, encoder and decoder outputs are bit-identical
(checked by hand while writing this test). The reference is not bit-stable either: decoding a box alone or with
others changes its logits by ~2e-7. With random weights some full-resolution logits sit within 1e-7 of the threshold
(the smallest |logit| is printed), so a pixel there may flip; any pixel that differs must lie inside the band.

Run with ``-s`` to see the measured figures; they are also recorded as junit properties.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from autoannotate.runtime.cpu_kernels import OneDnnConv2d, OneDnnLinear
from autoannotate.segmenters.sam import BoxSegmenter
from autoannotate.segmenters.sam_transforms import SegmentationResult, prepare_image

LOGIT_TOLERANCE = 1e-4
# A mask pixel may differ only where the reference's full-resolution logit is this close to the 0 threshold.
THRESHOLD_BAND = 1e-4
# ... and only for a vanishing share of pixels (measured: at most 1 of 640 000 here).
MAX_FLIPPED_FRACTION = 1e-5


def _scene(height: int, width: int, seed: int) -> np.ndarray:
    """A smooth synthetic RGB scene (HWC uint8): colour gradients, an ellipse, a rectangle, a bit of sensor noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    image = np.stack([60 + 150 * xx / width, 40 + 170 * yy / height, 200 - 120 * (xx + yy) / (width + height)], axis=-1)
    cy, cx = rng.uniform(0.3, 0.7) * height, rng.uniform(0.3, 0.7) * width
    ry, rx = rng.uniform(0.15, 0.3) * height, rng.uniform(0.15, 0.3) * width
    image[((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1] = rng.uniform(0, 255, 3)
    y0, x0 = int(rng.uniform(0.05, 0.4) * height), int(rng.uniform(0.05, 0.4) * width)
    image[y0 : y0 + height // 4, x0 : x0 + width // 3] = rng.uniform(0, 255, 3)
    image += rng.normal(0.0, 2.0, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def _boxes(height: int, width: int, seed: int) -> np.ndarray:
    """Four (4, 4) float32 xyxy pixel boxes; the first touches the top-left border, the second the bottom-right."""
    rng = np.random.default_rng(seed + 100)
    boxes = [
        [0.0, 0.0, 0.45 * width, 0.5 * height],  # touches the left and top borders
        [0.5 * width, 0.55 * height, float(width), float(height)],  # touches the right and bottom borders
    ]
    for _ in range(2):  # interior boxes with fractional coordinates
        x1, y1 = rng.uniform(0.05, 0.5) * width, rng.uniform(0.05, 0.5) * height
        boxes.append([x1, y1, x1 + rng.uniform(0.2, 0.45) * width, y1 + rng.uniform(0.2, 0.45) * height])
    return np.asarray(boxes, dtype=np.float32)


# (name, (H, W)): always non-square images as well as a square one.
SCENES = [("portrait", (480, 320)), ("landscape", (300, 500)), ("square", (400, 400))]


@pytest.fixture(scope="module")
def scenes() -> list[tuple[str, np.ndarray, np.ndarray]]:
    """``(name, image_rgb HWC uint8, boxes_xyxy (4, 4) float32)`` for each scene."""
    return [(name, _scene(h, w, seed), _boxes(h, w, seed)) for seed, (name, (h, w)) in enumerate(SCENES)]


def _openvino_settings(precision: str) -> Any:
    from autoannotate.runtime.openvino_parts import OpenVinoSettings, default_cache_root

    # the session's cache (conftest): test_openvino's runs convert these weights once, keyed by the file's sha256
    return OpenVinoSettings(precision, streams=1, threads=1, cache_root=default_cache_root())


@pytest.fixture(scope="module", params=["onednn", "default", "openvino"])
def ours(request: pytest.FixtureRequest, mobile_sam_weights: Path) -> BoxSegmenter:
    """As the CLI loads it: ``from_weights`` on CPU, with the float32 layers on oneDNN (the default) or on PyTorch's
    own kernel choice (``AUTOANNOTATE_CPU_KERNELS=default``), or the encoder and decoder compiled by OpenVINO
    (``--runtime openvino``, float32); each must match the reference."""
    onednn = request.param != "default"
    segmenter = BoxSegmenter.from_weights(mobile_sam_weights, "cpu", onednn=onednn)
    assert segmenter.variant == "mobile_sam"
    routed = sum(isinstance(m, (OneDnnLinear, OneDnnConv2d)) for m in segmenter.model.modules())
    assert (routed > 100) if onednn else (routed == 0)
    if request.param == "openvino":
        from autoannotate.runtime.openvino_parts import openvino_version
        from autoannotate.writers.manifest import file_sha256

        if openvino_version() is None:
            pytest.skip("openvino is not installed")
        runtime = segmenter.use_openvino(_openvino_settings("f32"), file_sha256(mobile_sam_weights))
        assert runtime.startswith(f"openvino {openvino_version()} f32") and segmenter.runtime == "openvino"
    return segmenter


@pytest.fixture(scope="module")
def reference(mobile_sam_weights: Path, scenes: list[tuple[str, np.ndarray, np.ndarray]]) -> dict[str, Any]:
    """Per scene: the reference low-res logits (N, 256, 256), boolean masks (N, H, W) and IoU predictions (N,)."""
    with warnings.catch_warnings():  # mobile_sam re-registers timm's TinyViT names on import
        warnings.simplefilter("ignore")
        mobile_sam = pytest.importorskip("mobile_sam")
    state_dict = torch.load(mobile_sam_weights, map_location="cpu", weights_only=True)
    sam = mobile_sam.sam_model_registry["vit_t"]()
    # ultralytics' MobileSAM and the reference vit_t use identical parameter names and shapes, so the state dict
    # loads as is (strict) and no key mapping is needed. Checked here so that a future rename fails loudly.
    reference_shapes = {k: tuple(v.shape) for k, v in sam.state_dict().items()}
    assert reference_shapes == {k: tuple(v.shape) for k, v in state_dict.items()}
    sam.load_state_dict(state_dict, strict=True)
    sam.eval()  # after loading, as the MobileSAM README does: TinyViT caches its attention biases in eval()
    predictor = mobile_sam.SamPredictor(sam)

    out: dict[str, Any] = {}
    for name, image, boxes in scenes:
        predictor.set_image(image, image_format="RGB")
        per_box = [predictor.predict(box=box, multimask_output=False, return_logits=True) for box in boxes]
        logits_full = np.stack([masks[0] for masks, _, _ in per_box])
        out[name] = {
            "masks": logits_full > sam.mask_threshold,
            "logits_full": logits_full,
            "iou_pred": np.stack([iou[0] for _, iou, _ in per_box]),
            "low_res": np.stack([low[0] for _, _, low in per_box]),
            "resized": predictor.transform.apply_image(image),
        }
    return out


@pytest.fixture(scope="module")
def ours_batched(ours: BoxSegmenter, scenes: list[tuple[str, np.ndarray, np.ndarray]]) -> dict[str, SegmentationResult]:
    """All three images through ONE ``predict`` call (one encoder pass over a batch of 3; ``segment`` wraps it)."""
    prepared = [prepare_image(image) for _, image, _ in scenes]
    results = ours.predict(prepared, [boxes for _, _, boxes in scenes])
    return {name: result for (name, _, _), result in zip(scenes, results, strict=True)}


@pytest.fixture(scope="module")
def ours_single(ours: BoxSegmenter, scenes: list[tuple[str, np.ndarray, np.ndarray]]) -> dict[str, SegmentationResult]:
    """Each image through its own ``predict`` call."""
    return {name: ours.predict([prepare_image(image)], [boxes])[0] for name, image, boxes in scenes}


@pytest.mark.parametrize("name", [name for name, _ in SCENES])
def test_prepare_image_is_bit_identical_to_reference_resize(
    name: str, scenes: list[tuple[str, np.ndarray, np.ndarray]], reference: dict[str, Any]
) -> None:
    image = next(image for n, image, _ in scenes if n == name)
    prepared = prepare_image(image)
    expected_hwc = reference[name]["resized"]
    assert prepared.input_hw == expected_hwc.shape[:2]
    assert prepared.original_hw == image.shape[:2]
    np.testing.assert_array_equal(prepared.image_1024_chw.permute(1, 2, 0).numpy(), expected_hwc)


@pytest.mark.parametrize("mode", ["batched", "single"])
@pytest.mark.parametrize("name", [name for name, _ in SCENES])
def test_masks_and_logits_match_reference(
    name: str,
    mode: str,
    reference: dict[str, Any],
    ours_batched: dict[str, SegmentationResult],
    ours_single: dict[str, SegmentationResult],
    record_property: Any,
) -> None:
    result = (ours_batched if mode == "batched" else ours_single)[name]
    expected = reference[name]
    assert result.low_res_logits is not None
    assert result.masks.shape == expected["masks"].shape
    assert result.masks.dtype == np.bool_

    logit_diff = float(np.abs(result.low_res_logits - expected["low_res"]).max())
    iou_diff = float(np.abs(result.iou_pred - expected["iou_pred"]).max())
    differs = result.masks != expected["masks"]
    flipped = int(differs.sum())
    # Smallest |logit| at full resolution: how close the nearest pixel came to flipping.
    margin = float(np.abs(expected["logits_full"]).min())
    worst_flip = float(np.abs(expected["logits_full"][differs]).max()) if flipped else 0.0
    print(
        f"\n[parity {name:9s} {mode:7s}] max|low-res logit diff| = {logit_diff:.3e}, max|iou diff| = "
        f"{iou_diff:.3e}, differing mask pixels = {flipped} of {result.masks.size}, "
        f"(max |reference logit| there = {worst_flip:.2e}), foreground = {result.masks.mean():.3f}, "
        f"min|full-res logit| = {margin:.2e}"
    )
    record_property(f"max_abs_low_res_logit_diff_{name}_{mode}", logit_diff)
    record_property(f"differing_mask_pixels_{name}_{mode}", flipped)

    assert logit_diff <= LOGIT_TOLERANCE
    assert iou_diff <= LOGIT_TOLERANCE
    outside_band = np.abs(expected["logits_full"]) >= THRESHOLD_BAND
    np.testing.assert_array_equal(result.masks[outside_band], expected["masks"][outside_band])
    assert flipped <= MAX_FLIPPED_FRACTION * result.masks.size


def test_bfloat16_autocast_on_cpu_keeps_shapes(
    ours: BoxSegmenter,
    mobile_sam_weights: Path,
    scenes: list[tuple[str, np.ndarray, np.ndarray]],
    ours_single: dict[str, SegmentationResult],
    record_property: Any,
) -> None:
    half = BoxSegmenter(ours.model, half=True, variant=ours.variant)
    if ours.runtime == "openvino":  # OpenVINO computing in bfloat16 (--runtime openvino --half)
        from autoannotate.writers.manifest import file_sha256

        sha = file_sha256(mobile_sam_weights)
        # As a run before this one leaves it: the cached graph compiled in float32 (its blob in the cache).
        BoxSegmenter(ours.model, variant=ours.variant).use_openvino(_openvino_settings("f32"), sha, convert=False)
        assert half.use_openvino(_openvino_settings("bf16"), sha, convert=False)
    assert half.device == torch.device("cpu")
    for name, image, boxes in scenes:
        result = half.predict([prepare_image(image)], [boxes])[0]
        fp32 = ours_single[name]
        assert result.masks.shape == fp32.masks.shape and result.masks.dtype == np.bool_
        assert result.iou_pred.shape == fp32.iou_pred.shape and result.iou_pred.dtype == np.float32
        assert result.low_res_logits is not None and result.low_res_logits.dtype == np.float32
        intersection = (result.masks & fp32.masks).sum(axis=(1, 2))
        union = (result.masks | fp32.masks).sum(axis=(1, 2))
        ious = intersection / np.maximum(union, 1)
        shown = f"{ours.runtime} {name:9s}"
        print(f"\n[bf16 vs fp32 {shown}] per-mask IoU = {np.round(ious, 4).tolist()}, mean = {ious.mean():.4f}")
        record_property(f"bf16_vs_fp32_mean_mask_iou_{ours.runtime}_{name}", float(ious.mean()))
        # Random weights make logits hover near 0, the worst case for reduced precision; trained weights do better.
        assert ious.mean() > 0.8
    if ours.runtime == "openvino":
        # bf16 really ran, finite, though the float32 parts were compiled first into the same cache (OpenVINO's
        # compiled-blob key ignores the precision: the bf16 compile used to import the f32 blob and give NaN).
        assert half._openvino is not None and half._openvino.redone_in_f32 == 0
        # Uniform noise: the input that drives a random-weight TinyViT's activations furthest.
        noise = np.random.default_rng(7).integers(0, 256, (480, 640, 3), dtype=np.uint8)
        boxes = np.array([[10.0, 20.0, 200.0, 300.0], [300.0, 100.0, 620.0, 470.0]])
        result = half.predict([prepare_image(noise)], [boxes])[0]
        fp32 = ours.predict([prepare_image(noise)], [boxes])[0]
        assert result.low_res_logits is not None and np.isfinite(result.low_res_logits).all()
        assert np.isfinite(result.iou_pred).all()
        union = np.maximum((result.masks | fp32.masks).sum(axis=(1, 2)), 1)
        assert ((result.masks & fp32.masks).sum(axis=(1, 2)) / union).mean() > 0.8
