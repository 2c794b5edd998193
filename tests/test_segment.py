"""Unit tests for ``segmenters.sam``, ``sam_transforms`` and ``weights``: weights resolution and recognition,
errors, image preparation, and the segmenter's contract (shapes, 1:1 box alignment, empty images, ``types.Masks``).
Parity with the reference is in ``test_segment_parity.py``. Nothing here touches the network: downloads are replaced
by failing stand-ins."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from autoannotate.errors import ModelError
from autoannotate.quality import stability_score
from autoannotate.segmenters import Segmenter, sam_transforms
from autoannotate.segmenters.sam import (
    SAM_ASSET_NAMES,
    BoxSegmenter,
    default_batch_size,
    default_decoder_batch_size,
    detect_sam_variant,
    load_sam,
)
from autoannotate.segmenters.sam_transforms import PreparedImage, SegmentationResult, prepare_image
from autoannotate.segmenters.weights import resolve_weights
from autoannotate.types import Detections, Masks


def resolve_sam_weights(name_or_path: str | Path, **kwargs: Any) -> Path:
    """``resolve_weights`` with the assets the SAM family downloads."""
    return resolve_weights(name_or_path, assets=SAM_ASSET_NAMES, **kwargs)


def _assert_one_line_model_error(err: pytest.ExceptionInfo[ModelError], *fragments: str) -> None:
    message = str(err.value)
    assert "\n" not in message and "\r" not in message, message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"


def _smooth_image(height: int, width: int) -> np.ndarray:
    """(H, W, 3) uint8 RGB gradients with a bright rectangle: cheap, deterministic, not noise."""
    yy, xx = np.mgrid[0:height, 0:width]
    image = np.stack([255 * xx // width, 255 * yy // height, np.full_like(xx, 90)], axis=-1).astype(np.uint8)
    image[height // 4 : height // 2, width // 3 : width // 2] = (250, 240, 30)
    return image


def _meta_state_dict(builder_name: str) -> dict[str, torch.Tensor]:
    """Parameter names and shapes of an ultralytics SAM architecture without allocating its weights."""
    from ultralytics.models.sam import build

    with torch.device("meta"):
        model = getattr(build, builder_name)()
    return model.state_dict()


@pytest.fixture(scope="module")
def mobile_state_dict(mobile_sam_weights: Path) -> dict[str, torch.Tensor]:
    return torch.load(mobile_sam_weights, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def segmenter(mobile_sam_weights: Path) -> BoxSegmenter:
    return BoxSegmenter.from_weights(mobile_sam_weights, device="cpu")


class _CheapEncoder(torch.nn.Module):
    """Stands in for TinyViT (1.3 s per image on CPU) where only the segmenter's bookkeeping is under test: maps a
    (B, 3, 1024, 1024) batch to (B, 256, 64, 64) embeddings that depend on the image content."""

    img_size = 1024

    def __init__(self) -> None:
        super().__init__()
        self.pool = torch.nn.AvgPool2d(16)
        self.proj = torch.nn.Conv2d(3, 256, kernel_size=1)
        torch.nn.init.normal_(self.proj.weight, generator=torch.Generator().manual_seed(0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.pool(x))


@pytest.fixture(scope="module")
def fast_segmenter(segmenter: BoxSegmenter) -> BoxSegmenter:
    """The real prompt encoder and mask decoder behind a cheap image encoder."""
    model = torch.nn.Module()
    model.image_encoder = _CheapEncoder()
    model.prompt_encoder = segmenter.model.prompt_encoder
    model.mask_decoder = segmenter.model.mask_decoder
    return BoxSegmenter(model)


# --------------------------------------------------------------------------------------------------------------------
# prepare_image
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("original_hw", "expected_input_hw"),
    [
        ((480, 320), (1024, 683)),  # portrait: 320 * 1024/480 = 682.67 -> 683
        ((300, 500), (614, 1024)),  # landscape: 300 * 1024/500 = 614.4 -> 614
        ((400, 400), (1024, 1024)),  # square, upscaled
        ((2048, 1536), (1024, 768)),  # downscaled
        ((1, 1000), (1, 1024)),  # degenerate strip keeps at least one row
        ((1024, 77), (1024, 77)),  # already at 1024: unchanged
    ],
)
def test_prepare_image_sizes(original_hw: tuple[int, int], expected_input_hw: tuple[int, int]) -> None:
    prepared = prepare_image(np.zeros((*original_hw, 3), np.uint8))
    assert prepared.original_hw == original_hw
    assert prepared.input_hw == expected_input_hw
    assert prepared.image_1024_chw.shape == (3, *expected_input_hw)
    assert prepared.image_1024_chw.dtype == torch.uint8
    assert prepared.image_1024_chw.is_contiguous()


def test_prepare_image_keeps_rgb_channel_order() -> None:
    image = np.zeros((30, 20, 3), np.uint8)
    image[..., 0] = 200  # red only
    prepared = prepare_image(image)
    assert prepared.image_1024_chw[0].min() == 200 and prepared.image_1024_chw[1:].max() == 0


def test_prepare_image_accepts_strided_views() -> None:
    bgr = _smooth_image(37, 53)
    rgb_view = bgr[..., ::-1]  # the usual cv2 BGR -> RGB view, negative stride
    assert torch.equal(prepare_image(rgb_view).image_1024_chw, prepare_image(rgb_view.copy()).image_1024_chw)


@pytest.mark.parametrize(
    "bad_image",
    [
        np.zeros((10, 10), np.uint8),  # grayscale without a channel axis
        np.zeros((10, 10, 4), np.uint8),  # RGBA
        np.zeros((10, 10, 1), np.uint8),  # single channel
        np.zeros((10, 10, 3), np.float32),  # float image
        np.zeros((0, 10, 3), np.uint8),  # empty
        [[0, 0, 0]],  # not an array
    ],
)
def test_prepare_image_rejects_wrong_shape_or_dtype(bad_image: Any) -> None:
    with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8"):
        prepare_image(bad_image)


def test_prepared_image_checks_consistency() -> None:
    with pytest.raises(ValueError, match="input_hw"):
        PreparedImage(torch.zeros(3, 1024, 500, dtype=torch.uint8), original_hw=(100, 50), input_hw=(1024, 512))


# --------------------------------------------------------------------------------------------------------------------
# resolve_sam_weights
# --------------------------------------------------------------------------------------------------------------------


def test_existing_file_is_used_as_is(tmp_path: Path, mobile_sam_weights: Path) -> None:
    renamed = tmp_path / "my_mobilesam.pt"
    shutil.copy(mobile_sam_weights, renamed)
    assert resolve_sam_weights(renamed) == renamed
    assert resolve_sam_weights(str(renamed)) == renamed


@pytest.mark.parametrize(
    ("name_or_path", "fragments"),
    [
        # a path that does not exist, even though its file name is an asset name: never downloaded
        ("/nonexistent/dir/mobile_sam.pt", ("does not exist", "--sam-model PATH")),
        ("not_a_model.pt", ("not_a_model.pt", "does not exist", "--sam-model PATH")),  # unknown bare name
        # gated weights, never downloaded: where to request them
        ("sam3.pt", ("gated", "https://huggingface.co/facebook/sam3", "--sam-model /path/to/sam3.pt")),
    ],
)
def test_missing_weights_fail_without_download(
    name_or_path: str, fragments: tuple[str, ...], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)

    def no_download(*args: Any, **kwargs: Any) -> str:
        raise AssertionError("must not try to download")

    with pytest.raises(ModelError) as err:
        resolve_sam_weights(name_or_path, download=no_download)
    _assert_one_line_model_error(err, *fragments)


def test_asset_download_failure_names_url_and_flag(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    calls: list[tuple[Any, dict[str, Any]]] = []

    def offline(file: Any, **kwargs: Any) -> str:
        calls.append((file, kwargs))
        raise ConnectionError("❌  Download failure for https://x.\nEnvironment may be offline.")

    import ultralytics.utils.downloads as downloads

    # The default path imports ultralytics' public function at call time, so patching the module covers it.
    monkeypatch.setattr(downloads, "attempt_download_asset", offline)
    with pytest.raises(ModelError) as err:
        resolve_sam_weights("mobile_sam.pt")
    _assert_one_line_model_error(
        err,
        "mobile_sam.pt",
        "https://github.com/ultralytics/assets/releases/download/v",
        "/mobile_sam.pt",
        "then pass --sam-model /path/to/mobile_sam.pt",
    )
    assert calls == [("mobile_sam.pt", {"retry": 1})]  # one quick attempt, no back-off retries


def test_asset_download_that_yields_no_file_is_an_error(tmp_path: Path) -> None:
    def returns_missing(file: Any, **kwargs: Any) -> str:
        return str(tmp_path / "never_written.pt")

    with pytest.raises(ModelError) as err:
        resolve_sam_weights("sam_b.pt", download=returns_missing)
    _assert_one_line_model_error(err, "sam_b.pt", "/sam_b.pt", "--sam-model /path/to/sam_b.pt")


def test_real_ultralytics_download_fails_fast_offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The real ``attempt_download_asset``, with the HTTP layer stubbed so no request can leave the machine."""
    import time

    import requests

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise requests.exceptions.ConnectionError("network disabled in tests")

    monkeypatch.chdir(tmp_path)  # ultralytics downloads into the working directory
    monkeypatch.setenv("YOLO_OFFLINE", "1")  # its online check then answers without a DNS lookup
    monkeypatch.setattr(requests, "get", refuse)
    monkeypatch.setattr(requests, "head", refuse)
    start = time.perf_counter()
    with pytest.raises(ModelError) as err:
        resolve_sam_weights("sam_l.pt")
    assert time.perf_counter() - start < 5.0
    _assert_one_line_model_error(err, "sam_l.pt", "--sam-model /path/to/sam_l.pt")
    assert "❌" not in str(err.value)
    assert not list(tmp_path.iterdir())  # no partial file left behind


