"""CVAT round trip: a zip that CVAT imports as "Ultralytics YOLO Segmentation 1.0" (the default) or as "COCO 1.0",
and the reader of CVAT's "Ultralytics YOLO Segmentation 1.0" export of the task after people corrected the polygons.

Why YOLO is the default and not "COCO 1.0" (CVAT's other polygon format):

* our label lines travel unchanged: the zip holds each label line as the dataset has it, CVAT scales the normalised
  values by the frame sizes it knows, and its exporter writes ``"%.6f" % (x_px / width)``, which gives back the same
  6 decimals for every vertex nobody moved. COCO would carry pixel floats that we would have to compute from image
  sizes read here and that CVAT never sees as we wrote them;
* a mask drawn with CVAT's brush comes back as polygons (CVAT converts masks to polygons before this export), where
  COCO 1.0 would return it as an RLE mask to be vectorised by a policy of ours;
* holes joined by zero-width cuts are one polygon in either format, so neither wins there.

What the YOLO format loses, and how it is handled: CVAT's exporter writes polygons only (a rectangle drawn in CVAT is
dropped, so ``labels_json`` makes the labels polygon-only), and it writes no label file for a frame without shapes;
such a frame is still listed in the export's ``train.txt``, so ``read_zip`` reads a listed image without a label file
as a reviewed negative.

The CVAT side of the YOLO zip, as read in cvat-ai/cvat and its Datumaro fork cvat-ai/datumaro:

* ``cvat/apps/dataset_manager/formats/yolo.py``: "Ultralytics YOLO Segmentation 1.0" imports and exports the fork's
  ``yolo_ultralytics_segmentation`` format (``yolov8_segmentation`` before the fork renamed its YOLOv8 formats). On
  import it extracts the zip, requires a ``*.yaml`` config (``data.yaml``, without ``kpt_shape``), and takes each
  frame's size from the task, so the zip needs no images.
* the fork's ``datumaro/plugins/yolo_format/`` (``extractor.py``, ``importer.py``, ``converter.py``; later
  ``plugins/data_formats/yolo/``): the items are the images that data.yaml's subset entry lists (``train:
  train.txt``, one ``images/<subset>/<name>.<ext>`` per line, a ``data/`` prefix allowed), an item's id is that path
  less ``images/<subset>/`` and its suffix (``a/b`` for ``images/train/a/b.jpg``), and its labels are
  ``labels/<subset>/<id>.txt`` (no file: no shapes). A line is ``class x1 y1 ... xK yK`` with a class id that is a key
  of ``names`` (a dict) or an index into it (a list). The exporter writes ``path: .``, ``names: {index: name}`` over
  all the task's labels, ``train: train.txt``, and a label file only for frames with shapes.
* ``cvat/apps/dataset_manager/bindings.py`` (``match_dm_item``, ``find_dataset_root``, ``CommonData.match_frame``):
  an item matches the frame whose name, less its extension, equals the item id, or equals it below one common root
  prefix (found by matching the item with the longest path against the end of a frame name: ``images/train`` for a
  task made from the ``--with-images`` zip, whose frame names are the paths inside it). An item that matches no
  frame fails the whole upload, and so does a shape whose label name the task lacks ("Label '...' is not registered
  for this task"): labels match by NAME, never by id.

So the task must hold every image of the zip, under names that keep the subdirectories of ``OUT/images`` (make the
task from the ``--with-images`` zip, or from a zip of ``OUT/images``: frame names are the paths inside an archive,
where files picked one by one in a browser lose their directories) and the labels of ``labels_json`` (Create task >
Constructor > Raw, paste). Then Actions > Upload annotations, format "Ultralytics YOLO Segmentation 1.0". Back: Actions
> Export task dataset, same format, images not needed; ``autoannotate import cvat EXPORT.zip OUT``.

"COCO 1.0" (``build_coco_zip``) is offered to those who prefer that format in CVAT, and it is the variant that PyPI's
``datumaro`` (openvinotoolkit's, which has no YOLO segmentation reader) reads back in CI. It goes one way only: the
import reads CVAT's "Ultralytics YOLO Segmentation 1.0" export whichever zip went in (there is no COCO reader here),
so export the task in that format to bring the corrections back. As read in cvat-ai/cvat and cvat-ai/datumaro:

* ``cvat/apps/dataset_manager/formats/coco.py``: "COCO 1.0" extracts the zip and imports it as ``coco_instances``.
  CVAT's own export of the format writes ``annotations/instances_default.json`` and, with images,
  ``images/default/<file_name>`` (``merge_images=False``: one folder per subset).
* the fork's COCO reader (``plugins/coco_format/extractor.py``, later ``plugins/data_formats/coco/base.py``): the
  subset is the JSON's name less ``instances_`` (``default``); an item's id is its image's ``file_name`` less the
  extension, directories kept (``sub/b`` for ``sub/b.png``); its image is ``images/<subset>/<file_name>`` when
  ``images/<subset>`` exists, else ``images/<file_name>``, and no image is required; each polygon of a
  ``segmentation`` list is one polygon, in pixels as written (``bbox`` is read only for an annotation without
  one); categories become labels, matched to the task's by NAME as for YOLO.
* ``bindings.py`` matches items to frames as for YOLO above (the id with its image's extension, then without, then
  below the common root prefix), so ``file_name`` is the path below ``OUT/images``, POSIX.

Unlike the YOLO zip, CVAT takes the COCO points as they are, without scaling them by its frame sizes: they are
computed here from the image sizes ``read_image_size_wh`` reads (EXIF orientation applied, as the labels are
normalised), so the task must be made from these same images. The JSON is the project's own COCO
(``autoannotate.writers.coco``: ``category_id`` = class id + 1, ``x_px = x_norm * width`` on the continuous pixel
plane, a "merge" polygon with its zero-width cuts one polygon); a detection line becomes its box's polygon, as in
the YOLO zip.
"""

