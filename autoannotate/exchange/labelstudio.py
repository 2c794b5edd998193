"""Label Studio: a run's labels out as polygon predictions a person corrects, and the corrections back in.

Export (``label_config_xml``, ``export_tasks``): one task per labelled image, ``{"data": {"image": URL,
"autoannotate_label": "labels/a/b.txt"}, "predictions": [{"model_version", "score", "result": [...]}]}``, each
instance a ``polygonlabels`` region whose points are percent of the image (``x_norm * 100``, rounded to 4 decimals:
exactly the labels' 6 decimals, so an untouched polygon comes back as the same label text). The config has one
``<PolygonLabels name="label" toName="image">`` with a ``<Label>`` per class.

Images are reached by URL. By default through Label Studio's local-files serving: ``/data/local-files/?d=<path
relative to LOCAL_FILES_DOCUMENT_ROOT>``. Label Studio (``io_storages/localfiles/views.py``) joins ``d`` to the
document root lexically (``safe_join``, no symlink resolution), serves the file when a Local Files storage of the
project has a path that is a parent of the file's directory, and opens it following links: the run's per-file
symlinks under ``OUT/images`` are served from where they lie. So Label Studio is started with
``LOCAL_FILES_SERVING_ENABLED=true LOCAL_FILES_DOCUMENT_ROOT=<document root>`` (a strict parent of ``OUT/images``)
and the project gets a Local Files source storage at ``OUT/images``, never synced (a sync would add a second task per
image). Or a URL prefix of the user's (``--image-root``), followed by the image's path below ``OUT/images``.

Import (``read_export``, ``parse_export``): Label Studio's "JSON" export (a list of tasks, each with ``data``,
``annotations`` and ``predictions``). Each task's latest annotation that was not cancelled is the person's answer;
its ``polygonlabels`` and unrotated ``rectanglelabels`` regions become the image's instances in their order. A task
whose answer cannot be taken whole (too few points, a rotated box, an unknown label, ...) is skipped with one warning:
a person's corrections are never half applied.

Formatting is pure; ``write_export`` is the only function that writes a file, ``read_export`` the only one that
reads one (``export_tasks`` reads each image's header for its size).
"""

from __future__ import annotations

import colorsys
import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any, TypeGuard
from urllib.parse import parse_qs, quote, unquote, urlsplit
from xml.sax.saxutils import quoteattr

import numpy as np

from autoannotate.errors import ImageError, InputError, excerpt
from autoannotate.exchange import ImportedLabel, ImportedLabels
from autoannotate.review.labels import read_image_size_wh
from autoannotate.review.run_view import IMAGES_DIR, RunView, ViewImage, ViewInstance
from autoannotate.writers.atomic import write_text_atomic

__all__ = [
    "CONFIG_FILE",
    "CONTROL_NAME",
    "IMAGE_NAME",
    "LOCAL_FILES_PREFIX",
    "TASKS_FILE",
    "TASK_LABEL_KEY",
    "ExportReading",
    "LabelStudioFiles",
    "build_export",
    "export_tasks",
    "format_tasks_json",
    "label_colour_hex",
    "label_config_xml",
    "label_names",
    "local_files_url",
    "parse_export",
    "points_pct_from_norm",
    "polygon_norm_from_pct",
    "read_export",
    "task_for_image",
    "write_export",
]

CONTROL_NAME = "label"  # the PolygonLabels control: every region's ``from_name``
IMAGE_NAME = "image"  # the Image object: every region's ``to_name``, and the task data key it reads (``$image``)
TASK_LABEL_KEY = "autoannotate_label"  # task data: the image's label key, how the import finds the image again
LOCAL_FILES_PREFIX = "/data/local-files/?d="
TASKS_FILE = "labelstudio_tasks.json"
CONFIG_FILE = "labelstudio_config.xml"
PERCENT_DECIMALS = 4  # percent of the image to 4 decimals = the labels' 6 decimals of the unit frame
SCORE_DECIMALS = 4

