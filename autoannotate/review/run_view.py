"""A run's output dir read as one dataset, for the report and the exports: each labelled image with its polygons,
the ``instances.jsonl`` figures of each auto-made line, and whether a person edited or reviewed the label.

The dataset root is the output dir: images under ``OUT/images`` (the user's images, or the run's links to them),
labels under ``OUT/labels`` (ultralytics' pairing), class names in ``OUT/data.yaml`` (or ``autoannotate.data.yaml``
when a data.yaml of someone else's is kept there), the run's record in ``OUT/autoannotate.json``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from autoannotate.dataset.layout import DATA_YAML, FALLBACK_DATA_YAML
from autoannotate.dataset.yolo_seg import read_label_file
from autoannotate.errors import InputError
from autoannotate.resume import MANIFEST_NAME, ReviewMark, bytes_sha256_of, load_previous
from autoannotate.review.labels import iter_pairs, read_names

IMAGES_DIR = "images"
LABELS_DIR = "labels"


@dataclass(frozen=True)
class ViewInstance:
    """One label line. ``polygon_norm``: float64 ``(K, 2)`` x, y in [0, 1] (pixel centres, as written).
    ``figures``: its ``instances.jsonl`` row (``det_conf``, ``sam_iou``, ``fill_iou``, ``stability``, ...) when the
    line is still the one autoannotate wrote; None for a line a person wrote or changed."""

    line: int
    class_id: int
    polygon_norm: np.ndarray
    figures: Mapping[str, Any] | None


@dataclass(frozen=True)
class ViewImage:
    """One labelled image of the dataset.

    ``image_rel``: the image's path relative to the output dir (``images/a/b.jpg``), POSIX; ``image_path``: the
    file to read (the same path, through a link or not). ``label_key``: the label's path relative to the output
    dir (``labels/a/b.txt``), the manifest's key. ``reviewed``: marked human-reviewed by ``autoannotate import``;
    ``edited``: its bytes differ from what autoannotate (or the import) wrote; ``problems``: lines that do not parse.
    """

    image_rel: PurePosixPath
    image_path: Path
    label_key: str
    instances: tuple[ViewInstance, ...]
    reviewed: ReviewMark | None
    edited: bool
    problems: tuple[str, ...]


@dataclass(frozen=True)
class RunView:
    """``names``: class id -> name (data.yaml); ``manifest``: ``autoannotate.json`` as read ({} when absent);
    ``images``: sorted by ``image_rel``; ``orphans``: label keys without an image (left out of ``images``)."""

    output_dir: Path
    names: dict[int, str]
    manifest: Mapping[str, Any]
    images: tuple[ViewImage, ...]
    orphans: tuple[str, ...]

    @property
    def model_version(self) -> str:
        """``autoannotate <version>: <detector> + <segmenter>``, from the manifest (what made the predictions)."""
        version = self.manifest.get("version", "?")
        settings = self.manifest.get("settings")
        models = [settings.get(k) for k in ("det_model", "sam_model")] if isinstance(settings, Mapping) else []
        parts = [Path(str(p)).name for p in models if p]
        return f"autoannotate {version}" + (f": {' + '.join(parts)}" if parts else "")


def names_file(output_dir: Path) -> Path | None:
    """The output dir's class-names file: ``data.yaml`` when autoannotate wrote it, else ``autoannotate.data.yaml``
    (written beside a data.yaml of someone else's), else a data.yaml of anyone's."""
    fallback = output_dir / FALLBACK_DATA_YAML
    if fallback.is_file():
        return fallback
    primary = output_dir / DATA_YAML
    return primary if primary.is_file() else None


def open_run(output_dir: Path) -> RunView:
    """Read ``output_dir`` (a run's output dir, or any dataset root with ``images/`` and ``labels/``).

    Raises InputError when it has no ``labels`` and ``images`` dirs or no class names. Images without a label file
    are left out (the run did not label them); label files without an image are listed in ``orphans``.
    """
    out = Path(output_dir)
    labels_root, images_root = out / LABELS_DIR, out / IMAGES_DIR
    if not labels_root.is_dir() or not images_root.is_dir():
        raise InputError(
            f"{str(out)!r} has no 'images' and 'labels' dirs; pass the output dir of `autoannotate run` (the dataset"
            " root that holds data.yaml)"
        )
    names_path = names_file(out)
    if names_path is None:
        raise InputError(f"no data.yaml in {str(out)!r}; pass the output dir of `autoannotate run`")
    names = read_names(names_path)
    manifest = _read_manifest(out / MANIFEST_NAME)
    previous = load_previous(out)
    images: list[ViewImage] = []
    orphans: list[str] = []
    for pair in iter_pairs(labels_root, images_root):
        if pair.label_path is None:
            continue
        key = pair.label_path.relative_to(out).as_posix()
        if pair.image_path is None or pair.image_rel is None:
            orphans.append(key)
            continue
        lines, problems = read_label_file(pair.label_path)
        digest = bytes_sha256_of(pair.label_path)
        mark = previous.reviewed.get(key)
        entry = previous.entries.get(key)
        written = mark.sha256 if mark is not None else (entry.sha256 if entry is not None else None)
        edited = written is not None and digest != written
        rows = _rows_by_line(previous.rows.get(key, [])) if mark is None and not edited else {}
        instances = tuple(ViewInstance(x.line, x.class_id, x.polygon_norm, rows.get(x.line)) for x in lines)
        images.append(
            ViewImage(
                (PurePosixPath(IMAGES_DIR) / pair.image_rel),
                pair.image_path,
                key,
                instances,
                mark,
                edited,
                tuple(f"line {p.line}: {p.message}" if p.line is not None else p.message for p in problems),
            )
        )
    images.sort(key=lambda image: image.image_rel)
    return RunView(out, names, manifest, tuple(images), tuple(sorted(orphans)))


def _rows_by_line(rows: list[dict[str, Any]]) -> dict[int, Mapping[str, Any]]:
    """``instances.jsonl`` rows by each label line they wrote (a ``split`` row wrote ``lines`` lines)."""
    out: dict[int, Mapping[str, Any]] = {}
    for row in rows:
        first, count = row.get("line"), row.get("lines") or 0
        if isinstance(first, int) and isinstance(count, int):
            for line in range(first, first + count):
                out[line] = row
    return out


def _read_manifest(path: Path) -> Mapping[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