from __future__ import annotations

import io
import json
import re
import stat
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import yaml

from autoannotate.dataset.yolo_seg import LabelLine, LineProblem, format_unit_values, iter_label_lines
from autoannotate.errors import ImageError, InputError, excerpt
from autoannotate.exchange import ImportedLabel, ImportedLabels
from autoannotate.review.labels import read_image_size_wh
from autoannotate.review.run_view import IMAGES_DIR, LABELS_DIR, RunView, ViewImage
from autoannotate.writers.atomic import write_bytes_atomic
from autoannotate.writers.coco import CocoImage, CocoInstance, build_coco, format_coco

__all__ = [
    "COCO_FORMAT_NAME",
    "FORMAT_NAME",
    "MAX_READ_BYTES",
    "build_coco_zip",
    "build_zip",
    "labels_json",
    "read_zip",
    "write_zip",
]

FORMAT_NAME = "Ultralytics YOLO Segmentation 1.0"
SUBSET = "train"  # CVAT's name for a task's default subset in this format
DATA_YAML = "data.yaml"
SUBSET_LIST = f"{SUBSET}.txt"

COCO_FORMAT_NAME = "COCO 1.0"
COCO_SUBSET = "default"  # the subset CVAT's COCO reader takes from the JSON's name, and its exporter's image folder
COCO_ANNOTATIONS = f"annotations/instances_{COCO_SUBSET}.json"
COCO_IMAGES = f"{IMAGES_DIR}/{COCO_SUBSET}"

# A zip's bytes depend on its members' timestamps and attributes: fixed ones make an export reproducible.
ZIP_DATE_TIME = (1980, 1, 1, 0, 0, 0)
ZIP_FILE_MODE = (stat.S_IFREG | 0o644) << 16
ZIP_DIR_MODE = ((stat.S_IFDIR | 0o755) << 16) | 0x10  # 0x10: the MS-DOS directory flag, for Windows tools
ZIP_UNIX = 3  # "made by" system: a fixed value, not the exporting machine's

MAX_READ_BYTES = 1 << 30  # all label files, lists and data.yaml of one export, uncompressed
MAX_YAML_BYTES = 1 << 20
MAX_MEMBERS = 1_000_000
# data.yaml keys that never name a subset (Ultralytics' and CVAT's own)
CONFIG_KEYS = frozenset({"path", "names", "nc", "kpt_shape", "flip_idx", "download", "channels", "backup", "classes"})
LIST_PREFIXES = ("./", "data/")  # CVAT's exporter may prefix list entries with "data/"; Ultralytics' lists use "./"


