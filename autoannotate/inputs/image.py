"""The image input kind: one image file is one item; its pixels are decoded as ultralytics trains on them."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

import numpy as np

from autoannotate.inputs.base import (
    InputItem,
    InputKind,
    ListingContext,
    StandaloneFile,
    file_signature,
    item_args,
    item_dict,
)
from autoannotate.inputs.decode import read_image_bgr

if TYPE_CHECKING:
    from autoannotate.dataset.layout import DatasetLayout

_SUFFIX_ORDER = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
IMAGE_SUFFIXES = frozenset(_SUFFIX_ORDER)
#: The image types as a user reads them in a message: "jpg, jpeg, png, bmp, tif, tiff, webp".
IMAGE_TYPES_TEXT = ", ".join(suffix[1:] for suffix in _SUFFIX_ORDER)


@dataclass(frozen=True)
class ImageFile(StandaloneFile):
    """An image file at ``path``, keyed by ``rel_path`` (see ``InputItem``)."""

    path: Path
    rel_path: PurePosixPath
    kind: str = "image"

    @property
    def origin(self) -> str:
        return str(self.path)

    def read_bgr(self) -> np.ndarray:
        return read_image_bgr(self.path)

    def signature(self) -> tuple[int, int] | None:
        return file_signature(self.path)

    def exists(self) -> bool:
        return os.path.lexists(self.path)

    def place(self, layout: DatasetLayout) -> None:
        from autoannotate.dataset.layout import link_image

        link_image(layout, self.rel_path, self.path)

    def dataset_path(self, layout: DatasetLayout) -> Path:
        return layout.image_link_path(self.rel_path) if layout.link == "files" else self.path

    def to_dict(self) -> dict[str, Any]:
        return item_dict(self)


def _items(path: Path, rel_path: PurePosixPath, context: ListingContext) -> Iterator[InputItem]:
    yield ImageFile(path, rel_path)


def _from_dict(data: Mapping[str, Any]) -> ImageFile:
    return ImageFile(*item_args(data))


IMAGE_KIND = InputKind("image", _SUFFIX_ORDER, _items, _from_dict, lambda path, context: 1)
