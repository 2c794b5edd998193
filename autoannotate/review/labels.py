"""Read an existing YOLO-seg dataset: pair a labels tree with its images, read class names and image sizes.

Pairing follows ultralytics: the label of image ``<images_root>/a/b.jpg`` is ``<labels_root>/a/b.txt`` (suffix
replaced, see ``DatasetLayout.label_path``). The label files themselves are parsed by the one YOLO-seg reader,
``autoannotate.dataset.yolo_seg`` (``read_label_file``, ``LabelLine``, ``LineProblem``).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import yaml

from autoannotate.dataset.layout import DATA_YAML, FALLBACK_DATA_YAML

# Re-exported for autoannotate.job, which imports it from here (until job.py moves to the shared reader).
from autoannotate.dataset.yolo_seg import read_label_file
from autoannotate.errors import ConfigError, InputError, excerpt
from autoannotate.inputs.decode import read_image_bgr
from autoannotate.inputs.listing import iter_items, resolve_data

__all__ = [
    "LabelPair",
    "find_data_yaml",
    "iter_pairs",
    "read_image_size_wh",
    "read_label_file",
    "read_names",
]


@dataclass(frozen=True)
class LabelPair:
    """One entry of a dataset: an image and/or its label file.

    Attributes:
        rel_stem: path relative to the image (and label) root, POSIX, without suffix: ``a/b`` for ``a/b.jpg``.
        image_path: the image, or None for a label file without an image.
        image_rel: the image's path relative to the image root (with suffix), or None.
        label_path: the label file, or None for an image without one.
    """

    rel_stem: PurePosixPath
    image_path: Path | None
    image_rel: PurePosixPath | None
    label_path: Path | None


def iter_pairs(labels_root: Path, images_root: Path) -> Iterator[LabelPair]:
    """Pair every image under ``images_root`` with its label file under ``labels_root``.

    ``images_root`` is anything ``--data`` accepts (directory, image, ``.txt`` list, glob); images are found with
    ``autoannotate.inputs.listing.iter_items``. Label files are the ``*.txt`` files below ``labels_root`` (recursive).
    Yields, sorted by ``rel_stem`` then image path: matched pairs, images without a label file
    (``label_path`` None) and label files without an image (``image_path`` None). Two images that differ only in
    suffix (``a.jpg``, ``a.png``) share one label file, as in ultralytics: both pairs carry it.

    Raises InputError when either root does not exist.
    """
    if not labels_root.is_dir():
        raise InputError(f"labels dir {str(labels_root)!r} does not exist or is not a directory; pass the labels tree")
    spec = resolve_data(str(images_root))
    labels = {
        PurePosixPath(path.relative_to(labels_root).with_suffix("").as_posix()): path
        for path in _walk_label_files(labels_root)
    }
    pairs: list[LabelPair] = []
    matched: set[PurePosixPath] = set()
    for source in iter_items(spec):
        stem = source.rel_path.with_suffix("")
        label = labels.get(stem)
        if label is not None:
            matched.add(stem)
        pairs.append(LabelPair(stem, Path(source.origin), source.rel_path, label))
    pairs.extend(LabelPair(stem, None, None, path) for stem, path in labels.items() if stem not in matched)
    pairs.sort(key=lambda p: (p.rel_stem.as_posix(), str(p.image_path or "")))
    yield from pairs


def _walk_label_files(root: Path) -> list[Path]:
    """``*.txt`` files below ``root``, sorted; directory symlinks are not followed (no loops, no duplicates)."""
    found = []
    for directory, _dirs, files in os.walk(root):
        for name in files:
            path = Path(directory) / name
            if name.endswith(".txt") and path.is_file():
                found.append(path)
    return sorted(found)


def read_names(data_yaml: Path) -> dict[int, str]:
    """Class names from a dataset YAML's ``names``: a ``{id: name}`` mapping or a list (ids 0..n-1).

    Raises ConfigError naming the file when it cannot be read or has no usable ``names``.
    """
    where = str(data_yaml)
    try:
        content = yaml.safe_load(data_yaml.read_text(encoding="utf-8-sig"))
    except OSError as err:
        raise ConfigError(f"cannot read names file {where!r}: {err.strerror or err}; pass a data.yaml") from None
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        reason = " ".join(str(err).split())[:120]
        raise ConfigError(f"names file {where!r} is not valid YAML ({reason}); pass a data.yaml") from None
    names = content.get("names") if isinstance(content, dict) else None
    if isinstance(names, list):
        names = dict(enumerate(names))
    if not isinstance(names, Mapping) or not names:
        raise ConfigError(f"names file {where!r} has no 'names' mapping or list; expected e.g. names: {{0: person}}")
    out: dict[int, str] = {}
    for key, value in names.items():
        try:
            class_id = int(key)
        except (TypeError, ValueError):
            class_id = -1
        if class_id < 0 or isinstance(key, bool) or (isinstance(key, float) and not key.is_integer()):
            raise ConfigError(f"names file {where!r}: class id {excerpt(key)} is not a non-negative integer")
        # only scalars: a nested value (a YAML alias bomb, say) would become a string of any size
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            raise ConfigError(f"names file {where!r}: the name of class {class_id} is {excerpt(value)}, not a string")
        out[class_id] = str(value)
    return dict(sorted(out.items()))


def find_data_yaml(labels_root: Path) -> Path | None:
    """The dataset YAML that goes with a labels tree, if one is there.

    Looks in the labels dir's parent and in the parent of the nearest enclosing dir named ``labels`` (the dataset
    root of ``ds/labels/train``), for ``data.yaml`` then ``autoannotate.data.yaml`` (what ``run`` writes when a
    foreign data.yaml is in the way).
    """
    absolute = Path(os.path.abspath(labels_root))
    candidates = [absolute.parent]
    for folder in (absolute, *absolute.parents):
        if folder.name == "labels":
            candidates.append(folder.parent)
            break
    for directory in candidates:
        for name in (DATA_YAML, FALLBACK_DATA_YAML):
            if (directory / name).is_file():
                return directory / name
    return None


def read_image_size_wh(path: Path) -> tuple[int, int]:
    """``(width, height)`` of an image as ``autoannotate.inputs.decode.read_image_bgr`` decodes it (EXIF applied).

    The header is read with Pillow when the image carries no EXIF orientation (or the identity): then the stored
    size is the decoded size. Otherwise, or when Pillow cannot tell, the image is decoded with OpenCV, so the answer
    always matches the frame the labels were normalised in. Raises ImageError with the reason.
    """
    size_wh = _header_size_wh(path)
    if size_wh is not None:
        return size_wh
    image_bgr = read_image_bgr(path)
    return int(image_bgr.shape[1]), int(image_bgr.shape[0])


# JPEG, PNG, BMP, TIFF (both byte orders), GIF; WebP is RIFF....WEBP
_IMAGE_SIGNATURES = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"BM", b"II*\x00", b"MM\x00*", b"GIF8")


def _header_size_wh(path: Path) -> tuple[int, int] | None:
    """The stored size from the header when no EXIF orientation changes it; None when Pillow cannot tell."""
    from PIL import Image

    # Only files that start like an image reach Pillow: once ultralytics is imported, its patched ``Image.open``
    # answers a file Pillow cannot identify by trying to install and import pi-heif (ModuleNotFoundError offline).
    try:
        with open(path, "rb") as handle:
            head = handle.read(12)
    except OSError:
        return None
    if not head.startswith(_IMAGE_SIGNATURES) and head[8:12] != b"WEBP":
        return None  # OpenCV decodes it (or reports why it cannot)
    try:
        with Image.open(path) as image:
            orientation = image.getexif().get(0x0112)
            width, height = image.size
    except (OSError, ValueError, SyntaxError, struct.error, Image.DecompressionBombError, ImportError):
        return None  # OpenCV decodes it (or reports why it cannot)
    if orientation not in (None, 1) or width < 1 or height < 1:
        return None
    return int(width), int(height)
