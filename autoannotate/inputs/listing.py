"""Find the input files that ``--data`` names, and give each its key; each file's input kind turns it into items
(an image is one item, a video one per kept frame).

``--data`` may be a directory (searched recursively; symlink loops are safe), one image or video, a ``.txt`` list of
paths, a quoted glob, or ``-`` for paths on stdin. A list (file or stdin) holds one path per line, or, when it
contains a NUL byte, NUL-separated paths taken exactly as written (``find -print0``: names with spaces or line breaks
survive). Each image gets a ``rel_path``: its path relative to the
*image root*, which the output layout mirrors under ``labels/`` (see ``dataset/layout.py``).
"""

from __future__ import annotations

import glob
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TextIO

from autoannotate.errors import InputError
from autoannotate.inputs import InputItem, ListingContext, input_suffixes, kind_for
from autoannotate.inputs.image import IMAGE_TYPES_TEXT
from autoannotate.inputs.video import VIDEO_TYPES_TEXT

_GLOB_CHARS = frozenset("*?[")
#: What ``--data`` takes, as a user reads it in a message.
INPUT_TYPES_TEXT = f"images: {IMAGE_TYPES_TEXT}; videos: {VIDEO_TYPES_TEXT}"


@dataclass(frozen=True)
class SourceSpec:
    """What ``--data`` named: its kind, the image root that ``rel_path`` is relative to, and the listed paths.

    ``paths`` is None for a directory (walked lazily by ``iter_items``) and the full list otherwise.
    """

    kind: str  # "dir" | "file" | "list" | "glob" | "stdin"
    root: Path
    paths: tuple[Path, ...] | None


def is_input_path(path: Path | str) -> bool:
    """True when the suffix is one an input kind reads (``inputs.INPUT_KINDS``: images, videos), in any letter case."""
    return Path(path).suffix.lower() in input_suffixes()


def resolve_data(data: str, stdin: TextIO | None = None) -> SourceSpec:
    """Interpret ``--data``. Raises InputError when it names nothing usable."""
    if data == "-":
        stream = stdin
        if stream is None:
            raise InputError("--data - reads image paths from stdin, but no stdin is attached")
        # bytes where the stream has them: file names are bytes, and a NUL-separated list may hold any of them
        buffer = getattr(stream, "buffer", None)
        try:
            raw: bytes | str = buffer.read() if buffer is not None else stream.read()
        except OSError as err:
            raise InputError(f"cannot read image paths from stdin: {err.strerror or err}") from None
        paths = _parse_path_list(raw, base=Path.cwd())
        return _listed("stdin", paths, "stdin")
    path = Path(data).expanduser()
    if path.is_dir():
        return SourceSpec("dir", Path(os.path.abspath(path)), None)
    if path.is_file():
        if path.suffix.lower() == ".txt":
            try:
                listing = path.read_bytes()
            except OSError as err:
                raise InputError(f"cannot read image list {data!r}: {err.strerror or err}") from None
            return _listed("list", _parse_path_list(listing, base=path.parent), data)
        if not is_input_path(path):
            # e.g. notes.pdf or x.csv: annotating it could only fail, as one "failed image" among none
            raise InputError(f"--data {data!r} is not an image or video ({INPUT_TYPES_TEXT}) nor a .txt list of paths")
        return SourceSpec("file", Path(os.path.abspath(path.parent)), (Path(os.path.abspath(path)),))
    if any(char in _GLOB_CHARS for char in data):
        matches = sorted(glob.glob(os.path.expanduser(data), recursive=True))
        paths = [Path(os.path.abspath(m)) for m in matches if is_input_path(m) and os.path.isfile(m)]
        if not paths:
            raise InputError(f"--data glob {data!r} matches no image or video ({INPUT_TYPES_TEXT})")
        return _listed("glob", paths, data)
    if path.exists():  # a device, FIFO or socket: nothing to list or decode (stdin is spelled '-')
        raise InputError(
            f"--data {data!r} is not a directory or a regular file: give a directory, image, .txt list, glob or '-'"
        )
    raise InputError(f"--data {data!r} does not exist: give a directory, image, .txt list, glob or '-'")


def _parse_path_list(raw: bytes | str, base: Path) -> list[Path]:
    """The paths of a list, absolute (relative ones are relative to ``base``).

    With a NUL byte anywhere, the list is NUL-separated (``find -print0``) and each entry is a path exactly as
    written: spaces, ``#`` and line breaks are part of a name. Otherwise it is one path per line, stripped, with empty
    lines and ``#`` comments skipped. Bytes are decoded as the file system decodes names (undecodable bytes kept).
    """
    text = os.fsdecode(raw) if isinstance(raw, bytes) else raw
    text = text.removeprefix("\ufeff")  # a byte-order mark that Windows editors write at the start
    if "\0" in text:
        entries: Iterable[str] = (entry for entry in text.split("\0") if entry)
    else:
        entries = (line.strip() for line in text.splitlines())
        entries = (entry for entry in entries if entry and not entry.startswith("#"))
    return [Path(os.path.abspath(base / Path(entry).expanduser())) for entry in entries]