def labels_json(names: Mapping[int, str]) -> str:
    """The task's labels for CVAT's label constructor (Create task > Constructor > Raw): a JSON list, in class-id
    order, of ``{"name", "type": "polygon", "attributes": []}``.

    Polygon-only labels, because CVAT's "Ultralytics YOLO Segmentation" export drops rectangles and other shapes:
    a box drawn for a polygon label would be lost on the way back. Raises InputError when names repeat or are empty
    (CVAT matches labels by name).
    """
    _ids_by_name(names)
    labels = [{"name": names[class_id], "type": "polygon", "attributes": []} for class_id in sorted(names)]
    return json.dumps(labels, indent=2, ensure_ascii=False)


def build_zip(view: RunView, *, with_images: bool = False) -> bytes:
    """The zip for CVAT's "Upload annotations" (format "Ultralytics YOLO Segmentation 1.0") of ``view``'s images.

    Members, sorted, with fixed timestamps (the same dataset gives the same bytes): ``data.yaml`` (``names``: our
    class ids and names; ``train: train.txt``), ``train.txt`` (``images/train/<image path below OUT/images>``, one
    per image), ``labels/train/<path below OUT/labels>`` per label (an empty one for a negative), and with
    ``with_images`` the images at ``images/train/...``. Each label line is the dataset's line, whitespace-normalised
    (its numbers as written); a detection line ``class cx cy w h`` becomes its box's 4-corner polygon, since CVAT's
    reader takes polygons only.

    Reads the label files (and images) of the output dir; writes nothing. Raises InputError for a label line that
    does not parse or whose class has no name (CVAT would refuse the whole upload), a label that cannot be read, an
    image path that a list file cannot hold, or repeated class names.
    """
    _ids_by_name(view.names)
    texts: dict[str, bytes] = {DATA_YAML: _data_yaml_text(view.names).encode("utf-8")}
    images: dict[str, ViewImage] = {}
    for image in view.images:
        below = _below(image.image_rel, IMAGES_DIR).as_posix()
        if any(ch in below for ch in "\r\n") or below != below.strip():
            raise InputError(
                f"image {image.image_rel.as_posix()!r}: its name starts or ends with a space or holds a line break,"
                " which CVAT's image list cannot hold; rename it and run again"
            )
        images[f"{IMAGES_DIR}/{SUBSET}/{below}"] = image
        label_member = f"{LABELS_DIR}/{SUBSET}/{_below(PurePosixPath(image.label_key), LABELS_DIR).as_posix()}"
        lines = [" ".join(fields) for _, fields in _checked_lines(view, image)]
        texts[label_member] = "".join(f"{line}\n" for line in lines).encode("utf-8")
    texts[SUBSET_LIST] = "".join(f"{entry}\n" for entry in sorted(images)).encode("utf-8")
    return _zip_bytes(texts, images if with_images else {})


def build_coco_zip(view: RunView, *, with_images: bool = False) -> bytes:
    """The zip for CVAT's "Upload annotations" in format "COCO 1.0" of ``view``'s images (see the module docstring).

    Members, sorted, with fixed timestamps (the same dataset gives the same bytes): ``annotations/
    instances_default.json``, the COCO instances JSON of ``autoannotate.writers.coco`` (one image per labelled
    image, ``file_name`` its path below ``OUT/images``, POSIX, ``width`` and ``height`` its decoded size; one
    annotation per label line, its polygon in pixels ``x_norm * width``, ``y_norm * height``; ``category_id`` =
    class id + 1 and every class of ``view.names`` a category); ``images/``, a folder, since PyPI Datumaro's COCO
    reader refuses a dataset without one (CVAT's needs none); and with ``with_images`` the images at
    ``images/default/<file_name>``, where CVAT's own COCO export puts them (``images/<file_name>`` would be read too,
    unless a folder of ``OUT/images`` were named ``default``). A detection line becomes its box's polygon; an
    annotation's ``area`` is the mask's pixel count that the run recorded for the line when it is still the line
    the run wrote, else the pixels of its polygon.

    Reads the label files and the images (their sizes, and their bytes with ``with_images``); writes nothing.
    Raises InputError for what ``build_zip`` refuses, a coordinate outside [0, 1] (COCO's pixels would leave the
    image), or an image whose size cannot be read.
    """
    _ids_by_name(view.names)
    records: list[CocoImage] = []
    images: dict[str, ViewImage] = {}
    for image in view.images:
        file_name = _below(image.image_rel, IMAGES_DIR).as_posix()
        records.append(_coco_image(view, image, file_name))
        images[f"{COCO_IMAGES}/{file_name}"] = image
    texts = {COCO_ANNOTATIONS: format_coco(build_coco(records, view.names)).encode("utf-8")}
    return _zip_bytes(texts, images if with_images else {}, folders=(f"{IMAGES_DIR}/",))