# Region types that carry a shape we cannot turn into a polygon: a task holding one is skipped, never imported
# without it. Every other region type (choices, textarea, rating, relation, ...) carries no instance and is ignored.
UNSUPPORTED_SHAPES = frozenset(
    {
        "polygon",
        "rectangle",
        "brush",
        "brushlabels",
        "ellipse",
        "ellipselabels",
        "keypoint",
        "keypointlabels",
        "vector",
        "vectorlabels",
        "bitmask",
        "bitmasklabels",
    }
)
_UPLOAD_PREFIX = re.compile(r"^[0-9a-f]{8}-(?=.)")  # Label Studio prefixes an uploaded file's name with this
_XML_INVALID = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


# --- export ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LabelStudioFiles:
    """The two files of an export: ``tasks_json`` (to import into the project) and ``config_xml`` (the project's
    labeling interface), as text; ``tasks_path``/``config_path`` where ``write_export`` wrote them (None when only
    built)."""

    tasks_json: str
    config_xml: str
    tasks: int
    instances: int
    tasks_path: Path | None = None
    config_path: Path | None = None


def label_names(names: Mapping[int, str]) -> dict[int, str]:
    """Class id -> the ``<Label value>`` of that class: its name, made unique. A name that two classes share gets
    `` (<id>)`` appended, and an empty one becomes ``class <id>``, so that a label always maps back to one class."""
    counts: dict[str, int] = {}
    for name in names.values():
        counts[str(name)] = counts.get(str(name), 0) + 1
    out: dict[int, str] = {}
    for class_id in sorted(names):
        name = str(names[class_id])
        if not name.strip():
            out[class_id] = f"class {class_id}"
        elif counts[name] > 1:
            out[class_id] = f"{name} ({class_id})"
        else:
            out[class_id] = name
    return out


def label_colour_hex(class_id: int) -> str:
    """A stable colour for a class, ``#RRGGBB``: hues a golden angle apart, so neighbouring ids differ clearly.

    >>> label_colour_hex(0)
    '#F25555'
    """
    hue = (int(class_id) * 0.618033988749895) % 1.0
    red, green, blue = colorsys.hsv_to_rgb(hue, 0.65, 0.95)
    return "#" + "".join(f"{round(channel * 255):02X}" for channel in (red, green, blue))


def label_config_xml(names: Mapping[int, str]) -> str:
    """The labeling config for a project of ``names`` (class id -> name): an ``<Image name="image" value="$image">``
    and a ``<PolygonLabels name="label" toName="image">`` with one ``<Label>`` per class, in id order (values from
    ``label_names``, XML-escaped, each with ``label_colour_hex``). Text ending in a newline.

    Raises InputError when a name holds a character XML cannot carry (a control character).
    """
    lines = [
        "<View>",
        f'  <Image name="{IMAGE_NAME}" value="${IMAGE_NAME}" zoom="true" zoomControl="true"/>',
        f'  <PolygonLabels name="{CONTROL_NAME}" toName="{IMAGE_NAME}" strokeWidth="2" pointSize="small"'
        ' opacity="0.4">',
    ]
    for class_id, value in label_names(names).items():
        if _XML_INVALID.search(value):
            raise InputError(
                f"class {class_id} name {excerpt(value)} holds a control character, which a Label Studio config"
                " cannot carry; rename the class in data.yaml"
            )
        lines.append(f"    <Label value={quoteattr(value)} background={quoteattr(label_colour_hex(class_id))}/>")
    lines += ["  </PolygonLabels>", "</View>"]
    return "\n".join(lines) + "\n"