# --------------------------------------------------------------------------------------------------------------------
# Variant recognition and loading
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("builder_name", "variant"),
    [("build_sam_vit_b", "sam_b"), ("build_sam_vit_l", "sam_l"), ("build_sam_vit_h", "sam_h")],
)
def test_vit_variant_is_recognised_from_keys_and_shapes(builder_name: str, variant: str) -> None:
    assert detect_sam_variant(_meta_state_dict(builder_name)) == variant


def test_mobile_sam_variant_is_recognised(mobile_state_dict: dict[str, torch.Tensor]) -> None:
    # TinyViT cannot be built on the meta device, so use the real (random-weight) state dict.
    assert detect_sam_variant(mobile_state_dict) == "mobile_sam"


def _drop_last_vit_block(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state_dict.items() if not k.startswith("image_encoder.blocks.11.")}


@pytest.mark.parametrize(
    ("make_state_dict", "fragments"),
    [
        # SAM 2 (Hiera trunk and memory modules) is not the SAM family's: no SAM heads
        (
            lambda: {
                "image_encoder.trunk.patch_embed.proj.weight": torch.zeros(1),
                "memory_attention.x": torch.zeros(1),
            },
            ("not a SAM/MobileSAM", "--sam-model"),
        ),
        # SAM 3 (detector/tracker halves) is not the SAM family's either (segmenters.sam3_interactive's)
        (
            lambda: {"detector.backbone.x": torch.zeros(1), "tracker.model.y": torch.zeros(1)},
            ("not a SAM/MobileSAM", "--sam-model"),
        ),
        # arbitrary tensors
        (lambda: {"weight": torch.zeros(3), "bias": torch.zeros(3)}, ("not a SAM/MobileSAM", "--sam-model")),
        # a ViT with a block count no SAM size has
        (lambda: _drop_last_vit_block(_meta_state_dict("build_sam_vit_b")), ("unknown size", "768", "11 blocks")),
    ],
)
def test_variant_recognition_errors(
    make_state_dict: Callable[[], dict[str, torch.Tensor]], fragments: tuple[str, ...]
) -> None:
    with pytest.raises(ModelError) as err:
        detect_sam_variant(make_state_dict())
    _assert_one_line_model_error(err, *fragments)