def write_zip(view: RunView, path: Path, *, with_images: bool = False) -> None:
    """Write ``build_zip(view, with_images=...)`` to ``path`` atomically (OutputError when it cannot)."""
    write_bytes_atomic(path, build_zip(view, with_images=with_images))


def _ids_by_name(names: Mapping[int, str]) -> dict[str, int]:
    """name -> class id; InputError when a name is empty or names two classes (CVAT keys labels by name)."""
    ids: dict[str, int] = {}
    for class_id in sorted(names):
        name = names[class_id]
        if not name.strip():
            raise InputError(f"class {class_id} has an empty name; CVAT needs a name per class: set it in data.yaml")
        if name in ids:
            raise InputError(
                f"classes {ids[name]} and {class_id} are both named {name!r}; CVAT matches labels by name: rename"
                " one in data.yaml"
            )
        ids[name] = class_id
    return ids


def _data_yaml_text(names: Mapping[int, str]) -> str:
    """data.yaml for CVAT: ``names`` keyed by our class ids (so label lines keep their ids) and ``train``.

    No ``path``: Ultralytics resolves ``path: .`` against the working directory, and CVAT needs none.
    """
    header = f"# autoannotate labels for CVAT: Actions > Upload annotations, format {FORMAT_NAME!r}\n"
    body = yaml.safe_dump(
        {"names": {int(k): str(names[k]) for k in sorted(names)}, "train": SUBSET_LIST},
        sort_keys=False,
        allow_unicode=True,
        default_flow_style=False,
    )
    return header + body


def _below(rel: PurePosixPath, top: str) -> PurePosixPath:
    """``rel`` without its leading ``top`` dir (``images/a/b.jpg`` -> ``a/b.jpg``)."""
    return rel.relative_to(top) if rel.parts[:1] == (top,) else rel


def _checked_lines(view: RunView, image: ViewImage) -> list[tuple[LabelLine, list[str]]]:
    """The label's lines as CVAT gets them, each with its fields: the line's own, whitespace-split, or for a
    detection line ``class cx cy w h`` its box's 4-corner polygon (CVAT's readers take polygons only).

    Raises InputError for a label that cannot be read, a line that does not parse or whose class has no name.
    """
    path = view.output_dir / image.label_key
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except OSError as err:
        raise InputError(f"cannot read {image.label_key!r}: {err.strerror or err}") from None
    except UnicodeDecodeError:
        raise InputError(f"{image.label_key!r} is not UTF-8 text; fix or delete it and export again") from None
    text_lines = text.splitlines()
    lines = []
    for item in iter_label_lines(text, boxes=True):
        if isinstance(item, LineProblem):
            raise InputError(
                f"{image.label_key} line {item.line}: {item.message}; CVAT would refuse the whole upload: fix or"
                f" delete the line (`autoannotate check {view.output_dir}/labels` lists every such line) and export"
                " again"
            )
        if item.class_id not in view.names:
            raise InputError(
                f"{image.label_key} line {item.line}: class {item.class_id} has no name in data.yaml; add it there"
                " (CVAT matches labels by name) and export again"
            )
        fields = text_lines[item.line - 1].split()
        if len(fields) == 5:
            fields = [str(item.class_id), *format_unit_values(item.polygon_norm.reshape(-1)).split()]
        lines.append((item, fields))
    return lines


