"""CPU seconds per image of every segmenter family, side by side in one run: the image encoder (s/image) and the
decoder (ms/box), fp32 and ``--half``, with the masks' agreement between the two.

    python benchmarks/bench_segmenters.py [--only mobile_sam,sam_b,...] [--repeats 2] [--threads 1] [--boxes 9]

Every model is a random-weight stand-in of the real architecture, built here (nothing is downloaded) and loaded the
way a run loads it (``autoannotate.segmenters.load_segmenter``: recognised from its contents). Each family is timed
through the ``Segmenter`` protocol alone (``prepare`` + ``segment`` on one 640x480 image): with 1 box and with
``--decoder-boxes`` boxes; the decoder's cost per box is the difference over the extra boxes (many of them, so that
the encoder's run-to-run noise is spread thin), the encoder's the 1-box time less one box, and ``s/img`` the encoder
plus ``--boxes`` boxes. Best of ``--repeats`` after a warm-up. Random weights give speckled masks, so the agreement
figures (per-box mask IoU of ``--half`` against fp32) are a lower bound for real weights' blob-shaped masks.

The ``ratio`` column is each row's seconds per image (encoder + ``--boxes`` boxes) over MobileSAM's, fp32.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import OtherLoadMeter, machine_lines, synthetic_scene_bgr

IMAGE_WH = (640, 480)


def _save_state_dict(module: object, path: Path, *, wrap: bool) -> None:
    import torch

    state = module.state_dict()  # type: ignore[attr-defined]
    torch.save({"model": state} if wrap else state, path)


def _sam(builder: str) -> Callable[[Path], None]:
    def build(path: Path) -> None:
        from ultralytics.models.sam import build as sam_build

        _save_state_dict(getattr(sam_build, builder)(), path, wrap=False)

    return build


def _sam2(config: str) -> Callable[[Path], None]:
    """Meta's reference builder (``sam2`` package), random weights, saved as Meta's checkpoints are."""

    def build(path: Path) -> None:
        from sam2.build_sam import build_sam2

        _save_state_dict(build_sam2(config, ckpt_path=None, device="cpu"), path, wrap=True)

    return build


def _fastsam(scale: str) -> Callable[[Path], None]:
    def build(path: Path) -> None:
        import torch
        from ultralytics.nn.tasks import SegmentationModel

        model = SegmentationModel(f"yolov8{scale}-seg.yaml", nc=1, verbose=False).half()
        torch.save({"model": model, "train_args": {"task": "segment"}}, path)

    return build


def _sam3(path: Path) -> None:
    from autoannotate.segmenters import sam3_interactive

    sam3_interactive.write_random_checkpoint(path)


#: name -> (checkpoint builder, file name). File names say nothing the loader uses: it recognises contents.
FAMILIES: dict[str, tuple[Callable[[Path], None], str]] = {
    "mobile_sam": (_sam("build_mobile_sam"), "mobile_sam.pt"),
    "fastsam_s": (_fastsam("s"), "fastsam_s.pt"),
    "fastsam_x": (_fastsam("x"), "fastsam_x.pt"),
    "sam2.1_t": (_sam2("configs/sam2.1/sam2.1_hiera_t.yaml"), "sam2.1_t.pt"),
    "sam2.1_s": (_sam2("configs/sam2.1/sam2.1_hiera_s.yaml"), "sam2.1_s.pt"),
    "sam2.1_b+": (_sam2("configs/sam2.1/sam2.1_hiera_b+.yaml"), "sam2.1_b.pt"),
    "sam2.1_l": (_sam2("configs/sam2.1/sam2.1_hiera_l.yaml"), "sam2.1_l.pt"),
    "sam_b": (_sam("build_sam_vit_b"), "sam_b.pt"),
    "sam3": (_sam3, "sam3.pt"),
}


def _boxes_xyxy(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    width, height = IMAGE_WH
    xy = rng.uniform(0, [width * 0.8, height * 0.8], (n, 2))
    wh = rng.uniform(24, [width * 0.4, height * 0.5], (n, 2))
    return np.concatenate([xy, np.minimum(xy + wh, [width, height])], 1).astype(np.float32)


def _time_segment(
    segmenter: object, image_rgb: np.ndarray, boxes: np.ndarray, repeats: int
) -> tuple[float, list[np.ndarray]]:
    from autoannotate.types import Detections

    detections = Detections.from_boxes(boxes)
    best, masks = float("inf"), []
    for _ in range(repeats):
        start = time.perf_counter()
        prepared = segmenter.prepare(image_rgb)  # type: ignore[attr-defined]
        (result,) = segmenter.segment([prepared], [detections])  # type: ignore[attr-defined]
        masks = [result.mask(i) for i in range(len(result))]  # full-size masks, as a run renders them
        best = min(best, time.perf_counter() - start)
    return best, masks


def _measure(
    path: Path, half: bool, image_rgb: np.ndarray, boxes: np.ndarray, repeats: int
) -> tuple[float, float, list[np.ndarray]]:
    from autoannotate.segmenters import load_segmenter

    segmenter = load_segmenter(path, "cpu", half)
    _time_segment(segmenter, image_rgb, boxes[:1], 1)  # warm-up: kernels, caches
    one, _ = _time_segment(segmenter, image_rgb, boxes[:1], repeats)
    many, masks = _time_segment(segmenter, image_rgb, boxes, repeats)
    per_box_s = max(many - one, 0.0) / (len(boxes) - 1)
    return one - per_box_s, per_box_s, masks


def _agreement(masks_a: list[np.ndarray], masks_b: list[np.ndarray]) -> tuple[float, float]:
    ious = []
    for a, b in zip(masks_a, masks_b, strict=True):
        union = np.logical_or(a, b).sum()
        ious.append(1.0 if union == 0 else np.logical_and(a, b).sum() / union)
    return float(min(ious)), float(np.mean(ious))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(FAMILIES), help="comma-separated rows, from: " + ", ".join(FAMILIES))
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (a run uses one per core on CPU)")
    parser.add_argument("--boxes", type=int, default=9, help="boxes per image in the s/img column")
    parser.add_argument("--decoder-boxes", type=int, default=33, help="boxes of the timing the per-box cost is from")
    parser.add_argument("--skip-half", action="store_true")
    parser.add_argument("--weights-dir", type=Path, default=Path(tempfile.gettempdir()) / "aa-bench-segmenters")
    args = parser.parse_args()

    import cv2
    import torch

    from autoannotate.errors import ModelError

    torch.set_num_threads(args.threads)
    for line in machine_lines():
        print(line)
    print(
        f"torch threads {args.threads}, image {IMAGE_WH[0]}x{IMAGE_WH[1]}, s/img with {args.boxes} boxes, per box from "
        f"1 and {args.decoder_boxes} boxes, best of {args.repeats}"
    )
    image_rgb = cv2.cvtColor(synthetic_scene_bgr(np.random.default_rng(0), IMAGE_WH), cv2.COLOR_BGR2RGB)
    boxes = _boxes_xyxy(args.decoder_boxes, seed=1)
    args.weights_dir.mkdir(parents=True, exist_ok=True)

    header = f"{'segmenter':<11} {'encoder s/img':>13} {'decoder ms/box':>14} {'s/img':>7} {'ratio':>6}"
    header += "" if args.skip_half else f" {'half enc s':>10} {'half ms/box':>11} {'half IoU min/mean':>18}"
    print(header + f" {'other load':>10}")
    reference_s = None
    for name in [n.strip() for n in args.only.split(",") if n.strip()]:
        if name not in FAMILIES:
            raise SystemExit(f"unknown row {name!r}; rows: {', '.join(FAMILIES)}")
        build, file_name = FAMILIES[name]
        path = args.weights_dir / file_name
        if not path.is_file():
            torch.manual_seed(0)
            try:
                build(path)
            except (ImportError, AttributeError) as error:
                print(f"{name:<11} skipped: cannot build its stand-in ({error})")
                continue
        meter = OtherLoadMeter()
        meter.start()
        try:
            encoder_s, per_box_s, masks = _measure(path, False, image_rgb, boxes, args.repeats)
        except ModelError as error:
            print(f"{name:<11} skipped: {error}")
            continue
        total_s = encoder_s + per_box_s * args.boxes
        reference_s = total_s if name == "mobile_sam" else reference_s
        ratio = f"{total_s / reference_s:6.2f}" if reference_s else f"{'-':>6}"
        row = f"{name:<11} {encoder_s:13.3f} {per_box_s * 1e3:14.2f} {total_s:7.2f} {ratio}"
        if not args.skip_half:
            half_encoder_s, half_per_box_s, half_masks = _measure(path, True, image_rgb, boxes, 1)
            iou_min, iou_mean = _agreement(masks, half_masks)
            row += f" {half_encoder_s:10.3f} {half_per_box_s * 1e3:11.2f} {iou_min:8.4f} / {iou_mean:.4f}"
        print(row + f" {meter.other_cores():10.2f}", flush=True)


if __name__ == "__main__":
    main()
