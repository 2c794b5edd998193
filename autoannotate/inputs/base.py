"""What an input kind provides: ``InputItem``, one thing to annotate, and ``InputKind``, the registry entry that
makes items from files (one per image, one per kept frame of a video). Nothing here reads pixels; nothing here
imports torch."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Protocol, Self

import numpy as np

if TYPE_CHECKING:
    from autoannotate.dataset.layout import DatasetLayout
    from autoannotate.inputs.video import VideoLog, VideoOptions


class InputItem(Protocol):
    """One thing to annotate: an image file, or a frame of a video (written into the dataset as a JPEG).

    ``rel_path``: its key, the path the dataset mirrors (POSIX, relative to the input root, with the suffix its label
    and image take); ``origin``: its image file (events, manifest, instances.jsonl): the user's image, or the frame's
    JPEG in the dataset.
    """

    @property
    def kind(self) -> str:
        """The name of its ``InputKind``."""
        ...

    @property
    def rel_path(self) -> PurePosixPath: ...

    @property
    def origin(self) -> str: ...

    def read_bgr(self) -> np.ndarray:
        """Its pixels: HxWx3 uint8 BGR, as ultralytics reads them when it trains. Raises ImageError (one line)."""
        ...

    def signature(self) -> tuple[int, int] | None:
        """What says it is unchanged since an earlier run: ``(size, mtime_ns)`` of its file (a frame: of its video);
        None when unreadable."""
        ...

    @property
    def failure(self) -> str | None:
        """Why it cannot be annotated at all, known when it was listed (a video that cannot be read); None when it
        can be tried. An item with a failure has no label and claims no label path."""
        ...

    @property
    def group(self) -> PurePosixPath:
        """What the train/val split keeps together: ``rel_path`` for an image, the video's path for its frames."""
        ...

    def frame_record(self) -> dict[str, Any] | None:
        """Where a video frame comes from (``video``, ``index``, ``t``, ``image_sha256``), for the manifest and
        ``instances.jsonl``; None for an image."""
        ...

    def in_dataset(self, layout: DatasetLayout) -> bool:
        """Whether the pixels a done label belongs to are in the dataset (a frame's JPEG can be deleted; a user's
        image is the user's): a done label whose item is not is redone."""
        ...

    def detach(self, layout: DatasetLayout) -> InputItem:
        """An item another process can read from ``to_dict`` alone: itself for files; a frame held in memory is
        written into the dataset first. Raises OutputError."""
        ...

    def place(self, layout: DatasetLayout) -> None:
        """Make it appear in the dataset (for ``layout.link == "files"``: ``OUT/images/<rel_path>``). Raises
        OutputError."""
        ...

    def dataset_path(self, layout: DatasetLayout) -> Path:
        """Where the dataset's image lists (train.txt, val.txt) find its pixels."""
        ...

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON: ``{"kind", "origin", "rel_path", ...}``, enough for ``inputs.item_from_dict``."""
        ...


class StandaloneFile:
    """The ``InputItem`` members an item that is a whole file of its own shares: no listing failure, split on its own,
    no frame record, always in the dataset, and readable by another process as it is. A plug-in kind's frozen
    dataclass inherits it and writes only its pixels, signature and placement."""

    rel_path: PurePosixPath

    @property
    def failure(self) -> str | None:
        return None

    @property
    def group(self) -> PurePosixPath:
        return self.rel_path

    def frame_record(self) -> dict[str, Any] | None:
        return None

    def in_dataset(self, layout: DatasetLayout) -> bool:
        return True

    def detach(self, layout: DatasetLayout) -> Self:
        return self


@dataclass(frozen=True)
class ListingContext:
    """What turning files into items may need beyond the files: the run's output layout, the video options, and the
    record of earlier runs' video frames. ``video`` None (the review commands): videos give no items."""

    layout: DatasetLayout | None = None
    video: VideoOptions | None = None
    log: VideoLog | None = None


@dataclass(frozen=True)
class InputKind:
    """A registry entry (``inputs.INPUT_KINDS``): the file suffixes it takes (lower case, with the dot); ``items``, the
    items of a file at ``path`` whose key is ``rel_path`` (streaming); ``from_dict``, the inverse of
    ``InputItem.to_dict``; ``estimate``, how many items a file gives, from its headers (for progress)."""

    name: str
    suffixes: tuple[str, ...]
    items: Callable[[Path, PurePosixPath, ListingContext], Iterator[InputItem]]
    from_dict: Callable[[Mapping[str, Any]], InputItem]
    estimate: Callable[[Path, ListingContext], int]


def file_signature(path: Path) -> tuple[int, int] | None:
    """``(size, mtime_ns)`` of a file, what says it is unchanged since an earlier run; None when it cannot be read."""
    try:
        info = path.stat()
    except OSError:
        return None
    return info.st_size, info.st_mtime_ns


def item_dict(item: InputItem) -> dict[str, Any]:
    """The ``to_dict`` every kind whose items are (kind, origin, rel_path) can share."""
    return {"kind": item.kind, "origin": item.origin, "rel_path": item.rel_path.as_posix()}


def item_args(data: Mapping[str, Any]) -> tuple[Path, PurePosixPath]:
    return Path(str(data["origin"])), PurePosixPath(str(data["rel_path"]))
