"""What every segmenter is: the ``Segmenter`` protocol the pipeline calls, and the ``SegmenterEntry`` it registers.

Importing this module never imports torch: the pipeline, the engines and the tests type against it without a model.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from autoannotate.types import Masks

if TYPE_CHECKING:
    import torch

__all__ = ["Segmenter", "SegmenterEntry"]


@runtime_checkable
class Segmenter(Protocol):
    """A box-prompted segmenter: one mask per box, in box order, in each image's own pixel frame.

    A batch goes through two calls: ``prepare`` once per image (CPU only and thread-safe: the pipeline runs it in its
    decode worker pool), then ``segment`` over ``default_batch()`` prepared images at a time on the model's device.
    """

    @property
    def variant(self) -> str:
        """The model variant, as recorded in the run manifest (e.g. ``"mobile_sam"``)."""
        ...

    @property
    def weights_path(self) -> Path | None:
        """The checkpoint file it was loaded from (its sha256 goes in the manifest), None if built in memory."""
        ...

    def prepare(self, image_rgb: np.ndarray) -> Any:
        """``(H, W, 3)`` uint8 RGB image -> whatever ``segment`` takes for it (on CPU; no device work here)."""
        ...

    def segment(self, prepared: Sequence[Any], boxes_xyxy: Sequence[np.ndarray]) -> list[Masks]:
        """Segment every box of every image.

        Args:
            prepared: What ``prepare`` returned, one per image.
            boxes_xyxy: One ``(N_i, 4)`` float array per image, pixel ``x1 y1 x2 y2`` in that image's original
                ``(H, W)`` frame; ``N_i`` may be 0.

        Returns:
            One ``Masks`` per image, in order, aligned 1:1 with its boxes, masks ``(H, W)`` bool in the original frame.
        """
        ...

    def default_batch(self) -> int:
        """How many images to pass to one ``segment`` call on this segmenter's device."""
        ...

    def release_cached_memory(self) -> None:
        """Give cached device memory back (after an out-of-memory error); a no-op where there is none."""
        ...


@dataclass(frozen=True)
class SegmenterEntry:
    """One family of segmenters in the registry (``autoannotate.segmenters.SEGMENTERS``).

    Attributes:
        name: The registry key (e.g. ``"sam"``).
        recognise: ``state_dict -> variant | None``: the variant this family loads for a checkpoint's tensors (name
            -> tensor; read only names and ``.shape``, the values may be memory-mapped), None when it is not one.
        load: ``(weights_path, device, half, variant) -> Segmenter``: build ``variant`` from the file, on ``device``,
            ``half`` for reduced-precision inference. Raises ``ModelError`` with a one-line message.
        variants: The variant names ``recognise`` can return, for messages about checkpoints nobody recognises.
        assets: Bare file names (e.g. ``"mobile_sam.pt"``) that may be downloaded as ultralytics assets.
        explain: ``state_dict -> reason | None``: for a checkpoint nobody recognises, why this family cannot load it
            although it looks like one of its own (e.g. ``"is a SAM2 checkpoint, which is not supported"``); the
            first reason given replaces the generic message.
    """

    name: str
    recognise: Callable[[Mapping[str, Any]], str | None]
    load: Callable[[Path, str | torch.device, bool, str], Segmenter]
    variants: tuple[str, ...] = ()
    assets: frozenset[str] = frozenset()
    explain: Callable[[Mapping[str, Any]], str | None] | None = None