@pytest.mark.parametrize("wrapper", [None, "model", "state_dict"])
def test_renamed_and_wrapped_mobile_sam_loads(
    wrapper: str | None, tmp_path: Path, mobile_state_dict: dict[str, torch.Tensor]
) -> None:
    path = tmp_path / "my_mobilesam.pt"  # the name says nothing: recognition is by content
    torch.save(mobile_state_dict if wrapper is None else {wrapper: mobile_state_dict, "epoch": 3}, path)
    model, variant = load_sam(path)
    assert variant == "mobile_sam"
    assert not model.training
    assert next(model.parameters()).device == torch.device("cpu")
    loaded = model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in mobile_state_dict.items())


def test_attention_biases_are_live_after_loading(tmp_path: Path, mobile_state_dict: dict[str, torch.Tensor]) -> None:
    """TinyViT caches its attention biases when switched to eval mode, and the ultralytics builder does that before
    any weights are loaded. The loaded biases must be the ones used (the fixture's are all zero, so use others)."""
    from ultralytics.models.sam.build import build_mobile_sam

    generator = torch.Generator().manual_seed(1)
    state_dict = {
        k: torch.randn(v.shape, generator=generator) if k.endswith("attention_biases") else v
        for k, v in mobile_state_dict.items()
    }
    path = tmp_path / "biased.pt"
    torch.save(state_dict, path)
    model, _ = load_sam(path)

    expected_model = build_mobile_sam().train()
    expected_model.load_state_dict(state_dict)
    expected_model.eval()
    # The last TinyViT stage (64x64 tokens of width 320) holds attention blocks and is cheap to run alone.
    tokens = torch.linspace(-2, 2, 64 * 64 * 320).reshape(1, 64 * 64, 320)
    with torch.inference_mode():
        actual = model.image_encoder.layers[3](tokens)
        torch.testing.assert_close(actual, expected_model.image_encoder.layers[3](tokens))
        assert not torch.allclose(actual, build_mobile_sam().image_encoder.layers[3](tokens))  # the biases matter


