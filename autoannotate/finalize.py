"""The files that cover the whole dataset, built from the results held in memory (this run's label texts and
instance rows; labels of earlier runs are read back once): the train/val lists, COCO instances, previews.

Pure apart from the preview files: the caller (``job``) writes every text atomically and records its sha256.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from autoannotate.dataset.layout import DatasetLayout
from autoannotate.inputs.base import InputItem
from autoannotate.resume import bytes_sha256_of


@dataclass(frozen=True)
class DatasetEntry:
    """What the whole-dataset files need of each image with a label (written now, skipped, or from earlier runs)."""

    item: InputItem
    label_key: str
    resolution_wh: tuple[int, int] | None
    rows: list[dict[str, Any]] = field(default_factory=list)
    label_text: str | None = None  # held when this run wrote the label; else read from the file when needed

    @property
    def rel_path(self) -> PurePosixPath:
        return self.item.rel_path


def in_val(rel_path: PurePosixPath, fraction: float) -> bool:
    """Deterministic train/val split by path (independent of the shard hash)."""
    digest = hashlib.sha1(b"val:" + rel_path.as_posix().encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def split_lists(dataset: list[DatasetEntry], layout: DatasetLayout, fraction: float) -> tuple[str, str]:
    """train.txt and val.txt: each item's path as the dataset holds it (``InputItem.dataset_path``), relative to the
    output dir, ``fraction`` of them (chosen by path) in val. The frames of one video go to one side together
    (``InputItem.group``): neighbouring frames on both sides would leak the val set into training."""
    train: list[str] = []
    val: list[str] = []
    for entry in sorted(dataset, key=lambda d: d.rel_path.as_posix()):
        path = entry.item.dataset_path(layout)
        shown = "./" + os.path.relpath(path, layout.output_dir).replace(os.sep, "/")
        (val if in_val(entry.item.group, fraction) else train).append(shown)
    return "".join(f"{p}\n" for p in train), "".join(f"{p}\n" for p in val)


def label_text(entry: DatasetEntry, layout: DatasetLayout) -> str | None:
    """The entry's label text: held in memory when this run wrote it, else read from its file (None when the file
    cannot be read as UTF-8 text)."""
    if entry.label_text is not None:
        return entry.label_text
    try:
        return (layout.output_dir / entry.label_key).read_bytes().decode("utf-8-sig")
    except (OSError, UnicodeDecodeError):
        return None


def coco_text(dataset: list[DatasetEntry], layout: DatasetLayout, names: dict[int, str]) -> str:
    """annotations.coco.json over ``dataset``; an image that vanished or broke since it was annotated (its size
    unknown and unreadable) is left out."""
    from autoannotate.review.labels import read_image_size_wh
    from autoannotate.writers.coco import build_coco, coco_image_from_label_text, format_coco

    images = []
    for entry in sorted(dataset, key=lambda d: d.rel_path.as_posix()):
        try:
            resolution_wh = entry.resolution_wh or read_image_size_wh(Path(entry.item.origin))
        except Exception:
            continue
        text = label_text(entry, layout) or ""
        images.append(coco_image_from_label_text(entry.rel_path.as_posix(), resolution_wh, text, entry.rows))
    return format_coco(build_coco(images, names))


def write_preview_files(
    dataset: list[DatasetEntry], layout: DatasetLayout, names: dict[int, str], count: int, out_dir: Path
) -> dict[str, str]:
    """Overlays of ``count`` sampled images and a contact sheet under ``out_dir``; returns each file written
    (relative to the output dir) with its sha256. The sample: the images with the smallest path hash
    (deterministic, independent of the order of the run)."""
    from autoannotate.review.preview import preview_sample_from_label_text, write_previews

    chosen = sorted(dataset, key=lambda d: hashlib.sha1(d.rel_path.as_posix().encode()).digest())
    samples = []
    for entry in sorted(chosen[:count], key=lambda d: d.rel_path.as_posix()):
        try:
            image = entry.item.read_bgr()
        except Exception:  # the image vanished since it was annotated: leave it out of the previews
            continue
        text = label_text(entry, layout) or ""
        samples.append(preview_sample_from_label_text(entry.rel_path, image, text, entry.rows))
    if not samples:
        return {}
    files = write_previews(samples, names, out_dir)
    written = {}
    for path in (*files.overlays, files.contact_sheet):
        digest = bytes_sha256_of(path)
        if digest is not None:
            written[path.relative_to(layout.output_dir).as_posix()] = digest
    return written
