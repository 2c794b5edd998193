"""The image input kind: one image file is one item; its pixels are decoded as ultralytics trains on them."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

import numpy as np

from autoannotate.inputs.base import InputKind, item_dict
from autoannotate.inputs.decode import read_image_bgr

if TYPE_CHECKING:
    from autoannotate.dataset.layout import DatasetLayout

_SUFFIX_ORDER = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
IMAGE_SUFFIXES = frozenset(_SUFFIX_ORDER)
#: The image types as a user reads them in a message: "jpg, jpeg, png, bmp, tif, tiff, webp".
IMAGE_TYPES_TEXT = ", ".join(suffix[1:] for suffix in _SUFFIX_ORDER)


@dataclass(frozen=True)
class ImageFile:
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
        try:
            info = self.path.stat()
        except OSError:
            return None
        return info.st_size, info.st_mtime_ns

    def exists(self) -> bool:
        return os.path.lexists(self.path)

    def place(self, layout: DatasetLayout) -> None:
        from autoannotate.dataset.layout import link_image

        link_image(layout, self.rel_path, self.path)

    def dataset_path(self, layout: DatasetLayout) -> Path:
        return layout.image_link_path(self.rel_path) if layout.link == "files" else self.path

    def to_dict(self) -> dict[str, Any]:
        return item_dict(self)


IMAGE_KIND = InputKind("image", _SUFFIX_ORDER, ImageFile)