def points_pct_from_norm(polygon_norm: np.ndarray) -> np.ndarray:
    """``(K, 2)`` x, y in [0, 1] of the image -> ``(K, 2)`` float64 percent of the image in [0, 100], rounded to
    4 decimals (Label Studio's polygon ``points``). For values of 6 decimals (the labels) this is exact:
    ``polygon_norm_from_pct`` gives back values that format to the same 6-decimal text."""
    points = np.clip(np.asarray(polygon_norm, dtype=np.float64).reshape(-1, 2), 0.0, 1.0) * 100.0
    return np.round(points, PERCENT_DECIMALS) + 0.0  # + 0.0: no "-0.0" in the JSON


def polygon_norm_from_pct(points_pct: np.ndarray) -> np.ndarray:
    """``(K, 2)`` percent of the image (Label Studio's ``points``) -> ``(K, 2)`` float64 x, y in [0, 1], clipped."""
    return np.clip(np.asarray(points_pct, dtype=np.float64).reshape(-1, 2) / 100.0, 0.0, 1.0)


def local_files_url(output_dir: Path, image_rel: PurePosixPath, document_root: Path) -> str:
    """``/data/local-files/?d=<path>``: Label Studio's URL of the image ``output_dir/image_rel`` served from
    ``document_root`` (its ``LOCAL_FILES_DOCUMENT_ROOT``), the path relative to it, URL-quoted as Label Studio
    quotes it. The image itself is not resolved: a symlink under ``OUT/images`` is served through the link.

    Raises InputError when ``OUT/images`` does not lie strictly below ``document_root`` (Label Studio refuses a
    Local Files storage at the document root or outside it).
    """
    candidates = (
        (Path(os.path.abspath(output_dir)), Path(os.path.abspath(document_root))),
        (Path(output_dir).resolve(), Path(document_root).resolve()),
    )
    for out, root in candidates:
        images = out / IMAGES_DIR
        if root in images.parents:
            return LOCAL_FILES_PREFIX + quote((out / image_rel).relative_to(root).as_posix())
    raise InputError(
        f"the images dir {str(Path(output_dir) / IMAGES_DIR)!r} is not below the document root"
        f" {str(document_root)!r}; pass a --document-root that holds OUT (its parent, say) and start Label Studio"
        " with LOCAL_FILES_DOCUMENT_ROOT set to it"
    )


def _prefixed_url(image_root: str, image_rel: PurePosixPath) -> str:
    below_images = PurePosixPath(*image_rel.parts[1:]) if image_rel.parts[:1] == (IMAGES_DIR,) else image_rel
    joiner = "" if image_root.endswith(("/", "=")) else "/"
    return image_root + joiner + quote(below_images.as_posix())


def _instance_score(instance: ViewInstance) -> float | None:
    """``sam_iou`` of the instance's figures, else ``det_conf``, clipped to [0, 1] and rounded; None without."""
    figures = instance.figures or {}
    for key in ("sam_iou", "det_conf"):
        value = figures.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            return round(min(max(float(value), 0.0), 1.0), SCORE_DECIMALS)
    return None


def task_for_image(
    image: ViewImage,
    labels: Mapping[int, str],
    *,
    image_url: str,
    size_wh: tuple[int, int] | None,
    model_version: str,
) -> dict[str, Any]:
    """The import task of one image: ``data`` (``image``: ``image_url``; ``autoannotate_label``: its label key) and
    one prediction (``model_version``; ``score``: the mean instance score, left out when no instance has one;
    ``result``: one ``polygonlabels`` region per instance, in label-line order, ``id`` ``"L<line>"``, with the
    instance's score when it has one). ``labels``: class id -> label value (``label_names``); ``size_wh``: the image's
    ``(width, height)`` as the labels were normalised (``original_width``/``original_height``; left out when None).

    Raises InputError for an instance whose class id has no name.
    """
    result: list[dict[str, Any]] = []
    scores: list[float] = []
    for instance in image.instances:
        label = labels.get(instance.class_id)
        if label is None:
            raise InputError(
                f"{image.label_key} line {instance.line}: class id {instance.class_id} has no name in data.yaml;"
                " add it to data.yaml's names (or fix the label) and export again"
            )
        region: dict[str, Any] = {"id": f"L{instance.line}", "from_name": CONTROL_NAME, "to_name": IMAGE_NAME}
        region["type"] = "polygonlabels"
        if size_wh is not None:
            region["original_width"], region["original_height"] = int(size_wh[0]), int(size_wh[1])
            region["image_rotation"] = 0
        points = points_pct_from_norm(instance.polygon_norm).tolist()
        region["value"] = {"points": points, "closed": True, "polygonlabels": [label]}
        score = _instance_score(instance)
        if score is not None:
            region["score"] = score
            scores.append(score)
        result.append(region)
    prediction: dict[str, Any] = {"model_version": model_version}
    if scores:
        prediction["score"] = round(sum(scores) / len(scores), SCORE_DECIMALS)
    prediction["result"] = result
    return {"data": {IMAGE_NAME: image_url, TASK_LABEL_KEY: image.label_key}, "predictions": [prediction]}