def _truncated(src: Path, dst: Path) -> None:
    dst.write_bytes(src.read_bytes()[:1000])


@pytest.mark.parametrize(
    ("make_file", "fragments"),
    [
        # an ultralytics YOLO checkpoint (pickled nn.Module under "model")
        (lambda p, w, y: shutil.copy(y, p), ("Ultralytics model checkpoint", "not a SAM-family", "--sam-model")),
        # a text file with a .pt name
        (lambda p, w, y: p.write_text("not a checkpoint\nsecond line\n"), ("cannot be read", "--sam-model")),
        # the first 1000 bytes of a real checkpoint
        (lambda p, w, y: _truncated(w, p), ("cannot be read", "truncated", "--sam-model")),
        # a valid pickle of random tensors
        (lambda p, w, y: torch.save({"a": torch.zeros(2)}, p), ("not a SAM/MobileSAM", "--sam-model")),
        # a valid pickle that holds no state dict at all
        (lambda p, w, y: torch.save([1, 2, 3], p), ("not a SAM-family", "--sam-model")),
    ],
)
def test_unusable_files_raise_one_line_model_error(
    make_file: Callable[[Path, Path, Path], Any],
    fragments: tuple[str, ...],
    tmp_path: Path,
    mobile_sam_weights: Path,
    yolo_weights: Path,
) -> None:
    path = tmp_path / "weights.pt"
    make_file(path, mobile_sam_weights, yolo_weights)
    with pytest.raises(ModelError) as err:
        load_sam(path)
    _assert_one_line_model_error(err, "weights.pt", *fragments)


@pytest.mark.parametrize(
    ("edit", "fragments"),
    [
        (lambda sd: sd.pop("mask_decoder.iou_token.weight"), ("1 missing", "mask_decoder.iou_token.weight")),
        (lambda sd: sd.update({"extra.weight": torch.zeros(1)}), ("1 unexpected", "extra.weight")),
        (
            lambda sd: sd.update({"mask_decoder.iou_token.weight": torch.zeros(1, 8)}),
            ("1 mis-shaped", "mask_decoder.iou_token.weight"),
        ),
    ],
)
def test_mismatched_mobile_sam_is_rejected(
    edit: Callable[[dict[str, torch.Tensor]], Any],
    fragments: tuple[str, ...],
    tmp_path: Path,
    mobile_state_dict: dict[str, torch.Tensor],
) -> None:
    state_dict = dict(mobile_state_dict)
    edit(state_dict)
    path = tmp_path / "edited.pt"
    torch.save(state_dict, path)
    with pytest.raises(ModelError) as err:
        load_sam(path)
    _assert_one_line_model_error(err, "does not match the mobile_sam architecture", *fragments, "--sam-model")


def test_load_missing_path(tmp_path: Path) -> None:
    with pytest.raises(ModelError) as err:
        load_sam(tmp_path / "nope.pt")
    _assert_one_line_model_error(err, "nope.pt", "does not exist", "--sam-model")


# --------------------------------------------------------------------------------------------------------------------
# BoxSegmenter
# --------------------------------------------------------------------------------------------------------------------


