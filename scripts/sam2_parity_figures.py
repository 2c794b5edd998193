"""SAM 2 / 2.1 parity figures against Meta's ``SAM2ImagePredictor`` on the scenes of tests/test_sam2_segmenter.py
(random weights of Meta's sam2.1_hiera_t and sam2_hiera_t configs): the largest low-res logit and predicted-IoU
differences, and the mask pixels that differ, in all and outside the +-1e-4 band around the threshold.

    python scripts/sam2_parity_figures.py
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import test_sam2_segmenter as scenes  # its scenes, images and reference builder


def main() -> None:
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    from autoannotate.segmenters import load_segmenter

    with tempfile.TemporaryDirectory() as tmp:
        for config in ("sam2.1/sam2.1_hiera_t", "sam2/sam2_hiera_t"):
            reference = scenes._meta_model(config)
            path = Path(tmp) / "weights.pt"
            torch.save({"model": reference.state_dict()}, path)
            ours = load_segmenter(path, "cpu")
            predictor = SAM2ImagePredictor(reference)
            for seed, ((height, width), boxes) in enumerate(scenes.SCENES):
                image = scenes._image(height, width, seed=seed)
                predictor.set_image(image)
                logits, iou, low_res = predictor.predict(box=boxes, multimask_output=False, return_logits=True)
                (result,) = ours.predict([ours.prepare(image)], [boxes])  # type: ignore[attr-defined]
                logit_diff = np.abs(np.clip(result.low_res_logits, -32, 32) - low_res[:, 0]).max()
                iou_diff = np.abs(result.iou_pred - iou[:, 0]).max()
                differ = result.masks != (logits[:, 0] > 0)
                outside = differ & (np.abs(logits[:, 0]) > 1e-4)
                print(
                    f"{ours.variant} {height}x{width}, {len(boxes)} boxes: max |low-res logit diff| {logit_diff:.2e}, "
                    f"max |IoU diff| {iou_diff:.2e}, mask pixels differing {int(differ.sum())} of {differ.size} "
                    f"({int(outside.sum())} outside the band)"
                )


if __name__ == "__main__":
    main()