def export_tasks(
    view: RunView, *, image_root: str | None = None, document_root: Path | None = None
) -> list[dict[str, Any]]:
    """Label Studio import tasks for every labelled image of ``view`` (see ``task_for_image``), in ``view.images``
    order.

    ``data.image``: ``image_root`` followed by the image's path below ``OUT/images`` (segments URL-quoted; a ``/`` is
    put between unless ``image_root`` ends in ``/`` or ``=``); without ``image_root``, the local-files URL of
    ``local_files_url`` with ``document_root`` (default: OUT's parent, resolved). An image whose size cannot be read
    gets no ``original_width``/``original_height`` (Label Studio fills them in when it shows the image).

    Raises InputError for an instance whose class has no name, or images not below ``document_root``.
    """
    root = Path(document_root) if document_root is not None else Path(view.output_dir).resolve().parent
    labels = label_names(view.names)
    tasks = []
    for image in view.images:
        if image_root is not None:
            url = _prefixed_url(image_root, image.image_rel)
        else:
            url = local_files_url(view.output_dir, image.image_rel, root)
        try:
            size_wh: tuple[int, int] | None = read_image_size_wh(image.image_path)
        except ImageError:
            size_wh = None
        tasks.append(task_for_image(image, labels, image_url=url, size_wh=size_wh, model_version=view.model_version))
    return tasks


def format_tasks_json(tasks: Sequence[Mapping[str, Any]]) -> str:
    """The tasks file's text: JSON (UTF-8 characters kept, one-space indent), newline-terminated."""
    return json.dumps(list(tasks), ensure_ascii=False, indent=1) + "\n"


def build_export(
    view: RunView, *, image_root: str | None = None, document_root: Path | None = None
) -> LabelStudioFiles:
    """The tasks JSON (``export_tasks``, ``format_tasks_json``) and the config XML of ``view``, as text."""
    tasks = export_tasks(view, image_root=image_root, document_root=document_root)
    return LabelStudioFiles(
        tasks_json=format_tasks_json(tasks),
        config_xml=label_config_xml(view.names),
        tasks=len(tasks),
        instances=sum(len(task["predictions"][0]["result"]) for task in tasks),
    )


def write_export(
    view: RunView, out_dir: Path, *, image_root: str | None = None, document_root: Path | None = None
) -> LabelStudioFiles:
    """Write ``labelstudio_tasks.json`` and ``labelstudio_config.xml`` into ``out_dir`` (atomically, replacing what
    is there; created when missing). Returns what was written, with the paths. Raises OutputError when a write
    fails, InputError as ``export_tasks``."""
    files = build_export(view, image_root=image_root, document_root=document_root)
    tasks_path, config_path = Path(out_dir) / TASKS_FILE, Path(out_dir) / CONFIG_FILE
    write_text_atomic(tasks_path, files.tasks_json)
    write_text_atomic(config_path, files.config_xml)
    return LabelStudioFiles(
        files.tasks_json, files.config_xml, files.tasks, files.instances, tasks_path=tasks_path, config_path=config_path
    )