def _listed(kind: str, paths: list[Path], what: str) -> SourceSpec:
    if not paths:
        raise InputError(f"--data {what!r} lists no image paths")
    # The image root of a list is the deepest directory holding every listed file, so rel_path never has "..".
    root = Path(os.path.commonpath([str(p.parent) for p in paths]))
    return SourceSpec(kind, root, tuple(paths))


def require_images(spec: SourceSpec) -> None:
    """Raise InputError when a directory ``spec`` holds no image at all, as an empty list or glob does.

    Cheap: stops at the first image found (folders in listing order, unsorted), so it costs a listing or two on any
    real dataset; only a tree without a single image is walked whole. Lists and globs are checked when resolved.
    """
    if spec.paths is not None:
        return
    seen: set[tuple[int, int]] = set()
    stack = [spec.root]
    while stack:
        directory = stack.pop()
        try:
            info = directory.stat()
            if (info.st_dev, info.st_ino) in seen:
                continue
            seen.add((info.st_dev, info.st_ino))
            with os.scandir(directory) as scan:
                for entry in scan:
                    try:
                        if entry.is_dir():
                            stack.append(Path(entry.path))
                        elif is_input_path(entry.name):  # what the walk yields (see ``_walk_files``)
                            return
                    except OSError:
                        continue
        except OSError:
            continue
    raise InputError(
        f"no images or videos found under --data {str(spec.root)!r} (looked for {INPUT_TYPES_TEXT}, in any letter"
        " case and every sub-folder)"
    )


def iter_files(
    spec: SourceSpec, keep: Callable[[PurePosixPath], bool] | None = None
) -> Iterator[tuple[Path, PurePosixPath]]:
    """The input files of ``spec`` with their keys (paths relative to the input root), in a deterministic order
    (sorted per directory), streaming for directories; ``keep`` filters by key (a shard's files)."""
    paths = _walk_files(spec.root) if spec.paths is None else iter(spec.paths)
    for path in paths:
        rel_path = PurePosixPath(path.relative_to(spec.root).as_posix())
        if keep is None or keep(rel_path):
            yield path, rel_path


def iter_items(
    spec: SourceSpec, context: ListingContext | None = None, keep: Callable[[PurePosixPath], bool] | None = None
) -> Iterator[InputItem]:
    """Yield the input items of ``spec`` in order, streaming: each file's items from the input kind its suffix names
    (``inputs.INPUT_KINDS``): one per image, one per kept frame of a video (with ``context.video``; without it,
    videos give none). Listed paths are yielded whatever their suffix (as images), so a listed non-image is reported
    rather than silently skipped. ``keep`` filters files by key before any is read (a shard's files)."""
    context = context or ListingContext()
    for path, rel_path in iter_files(spec, keep):
        yield from kind_for(path).items(path, rel_path, context)


def estimate_items(
    spec: SourceSpec,
    context: ListingContext,
    keep: Callable[[PurePosixPath], bool] | None = None,
    stop_at: int | None = None,
) -> tuple[int, bool]:
    """How many items ``iter_items`` will yield, from the files' headers (a video's frame count, which may be off):
    ``(count, whether any video's estimate is in it)``. With ``stop_at``, the walk stops once the count reaches it
    (a quick "at least that many" on a big folder)."""
    total, videos = 0, False
    for path, _ in iter_files(spec, keep):
        kind = kind_for(path)
        total += kind.estimate(path, context)
        videos = videos or kind.name == "video"
        if stop_at is not None and total >= stop_at:
            break
    return total, videos


def _walk_files(root: Path) -> Iterator[Path]:
    """Images and videos below ``root`` in path order (each folder's entries sorted by name, sub-folders entered in
    place), following directory symlinks but never entering a directory twice (symlink-loop safe). Streams."""
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
            elif is_input_path(entry.name):
                # Anything image-named that is not a folder is yielded, regular or not (a dangling link, a FIFO):
                # decoding then reports it, so no image is dropped without a word.
                yield Path(entry.path)
        except OSError:  # vanished or unreadable while listing: nothing to annotate there
            continue


def _sorted_entries(directory: Path, seen: set[tuple[int, int]]) -> Iterator[os.DirEntry[str]]:
    try:
        info = directory.stat()
        key = (info.st_dev, info.st_ino)
        if key in seen:
            return iter(())
        seen.add(key)
        with os.scandir(directory) as scan:
            return iter(sorted(scan, key=lambda e: e.name))
    except OSError:
        return iter(())
