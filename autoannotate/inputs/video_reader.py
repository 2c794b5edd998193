"""Stream a video's frames in order, one at a time, with OpenCV's FFmpeg backend.

OpenCV's ``VideoCapture`` is what ultralytics' own video loader reads frames with, so the frames are the pixels a
user sees there (rotation metadata applied). It was measured against PyAV on the dev machine
(``benchmarks/bench_video.py``): the same pixels and timestamps, and as fast or faster for sampled reading, since a
frame that is not kept is only decoded (``grab``), never converted to BGR. Memory is one frame, however long the video.

A file that cannot be opened gets its reason from its own bytes (missing, empty, not a video container, cut short:
``video_probe``), since FFmpeg's reasons stay inside OpenCV.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from autoannotate.errors import ImageError
from autoannotate.inputs.decode import regular_file_stat
from autoannotate.inputs.video_probe import container_kind, truncation


@dataclass(frozen=True)
class VideoInfo:
    """What a video's headers say (the frame count may be wrong: a container can lie; it is only an estimate).

    ``frames``: frames the container claims (0 when it does not say); ``fps``: its nominal rate (0 when unknown);
    ``seconds``: ``frames / fps`` when both are known, else None.
    """

    frames: int
    fps: float
    seconds: float | None


def check_video_file(path: Path) -> str | None:
    """Refuse what cannot be a readable video, from its bytes: ImageError (one line). Returns why the file was cut
    short, or None when it is whole (as far as its container says)."""
    info = regular_file_stat(path)
    if info.st_size == 0:
        raise ImageError("file is empty (0 bytes)")
    try:
        with open(path, "rb") as handle:
            kind = container_kind(handle.read(16))
            if kind is None:
                raise ImageError("not a video: no MP4/MOV, AVI or Matroska/WebM header at its start")
            return truncation(handle, info.st_size, kind)
    except OSError as err:
        raise ImageError(f"cannot read file: {err.strerror or err}") from None


class VideoReader:
    """One open video. ``grab()`` advances one frame and returns its ``(index, t_s)`` (0-based index in decoding
    order; ``t_s``: its timestamp in seconds from the container); ``retrieve()`` gives that frame's pixels,
    HxWx3 uint8 BGR. ``seek(index)`` moves before frame ``index`` (exactness is up to the container: callers verify).

    Raises ImageError (one line) when the file cannot be opened; ``truncated`` says why a file was cut short.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.truncated = check_video_file(path)
        self._capture: Any = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
        if not self._capture.isOpened():
            self._capture.release()
            if self.truncated is not None:
                raise ImageError(f"truncated video: {self.truncated}")
            raise ImageError("cannot be decoded (OpenCV's FFmpeg cannot open it: no video stream, or a codec it lacks)")
        self._next = 0

    def info(self) -> VideoInfo:
        frames = self._capture.get(cv2.CAP_PROP_FRAME_COUNT)
        fps = self._capture.get(cv2.CAP_PROP_FPS)
        count = int(frames) if np.isfinite(frames) and frames > 0 else 0
        rate = float(fps) if np.isfinite(fps) and fps > 0 else 0.0
        return VideoInfo(count, rate, count / rate if count and rate else None)

    def grab(self) -> tuple[int, float] | None:
        """Decode the next frame; ``(index, t_s)``, or None at the end of the stream."""
        if not self._capture.grab():
            return None
        index = self._next
        self._next += 1
        milliseconds = self._capture.get(cv2.CAP_PROP_POS_MSEC)
        return index, float(milliseconds) / 1000.0 if np.isfinite(milliseconds) else 0.0

    def retrieve(self) -> np.ndarray:
        """The pixels of the frame ``grab`` decoded last. Raises ImageError when they cannot be converted."""
        ok, image = self._capture.retrieve()
        if not ok or image is None or image.ndim != 3 or image.shape[2] != 3:
            raise ImageError(f"frame {self._next - 1} could not be converted to BGR pixels")
        return np.ascontiguousarray(image)

    def seek(self, index: int) -> bool:
        """Position before frame ``index`` (the next ``grab`` decodes it, if the container seeks exactly)."""
        if not self._capture.set(cv2.CAP_PROP_POS_FRAMES, float(index)):
            return False
        self._next = index
        return True

    def close(self) -> None:
        self._capture.release()

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def probe_info(path: Path) -> VideoInfo | None:
    """A video's header figures without decoding a frame; None when it cannot be opened."""
    try:
        with VideoReader(path) as reader:
            return reader.info()
    except ImageError:
        return None


def quiet_decoder_logs() -> None:
    """Silence FFmpeg's and OpenCV's own lines about a bad video (``moov atom not found``, ``overread``): each video
    failure is reported as one line of ours instead. Process-wide, so only an entry point calls it, before the first
    video is opened (FFmpeg reads its log level then)."""
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
    with contextlib.suppress(AttributeError, cv2.error):
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