# --- import ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExportReading:
    """What ``parse_export`` found: ``imported`` (the labels and a warning per skipped task); ``tasks``: tasks in the
    export; ``not_annotated``: tasks without an annotation that was not cancelled (left as they are, no warning)."""

    imported: ImportedLabels
    tasks: int
    not_annotated: int


class _Skip(Exception):
    """A task that cannot be imported whole; the message says why."""


def read_export(path: Path, view: RunView) -> ImportedLabels:
    """Read Label Studio's JSON export of a project at ``path`` against the dataset ``view`` (see ``parse_export``).

    Raises InputError with a one-line message when the file cannot be read, is not JSON, or is not an export.
    """
    return parse_export(load_export(path), view, source=str(path)).imported


def load_export(path: Path) -> object:
    """The parsed JSON of an export file. Raises InputError (one line) when it cannot be read or is not JSON."""
    try:
        text = Path(path).read_bytes().decode("utf-8-sig")
    except OSError as err:
        raise InputError(f"cannot read {str(path)!r}: {err.strerror or err}") from None
    except UnicodeDecodeError:
        raise InputError(f"{str(path)!r} is not UTF-8 text; pass Label Studio's JSON export") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise InputError(
            f"{str(path)!r} is not JSON ({err.msg} at line {err.lineno} column {err.colno}); export the project"
            " from Label Studio as 'JSON'"
        ) from None
    except RecursionError:
        raise InputError(f"{str(path)!r} is nested too deeply to be a Label Studio export") from None
    return data


def parse_export(data: object, view: RunView, *, source: str = "the export") -> ExportReading:
    """Label Studio's "JSON" export (parsed), read against ``view``: one ``ImportedLabel`` per task answered.

    For each task the latest annotation (``updated_at``, else ``created_at``, then ``id``) that was not cancelled is
    the answer; a task with none is counted in ``not_annotated``. The task's image is the view's image whose label
    key is ``data["autoannotate_label"]``, else the one whose path below ``images/`` ends the image URL's path (or its
    ``?d=`` path). Regions: ``polygonlabels`` -> points / 100, clipped to [0, 1]; ``rectanglelabels`` (``x``, ``y``,
    ``width``, ``height`` in percent, no rotation) -> its 4 corners; other types without a shape are ignored. An
    empty result is an answer: no instance (a negative image). When two tasks answer for one image, the later answer
    is taken.

    Skipped with one warning each (``task <id>: <reason>; skipped``): a task whose image is not in the dataset, and a
    task with a polygon of fewer than 3 points, a rotated or empty rectangle, a label that is not a class, a region
    without exactly one label, or a shape that is not a polygon or rectangle. Raises InputError when ``data`` is not
    a list of tasks with ``annotations`` lists (not a Label Studio JSON export).
    """
    if not isinstance(data, list):
        raise InputError(
            f"{source} holds a JSON {type(data).__name__}, not a list of tasks; export the project from Label Studio"
            " as 'JSON'"
        )
    by_key = {image.label_key: image for image in view.images}
    class_of = {label: class_id for class_id, label in label_names(view.names).items()}
    for index, task in enumerate(data):
        if not isinstance(task, dict):
            raise InputError(f"{source}: item {index} is a {type(task).__name__}, not a task object")
    if data and not any("annotations" in task for task in data):
        raise InputError(
            f"{source} has no 'annotations' in any task: it is not Label Studio's JSON export (the tasks file"
            " autoannotate wrote, or a JSON-MIN export?); export the project from Label Studio as 'JSON'"
        )
    warnings: list[str] = []
    answers: dict[str, tuple[tuple[datetime, int, int], str, ImportedLabel]] = {}
    not_annotated = 0
    for index, task in enumerate(data):
        name = f"task {_task_id(task, index)}"
        annotation, order = _latest_annotation(task, name, source)
        if annotation is None:
            not_annotated += 1
            continue
        image = _task_image(task, by_key, view.images)
        if image is None:
            warnings.append(f"{name}: its image {_task_image_text(task)} is not in this dataset; skipped")
            continue
        try:
            instances = _instances(annotation["result"], class_of)
        except _Skip as why:
            warnings.append(f"{name} ({image.image_rel}): {why}; skipped")
            continue
        label = ImportedLabel(image.label_key, instances)
        earlier = answers.get(image.label_key)
        if earlier is None:
            answers[image.label_key] = (order, name, label)
        elif order > earlier[0]:
            warnings.append(f"{earlier[1]}: same image as {name} ({image.label_key}), answered later; skipped")
            answers[image.label_key] = (order, name, label)
        else:
            warnings.append(f"{name}: same image as {earlier[1]} ({image.label_key}), answered later; skipped")
    labels = tuple(label for _order, _name, label in answers.values())
    return ExportReading(ImportedLabels(labels, tuple(warnings)), len(data), not_annotated)


