"""What every segmenter is: the ``Segmenter`` protocol the pipeline calls, and the ``SegmenterEntry`` it registers.

Importing this module never imports torch: the pipeline, the engines and the tests type against it without a model.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from autoannotate.types import Detections, Masks

if TYPE_CHECKING:
    import torch

__all__ = ["BOX_PROMPTS", "POINT_PROMPTS", "Segmenter", "SegmenterEntry", "prompt_kinds"]

#: What ``prompt_kinds`` may hold: box prompts (every segmenter takes them), point prompts.
BOX_PROMPTS = "boxes"
POINT_PROMPTS = "points"


@runtime_checkable
class Segmenter(Protocol):
    """A prompted segmenter: one mask per instance (a box, points, or both), in order, in each image's own pixel
    frame. A segmenter that takes more than box prompts says so with a ``prompt_kinds`` attribute (see
    ``prompt_kinds``).

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

    def segment(self, prepared: Sequence[Any], prompts: Sequence[Detections]) -> list[Masks]:
        """Segment every instance of every image.

        Args:
            prepared: What ``prepare`` returned, one per image.
            prompts: One ``Detections`` per image, in that image's original ``(H, W)`` pixel frame: its boxes
                (``xyxy``), and, where a prompt source gave them, its points (``points``, with ``box_given`` saying
                which boxes are prompts too) or the detector's own masks (``masks``); may hold no instance.

        Returns:
            One ``Masks`` per image, in order, aligned 1:1 with its instances, masks ``(H, W)`` bool in the original
            frame.
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
            although it looks like one of its own (e.g. ``"is a SAM ViT checkpoint of unknown size"``); the first
            reason given replaces the generic message.
        keyword: A ``--sam-model`` value that loads this family without any file (``"none"``): ``load`` is then
            called with ``weights_path`` None and ``variant`` the keyword.
        recognise_file: ``weights_path -> variant | None``: for a family whose checkpoints are no plain state dict
            (a pickled model, which ``weights.read_state_dict`` refuses), the variant it loads for the file, read
            without unpickling it; asked before the state dict is read, None when the file is not one of its own.
    """

    name: str
    recognise: Callable[[Mapping[str, Any]], str | None]
    load: Callable[[Path | None, str | torch.device, bool, str], Segmenter]
    variants: tuple[str, ...] = ()
    assets: frozenset[str] = frozenset()
    explain: Callable[[Mapping[str, Any]], str | None] | None = None
    keyword: str | None = None
    recognise_file: Callable[[Path], str | None] | None = None


def prompt_kinds(segmenter: object) -> frozenset[str]:
    """The prompt kinds a segmenter takes: its ``prompt_kinds`` attribute, else box prompts alone."""
    kinds = getattr(segmenter, "prompt_kinds", None)
    return frozenset(kinds) if kinds else frozenset({BOX_PROMPTS})
