"""The video input kind: each kept frame of a video file is one item, written into the dataset as a JPEG.

A video ``<root>/cam1/drive.mp4`` gives the items ``cam1/drive.mp4/drive_000015.jpg`` (``<video path relative to
--data>/<video stem>_<frame index, 6 digits>.jpg``): the frame's image is ``OUT/images/<that>`` and its label
``OUT/labels/cam1/drive.mp4/drive_000015.txt``, so ultralytics trains on frames as on any image. The frame index
counts decoded frames from 0, whatever the sampling, so a frame keeps its name when the sampling changes.

The frames are decoded once, in order, streaming (``video_reader``); ``video_sampling`` decides which are kept.
A kept frame's pixels travel with its item until the decode pool encodes them as JPEG; the label is made on the
JPEG's decoded pixels, the pixels training reads. Each kept frame is recorded as it is chosen (``VideoLog``), so
that a rerun restarts the video from the last frame before the first one still to do: it seeks there, checks that
the seek landed on that very frame (the CRC of its pixels), and decodes from the start only where seeking is not
exact. A video whose every kept frame is done is not opened at all.
"""

from __future__ import annotations

import hashlib
import os
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Protocol

import cv2
import numpy as np

from autoannotate.errors import ImageError, OutputError
from autoannotate.inputs.base import InputItem, InputKind, ListingContext, file_signature, item_dict
from autoannotate.inputs.decode import read_image_bgr
from autoannotate.inputs.video_reader import VideoReader, probe_info
from autoannotate.inputs.video_sampling import FrameSampler, SamplerState, VideoSampling

if TYPE_CHECKING:
    from autoannotate.dataset.layout import DatasetLayout

_SUFFIX_ORDER = (".mp4", ".mov", ".avi", ".mkv", ".webm")
VIDEO_SUFFIXES = frozenset(_SUFFIX_ORDER)
#: The video types as a user reads them in a message: "mp4, mov, avi, mkv, webm".
VIDEO_TYPES_TEXT = ", ".join(suffix[1:] for suffix in _SUFFIX_ORDER)
FRAME_INDEX_DIGITS = 6
DEFAULT_JPEG_QUALITY = 95


@dataclass(frozen=True)
class VideoOptions:
    """How videos become images: which frames (``sampling``) and the JPEG quality they are written with."""

    sampling: VideoSampling = field(default_factory=VideoSampling)
    jpeg_quality: int = DEFAULT_JPEG_QUALITY


@dataclass(frozen=True)
class KeptFrame:
    """A frame a scan kept: its index, timestamp (seconds, rounded to microseconds) and the CRC-32 of its decoded
    pixels, which tells a later run that a seek landed on it."""

    index: int
    t: float
    crc: int


@dataclass(frozen=True)
class VideoHistory:
    """What earlier runs recorded of one video: its signature and sampling then, the frames kept in order, and how
    the scan ended (``"eof"``, ``"max_frames"``, ``"error"`` with ``error``, or None: stopped before its end)."""

    signature: tuple[int, int]
    sampling: Mapping[str, Any]
    kept: tuple[KeptFrame, ...]
    end: str | None = None
    error: str | None = None


class VideoLog(Protocol):
    """The run's record of video scans (the job keeps it in its journal and manifest), and its view of the labels."""

    def history(self, video: str) -> VideoHistory | None:
        """What earlier runs recorded of ``video`` (its path as listed), or None."""
        ...

    def begin(self, video: str, signature: tuple[int, int], sampling: Mapping[str, Any], keep: int) -> None:
        """A scan of ``video`` starts; the first ``keep`` kept frames of its history stand, the rest is redecided."""
        ...

    def kept(self, video: str, frame: KeptFrame) -> None:
        """The scan kept ``frame`` (recorded before the frame is annotated)."""
        ...

    def end(self, video: str, end: str, error: str | None) -> None:
        """The scan of ``video`` ended: ``"eof"``, ``"max_frames"`` or ``"error"`` (``error`` says why)."""
        ...

    def needs_pixels(self, rel_path: PurePosixPath, signature: tuple[int, int], image: Path) -> bool:
        """Whether the frame keyed ``rel_path`` will be annotated (its label is not done, or its image is gone)."""
        ...

    def image_sha256(self, rel_path: PurePosixPath) -> str | None:
        """The sha256 of the JPEG an earlier run wrote for the frame keyed ``rel_path`` (it may replace it)."""
        ...


def frame_rel_path(video_rel: PurePosixPath, index: int) -> PurePosixPath:
    """``cam1/drive.mp4`` and 15 -> ``cam1/drive.mp4/drive_000015.jpg``."""
    stem = PurePosixPath(video_rel.name).stem
    return video_rel / f"{stem}_{index:0{FRAME_INDEX_DIGITS}d}.jpg"