def _task_id(task: Mapping[str, Any], index: int) -> str:
    task_id = task.get("id")
    return str(task_id) if isinstance(task_id, int | str) and not isinstance(task_id, bool) else f"#{index + 1}"


def _latest_annotation(
    task: Mapping[str, Any], name: str, source: str
) -> tuple[Mapping[str, Any] | None, tuple[datetime, int, int]]:
    """The task's latest annotation that was not cancelled, and its sort key; None when it has none."""
    annotations = task.get("annotations", [])
    if not isinstance(annotations, list):
        raise InputError(f"{source}: {name} has 'annotations' of type {type(annotations).__name__}, not a list")
    best: Mapping[str, Any] | None = None
    undated = datetime.min.replace(tzinfo=UTC)
    best_order = (undated, -1, -1)
    for position, annotation in enumerate(annotations):
        if not isinstance(annotation, dict):
            raise InputError(f"{source}: {name} has an annotation of type {type(annotation).__name__}, not an object")
        if annotation.get("was_cancelled"):
            continue
        if not isinstance(annotation.get("result"), list):
            raise InputError(f"{source}: {name} has an annotation without a 'result' list")
        annotation_id = annotation.get("id")
        order = (
            _timestamp(annotation.get("updated_at")) or _timestamp(annotation.get("created_at")) or undated,
            annotation_id if isinstance(annotation_id, int) and not isinstance(annotation_id, bool) else -1,
            position,
        )
        if best is None or order > best_order:
            best, best_order = annotation, order
    return best, best_order