def test_default_batch_size() -> None:
    assert default_batch_size("cpu") == 1
    assert default_batch_size(torch.device("cpu")) == 1
    assert default_batch_size("cuda") == 8
    assert default_batch_size(torch.device("cuda", 1)) == 8


def test_from_weights_reports_device_and_variant(segmenter: BoxSegmenter, mobile_sam_weights: Path) -> None:
    assert segmenter.device == torch.device("cpu")
    assert segmenter.variant == "mobile_sam"
    assert segmenter.weights_path == mobile_sam_weights
    assert not segmenter.half
    assert segmenter.default_batch() == 1  # default_batch_size of its device
    assert isinstance(segmenter, Segmenter)


def test_prepare_is_prepare_image(segmenter: BoxSegmenter) -> None:
    image = _smooth_image(70, 110)
    prepared = segmenter.prepare(image)
    expected = prepare_image(image)
    assert (prepared.original_hw, prepared.input_hw) == (expected.original_hw, expected.input_hw)
    assert torch.equal(prepared.image_1024_chw, expected.image_1024_chw)


def test_model_without_sam_parts_is_rejected() -> None:
    with pytest.raises(ModelError) as err:
        BoxSegmenter(torch.nn.Linear(2, 2))
    _assert_one_line_model_error(err, "image_encoder", "load_sam")