def _coco_image(view: RunView, image: ViewImage, file_name: str) -> CocoImage:
    """The COCO record of one image: its decoded size and one instance per label line (see ``build_coco_zip``)."""
    try:
        size_wh = read_image_size_wh(image.image_path)
    except ImageError as err:
        raise InputError(
            f"image {image.image_rel.as_posix()!r}: {err}; COCO needs every image's size: fix or remove it"
        ) from None
    # the run's figures of a line it wrote and nobody changed; a "split" row's area is its first line's
    figures = {instance.line: instance.figures for instance in image.instances if instance.figures is not None}
    instances = []
    for line, _ in _checked_lines(view, image):
        coords = line.polygon_norm
        if ((coords < 0.0) | (coords > 1.0)).any():
            raise InputError(
                f"{image.label_key} line {line.line}: a coordinate is outside [0, 1], which a COCO polygon in the"
                f" image's pixels cannot hold; fix the line (`autoannotate check {view.output_dir}/labels` lists"
                " it) or export the YOLO zip"
            )
        row = figures.get(line.line) or {}
        area = row.get("mask_area") if row.get("line") == line.line else None
        mask_area_px = area if isinstance(area, int) and not isinstance(area, bool) and area >= 0 else None
        instances.append(CocoInstance(line.class_id, coords, mask_area_px))
    return CocoImage(file_name, size_wh, tuple(instances))


def _zip_bytes(texts: Mapping[str, bytes], images: Mapping[str, ViewImage], folders: tuple[str, ...] = ()) -> bytes:
    """A zip of ``texts`` (deflated), ``images`` (their files, stored) and empty ``folders`` (names ending in "/"),
    members sorted by name, timestamps and attributes fixed."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name in sorted([*texts, *images, *folders]):
            info = zipfile.ZipInfo(name, date_time=ZIP_DATE_TIME)
            info.create_system = ZIP_UNIX
            if name in folders:
                info.external_attr = ZIP_DIR_MODE
                archive.writestr(info, b"")  # not mkdir(info): Python 3.11's leaves the entry without a CRC
            elif name in texts:
                info.external_attr = ZIP_FILE_MODE
                info.compress_type = zipfile.ZIP_DEFLATED
                archive.writestr(info, texts[name])
            else:
                # images are compressed already: storing them costs nothing and saves the time; read one at a
                # time, so that only the zip itself is held in memory
                info.external_attr = ZIP_FILE_MODE
                info.compress_type = zipfile.ZIP_STORED
                archive.writestr(info, _read_image_bytes(images[name]))
    return buffer.getvalue()


def _read_image_bytes(image: ViewImage) -> bytes:
    try:
        return image.image_path.read_bytes()
    except OSError as err:
        raise InputError(f"cannot read image {str(image.image_path)!r}: {err.strerror or err}") from None


# ---------------------------------------------------------------------------------------------------------------
# reading CVAT's export


@dataclass(frozen=True)
class _Frame:
    """One item of the export: ``rel_stem`` its id (``a/b``), ``label_member`` its label file in the zip (None:
    listed without one, which CVAT's exporter does for a frame without shapes), ``origin`` what to name in warnings."""

    rel_stem: PurePosixPath
    label_member: str | None
    origin: str


class _Budget:
    """Bytes left to read from the zip, across all members: an export that claims or inflates to more is refused."""

    def __init__(self, limit: int, source: str) -> None:
        self.left = limit
        self.limit = limit
        self.source = source

    def read(self, archive: zipfile.ZipFile, info: zipfile.ZipInfo, cap: int | None = None) -> bytes:
        """The member's bytes; InputError past ``cap`` (this member) or past what is left (all members)."""
        limit = self.left if cap is None else min(self.left, cap)
        if info.file_size > limit:
            raise self._too_big(info, cap)
        try:
            with archive.open(info) as handle:
                # never trust the declared size: read one byte past the limit to see whether it lies
                data = handle.read(limit + 1)
        except (zipfile.BadZipFile, zipfile.LargeZipFile, RuntimeError, NotImplementedError, OSError, EOFError) as err:
            reason = " ".join(str(err).split())[:120] or type(err).__name__
            message = f"{self.source!r}: cannot read {info.filename!r} ({reason}); export again from CVAT"
            raise InputError(message) from None
        if len(data) > limit:
            raise self._too_big(info, cap)
        self.left -= len(data)
        return data

    def _too_big(self, info: zipfile.ZipInfo, cap: int | None) -> InputError:
        if cap is not None and cap <= self.left:
            where = f"{info.filename!r} is larger than {cap} bytes"
        else:
            where = f"{info.filename!r} takes the text read from the zip past {self.limit} bytes"
        return InputError(
            f"{self.source!r}: {where}; refusing it (CVAT's label exports are far smaller: export one task at a time)"
        )


def read_zip(path: Path, view: RunView, *, max_read_bytes: int = MAX_READ_BYTES) -> ImportedLabels:
    """Read CVAT's "Ultralytics YOLO Segmentation 1.0" export (``path``) as corrected labels of ``view``.

    Every label file of the zip is one reviewed label (an empty one: a negative), and so is every image the export
    lists (``train.txt`` or ``images/<subset>/``) without a label file, since CVAT writes none for a frame without
    shapes. Other images of ``view`` are not touched. Classes map by NAME through the zip's data.yaml (any order,
    extra names allowed). A label file matches the image whose path below ``images/``, less its suffix, equals the
    file's path below ``labels/<subset>/`` less ``.txt``, or a trailing part of it (a task made from an archive
    names frames ``<dirs>/a/b.jpg``), or else the image with the same file stem when only one has it. Polygons are
    clipped to [0, 1] (CVAT lets shapes leave the image); a detection line becomes its box polygon.

    An image is skipped, with one warning, when its file is unmatched, matched twice, not UTF-8, has a line that does
    not parse or a class the zip does not name, or a class name this dataset lacks: an image is never half-applied.
    Raises InputError (one line, nothing read further) for what is not such an export: not a zip, no data.yaml or
    unusable ``names``, a member path outside the zip's root (``../x``, ``/x``), more than ``max_read_bytes`` of
    text to read. Reads only; writes nothing.
    """
    source = str(path)
    ids_by_name = _ids_by_name(view.names)
    try:
        archive = zipfile.ZipFile(path)
    except FileNotFoundError:
        raise InputError(f"{source!r} does not exist; pass the zip CVAT exported") from None
    except IsADirectoryError:
        raise InputError(f"{source!r} is a directory; pass the zip CVAT exported, not its contents") from None
    except OSError as err:
        raise InputError(f"cannot read {source!r}: {err.strerror or err}") from None
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, EOFError):
        raise InputError(
            f"{source!r} is not a zip file; pass what CVAT's Export task dataset gives (format {FORMAT_NAME!r})"
        ) from None
    with archive:
        infos = _checked_members(archive, source)
        budget = _Budget(max_read_bytes, source)
        root, yaml_info = _find_data_yaml(infos, source)
        zip_names, config = _read_config(budget.read(archive, yaml_info, MAX_YAML_BYTES), source)
        frames, warnings = _frames(archive, infos, root, config, budget)
        return _read_frames(archive, infos, frames, zip_names, ids_by_name, view, budget, warnings)


