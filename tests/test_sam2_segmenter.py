"""SAM 2 / 2.1 segmenter: masks equal Meta's reference predictor (``sam2.SAM2ImagePredictor``) on the same random
weights, versions and sizes told apart by the checkpoint's contents, batched encoder equal to one image at a time,
and an end-to-end run. The reference model is built from Meta's own configs (``sam2.build_sam.build_sam2``), its
state dict saved as Meta's checkpoints are (``{"model": state_dict}``) and loaded by our segmenter."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from autoannotate.errors import ModelError
from autoannotate.segmenters import load_segmenter
from autoannotate.segmenters.sam2 import SAM2_VARIANTS, Sam2Segmenter, recognise_sam2
from autoannotate.types import Detections

sam2_build = pytest.importorskip("sam2.build_sam", reason="Meta's sam2 package is the oracle (README test command)")

# The tolerance band of the issue: low-res logits within 1e-4; masks identical wherever the reference's logit is
# farther than 1e-4 from the threshold.
LOGIT_ATOL = 1e-4


def _meta_model(config: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return sam2_build.build_sam2(f"configs/{config}.yaml", ckpt_path=None, device="cpu", mode="eval")


@pytest.fixture(scope="module")
def meta_sam21_t(tmp_path_factory: pytest.TempPathFactory) -> tuple[torch.nn.Module, Path]:
    """Meta's SAM 2.1 tiny with random weights, and its checkpoint under a name that says nothing."""
    model = _meta_model("sam2.1/sam2.1_hiera_t")
    path = tmp_path_factory.mktemp("sam2") / "weights.pt"
    torch.save({"model": model.state_dict()}, path)
    return model, path


@pytest.fixture(scope="module")
def ours(meta_sam21_t: tuple[torch.nn.Module, Path]) -> Sam2Segmenter:
    segmenter = load_segmenter(meta_sam21_t[1], "cpu")
    assert isinstance(segmenter, Sam2Segmenter)
    return segmenter