class _EncoderCalls:
    """Records the batch size of every image-encoder call."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.batch_sizes: list[int] = []
        self._handle = model.image_encoder.register_forward_pre_hook(self._record)

    def _record(self, module: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        self.batch_sizes.append(int(args[0].shape[0]))

    def remove(self) -> None:
        self._handle.remove()


def test_zero_boxes_give_empty_results_without_encoding(segmenter: BoxSegmenter) -> None:
    images = [prepare_image(_smooth_image(120, 200)), prepare_image(_smooth_image(90, 60))]
    calls = _EncoderCalls(segmenter.model)
    try:
        results = segmenter.predict(images, [np.zeros((0, 4), np.float32), np.empty((0,))])
        masks = segmenter.segment(images, [Detections.empty(), Detections.from_boxes(np.empty((0,)))])
    finally:
        calls.remove()
    assert calls.batch_sizes == []
    assert [r.masks.shape for r in results] == [(0, 120, 200), (0, 90, 60)]
    for result in results:
        assert result.masks.dtype == np.bool_
        assert result.iou_pred.shape == (0,) and result.iou_pred.dtype == np.float32
        assert result.low_res_logits is not None and result.low_res_logits.shape == (0, 256, 256)
    assert [(m.original_hw, len(m)) for m in masks] == [((120, 200), 0), ((90, 60), 0)]
    for m in masks:
        assert m.held is not None and m.held.shape == (0, *m.original_hw) and m.held.dtype == np.bool_
        assert m.scores.dtype == np.float32 and m.stability.shape == (0,)


@pytest.mark.parametrize(
    ("images", "boxes", "message"),
    [
        ([], [np.zeros((1, 4))], "0 images but 1 box arrays"),  # one box array per image
        (None, [np.zeros((2, 3))], r"boxes_xyxy\[0\] must be an \(N, 4\)"),  # wrong box width
        (None, [np.array([[0, 0, np.nan, 5]])], "NaN or infinite"),  # non-finite coordinate
    ],
)
def test_segment_rejects_bad_boxes(segmenter: BoxSegmenter, images: Any, boxes: Any, message: str) -> None:
    images = [prepare_image(_smooth_image(50, 80))] if images is None else images
    with pytest.raises(ValueError, match=message):
        segmenter.predict(images, boxes)


def test_masks_align_one_to_one_with_boxes(fast_segmenter: BoxSegmenter, monkeypatch: pytest.MonkeyPatch) -> None:
    """Shapes on non-square images, one encoder pass per call over the images with boxes, and box order kept:
    decoding the boxes reversed, in decoder chunks of 2 and with one box per postprocessing chunk, gives the same
    masks reversed."""
    portrait, landscape, square = _smooth_image(300, 180), _smooth_image(150, 260), _smooth_image(64, 64)
    # Border-touching, fractional, nested and whole-image boxes.
    boxes_portrait = np.array([[0, 0, 90, 150], [40, 60, 180, 300], [10.5, 200.25, 170, 290], [0, 0, 180, 300]])
    boxes_landscape = np.array([[130, 0, 260, 75], [20, 40, 100, 140]], np.float32)
    images = [prepare_image(portrait), prepare_image(square), prepare_image(landscape)]

    calls = _EncoderCalls(fast_segmenter.model)
    try:
        results = fast_segmenter.predict(images, [boxes_portrait, np.zeros((0, 4)), boxes_landscape])
    finally:
        calls.remove()
    assert calls.batch_sizes == [2]  # one pass, the box-less square image skipped
    assert [r.masks.shape for r in results] == [(4, 300, 180), (0, 64, 64), (2, 150, 260)]
    assert [r.iou_pred.shape for r in results] == [(4,), (0,), (2,)]
    assert all(r.masks.dtype == np.bool_ and r.low_res_logits.shape == (len(r), 256, 256) for r in results)

    assert 0 < np.mean([r.masks.mean() for r in (results[0], results[2])]) < 1  # masks are not trivially empty/full
    chunked = BoxSegmenter(fast_segmenter.model, decoder_batch_size=2)
    monkeypatch.setattr(sam_transforms, "_POSTPROCESS_BUDGET_BYTES", 1)  # one box per full-resolution chunk
    reversed_result: SegmentationResult = chunked.predict([images[0]], [boxes_portrait[::-1]])[0]
    np.testing.assert_array_equal(reversed_result.masks, results[0].masks[::-1])
    np.testing.assert_allclose(reversed_result.iou_pred, results[0].iou_pred[::-1], atol=1e-5)


def test_lazy_masks_equal_eager_masks(mobile_sam_weights, monkeypatch):
    """Above the memory budget masks are computed per box on demand; they must equal the batched ones."""
    import autoannotate.segmenters.sam as segment_module
    import autoannotate.segmenters.sam_transforms as transforms_module

    rng = np.random.default_rng(3)
    image = (rng.random((90, 140, 3)) * 255).astype(np.uint8)
    boxes = np.array([[5, 5, 60, 70], [50, 10, 139, 89], [0, 0, 140, 90]], np.float32)
    segmenter = segment_module.BoxSegmenter.from_weights(mobile_sam_weights, "cpu")
    (eager,) = segmenter.predict([segmenter.prepare(image)], [boxes])
    (eager_masks,) = segmenter.segment([segmenter.prepare(image)], [Detections.from_boxes(boxes)])
    assert eager.eager_masks is not None and eager_masks.held is not None
    monkeypatch.setattr(transforms_module, "_EAGER_MASK_BYTES", 0)
    (lazy,) = segmenter.predict([segmenter.prepare(image)], [boxes])
    (lazy_masks,) = segmenter.segment([segmenter.prepare(image)], [Detections.from_boxes(boxes)])
    assert lazy.eager_masks is None
    assert lazy_masks.held is None and lazy_masks.render is not None
    for index in range(3):
        np.testing.assert_array_equal(lazy.mask(index), eager.masks[index])
        np.testing.assert_array_equal(lazy_masks.mask(index), eager.masks[index])
        np.testing.assert_array_equal(eager_masks.mask(index), eager.masks[index])
    np.testing.assert_array_equal(lazy.masks, eager.masks)
    np.testing.assert_array_equal(lazy_masks.stability, eager_masks.stability)


def test_segment_returns_masks_with_sam_scores_and_stability(fast_segmenter: BoxSegmenter) -> None:
    """``segment`` is ``predict`` as ``types.Masks``: scores = predicted IoU (float32), stability = the pipeline's
    ``stability_score`` of each box's low-res logits (float64, exactly), masks unchanged; non-square images."""
    images = [prepare_image(_smooth_image(150, 260)), prepare_image(_smooth_image(300, 180))]
    boxes = [np.array([[130, 0, 260, 75], [20, 40, 100, 140]], np.float32), np.array([[0, 0, 90, 150.5]])]
    raw = fast_segmenter.predict(images, boxes)
    masks = fast_segmenter.segment(images, [Detections.from_boxes(b) for b in boxes])
    assert all(isinstance(m, Masks) for m in masks)
    for result, m in zip(raw, masks, strict=True):
        assert m.original_hw == result.original_hw and len(m) == len(result)
        assert m.scores.dtype == np.float32
        np.testing.assert_array_equal(m.scores, result.iou_pred)
        expected = [stability_score(result.low_res_logits[i], result.input_hw) for i in range(len(result))]
        assert m.stability.dtype == np.float64 and m.stability.tolist() == expected
        for i in range(len(m)):
            np.testing.assert_array_equal(m.mask(i), result.masks[i])