def _timestamp(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        stamp = datetime.fromisoformat(value)
    except ValueError:
        return None
    return stamp if stamp.tzinfo is not None else stamp.replace(tzinfo=UTC)


def _task_image(
    task: Mapping[str, Any], by_key: Mapping[str, ViewImage], images: Sequence[ViewImage]
) -> ViewImage | None:
    data = task.get("data")
    if not isinstance(data, dict):
        return None
    key = data.get(TASK_LABEL_KEY)
    if isinstance(key, str):
        return by_key.get(key)
    url = data.get(IMAGE_NAME)
    return _image_by_url(url, images) if isinstance(url, str) else None


def _task_image_text(task: Mapping[str, Any]) -> str:
    data = task.get("data")
    if not isinstance(data, dict):
        return "(the task has no data)"
    key = data.get(TASK_LABEL_KEY)
    if isinstance(key, str):
        return f"(label {excerpt(key, 80)})"
    url = data.get(IMAGE_NAME)
    return excerpt(url, 80) if isinstance(url, str) else "(the task has no data.image)"


def _image_by_url(url: str, images: Sequence[ViewImage]) -> ViewImage | None:
    """The image whose path below ``images/`` ends the URL's path (the ``?d=`` path of a local-files URL), the
    longest such path winning; an uploaded file's ``<8 hex>-`` name prefix is also tried."""
    parts = urlsplit(url)
    paths = [unquote(parts.path)]
    paths += parse_qs(parts.query).get("d", [])
    candidates: list[tuple[str, ...]] = []
    for path in paths:
        segments = tuple(s for s in path.split("/") if s)
        if segments:
            candidates.append(segments)
            stripped = _UPLOAD_PREFIX.sub("", segments[-1])
            if stripped != segments[-1]:
                candidates.append((*segments[:-1], stripped))
    best: ViewImage | None = None
    best_length = 0
    for image in images:
        rel = image.image_rel.parts[1:] if image.image_rel.parts[:1] == (IMAGES_DIR,) else image.image_rel.parts
        if len(rel) > best_length and any(c[-len(rel) :] == rel for c in candidates if len(c) >= len(rel)):
            best, best_length = image, len(rel)
    return best


def _instances(result: Sequence[Any], class_of: Mapping[str, int]) -> tuple[tuple[int, np.ndarray], ...]:
    instances = []
    for number, region in enumerate(result, start=1):
        if not isinstance(region, dict):
            raise _Skip(f"region {number} is not an object")
        kind = region.get("type")
        value = region.get("value")
        if kind not in ("polygonlabels", "rectanglelabels"):
            if kind in UNSUPPORTED_SHAPES:
                raise _Skip(f"region {number} is a {kind!s} shape, not a labelled polygon or rectangle")
            continue
        if not isinstance(value, dict):
            raise _Skip(f"region {number} ({kind}) has no 'value' object")
        class_id = _class_id(value.get(kind), number, class_of)
        polygon = _polygon_points(value, number) if kind == "polygonlabels" else _rectangle_corners(value, number)
        instances.append((class_id, polygon))
    return tuple(instances)


def _class_id(labels: object, number: int, class_of: Mapping[str, int]) -> int:
    if not isinstance(labels, list) or len(labels) != 1:
        count = len(labels) if isinstance(labels, list) else 0
        raise _Skip(f"region {number} has {count} labels; exactly 1 needed")
    label = labels[0]
    if not isinstance(label, str) or label not in class_of:
        raise _Skip(f"region {number} label {excerpt(label)} is not a class of this dataset")
    return class_of[label]


def _polygon_points(value: Mapping[str, Any], number: int) -> np.ndarray:
    points = value.get("points")
    if not isinstance(points, list) or not all(_is_pair(point) for point in points):
        raise _Skip(f"region {number} has no 'points' list of [x, y] numbers")
    if len(points) < 3:
        raise _Skip(f"region {number} polygon has {len(points)} points; at least 3 needed")
    array = np.array(points, dtype=np.float64)
    if not np.all(np.isfinite(array)):
        raise _Skip(f"region {number} polygon has a point that is not a finite number")
    return polygon_norm_from_pct(array)


def _is_pair(point: object) -> bool:
    return isinstance(point, list | tuple) and len(point) == 2 and all(_is_number(v) for v in point)


def _is_number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _rectangle_corners(value: Mapping[str, Any], number: int) -> np.ndarray:
    fields = [value.get(key) for key in ("x", "y", "width", "height")]
    numbers = [float(v) for v in fields if _is_number(v)]
    if len(numbers) != 4 or not all(math.isfinite(v) for v in numbers):
        raise _Skip(f"region {number} rectangle needs numbers x, y, width and height")
    rotation = value.get("rotation", 0) or 0
    if not _is_number(rotation) or not math.isfinite(rotation) or abs(rotation) % 360.0 > 1e-9:
        raise _Skip(f"region {number} rectangle is rotated ({excerpt(rotation)} degrees); only unrotated boxes")
    x, y, width, height = numbers
    if width <= 0 or height <= 0:
        raise _Skip(f"region {number} rectangle is empty ({width:g} x {height:g} percent)")
    corners_pct = np.array([[x, y], [x + width, y], [x + width, y + height], [x, y + height]])
    return polygon_norm_from_pct(corners_pct)
