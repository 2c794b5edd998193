"""The values that flow between the stages, free of torch: boxes (``Detections``), masks (``Masks``), and what
happened to one image (``ImageOutcome``, with ``Status``).

Every stage speaks these: a prompt source returns ``Detections``, a segmenter returns ``Masks`` 1:1 with the boxes,
the pipeline returns ``ImageOutcome``. Importing this module never imports torch or ultralytics.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from autoannotate.quality import InstanceQuality, mask_box_xyxy


class Status(StrEnum):
    """What a run did with one image (the ``status`` of its ``--json`` event and of its manifest entry)."""

    OK = "ok"  # at least one instance written
    EMPTY = "empty"  # an empty label file written (a negative sample)
    FAILED = "failed"  # nothing written; ``error`` says why
    SKIPPED = "skipped"  # done by an earlier run with the same settings, image unchanged
    EDITED = "edited"  # a label autoannotate wrote and a person changed since: kept as it is
    REVIEWED = "reviewed"  # a person's corrections (``autoannotate import``): kept, --overwrite or not


@dataclass(frozen=True)
class Detections:
    """Prompts of one image, in that image's pixel frame: one instance per row, each segmented into one mask.

    ``xyxy``: (N, 4) float32, x1 y1 x2 y2 pixels; ``class_id``: (N,) int64; ``confidence``: (N,) float32.

    Optional, for prompt sources and segmenters beyond boxes:

    - ``points``: one ``(K_i, 3)`` float32 array per instance, ``x y label`` in pixels (pixel centres at ``x + 0.5``,
      as SAM reads them), label 1 for a positive point and 0 for a negative one; None when every instance is a box.
    - ``box_given``: (N,) bool, whether ``xyxy`` is a box prompt; where False, ``xyxy`` only bounds the instance's
      points (for reports) and the segmenter is given its points alone. None means every ``xyxy`` is a box prompt.
    - ``masks``: (N, H, W) bool, the detector's own masks in the image frame (a segmentation detector, kept for
      ``--sam-model none``); None otherwise.
    """

    xyxy: np.ndarray
    class_id: np.ndarray
    confidence: np.ndarray
    points: tuple[np.ndarray, ...] | None = field(default=None, compare=False)
    box_given: np.ndarray | None = field(default=None, compare=False)
    masks: np.ndarray | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        n = len(self.xyxy)
        if self.xyxy.shape != (n, 4) or self.class_id.shape != (n,) or self.confidence.shape != (n,):
            raise ValueError(
                f"inconsistent Detections shapes {self.xyxy.shape}, {self.class_id.shape}, {self.confidence.shape}"
            )
        if self.points is not None and (
            len(self.points) != n or any(p.ndim != 2 or p.shape[1] != 3 for p in self.points)
        ):
            raise ValueError(f"Detections.points needs one (K, 3) array per instance ({n})")
        if self.box_given is not None and self.box_given.shape != (n,):
            raise ValueError(f"Detections.box_given has shape {self.box_given.shape}, expected ({n},)")
        if self.masks is not None and (self.masks.ndim != 3 or len(self.masks) != n):
            raise ValueError(f"Detections.masks has shape {self.masks.shape}, expected ({n}, H, W)")

    def __len__(self) -> int:
        return len(self.xyxy)

    def select(self, keep: np.ndarray) -> Detections:
        """The instances where the (N,) bool ``keep`` is True (or at the int indices ``keep``), in order, with
        every optional field subset alike."""
        index = np.flatnonzero(keep) if np.asarray(keep).dtype == bool else np.asarray(keep, np.int64)
        return Detections(
            self.xyxy[index],
            self.class_id[index],
            self.confidence[index],
            points=None if self.points is None else tuple(self.points[i] for i in index),
            box_given=None if self.box_given is None else self.box_given[index],
            masks=None if self.masks is None else self.masks[index],
        )

    def has_box(self, index: int) -> bool:
        """Whether instance ``index`` was prompted with its box (``box_given``; True when that is None)."""
        return self.box_given is None or bool(self.box_given[index])

    @classmethod
    def empty(cls) -> Detections:
        return cls(np.zeros((0, 4), np.float32), np.zeros((0,), np.int64), np.zeros((0,), np.float32))

    @classmethod
    def from_boxes(cls, xyxy: np.ndarray, class_id: np.ndarray | None = None) -> Detections:
        """Box prompts alone (class 0 and confidence 1 unless given): what a caller with boxes hands a segmenter."""
        boxes = np.asarray(xyxy, np.float32).reshape(-1, 4)
        n = len(boxes)
        classes = np.zeros(n, np.int64) if class_id is None else np.asarray(class_id, np.int64).reshape(n)
        return cls(boxes, classes, np.ones(n, np.float32))


@dataclass(frozen=True)
class MaskCrop:
    """One mask as the tight box of its foreground: ``pixels`` ``(h, w)`` bool, whose top-left pixel is ``(x0, y0)``
    of the image. An empty mask is a ``(0, 0)`` crop at ``(0, 0)``. What the label writer reads, so that an image's
    size never decides the cost per instance."""

    pixels: np.ndarray
    x0: int
    y0: int

    @property
    def local_box_xyxy(self) -> np.ndarray | None:
        """The foreground's box in the crop's own frame (``0 0 w h``: the crop is that box), None when empty."""
        h, w = self.pixels.shape
        return np.array([0, 0, w, h], dtype=np.float64) if h and w else None

    @classmethod
    def of(cls, mask: np.ndarray) -> MaskCrop:
        """The crop of a full ``(H, W)`` mask (a view of it, no copy)."""
        box = mask_box_xyxy(mask)
        if box is None:
            return cls(np.zeros((0, 0), bool), 0, 0)
        x1, y1, x2, y2 = (int(v) for v in box)
        return cls(mask[y1:y2, x1:x2], x1, y1)

    def full(self, original_hw: tuple[int, int]) -> np.ndarray:
        """The ``(H, W)`` bool mask it was cut from."""
        out = np.zeros(original_hw, bool)
        h, w = self.pixels.shape
        out[self.y0 : self.y0 + h, self.x0 : self.x0 + w] = self.pixels
        return out


@dataclass(frozen=True)
class Masks:
    """Masks of one image, aligned 1:1 and in order with the boxes that prompted them.

    ``scores``: (N,) float32, the segmenter's predicted IoU of each mask; ``stability``: (N,) float, SAM's
    stability score (IoU of the mask thresholded at +-1 around its threshold) or NaN where a segmenter has none
    (float64 from SAM: float32 would move the 6th decimal that ``instances.jsonl`` writes);
    ``original_hw``: the image's ``(H, W)``, the frame of the boxes and the masks.

    The masks are held full-size (``held``: (N, H, W) bool), computed one at a time by ``render(i)`` (so that a huge
    image with many boxes never holds all of them at once), or held as crops (``crops``: one ``MaskCrop`` each, what
    a GPU copies back instead of full-size masks).
    """

    scores: np.ndarray
    stability: np.ndarray
    original_hw: tuple[int, int]
    held: np.ndarray | None = None
    render: Callable[[int], np.ndarray] | None = field(default=None, compare=False)
    crops: tuple[MaskCrop, ...] | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        n = len(self.scores)
        if self.scores.shape != (n,) or self.stability.shape != (n,):
            raise ValueError(f"inconsistent Masks shapes {self.scores.shape}, {self.stability.shape}")
        if self.held is None and self.render is None and self.crops is None and n:
            raise ValueError("Masks needs the masks held, as crops or a render function")
        if self.crops is not None and len(self.crops) != n:
            raise ValueError(f"{len(self.crops)} mask crops for {n} masks")
        if self.held is not None and self.held.shape != (n, *self.original_hw):
            raise ValueError(f"held masks have shape {self.held.shape}, expected {(n, *self.original_hw)}")

    def __len__(self) -> int:
        return len(self.scores)

    def mask(self, index: int) -> np.ndarray:
        """``(H, W)`` bool mask of box ``index``."""
        if self.held is not None:
            return self.held[index]
        if self.crops is not None:
            return self.crops[index].full(self.original_hw)
        assert self.render is not None  # checked in __post_init__
        return self.render(index)

    def crop(self, index: int) -> MaskCrop:
        """Box ``index``'s mask as the tight crop of its foreground."""
        if self.crops is not None:
            return self.crops[index]
        return MaskCrop.of(self.mask(index))

    @classmethod
    def empty(cls, original_hw: tuple[int, int]) -> Masks:
        """No boxes, no masks."""
        return cls(
            np.zeros((0,), np.float32), np.zeros((0,), np.float32), original_hw, np.zeros((0, *original_hw), bool)
        )


