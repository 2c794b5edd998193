"""``--sam-model none``: no segmenter at all; each instance's mask is the one its detector gave with its box.

A segmentation detector (``yolo11x-seg.pt``, YOLOE ``-seg``) returns masks with its boxes when asked
(``prompts.yolo.DetectSettings.masks``: ultralytics' retina masks, at the image's own resolution); this segmenter
hands them on as ``types.Masks`` unchanged, so that they become polygons as a SAM mask would. A detection-only prompt
source has no masks: the pipeline then writes box labels and never calls ``segment`` (``models.load_models``).

Nothing here imports torch or ultralytics.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from autoannotate.config import NO_SEGMENTER
from autoannotate.errors import ModelError
from autoannotate.segmenters.base import BOX_PROMPTS, SegmenterEntry
from autoannotate.types import Detections, Masks

__all__ = ["DETECTOR_MASKS_ENTRY", "DetectorMasks"]


class DetectorMasks:
    """The ``Segmenter`` of ``--sam-model none``: ``segment`` returns each instance's ``Detections.masks``.

    ``scores`` and ``stability`` are NaN (nothing predicts a mask IoU; ``instances.jsonl`` writes null), so
    ``--min-mask-score`` never drops one of these masks.
    """

    variant = NO_SEGMENTER
    weights_path: Path | None = None
    prompt_kinds = frozenset({BOX_PROMPTS})

    def prepare(self, image_rgb: np.ndarray) -> tuple[int, int]:
        """The image's ``(H, W)``: all there is to prepare."""
        return (int(image_rgb.shape[0]), int(image_rgb.shape[1]))

    def segment(self, prepared: Sequence[tuple[int, int]], prompts: Sequence[Detections]) -> list[Masks]:
        """Each image's detector masks as ``Masks`` (``(N, H, W)`` bool, 1:1 with its instances).

        Raises:
            ModelError: An image with instances but no masks (a detection-only model; ``models`` writes box labels
                for those instead of calling this), or masks of another size than the image.
        """
        out = []
        for hw, det in zip(prepared, prompts, strict=True):
            n = len(det)
            if n == 0:
                out.append(Masks.empty(hw))
                continue
            if det.masks is None:
                raise ModelError(
                    "--sam-model none: the prompt source gave boxes without masks; use a segmentation detector "
                    "(e.g. yolo11x-seg.pt) or a SAM-family --sam-model"
                )
            if det.masks.shape != (n, *hw):
                raise ModelError(f"detector masks have shape {det.masks.shape}, expected {(n, *hw)}")
            nan = np.full(n, np.nan)
            out.append(Masks(nan.astype(np.float32), nan, hw, held=det.masks.astype(bool, copy=False)))
        return out

    def default_batch(self) -> int:
        """One image per ``segment`` call: there is no model to batch."""
        return 1

    def release_cached_memory(self) -> None:
        """Nothing is cached."""


def _load(path: Path | None, device: object, half: bool, variant: str) -> DetectorMasks:
    return DetectorMasks()


#: The registry entry: loaded by its keyword (``--sam-model none``), never from a file.
DETECTOR_MASKS_ENTRY = SegmenterEntry(
    name="detector_masks",
    recognise=lambda state_dict: None,
    load=_load,
    variants=(),
    keyword=NO_SEGMENTER,
)
