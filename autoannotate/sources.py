"""Find images, decide where their labels go, and decode them.

``--data`` may be a directory (searched recursively; symlink loops are safe), one image, a ``.txt`` list of image
paths, a quoted glob, or ``-`` for paths on stdin. Each image gets a ``rel_path``: its path relative to the
*image root*, which the output layout mirrors under ``labels/`` (see ``layout.py``).
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TextIO

import cv2
import numpy as np

from autoannotate.errors import ImageError, InputError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})
_GLOB_CHARS = frozenset("*?[")


@dataclass(frozen=True)
class ImageSource:
    """One image to annotate: where it is and its path relative to the image root (POSIX, with suffix)."""

    path: Path
    rel_path: PurePosixPath


@dataclass(frozen=True)
class SourceSpec:
    """What ``--data`` named: its kind, the image root that ``rel_path`` is relative to, and the listed paths.

    ``paths`` is None for a directory (walked lazily by ``iter_images``) and the full list otherwise.
    """

    kind: str  # "dir" | "file" | "list" | "glob" | "stdin"
    root: Path
    paths: tuple[Path, ...] | None


def is_image_path(path: Path | str) -> bool:
    """True when the suffix is a supported image type, in any letter case."""
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


def resolve_data(data: str, stdin: TextIO | None = None) -> SourceSpec:
    """Interpret ``--data``. Raises InputError when it names nothing usable."""
    if data == "-":
        stream = stdin
        if stream is None:
            raise InputError("--data - reads image paths from stdin, but no stdin is attached")
        paths = _read_path_lines(stream, base=Path.cwd())
        return _listed("stdin", paths, "stdin")
    path = Path(data).expanduser()
    if path.is_dir():
        return SourceSpec("dir", Path(os.path.abspath(path)), None)
    if path.is_file():
        if path.suffix.lower() == ".txt":
            try:
                with path.open(encoding="utf-8") as handle:
                    paths = _read_path_lines(handle, base=path.parent)
            except (OSError, UnicodeDecodeError) as err:
                raise InputError(f"cannot read image list {data!r}: {err}") from None
            return _listed("list", paths, data)
        return SourceSpec("file", Path(os.path.abspath(path.parent)), (Path(os.path.abspath(path)),))
    if any(char in _GLOB_CHARS for char in data):
        matches = sorted(glob.glob(os.path.expanduser(data), recursive=True))
        paths = [Path(os.path.abspath(m)) for m in matches if is_image_path(m) and os.path.isfile(m)]
        if not paths:
            raise InputError(f"--data glob {data!r} matches no image ({', '.join(sorted(IMAGE_SUFFIXES))})")
        return _listed("glob", paths, data)
    raise InputError(f"--data {data!r} does not exist: give a directory, image, .txt list, glob or '-'")


def _read_path_lines(stream: Iterable[str], base: Path) -> list[Path]:
    """Non-empty, non-comment lines as absolute paths; relative ones are relative to ``base``."""
    out = []
    for line in stream:
        text = line.strip()
        if text and not text.startswith("#"):
            out.append(Path(os.path.abspath(base / Path(text).expanduser())))
    return out


def _listed(kind: str, paths: list[Path], what: str) -> SourceSpec:
    if not paths:
        raise InputError(f"--data {what!r} lists no image paths")
    # The image root of a list is the deepest directory holding every listed file, so rel_path never has "..".
    root = Path(os.path.commonpath([str(p.parent) for p in paths]))
    return SourceSpec(kind, root, tuple(paths))


def iter_images(spec: SourceSpec) -> Iterator[ImageSource]:
    """Yield the images of ``spec`` in a deterministic order (sorted per directory), streaming for directories.

    Listed paths are yielded whatever their suffix, so a listed non-image is reported rather than silently skipped.
    """
    if spec.paths is None:
        for path in _walk_images(spec.root):
            yield ImageSource(path, PurePosixPath(path.relative_to(spec.root).as_posix()))
        return
    for path in spec.paths:
        yield ImageSource(path, PurePosixPath(path.relative_to(spec.root).as_posix()))


def _walk_images(root: Path) -> Iterator[Path]:
    """Images below ``root`` in path order (each folder's entries sorted by name, sub-folders entered in place),
    following directory symlinks but never entering a directory twice (symlink-loop safe). Streams."""
    seen: set[tuple[int, int]] = set()
    stack = [_sorted_entries(root, seen)]
    while stack:
        entry = next(stack[-1], None)
        if entry is None:
            stack.pop()
            continue
        try:
            if entry.is_dir():
                stack.append(_sorted_entries(Path(entry.path), seen))
            elif is_image_path(entry.name) and entry.is_file():
                yield Path(entry.path)
        except OSError:  # vanished or unreadable while listing: nothing to annotate there
            continue


def _sorted_entries(directory: Path, seen: set[tuple[int, int]]) -> Iterator[os.DirEntry[str]]:
    try:
        stat = directory.stat()
        key = (stat.st_dev, stat.st_ino)
        if key in seen:
            return iter(())
        seen.add(key)
        with os.scandir(directory) as scan:
            return iter(sorted(scan, key=lambda e: e.name))
    except OSError:
        return iter(())


def read_image_bgr(path: Path) -> np.ndarray:
    """Decode an image as ultralytics does when it trains: HxWx3 uint8 BGR, EXIF orientation applied.

    16-bit images are scaled to 8 bit, grayscale is expanded to 3 channels and alpha is dropped (what
    ``cv2.IMREAD_COLOR`` does). Raises ImageError with the reason.
    """
    try:
        raw = np.fromfile(str(path), dtype=np.uint8)
    except FileNotFoundError:
        raise ImageError("file does not exist") from None
    except OSError as err:
        raise ImageError(f"cannot read file: {err.strerror or err}") from None
    if raw.size == 0:
        raise ImageError("file is empty (0 bytes)")
    image = cv2.imdecode(raw, cv2.IMREAD_COLOR)
    if image is None:
        raise ImageError("not a decodable image")
    if image.ndim != 3 or image.shape[2] != 3 or image.shape[0] < 1 or image.shape[1] < 1:
        raise ImageError(f"unsupported image layout {image.shape}")
    return image
