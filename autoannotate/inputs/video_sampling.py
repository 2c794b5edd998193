"""Which frames of a video become dataset images: ``--every N`` / ``--fps F``, ``--max-frames M`` and
``--skip-similar T``. Pure: frames in, keep-or-not decisions out; nothing here reads a file.

The decisions depend only on the frames seen so far, through a state that is fully known right after any kept
frame (its index, timestamp and pixels, and how many frames were kept up to it), so a resumed run that restarts
from a kept frame decides exactly as an uninterrupted one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

#: Longest side, pixels, of the grey thumbnail that ``--skip-similar`` compares (aspect kept).
THUMBNAIL_SIDE = 64
#: A timestamp within this many seconds below a slot boundary counts as on it: container time bases (1/12800,
#: 1/1000) put 30 fps frames at 0.0333..., whose product with the rate must not fall just short of a whole slot.
_SLOT_EPSILON_S = 1e-6


@dataclass(frozen=True)
class VideoSampling:
    """How frames are chosen (see the module docstring).

    ``every``: keep every Nth decoded frame (frame index ``i`` with ``i % every == 0``; 1 = every frame).
    ``fps``: instead, keep the first frame of each ``1/fps`` second slot of the timestamps (None = off), so that a
    variable-frame-rate file is sampled evenly in time. ``max_frames``: at most this many frames per video (0 = no
    limit). ``skip_similar``: a candidate frame whose mean absolute difference from the last kept frame (grey
    thumbnails, 0..1) is below this is not kept (0 = off).
    """

    every: int = 1
    fps: float | None = None
    max_frames: int = 0
    skip_similar: float = 0.0

    def key(self) -> dict[str, Any]:
        """JSON-ready: what a resumed run compares to tell whether its frame decisions still hold."""
        return {"every": self.every, "fps": self.fps, "max_frames": self.max_frames, "skip_similar": self.skip_similar}

    def estimate(self, frames: int, seconds: float | None) -> int:
        """Frames kept from a video of ``frames`` frames lasting ``seconds`` (an upper bound with skip_similar)."""
        if self.fps is not None and seconds is not None and seconds > 0:
            kept = math.floor(seconds * self.fps + _SLOT_EPSILON_S) + 1
            kept = min(kept, frames) if frames > 0 else kept
        else:
            kept = (max(0, frames) + self.every - 1) // self.every
        return min(kept, self.max_frames) if self.max_frames else kept


def thumbnail(image_bgr: np.ndarray) -> np.ndarray:
    """The grey thumbnail ``--skip-similar`` compares: longest side ``THUMBNAIL_SIDE``, uint8, area-averaged."""
    height, width = image_bgr.shape[:2]
    scale = THUMBNAIL_SIDE / max(height, width)
    size_wh = (max(1, round(width * scale)), max(1, round(height * scale)))
    small = cv2.resize(image_bgr, size_wh, interpolation=cv2.INTER_AREA)
    return cv2.cvtColor(small, cv2.COLOR_BGR2GRAY)


def difference(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute difference of two thumbnails, 0 (equal) to 1 (black against white). Exact (integer sums)."""
    if a.shape != b.shape:  # a stream that changes size mid-way: as different as frames get
        return 1.0
    total = int(np.abs(a.astype(np.int16) - b.astype(np.int16)).sum(dtype=np.int64))
    return total / (255.0 * a.size)


@dataclass(frozen=True)
class SamplerState:
    """What decides the next frames, right after a kept frame: how many were kept, the kept frame's time slot
    (``--fps``) and its thumbnail (``--skip-similar``)."""

    kept: int
    slot: int | None
    reference: np.ndarray | None


class FrameSampler:
    """Decides, frame by frame and in decoding order, which frames are kept.

    ``candidate(index, t_s)`` says whether a frame is worth looking at (cheap: no pixels); ``offer(index, t_s,
    image_bgr)`` then decides for a candidate. ``done`` is True once ``max_frames`` are kept.
    """

    def __init__(self, sampling: VideoSampling, state: SamplerState | None = None) -> None:
        self.sampling = sampling
        self.kept = state.kept if state is not None else 0
        self._slot = state.slot if state is not None else None
        self._reference = state.reference if state is not None else None

    @property
    def done(self) -> bool:
        return bool(self.sampling.max_frames) and self.kept >= self.sampling.max_frames

    def slot(self, t_s: float) -> int:
        assert self.sampling.fps is not None
        return math.floor(t_s * self.sampling.fps + _SLOT_EPSILON_S)

    def candidate(self, index: int, t_s: float) -> bool:
        """Whether frame ``index`` at ``t_s`` seconds may be kept (before ``--skip-similar``)."""
        if self.done:
            return False
        if self.sampling.fps is not None:
            return self._slot is None or self.slot(t_s) > self._slot
        return index % self.sampling.every == 0

    def offer(self, index: int, t_s: float, image_bgr: np.ndarray | None) -> bool:
        """Decide for a candidate frame (``candidate`` was True); True when it is kept. A candidate uses up its
        ``--fps`` slot even when ``--skip-similar`` drops it, so that a slot gives at most one candidate."""
        if self.sampling.fps is not None:
            self._slot = self.slot(t_s)
        if self.sampling.skip_similar > 0:
            if image_bgr is None:
                raise ValueError("--skip-similar needs the frame's pixels")
            small = thumbnail(image_bgr)
            if self._reference is not None and difference(small, self._reference) < self.sampling.skip_similar:
                return False
            self._reference = small
        self.kept += 1
        return True

    def state_after_kept(self, kept: int, t_s: float, image_bgr: np.ndarray | None) -> SamplerState:
        """The state right after a frame at ``t_s`` was kept as the ``kept``-th (1-based), from its pixels."""
        slot = self.slot(t_s) if self.sampling.fps is not None else None
        reference = thumbnail(image_bgr) if self.sampling.skip_similar > 0 and image_bgr is not None else None
        return SamplerState(kept, slot, reference)