def _image(height: int, width: int, seed: int) -> np.ndarray:
    """(H, W, 3) uint8 RGB: noise under coloured rectangles."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 80, (height, width, 3), dtype=np.uint8)
    for _ in range(5):
        x, y = int(rng.integers(0, width - 30)), int(rng.integers(0, height - 30))
        colour = tuple(int(c) for c in rng.integers(60, 255, 3))
        cv2.rectangle(image, (x, y), (x + int(rng.integers(15, 90)), y + int(rng.integers(15, 90))), colour, -1)
    return image


# A portrait, a landscape and a square image, each with several boxes: fractional corners, one over the border,
# the whole image, a thin one.
SCENES = [
    ((200, 130), np.array([[5, 10, 100, 150], [20.5, 30.25, 129.9, 199.5], [0, 0, 130, 200], [60, 5, 64, 190]])),
    ((150, 260), np.array([[10, 10, 120, 140], [100.7, 20.2, 300, 149], [0, 0, 260, 150]])),
    ((180, 180), np.array([[30, 30, 150, 150], [0.5, 90.5, 179.5, 100.5]])),
]


def _assert_masks_match(ours_masks: np.ndarray, ref_masks: np.ndarray, ref_logits: np.ndarray) -> None:
    decided = np.abs(ref_logits) > LOGIT_ATOL
    assert (ours_masks[decided] == ref_masks[decided]).all()


@pytest.mark.parametrize("scene", range(len(SCENES)), ids=["portrait", "landscape", "square"])
def test_masks_equal_meta_sam2_predictor(scene: int, meta_sam21_t, ours: Sam2Segmenter) -> None:
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    (h, w), boxes = SCENES[scene]
    image = _image(h, w, seed=scene)
    predictor = SAM2ImagePredictor(meta_sam21_t[0])
    predictor.set_image(image)
    ref_masks, ref_iou, ref_low = predictor.predict(box=boxes, multimask_output=False, return_logits=True)
    (result,) = ours.predict([ours.prepare(image)], [boxes])
    # The reference returns its low-res logits clamped to [-32, 32]; ours are unclamped.
    np.testing.assert_allclose(np.clip(result.low_res_logits, -32, 32), ref_low[:, 0], atol=LOGIT_ATOL, rtol=0)
    np.testing.assert_allclose(result.iou_pred, ref_iou[:, 0], atol=LOGIT_ATOL, rtol=0)
    _assert_masks_match(result.masks, ref_masks[:, 0] > 0, ref_masks[:, 0])
    assert result.masks.shape == (len(boxes), h, w) and 0 < result.masks.mean() < 1


def test_point_prompts_equal_meta_sam2_predictor(meta_sam21_t, ours: Sam2Segmenter) -> None:
    """Points alone, positive and negative, and points with a box, each one instance as the reference takes it."""
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    image = _image(150, 260, seed=7)
    predictor = SAM2ImagePredictor(meta_sam21_t[0])
    predictor.set_image(image)
    # Points alone, positive and negative, and points with a box: three prompt shapes, decoded in one call.
    cases = [
        (np.array([[60.0, 70.0, 1]]), None),
        (np.array([[60.0, 70.0, 1], [200.5, 30.0, 0], [10.0, 140.0, 1]]), None),
        (np.array([[100.0, 50.0, 1]]), np.array([80.0, 20.0, 240.0, 130.0])),
    ]
    bounds = [np.concatenate([p[:, :2].min(0), p[:, :2].max(0)]) if box is None else box for p, box in cases]
    (result,) = ours.predict(
        [ours.prepare(image)],
        [np.stack(bounds)],
        points=[[p for p, _ in cases]],
        box_given=[np.array([box is not None for _, box in cases])],
    )
    for i, (points, box) in enumerate(cases):
        ref_masks, ref_iou, ref_low = predictor.predict(
            point_coords=points[:, :2], point_labels=points[:, 2], box=box, multimask_output=False, return_logits=True
        )
        np.testing.assert_allclose(np.clip(result.low_res_logits[i], -32, 32), ref_low[0], atol=LOGIT_ATOL, rtol=0)
        np.testing.assert_allclose(result.iou_pred[i], ref_iou[0], atol=LOGIT_ATOL, rtol=0)
        _assert_masks_match(result.mask(i), ref_masks[0] > 0, ref_masks[0])


def test_batched_encoder_equals_one_image_at_a_time(ours: Sam2Segmenter) -> None:
    images = [_image(h, w, seed=i) for i, ((h, w), _) in enumerate(SCENES[1:])]
    boxes = [b for _, b in SCENES[1:]]
    prepared = [ours.prepare(image) for image in images]
    together = ours.predict(prepared, boxes)
    for i in range(len(images)):
        (alone,) = ours.predict([prepared[i]], [boxes[i]])
        np.testing.assert_allclose(together[i].low_res_logits, alone.low_res_logits, atol=1e-5, rtol=0)
        decided = np.abs(alone.low_res_logits) > 1e-4
        assert decided.mean() > 0.99
    # The decoder in chunks of one instance gives what one call over all of them gives.
    chunked = Sam2Segmenter(ours.model, decoder_batch_size=1)
    (one_by_one,) = chunked.predict([prepared[1]], [boxes[1]])
    np.testing.assert_allclose(one_by_one.low_res_logits, together[1].low_res_logits, atol=1e-5, rtol=0)


def test_segment_returns_masks_aligned_with_instances(ours: Sam2Segmenter) -> None:
    """``segment`` (the pipeline's call): one mask per box in order, predicted IoU and stability, none dropped;
    an image without boxes is not encoded and gets no masks."""
    (h, w), boxes = SCENES[1]
    image = _image(h, w, seed=1)
    prompts = [Detections.from_boxes(boxes.astype(np.float32)), Detections.empty()]
    masks, empty = ours.segment([ours.prepare(image), ours.prepare(image[:50, :70].copy())], prompts)
    assert len(masks) == len(boxes) and masks.original_hw == (h, w)
    assert masks.scores.shape == (len(boxes),) and np.isfinite(masks.scores).all()
    assert ((masks.stability >= 0) & (masks.stability <= 1)).all()
    reversed_masks = ours.segment([ours.prepare(image)], [Detections.from_boxes(boxes[::-1].astype(np.float32))])[0]
    for i in range(len(boxes)):
        assert (masks.mask(i) == reversed_masks.mask(len(boxes) - 1 - i)).mean() > 0.999
    assert len(empty) == 0 and empty.original_hw == (50, 70)


def test_half_agrees_with_float32(ours: Sam2Segmenter) -> None:
    """bfloat16 autocast on CPU: the same masks up to rounding near the threshold (the figure per segmenter is
    measured by benchmarks/bench_segmenters.py)."""
    (h, w), boxes = SCENES[0]
    image = _image(h, w, seed=0)
    full = ours.predict([ours.prepare(image)], [boxes])[0].masks
    half = Sam2Segmenter(ours.model, half=True).predict([ours.prepare(image)], [boxes])[0].masks
    iou = (full & half).sum((1, 2)) / np.maximum((full | half).sum((1, 2)), 1)
    assert iou.min() > 0.8, iou


def _hiera_keys(embed_dim: int, blocks: int) -> dict[str, torch.Tensor]:
    """The tensors recognition reads, as a SAM 2 checkpoint of that Hiera size holds them (Meta's configs: t 96
    wide with 1+2+7+2 blocks, s 96 with 1+2+11+2, b+ 112 with 2+3+16+3, l 144 with 2+6+36+4)."""
    keys = {"image_encoder.trunk.patch_embed.proj.weight": torch.zeros(embed_dim, 3, 1, 1)}
    keys |= {f"image_encoder.trunk.blocks.{i}.norm1.weight": torch.zeros(1) for i in range(blocks)}
    keys |= {
        "sam_prompt_encoder.point_embeddings.0.weight": torch.zeros(1),
        "sam_mask_decoder.iou_token.weight": torch.zeros(1),
    }
    return keys


@pytest.mark.parametrize(
    ("embed_dim", "blocks", "size"), [(96, 12, "t"), (96, 16, "s"), (112, 24, "b+"), (144, 48, "l")]
)
def test_sizes_and_versions_are_recognised_from_contents(embed_dim: int, blocks: int, size: str) -> None:
    state_dict = _hiera_keys(embed_dim, blocks)
    assert recognise_sam2(state_dict) == f"sam2_{size}"
    for only_in_21 in ("no_obj_embed_spatial", "obj_ptr_tpos_proj.weight"):
        assert recognise_sam2({**state_dict, only_in_21: torch.zeros(1)}) == f"sam2.1_{size}"
    assert set(SAM2_VARIANTS) >= {f"sam2_{size}", f"sam2.1_{size}"}


def test_meta_checkpoints_of_both_versions_load_under_any_name(tmp_path: Path, meta_sam21_t) -> None:
    """2.0 and 2.1 from Meta's configs, told apart by their keys; a file named like the other version still loads
    as what it holds."""
    v20 = tmp_path / "sam2.1_t.pt"  # a 2.0 checkpoint named like 2.1
    torch.save({"model": _meta_model("sam2/sam2_hiera_t").state_dict()}, v20)
    assert load_segmenter(v20, "cpu").variant == "sam2_t"
    v21 = tmp_path / "sam2_t.pt"  # and the other way round
    v21.write_bytes(meta_sam21_t[1].read_bytes())
    assert load_segmenter(v21, "cpu").variant == "sam2.1_t"


@pytest.mark.parametrize(
    ("edit", "fragments"),
    [
        # a tensor of the image encoder removed: strict loading names it
        (lambda sd: sd.pop("image_encoder.neck.convs.0.conv.weight"), ("does not match the sam2.1_t", "1 missing")),
        # the Hiera trunk with a block count no size has
        (
            lambda sd: [sd.pop(k) for k in list(sd) if k.startswith("image_encoder.trunk.blocks.11.")],
            ("SAM 2 checkpoint of unknown size", "96", "11 blocks"),
        ),
        # the prompt encoder gone
        (
            lambda sd: [sd.pop(k) for k in list(sd) if k.startswith("sam_prompt_encoder.")],
            ("partial SAM 2 checkpoint", "sam_prompt_encoder"),
        ),
    ],
    ids=["missing-tensor", "unknown-size", "partial"],
)
def test_damaged_checkpoints_are_one_line_errors(tmp_path: Path, meta_sam21_t, edit, fragments) -> None:
    state_dict = dict(meta_sam21_t[0].state_dict())
    edit(state_dict)
    path = tmp_path / "x.pt"
    torch.save({"model": state_dict}, path)
    with pytest.raises(ModelError) as err:
        load_segmenter(path, "cpu")
    message = str(err.value)
    assert "\n" not in message and "x.pt" in message and "--sam-model" in message, message
    for fragment in fragments:
        assert fragment in message, message


def test_a_non_sam_file_is_a_one_line_error(tmp_path: Path) -> None:
    path = tmp_path / "sam2.1_b.pt"  # the name of a SAM 2.1 asset, the contents of nothing
    torch.save({"backbone.weight": torch.zeros(3)}, path)
    with pytest.raises(ModelError) as err:
        load_segmenter(path, "cpu")
    message = str(err.value)
    assert "\n" not in message and "not a checkpoint of a known segmenter" in message and "--sam-model" in message


def test_cli_run_with_a_sam21_checkpoint(tmp_path: Path, yolo_weights: Path, meta_sam21_t) -> None:
    """End to end: labels for every image, the sidecar's predicted IoU and stability per instance, the variant in
    the manifest."""
    from helpers import json_events, stand_in_model_args
    from typer.testing import CliRunner

    from autoannotate.cli import app

    data, out = tmp_path / "data", tmp_path / "out"
    data.mkdir()
    for seed, (h, w) in enumerate([(90, 140), (120, 80)]):
        cv2.imwrite(str(data / f"im{seed}.png"), _image(h, w, seed=seed)[..., ::-1])
    args = ["run", "--data", str(data), "--output-dir", str(out), "--json", "--tolerance", "0"]
    result = CliRunner().invoke(app, [*args, *stand_in_model_args(yolo_weights, meta_sam21_t[1], max_det=3)])
    assert result.exit_code == 0, result.output
    summary = json_events(result.stdout)[-1]
    assert (summary["images"], summary["failed"]) == (2, 0)
    rows = [json.loads(line) for line in (out / "instances.jsonl").read_text().splitlines()]
    assert len(rows) == 6
    assert all(0 <= row["sam_iou"] <= 1 and 0 <= row["stability"] <= 1 for row in rows)
    manifest = json.loads((out / "autoannotate.json").read_text())
    assert manifest["models"]["segmenter"]["variant"] == "sam2.1_t"
    assert sorted(p.name for p in (out / "labels").iterdir()) == ["im0.txt", "im1.txt"]


def test_a_non_finite_half_result_is_computed_again_in_float32(ours: Sam2Segmenter) -> None:
    """As MobileSAM's: the encoder batch and each decoder chunk NaN under autocast (a float16 overflow) are computed
    again in float32, and the result is exactly the float32 segmenter's."""
    (h, w), boxes = SCENES[0]
    image = _image(h, w, seed=0)
    half = Sam2Segmenter(ours.model, half=True)
    encode = half._encode
    calls = {"encode": 0, "decode": 0}

    def nan(out: object) -> object:
        if isinstance(out, torch.Tensor):
            return torch.full_like(out, float("nan"))
        if isinstance(out, list | tuple):
            return type(out)(nan(o) for o in out)
        return out

    def encode_nan(batch: torch.Tensor) -> object:
        out = encode(batch)
        if torch.is_autocast_enabled("cpu"):
            calls["encode"] += 1
            return nan(out)
        return out

    def decoder_nan(module: object, args: object, out: object) -> object:
        if torch.is_autocast_enabled("cpu"):
            calls["decode"] += 1
            return nan(out)
        return None

    half._encode = encode_nan  # type: ignore[method-assign]
    hook = ours.model.sam_mask_decoder.register_forward_hook(decoder_nan)
    try:
        (got,) = half.predict([half.prepare(image)], [boxes])
    finally:
        hook.remove()
    (expected,) = ours.predict([ours.prepare(image)], [boxes])
    assert calls["encode"] == 1 and calls["decode"] >= 1
    assert half.redone_in_f32 == 1 + calls["decode"]
    np.testing.assert_array_equal(got.iou_pred, expected.iou_pred)
    np.testing.assert_array_equal(got.masks, expected.masks)