def _checked_members(archive: zipfile.ZipFile, source: str) -> dict[str, zipfile.ZipInfo]:
    """The zip's files by name; InputError for a name that would leave the zip's root when extracted."""
    infos = archive.infolist()
    if len(infos) > MAX_MEMBERS:
        raise InputError(f"{source!r} has {len(infos)} members, more than {MAX_MEMBERS}: not a label export of CVAT")
    files: dict[str, zipfile.ZipInfo] = {}
    for info in infos:
        name = info.filename
        # backslashes: separators to a Windows tool that extracts the zip, so they count as such here
        parts = name.replace("\\", "/").split("/")
        if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name) or ".." in parts or "\x00" in name:
            raise InputError(
                f"{source!r} holds {excerpt(name)}, a path outside the zip's root; refusing it (not an export of CVAT)"
            )
        if not info.is_dir():
            files[name] = info
    return files


def _find_data_yaml(infos: Mapping[str, zipfile.ZipInfo], source: str) -> tuple[str, zipfile.ZipInfo]:
    """The root inside the zip (``""``, or ``dir/`` for a zip of the export's folder) and its data.yaml."""
    if DATA_YAML in infos:
        return "", infos[DATA_YAML]
    nested = [name for name in infos if name.count("/") == 1 and name.endswith(f"/{DATA_YAML}")]
    if len(nested) == 1:
        return nested[0][: -len(DATA_YAML)], infos[nested[0]]
    raise InputError(
        f"{source!r} has no data.yaml; it is not an Ultralytics YOLO export: in CVAT use Actions > Export task dataset,"
        f" format {FORMAT_NAME!r}"
    )


