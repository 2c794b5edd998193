"""Where outputs go: the output directory is a dataset root that ``yolo segment train`` reads in place.

Ultralytics finds an image's label by replacing the last ``/images/`` of the image path with ``/labels/`` and the
suffix with ``.txt``. So:

* ``--data`` inside a directory named ``images`` (``ds/images/train``): the output dir defaults to that directory's
  parent (``ds``) and labels land in the sibling tree (``ds/labels/train/x.txt``): the dataset trains in place.
* anywhere else: the output dir defaults to ``<data>_auto_annotate`` beside ``--data``; ``OUT/images`` mirrors the
  image tree with one symlink per image, and labels go to ``OUT/labels/<path relative to the image root>.txt``.
  No image is copied. Per-file links rather than one directory link because ultralytics' ``check_det_dataset``
  resolves the ``train`` path: a linked directory would resolve back to the originals, where ``/images/`` is not
  in the path and no label would be found.

Pure path logic plus the two filesystem steps that set the layout up (the images link, the per-file links).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from autoannotate.errors import OutputError

if TYPE_CHECKING:
    from autoannotate.inputs.listing import SourceSpec

DATA_YAML = "data.yaml"
FALLBACK_DATA_YAML = "autoannotate.data.yaml"


@dataclass(frozen=True)
class DatasetLayout:
    """Resolved output paths.

    ``link``: ``"none"`` (labels beside an existing ``images`` tree) or ``"files"`` (``OUT/images/<rel>`` symlinks,
    one per image).
    ``images_entry``: the ``train``/``val`` value of data.yaml, relative to ``output_dir``.
    """

    output_dir: Path
    image_root: Path
    label_root: Path
    images_entry: str
    link: str

    def label_path(self, rel_path: PurePosixPath) -> Path:
        """``a/b.jpg`` -> ``<label_root>/a/b.txt`` (suffix replaced, as ultralytics does)."""
        return self.label_root / rel_path.with_suffix(".txt")

    def label_key(self, rel_path: PurePosixPath) -> str:
        """The label path relative to the output dir, POSIX: the manifest's key for this image."""
        return self.label_path(rel_path).relative_to(self.output_dir).as_posix()

    def image_link_path(self, rel_path: PurePosixPath) -> Path:
        return self.output_dir / "images" / rel_path


def _images_anchor(root: Path) -> Path | None:
    """The deepest directory named ``images`` among ``root`` and its ancestors."""
    for candidate in (root, *root.parents):
        if candidate.name == "images":
            return candidate
    return None


def default_output_dir(spec: SourceSpec, data: str) -> Path:
    """Where outputs go when ``--output-dir`` is not given (see the module docstring)."""
    anchor = _images_anchor(spec.root)
    if anchor is not None:
        return anchor.parent
    if spec.kind == "dir":
        return spec.root.parent / f"{spec.root.name}_auto_annotate"
    if spec.kind in ("file", "list"):
        named = Path(os.path.abspath(Path(data).expanduser()))
        return named.parent / f"{named.stem}_auto_annotate"
    return spec.root.parent / f"{spec.root.name}_auto_annotate"


def plan_layout(spec: SourceSpec, data: str, output_dir: str | None) -> DatasetLayout:
    """Decide every output path. Raises OutputError for an output dir that would mix labels into the images.

    Paths are compared resolved: an output dir or ``--data`` reached through a symlink is the directory it leads to.
    """
    out = Path(os.path.abspath(Path(output_dir).expanduser())) if output_dir else default_output_dir(spec, data)
    for root in (spec.root, Path(os.path.realpath(spec.root))):  # as named, then as it really lies
        anchor = _images_anchor(root)
        if anchor is not None and _same(out, anchor.parent):
            prefix = root.relative_to(anchor)
            label_root = out / "labels" / prefix
            entry = (PurePosixPath("images") / prefix.as_posix()).as_posix()
            return DatasetLayout(out, spec.root, label_root, entry, "none")
    # Links inside the walked tree would be found as images by the next run (and loop for recursive readers).
    if (spec.kind == "dir" and _is_within(out, spec.root)) or _is_within(spec.root, out / "labels"):
        raise OutputError(
            f"--output-dir {str(out)!r} would mix labels with the images under {str(spec.root)!r};"
            " choose a directory outside the image tree"
        )
    if _is_within(spec.root, out / "images"):  # OUT/images/<rel> links would land among the images themselves
        raise OutputError(
            f"--output-dir {str(out)!r} would put image links among the images under {str(spec.root)!r};"
            " choose a directory outside the image tree"
        )
    return DatasetLayout(out, spec.root, out / "labels", "images", "files")


def prepare_output(layout: DatasetLayout) -> None:
    """Create the output dir; refuse an ``images`` entry there that is not a directory of our links."""
    try:
        layout.output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(f"cannot create output dir {str(layout.output_dir)!r}: {err.strerror or err}") from None
    images = layout.output_dir / "images"
    if layout.link == "files" and (images.is_symlink() or (images.exists() and not images.is_dir())):
        raise OutputError(f"{str(images)!r} exists and is not a directory; move it or choose another --output-dir")


def link_image(layout: DatasetLayout, rel_path: PurePosixPath, image_path: Path) -> None:
    """For ``link == "files"``: make ``OUT/images/<rel>`` lead to ``image_path``. Raises OutputError if taken.

    The link is relative (the output dir and the images can move together), computed between the directories as
    they really lie, so that it resolves whatever symlinks the output dir or the images are reached through; where a
    relative link still would not lead to the image, it is absolute.
    """
    if layout.link != "files":
        return
    link = layout.image_link_path(rel_path)
    try:
        if link.is_symlink() or link.exists():
            if _same(link, image_path):
                return
            if not _is_stale_link_of_ours(link, image_path):
                raise OutputError(f"{str(link)!r} exists and is not a link to this image")
            link.unlink()
        link.parent.mkdir(parents=True, exist_ok=True)
        _make_link(link, image_path)
    except FileExistsError:  # made meanwhile (another shard's run)
        if not _same(link, image_path):
            raise OutputError(f"{str(link)!r} exists and is not a link to this image") from None
    except OSError as err:
        raise OutputError(f"cannot create image link {str(link)!r}: {err.strerror or err}") from None


def _make_link(link: Path, image_path: Path) -> None:
    # The image's own name is kept (it may be a user's symlink: the link leads to it, not past it).
    target = os.path.join(os.path.realpath(image_path.parent), image_path.name)
    os.symlink(os.path.relpath(target, os.path.realpath(link.parent)), link)
    if not _leads_to(link, image_path):
        link.unlink()
        os.symlink(target, link)


def _leads_to(link: Path, image_path: Path) -> bool:
    try:
        return os.path.samefile(link, image_path)
    except OSError:
        return False


def _is_stale_link_of_ours(link: Path, image_path: Path) -> bool:
    """A dangling link of earlier versions, which computed the relative target from the unresolved paths."""
    try:
        return not link.exists() and os.readlink(link) == os.path.relpath(image_path, link.parent)
    except (OSError, ValueError):
        return False


def _same(a: Path, b: Path) -> bool:
    try:
        return os.path.realpath(a) == os.path.realpath(b)
    except OSError:
        return False


def _is_within(child: Path, parent: Path) -> bool:
    """True when ``child`` is ``parent`` or lies below it (symlinks resolved)."""
    real_child, real_parent = os.path.realpath(child), os.path.realpath(parent)
    return real_child == real_parent or real_child.startswith(real_parent.rstrip(os.sep) + os.sep)
