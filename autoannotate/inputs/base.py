"""What an input kind provides: ``InputItem``, one thing to annotate, and ``InputKind``, the registry entry that
makes items from files. Nothing here reads pixels; nothing here imports torch."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

if TYPE_CHECKING:
    from autoannotate.dataset.layout import DatasetLayout


class InputItem(Protocol):
    """One thing to annotate (an image file; later a video frame).

    ``rel_path``: its key, the path the dataset mirrors (POSIX, relative to the input root, with the suffix its label
    and image link take); ``origin``: where it comes from, as the user named it (events, manifest, instances.jsonl).
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
        """What says it is unchanged since an earlier run: ``(size, mtime_ns)`` of its file; None when unreadable."""
        ...

    def exists(self) -> bool:
        """Whether it is still there (a rerun forgets the labels of items that are gone)."""
        ...

    def place(self, layout: DatasetLayout) -> None:
        """Make it appear in the dataset (for ``layout.link == "files"``: ``OUT/images/<rel_path>``). Raises
        OutputError."""
        ...

    def dataset_path(self, layout: DatasetLayout) -> Path:
        """Where the dataset's image lists (train.txt, val.txt) find its pixels."""
        ...

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON: ``{"kind", "origin", "rel_path"}``, enough for ``inputs.item_from_dict``."""
        ...


@dataclass(frozen=True)
class InputKind:
    """A registry entry (``inputs.INPUT_KINDS``): the file suffixes it takes (lower case, with the dot) and how to make
    an item of a file at ``path`` whose key is ``rel_path``."""

    name: str
    suffixes: tuple[str, ...]
    item: Callable[[Path, PurePosixPath], InputItem]


def item_dict(item: InputItem) -> dict[str, Any]:
    """The ``to_dict`` every kind whose items are (kind, origin, rel_path) can share."""
    return {"kind": item.kind, "origin": item.origin, "rel_path": item.rel_path.as_posix()}


def item_args(data: Mapping[str, Any]) -> tuple[Path, PurePosixPath]:
    return Path(str(data["origin"])), PurePosixPath(str(data["rel_path"]))