def _read_config(data: bytes, source: str) -> tuple[dict[int, str], dict]:
    """The zip's data.yaml: ``{class id in its label files: name}`` and the whole mapping (for its subset entries).
    InputError when it is not YAML or has no usable ``names``."""
    try:
        config = yaml.safe_load(data.decode("utf-8-sig"))
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        reason = " ".join(str(err).split())[:120]
        raise InputError(f"{source!r}: data.yaml is not valid YAML ({reason}); export again from CVAT") from None
    names = config.get("names") if isinstance(config, dict) else None
    if isinstance(names, list):
        names = dict(enumerate(names))
    if not isinstance(config, dict) or not isinstance(names, dict) or not names:
        raise InputError(f"{source!r}: data.yaml has no 'names'; export again from CVAT in format {FORMAT_NAME!r}")
    out: dict[int, str] = {}
    for key, value in names.items():
        if isinstance(key, bool) or not isinstance(key, int) or key < 0:
            raise InputError(f"{source!r}: data.yaml names a class {excerpt(key)}; class ids are integers >= 0")
        # only scalars: a nested value (an alias bomb, say) would become a string of any size
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            raise InputError(f"{source!r}: data.yaml gives class {key} the name {excerpt(value)}, not a string")
        out[key] = str(value)
    return out, config


def _frames(
    archive: zipfile.ZipFile,
    infos: Mapping[str, zipfile.ZipInfo],
    root: str,
    config: Mapping,
    budget: _Budget,
) -> tuple[list[_Frame], list[str]]:
    """The export's items: its label files, and the images it lists (subset list files, ``images/<subset>/``)."""
    warnings: list[str] = []
    labels: dict[tuple[str, PurePosixPath], str] = {}
    listed: dict[tuple[str, PurePosixPath], str] = {}
    for name in sorted(infos):
        if not name.startswith(root):
            continue
        rel = PurePosixPath(name[len(root) :])
        if len(rel.parts) >= 3 and rel.parts[0] == LABELS_DIR and rel.suffix == ".txt":
            labels[(rel.parts[1], PurePosixPath(*rel.parts[2:]).with_suffix(""))] = name
        elif len(rel.parts) >= 3 and rel.parts[0] == IMAGES_DIR and rel.suffix:
            listed.setdefault((rel.parts[1], PurePosixPath(*rel.parts[2:]).with_suffix("")), name)
        elif rel.parts[0] == LABELS_DIR and rel.suffix == ".txt":
            warnings.append(f"{name}: not in a subset dir (labels/<subset>/...), as CVAT exports it; ignored")
    for list_name in _subset_lists(config):
        info = infos.get(root + list_name)
        if info is None:
            continue
        try:
            text = budget.read(archive, info).decode("utf-8-sig")
        except UnicodeDecodeError:
            warnings.append(f"{list_name}: not UTF-8 text; its images without a label file are not imported")
            continue
        odd = 0
        for line in text.splitlines():
            entry = _image_entry(line)
            if entry is None:
                odd += line.strip() != ""
            else:
                listed.setdefault(entry, f"{list_name}: {line.strip()}")
        if odd:
            warnings.append(f"{list_name}: {odd} line(s) are not images/<subset>/... paths; ignored")
    frames = [_Frame(rel, member, member) for (_, rel), member in labels.items()]
    frames += [_Frame(key[1], None, origin) for key, origin in listed.items() if key not in labels]
    return frames, warnings


def _subset_lists(config: Mapping) -> list[str]:
    """data.yaml's subset entries that name list files (``train: train.txt``), as paths inside the zip."""
    lists = []
    for key, value in config.items():
        if key in CONFIG_KEYS or not isinstance(value, str) or not value.endswith(".txt"):
            continue
        lists.append(_strip_list_prefix(value.strip()))
    return sorted(set(lists))


def _strip_list_prefix(entry: str) -> str:
    changed = True
    while changed:
        changed = False
        for prefix in LIST_PREFIXES:
            if entry.startswith(prefix):
                entry, changed = entry[len(prefix) :], True
    return entry