def encode_jpeg(image_bgr: np.ndarray, quality: int) -> bytes:
    ok, encoded = cv2.imencode(".jpg", image_bgr, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ImageError("the frame could not be encoded as JPEG")
    return encoded.tobytes()


class VideoFrame:
    """One kept frame: its JPEG ``path`` in the dataset, keyed by ``rel_path``, from frame ``index`` (``t`` seconds)
    of ``video``. ``pixels``: the decoded frame (BGR) while it still has to be encoded; None for a frame whose JPEG is
    already in the dataset. ``replaceable``: sha256 of the JPEGs an earlier run wrote at ``path`` (only those are
    replaced when they differ)."""

    kind = "video"

    def __init__(
        self,
        path: Path,
        rel_path: PurePosixPath,
        *,
        video: str,
        index: int,
        t: float,
        video_signature: tuple[int, int] | None,
        jpeg_quality: int,
        pixels: np.ndarray | None = None,
        image_sha256: str | None = None,
        replaceable: tuple[str, ...] = (),
    ) -> None:
        self.path = path
        self.rel_path = rel_path
        self.video = video
        self.index = index
        self.t = t
        self.video_signature = video_signature
        self.jpeg_quality = jpeg_quality
        self.image_sha256 = image_sha256
        self.replaceable = replaceable
        self._pixels = pixels
        self._jpeg: bytes | None = None

    @property
    def origin(self) -> str:
        return str(self.path)

    @property
    def failure(self) -> str | None:
        return None

    @property
    def group(self) -> PurePosixPath:
        return self.rel_path.parent  # the video's path: all its frames on one side of a train/val split

    def read_bgr(self) -> np.ndarray:
        """The frame as training reads it: its JPEG's decoded pixels (encoded here when the item holds the frame)."""
        if self._pixels is not None:
            self._jpeg = encode_jpeg(self._pixels, self.jpeg_quality)
            self.image_sha256 = hashlib.sha256(self._jpeg).hexdigest()
            self._pixels = None
        if self._jpeg is not None:
            image = cv2.imdecode(np.frombuffer(self._jpeg, np.uint8), cv2.IMREAD_COLOR)
            if image is None:
                raise ImageError("the frame's JPEG could not be decoded")
            return image
        return read_image_bgr(self.path)

    def signature(self) -> tuple[int, int] | None:
        return self.video_signature

    def exists(self) -> bool:
        return os.path.lexists(self.video)

    def frame_record(self) -> dict[str, Any]:
        return {"video": self.video, "index": self.index, "t": self.t, "image_sha256": self.image_sha256}

    def in_dataset(self, layout: DatasetLayout) -> bool:
        return self.path.is_file()

    def place(self, layout: DatasetLayout) -> None:
        """Write the frame's JPEG (atomically) unless the same bytes are there. A different file is replaced only
        when an earlier run wrote it. Raises OutputError."""
        if self._pixels is not None:
            self.read_bgr()  # encodes it
        if self._jpeg is None:
            if not self.path.is_file():
                raise OutputError(f"frame image {str(self.path)!r} is missing; rerun to write it again")
            if self.image_sha256 is None:
                self.image_sha256 = _file_sha256(self.path)
            return
        _write_frame(self.path, self._jpeg, self.replaceable)
        self._jpeg = None  # written: later reads (previews) read the file

    def dataset_path(self, layout: DatasetLayout) -> Path:
        return self.path

    def detach(self, layout: DatasetLayout) -> VideoFrame:
        self.place(layout)
        return VideoFrame(
            self.path,
            self.rel_path,
            video=self.video,
            index=self.index,
            t=self.t,
            video_signature=self.video_signature,
            jpeg_quality=self.jpeg_quality,
            image_sha256=self.image_sha256,
        )

    def to_dict(self) -> dict[str, Any]:
        if self._pixels is not None or self._jpeg is not None:
            raise ValueError("a frame held in memory cannot travel as a dict: detach() it first")
        return {
            **item_dict(self),
            "video": self.video,
            "index": self.index,
            "t": self.t,
            "video_signature": list(self.video_signature) if self.video_signature is not None else None,
            "jpeg_quality": self.jpeg_quality,
            "image_sha256": self.image_sha256,
        }


@dataclass(frozen=True)
class VideoFailure:
    """A video that cannot be (wholly) read: the item that reports it, with its reason. Frames read before the
    failure are items of their own and stay valid."""

    path: Path
    rel_path: PurePosixPath
    reason: str
    kind: str = "video"

    @property
    def origin(self) -> str:
        return str(self.path)

    @property
    def failure(self) -> str:
        return self.reason

    @property
    def group(self) -> PurePosixPath:
        return self.rel_path

    def read_bgr(self) -> np.ndarray:
        raise ImageError(self.reason)

    def signature(self) -> tuple[int, int] | None:
        return file_signature(self.path)

    def exists(self) -> bool:
        return os.path.lexists(self.path)

    def frame_record(self) -> dict[str, Any] | None:
        return None

    def in_dataset(self, layout: DatasetLayout) -> bool:
        return True

    def place(self, layout: DatasetLayout) -> None:
        raise OutputError(f"video {str(self.path)!r} has no image to place: {self.reason}")

    def dataset_path(self, layout: DatasetLayout) -> Path:
        return self.path

    def detach(self, layout: DatasetLayout) -> VideoFailure:
        return self

    def to_dict(self) -> dict[str, Any]:
        return {**item_dict(self), "failure": self.reason}


def _file_sha256(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def _write_frame(path: Path, data: bytes, replaceable: tuple[str, ...]) -> None:
    from autoannotate.writers.atomic import write_bytes_atomic

    if path.is_symlink() or path.exists():
        try:
            current = path.read_bytes() if path.is_file() and not path.is_symlink() else None
        except OSError:
            current = None
        if current == data:
            return
        if current is None or hashlib.sha256(current).hexdigest() not in replaceable:
            raise OutputError(
                f"{str(path)!r} exists and was not written by autoannotate; move it, or choose another --output-dir"
            )
    write_bytes_atomic(path, data)


def _frame_crc(image_bgr: np.ndarray) -> int:
    return zlib.crc32(np.ascontiguousarray(image_bgr).data)


def _round_t(t_s: float) -> float:
    return round(t_s, 6)


def video_items(path: Path, rel_path: PurePosixPath, context: ListingContext) -> Iterator[InputItem]:
    """The items of one video: its kept frames in order, then, if it could not be read to its end, a failure.

    Without video options (``context.video`` None: the review commands) a video gives no items.
    """
    options, layout, log = context.video, context.layout, context.log
    if options is None or layout is None:
        return
    if layout.link != "files":
        yield VideoFailure(
            path,
            rel_path,
            "video frames are written to OUT/images, and here that is your own image folder (--data lies in a"
            " folder named 'images'); pass an --output-dir outside it",
        )
        return
    if "\n" in rel_path.as_posix() or "\r" in rel_path.as_posix():
        yield VideoFailure(path, rel_path, "its path has a line break, which the dataset's image lists cannot hold")
        return
    yield from _VideoScan(path, rel_path, options, layout, log).items()


class _VideoScan:
    """One pass over one video (see the module docstring)."""

    def __init__(
        self, path: Path, rel_path: PurePosixPath, options: VideoOptions, layout: DatasetLayout, log: VideoLog | None
    ) -> None:
        self.path = path
        self.video = str(path)
        self.rel_path = rel_path
        self.options = options
        self.layout = layout
        self.log = log
        self.sampling_key = options.sampling.key()
        self.signature = file_signature(path)

    def frame(self, index: int, t_s: float, pixels: np.ndarray | None) -> VideoFrame:
        rel = frame_rel_path(self.rel_path, index)
        previous = self.log.image_sha256(rel) if self.log is not None else None
        return VideoFrame(
            self.layout.image_link_path(rel),
            rel,
            video=self.video,
            index=index,
            t=_round_t(t_s),
            video_signature=self.signature,
            jpeg_quality=self.options.jpeg_quality,
            pixels=pixels,
            replaceable=(previous,) if previous else (),
        )

    def needs_pixels(self, index: int) -> bool:
        if self.log is None or self.signature is None:
            return True
        rel = frame_rel_path(self.rel_path, index)
        return self.log.needs_pixels(rel, self.signature, self.layout.image_link_path(rel))

    def items(self) -> Iterator[InputItem]:
        history = self.log.history(self.video) if self.log is not None and self.signature is not None else None
        if history is not None and (history.signature != self.signature or history.sampling != self.sampling_key):
            history = None  # another file or another sampling: every decision is made again
        recorded = history.kept if history is not None else ()
        todo = next((n for n, kept in enumerate(recorded) if self.needs_pixels(kept.index)), len(recorded))
        if history is not None and history.end is not None and todo == len(recorded):
            # every kept frame is done: the video is not even opened
            for kept in recorded:
                yield self.frame(kept.index, kept.t, None)
            if history.end == "error":
                yield VideoFailure(self.path, self.rel_path, history.error or "the video could not be read to its end")
            return
        try:
            reader = VideoReader(self.path)
        except ImageError as err:
            self._end("error", str(err))
            yield VideoFailure(self.path, self.rel_path, str(err))
            return
        try:
            resumed = self._resume(reader, recorded, todo)
            if resumed is None:  # a seek that did not land on its frame exactly: decode from the start instead
                reader.close()
                reader = VideoReader(self.path)
            sampler, start = resumed or (FrameSampler(self.options.sampling), 0)
            if start == 0:
                if self.log is not None and self.signature is not None:
                    self.log.begin(self.video, self.signature, self.sampling_key, 0)
            else:
                for kept in recorded[: sampler.kept]:  # done, up to the frame the scan restarts after
                    yield self.frame(kept.index, kept.t, None)
            yield from self._scan(reader, sampler, start, {kept.index for kept in recorded})
        finally:
            reader.close()

    def _scan(self, reader: VideoReader, sampler: FrameSampler, start: int, known: set[int]) -> Iterator[InputItem]:
        """Decode from frame ``start`` on, yielding each kept frame; then the failure, if the video has one."""
        decoded = start
        while not sampler.done:
            grabbed = reader.grab()
            if grabbed is None:
                break
            index, t_s = grabbed
            decoded += 1
            if not sampler.candidate(index, t_s):
                continue
            try:
                image = reader.retrieve()
            except ImageError as err:
                self._end("error", str(err))
                yield VideoFailure(self.path, self.rel_path, str(err))
                return
            if not sampler.offer(index, t_s, image):
                continue
            if self.log is not None:
                self.log.kept(self.video, KeptFrame(index, _round_t(t_s), _frame_crc(image)))
            done = index in known and not self.needs_pixels(index)
            yield self.frame(index, t_s, None if done else image)
        if reader.truncated is not None:
            reason = f"truncated video: {reader.truncated}"
            self._end("error", reason)
            yield VideoFailure(self.path, self.rel_path, reason)
        elif decoded == 0:
            reason = "no frame could be decoded"
            self._end("error", reason)
            yield VideoFailure(self.path, self.rel_path, reason)
        else:
            self._end("max_frames" if sampler.done else "eof", None)

    def _resume(
        self, reader: VideoReader, recorded: tuple[KeptFrame, ...], todo: int
    ) -> tuple[FrameSampler, int] | None:
        """Restart after the kept frame before the first one still to do: ``(sampler, next frame index)``, with
        ``(fresh sampler, 0)`` when there is nothing to skip; None when the seek did not land on that very frame
        (the reader has moved: decode from the start with a new one)."""
        fresh = FrameSampler(self.options.sampling)
        resume = min(todo, len(recorded)) - 1
        if resume < 0 or self.log is None or self.signature is None:
            return fresh, 0
        anchor = recorded[resume]
        grabbed = reader.grab() if reader.seek(anchor.index) else None
        image = reader.retrieve() if grabbed is not None else None
        if grabbed is None or image is None or grabbed[0] != anchor.index or _frame_crc(image) != anchor.crc:
            return None
        self.log.begin(self.video, self.signature, self.sampling_key, resume + 1)
        state: SamplerState = fresh.state_after_kept(resume + 1, grabbed[1], image)
        return FrameSampler(self.options.sampling, state), anchor.index + 1

    def _end(self, end: str, error: str | None) -> None:
        if self.log is not None:
            self.log.end(self.video, end, error)


def _from_dict(data: Mapping[str, Any]) -> InputItem:
    origin, rel_path = Path(str(data["origin"])), PurePosixPath(str(data["rel_path"]))
    if data.get("failure") is not None:
        return VideoFailure(origin, rel_path, str(data["failure"]))
    signature = data.get("video_signature")
    return VideoFrame(
        origin,
        rel_path,
        video=str(data["video"]),
        index=int(data["index"]),
        t=float(data["t"]),
        video_signature=(int(signature[0]), int(signature[1])) if signature is not None else None,
        jpeg_quality=int(data.get("jpeg_quality", DEFAULT_JPEG_QUALITY)),
        image_sha256=data.get("image_sha256"),
    )


def frame_from_record(image: Path, rel_path: PurePosixPath, record: Mapping[str, Any]) -> VideoFrame:
    """A frame an earlier run wrote (its manifest entry's ``frame`` record): what the whole-dataset files need."""
    return VideoFrame(
        image,
        rel_path,
        video=str(record.get("video", "")),
        index=int(record.get("index", 0)),
        t=float(record.get("t", 0.0)),
        video_signature=None,
        jpeg_quality=DEFAULT_JPEG_QUALITY,
        image_sha256=record.get("image_sha256"),
    )


def _estimate(path: Path, context: ListingContext) -> int:
    """Frames a video will give (an upper bound with ``--skip-similar``), from its header; 1 when it cannot be read
    (it gives a failure)."""
    if context.video is None:
        return 0
    info = probe_info(path)
    if info is None:
        return 1
    return max(1, context.video.sampling.estimate(info.frames, info.seconds))


VIDEO_KIND = InputKind("video", _SUFFIX_ORDER, video_items, _from_dict, _estimate)