@dataclass(frozen=True)
class ImageOutcome:
    """What happened to one input item. ``label_path`` is set whenever a label file was written (or kept).

    ``rel_path``: the item's key, its path relative to the input root (POSIX), which the dataset mirrors;
    ``origin``: where it was read from, as the user named it (the ``path`` of its ``--json`` event).
    """

    rel_path: PurePosixPath
    origin: str
    status: Status
    label_path: Path | None = None
    instances: int = 0
    detections: int = 0
    empty_masks: int = 0  # detections whose mask (after --min-area) had no polygon: no line written
    dropped: int = 0  # detections dropped by --min-mask-score: no line written
    error: str | None = None
    resolution_wh: tuple[int, int] | None = None
    quality: tuple[InstanceQuality, ...] = ()  # one per detection, in detection order
    label_sha256: str | None = None  # of the label file's bytes, when this run wrote it
    label_text: str | None = field(default=None, repr=False)  # the label file's text, when this run wrote it
    signature: tuple[int, int] | None = None  # the item's resume signature when it was admitted
    frame: dict[str, Any] | None = None  # a video frame's record (``video``, ``index``, ``t``, ``image_sha256``)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (plain types only): what a distributed worker sends back to the driver."""
        out = asdict(self)
        out["rel_path"] = self.rel_path.as_posix()
        out["status"] = str(self.status)
        out["label_path"] = str(self.label_path) if self.label_path is not None else None
        out["resolution_wh"] = list(self.resolution_wh) if self.resolution_wh is not None else None
        out["signature"] = list(self.signature) if self.signature is not None else None
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ImageOutcome:
        """The inverse of ``to_dict``."""
        wh, signature = data.get("resolution_wh"), data.get("signature")
        return cls(
            rel_path=PurePosixPath(data["rel_path"]),
            origin=str(data["origin"]),
            status=Status(data["status"]),
            label_path=Path(data["label_path"]) if data.get("label_path") else None,
            instances=int(data["instances"]),
            detections=int(data["detections"]),
            empty_masks=int(data["empty_masks"]),
            dropped=int(data["dropped"]),
            error=data.get("error"),
            resolution_wh=(int(wh[0]), int(wh[1])) if wh is not None else None,
            quality=tuple(InstanceQuality.from_dict(q) for q in data.get("quality") or ()),
            label_sha256=data.get("label_sha256"),
            label_text=data.get("label_text"),
            signature=(int(signature[0]), int(signature[1])) if signature is not None else None,
            frame=dict(data["frame"]) if isinstance(data.get("frame"), dict) else None,
        )