def test_encoder_input_is_channels_last_and_decoder_chunks_follow_the_device(fast_segmenter: BoxSegmenter) -> None:
    """The encoder gets a channels-last batch (the fast oneDNN layout on CPU) and the decoder is called in chunks of
    ``default_decoder_batch_size`` boxes: 2 on CPU (larger calls only spill the caches there), 32 on CUDA."""
    assert default_decoder_batch_size("cpu") == 2
    assert default_decoder_batch_size(torch.device("cuda:0")) == 32
    layouts: list[bool] = []
    decoder_boxes: list[int] = []
    model = fast_segmenter.model
    hooks = [
        model.image_encoder.register_forward_pre_hook(
            lambda _m, args: layouts.append(args[0].is_contiguous(memory_format=torch.channels_last))
        ),
        # the IoU head runs once per decoder call, on that call's boxes (whichever forward runs the decoder)
        model.mask_decoder.iou_prediction_head.register_forward_pre_hook(
            lambda _m, args: decoder_boxes.append(int(args[0].shape[0]))
        ),
    ]
    rng = np.random.default_rng(5)
    xy = rng.uniform(0, 100, (19, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(10, 60, (19, 2))], axis=1)
    try:
        (result,) = fast_segmenter.predict([prepare_image(_smooth_image(160, 200))], [boxes])
    finally:
        for hook in hooks:
            hook.remove()
    assert layouts == [True]
    assert decoder_boxes == [2] * 9 + [1]
    assert result.masks.shape == (19, 160, 200)


@pytest.mark.parametrize("stretched", [False, True])
def test_crops_are_the_full_masks_cut_to_their_foreground(monkeypatch: pytest.MonkeyPatch, stretched: bool) -> None:
    """What a GPU copies back instead of full-size masks: each mask's foreground box and its pixels, bit for bit the
    full masks of ``postprocess_in_chunks`` (masks touching every image edge, an empty one, one chunk per box)."""
    import autoannotate.segmenters.sam_transforms as transforms_module
    from autoannotate.segmenters.sam_transforms import postprocess_in_chunks, postprocess_to_crops
    from autoannotate.types import MaskCrop

    torch.manual_seed(4)
    logits = torch.randn(5, 1, 256, 256) * 3 + 1
    logits[1] = -10.0  # empty
    logits[2] = 10.0  # everything: the crop is the whole image
    input_hw, original_hw = ((768, 1024), (300, 400)) if not stretched else ((1024, 1024), (300, 400))
    full = postprocess_in_chunks(logits, input_hw, original_hw, 0.0, stretched=stretched)
    monkeypatch.setattr(transforms_module, "_POSTPROCESS_BUDGET_BYTES", 1)
    crops = postprocess_to_crops(logits, input_hw, original_hw, 0.0, stretched=stretched)
    assert len(crops) == 5
    assert (crops[1].pixels.shape, crops[1].x0, crops[1].y0) == ((0, 0), 0, 0)
    assert crops[2].pixels.shape == original_hw and (crops[2].x0, crops[2].y0) == (0, 0)
    for index, crop in enumerate(crops):
        np.testing.assert_array_equal(crop.full(original_hw), full[index])
        expected = MaskCrop.of(full[index])
        assert (crop.x0, crop.y0) == (expected.x0, expected.y0)
        np.testing.assert_array_equal(crop.pixels, expected.pixels)


def test_stability_counted_on_the_device_is_the_host_figure() -> None:
    """What a GPU computes instead of copying every box's low-res logits to the host: the same float64 figures,
    empty masks (1.0) and a non-square input frame included."""
    from autoannotate.quality import stability_score
    from autoannotate.segmenters.sam_transforms import stability_on_device

    torch.manual_seed(6)
    logits = torch.randn(4, 1, 256, 256) * 2
    logits[3] = -5.0  # nothing above threshold - 1: stability 1.0
    for input_hw in ((768, 1024), (1024, 577)):
        host = [stability_score(logits[i, 0].numpy(), input_hw) for i in range(4)]
        device = stability_on_device(logits, input_hw)
        assert device.dtype == np.float64 and device.tolist() == host
        assert device[3] == 1.0