def _image_entry(line: str) -> tuple[str, PurePosixPath] | None:
    """``(subset, a/b)`` for a list line ``[data/|./]images/<subset>/a/b.jpg``; None for anything else."""
    entry = _strip_list_prefix(line.strip().replace("\\", "/"))
    rel = PurePosixPath(entry)
    if len(rel.parts) < 3 or rel.parts[0] != IMAGES_DIR or ".." in rel.parts or not rel.suffix:
        return None
    return rel.parts[1], PurePosixPath(*rel.parts[2:]).with_suffix("")


class _Index:
    """Our images by the key a CVAT item carries: the path below ``images/`` less its suffix."""

    def __init__(self, view: RunView) -> None:
        self.by_key: dict[PurePosixPath, str] = {}
        by_stem: dict[str, set[str]] = {}
        for image in view.images:
            key = _below(image.image_rel, IMAGES_DIR).with_suffix("")
            # a.jpg and a.png share labels/a.txt (Ultralytics' pairing): one key, one label
            self.by_key[key] = image.label_key
            by_stem.setdefault(key.name, set()).add(image.label_key)
        self.by_unique_stem = {stem: next(iter(keys)) for stem, keys in by_stem.items() if len(keys) == 1}

    def match(self, rel_stem: PurePosixPath) -> str | None:
        parts = rel_stem.parts
        for start in range(len(parts)):  # the whole path, then without leading dirs (a task's root prefix)
            key = self.by_key.get(PurePosixPath(*parts[start:]))
            if key is not None:
                return key
        return self.by_unique_stem.get(rel_stem.name)


def _read_frames(
    archive: zipfile.ZipFile,
    infos: Mapping[str, zipfile.ZipInfo],
    frames: list[_Frame],
    zip_names: Mapping[int, str],
    ids_by_name: Mapping[str, int],
    view: RunView,
    budget: _Budget,
    warnings: list[str],
) -> ImportedLabels:
    index = _Index(view)
    by_label: dict[str, list[_Frame]] = {}
    for frame in frames:
        key = index.match(frame.rel_stem)
        if key is None:
            warnings.append(f"{frame.origin}: no image of this dataset is named {frame.rel_stem.as_posix()}; skipped")
            continue
        by_label.setdefault(key, []).append(frame)
    labels: list[ImportedLabel] = []
    for key in sorted(by_label):
        matched = by_label[key]
        if len(matched) > 1:
            origins = ", ".join(f.origin for f in matched)
            warnings.append(f"{key}: {origins} all match this image; skipped")
            continue
        frame = matched[0]
        if frame.label_member is None:
            labels.append(ImportedLabel(key, ()))
            continue
        data = budget.read(archive, infos[frame.label_member])
        instances = _instances(data, frame.label_member, zip_names, ids_by_name, warnings)
        if instances is not None:
            labels.append(ImportedLabel(key, instances))
    return ImportedLabels(tuple(labels), tuple(warnings))


def _instances(
    data: bytes,
    member: str,
    zip_names: Mapping[int, str],
    ids_by_name: Mapping[str, int],
    warnings: list[str],
) -> tuple[tuple[int, np.ndarray], ...] | None:
    """The ``(our class id, polygon_norm)`` of one label file, or None (and one warning) to skip its image."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        warnings.append(f"{member}: not UTF-8 text; image skipped")
        return None
    instances = []
    for item in iter_label_lines(text, boxes=True):
        problem = _class_problem(item, zip_names, ids_by_name)
        if problem is not None:
            warnings.append(f"{member}: {problem}; image skipped")
            return None
        assert isinstance(item, LabelLine)  # _class_problem returned None
        class_id = ids_by_name[zip_names[item.class_id]]
        instances.append((class_id, np.clip(item.polygon_norm, 0.0, 1.0)))
    return tuple(instances)


def _class_problem(
    item: LabelLine | LineProblem, zip_names: Mapping[int, str], ids_by_name: Mapping[str, int]
) -> str | None:
    if isinstance(item, LineProblem):
        return f"line {item.line}: {item.message}"
    name = zip_names.get(item.class_id)
    if name is None:
        return f"line {item.line}: class {item.class_id} is not in the zip's data.yaml names"
    if name not in ids_by_name:
        return (
            f"line {item.line}: class {name!r} is not a class of this dataset (add it to data.yaml, or relabel those"
            " shapes in CVAT)"
        )
    return None
