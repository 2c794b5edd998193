"""Write a person's corrections (what an exchange reader returns) into a run's output dir as human-reviewed labels.

Each imported label is written atomically and named in the manifest's ``reviewed`` section with the sha256 of the
bytes written; from then on ``autoannotate run`` keeps it, ``--overwrite`` included (``--overwrite-reviewed`` redoes
it). The marks are written before the labels, so a kill in between leaves labels that are marked and still hold the
old text (a rerun of the import finishes them), never a corrected label that a run could replace.

A line whose polygon and class are those of a line of the current label (to the labels' 6 decimals) keeps that
line's text byte for byte, so an instance the person left alone is left alone, whatever rounding the tool did.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath

import numpy as np

from autoannotate.dataset.yolo_seg import LabelLine, format_label_file, format_unit_values, parse_label_lines
from autoannotate.errors import InputError
from autoannotate.exchange import ImportedLabel
from autoannotate.lock import acquire_output_lock
from autoannotate.resume import MANIFEST_NAME, ReviewMark, bytes_sha256
from autoannotate.writers.atomic import write_text_atomic
from autoannotate.writers.manifest import format_manifest

SAME_POINT_NORM = 1.5e-6  # two normalised coordinates that round to the same 6-decimal text, or one unit apart


@dataclass(frozen=True)
class ApplyResult:
    """``reviewed``: labels marked reviewed by this import; ``changed``: of those, the ones whose bytes changed
    (the others were accepted as they were); ``instances``: lines in the imported labels."""

    reviewed: int
    changed: int
    instances: int
    changed_keys: tuple[str, ...]


def label_text(instances: Iterable[tuple[int, np.ndarray]], current: Sequence[LabelLine], current_text: str) -> str:
    """The label file text of ``instances`` (``class_id``, ``polygon_norm (K, 2)``), reusing the text of each
    current line that holds the same class and polygon."""
    texts = current_text.splitlines()
    lines = []
    for class_id, polygon_norm in instances:
        points = np.clip(np.asarray(polygon_norm, dtype=np.float64).reshape(-1, 2), 0.0, 1.0)
        same = next((c for c in current if c.class_id == class_id and _same_polygon(c.polygon_norm, points)), None)
        if same is not None and 0 < same.line <= len(texts):
            lines.append(texts[same.line - 1].strip())
        else:
            lines.append(f"{int(class_id)} " + format_unit_values(points.reshape(-1)))
    return format_label_file(lines)


def _same_polygon(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and bool(np.all(np.abs(a - b) <= SAME_POINT_NORM))


def apply_imported(
    output_dir: Path, labels: Sequence[ImportedLabel], *, source: str, file: str, now: datetime | None = None
) -> ApplyResult:
    """Write ``labels`` into ``output_dir`` (a run's output dir, with its ``autoannotate.json``) as reviewed.

    Holds the output dir's lock (no run or merge meanwhile). Raises InputError for an output dir without a run
    manifest, or a label key outside its ``labels`` dir; OutputError when the dir is busy or a write fails.
    """
    manifest_path = output_dir / MANIFEST_NAME
    at = (now or datetime.now(UTC)).isoformat(timespec="seconds")
    with acquire_output_lock(output_dir, what="import"):
        manifest = _run_manifest(output_dir)
        planned: list[tuple[Path, str, str]] = []  # path, key, text
        for label in labels:
            path = _label_path(output_dir, label.label_key)
            current_text = _read_text(path)
            current, _ = parse_label_lines(current_text)
            planned.append((path, label.label_key, label_text(label.instances, current, current_text)))
        marks = dict(manifest.get("reviewed") or {})
        for _, key, text in planned:
            marks[key] = ReviewMark(bytes_sha256(text.encode("utf-8")), source, file, at).to_dict()
        manifest["reviewed"] = dict(sorted(marks.items()))
        write_text_atomic(manifest_path, format_manifest(manifest))
        changed = []
        for path, key, text in planned:
            if _read_text(path) != text or not path.is_file():
                path.parent.mkdir(parents=True, exist_ok=True)
                write_text_atomic(path, text)
                changed.append(key)
    instances = sum(len(label.instances) for label in labels)
    return ApplyResult(len(planned), len(changed), instances, tuple(changed))


def planned_changes(output_dir: Path, labels: Sequence[ImportedLabel]) -> list[str]:
    """The keys of the labels ``apply_imported`` would change (a dry run: nothing is written)."""
    changes = []
    for label in labels:
        path = _label_path(output_dir, label.label_key)
        current_text = _read_text(path)
        current, _ = parse_label_lines(current_text)
        if label_text(label.instances, current, current_text) != current_text or not path.is_file():
            changes.append(label.label_key)
    return changes


def _run_manifest(output_dir: Path) -> dict:
    path = output_dir / MANIFEST_NAME
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        if any(output_dir.glob("autoannotate.shard-*.json")):
            raise InputError(
                f"{str(output_dir)!r} holds shard manifests only; run `autoannotate merge {output_dir}` first"
            ) from None
        raise InputError(
            f"{str(output_dir)!r} has no {MANIFEST_NAME}; pass the output dir of `autoannotate run`"
        ) from None
    except (OSError, ValueError) as err:
        raise InputError(f"cannot read {str(path)!r} ({err}); rerun `autoannotate run` to rewrite it") from None
    if not isinstance(manifest, dict) or manifest.get("tool") != "autoannotate":
        raise InputError(f"{str(path)!r} is not an autoannotate run manifest; pass the output dir of a run")
    if not isinstance(manifest.get("reviewed", {}), dict):
        raise InputError(f"{str(path)!r} has a 'reviewed' entry that is not an object; rerun `autoannotate run`")
    return manifest


def _label_path(output_dir: Path, key: str) -> Path:
    """``output_dir / key`` for a key of the form ``labels/.../name.txt``; anything else is refused."""
    rel = PurePosixPath(key)
    if rel.is_absolute() or ".." in rel.parts or rel.parts[:1] != ("labels",) or rel.suffix != ".txt":
        raise InputError(f"label {key!r} is not a label path under labels/ of the output dir")
    return output_dir.joinpath(*rel.parts)


def _read_text(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8-sig")
    except (OSError, UnicodeDecodeError):
        return ""
