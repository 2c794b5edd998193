"""Box prompts from existing YOLO detection labels instead of a detector: a detection dataset becomes a
segmentation dataset, class ids kept.

Label files mirror the images (``<boxes_root>/<rel path>.txt``, suffix replaced) and hold ``class cx cy w h``
normalised lines; polygon lines are accepted too (their bounding box is the prompt). An image without a label file
is a negative sample (no boxes).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

import numpy as np

from autoannotate.dataset.yolo_seg import LineProblem, iter_label_lines
from autoannotate.errors import ConfigError, ImageError
from autoannotate.prompts.base import keep_classes, resolve_classes
from autoannotate.types import Detections

if TYPE_CHECKING:
    from autoannotate.config import RunSettings


@dataclass(frozen=True)
class MirroredLabelFormat:
    """One kind of prompt label files that mirror the images (``<root>/<rel path>.txt``).

    ``flag``: the option that names the root (``"--boxes-from"``); ``what``: how messages name the files (``"box
    labels"``); ``contents``: what the directory holds, for the message when it is none; ``read``: ``(path,
    resolution_wh) -> Detections`` of one file in that image's pixel frame (no file: none), ImageError for a line that
    does not parse; ``class_ids``: the class ids of the lines of one file's text that parse (for default names).
    """

    flag: str
    what: str
    contents: str
    read: Callable[[Path, tuple[int, int]], Detections]
    class_ids: Callable[[str], Iterator[int]]


class MirroredLabels:
    """A prompt source (``prompts.base.PromptSource``): each image's prompts from its label file of ``label_format``.

    Thread-safe (stateless). ``names``: the classes the labels may use (data.yaml's); a line whose class is not among
    them fails its image, as ultralytics' trainer would refuse the dataset. ``class_ids``: the ``--classes`` filter,
    already resolved (``resolve_classes``).
    """

    weights_path = None

    def __init__(
        self,
        label_format: MirroredLabelFormat,
        root: Path,
        names: dict[int, str],
        class_ids: tuple[int, ...] | None = None,
    ) -> None:
        if not root.is_dir():
            raise ConfigError(f"{label_format.flag} {str(root)!r} is not {label_format.contents}")
        self.label_format = label_format
        self.root = root
        self.names = names
        self.class_ids = class_ids

    def boxes(self, images_bgr: Sequence[np.ndarray], rel_paths: Sequence[PurePosixPath]) -> list[Detections]:
        """Prompts for each image from its label file, in that image's pixel frame (confidence 1)."""
        out = []
        for image, rel_path in zip(images_bgr, rel_paths, strict=True):
            height, width = image.shape[:2]
            path = self.root / rel_path.with_suffix(".txt")
            detections = self.label_format.read(path, (width, height))
            unknown = sorted(set(detections.class_id.tolist()) - set(self.names))
            if unknown:
                known = f"ids 0..{max(self.names)}" if self.names else "no classes"
                raise ImageError(
                    f"{self.label_format.what} {str(path)!r} use class id {unknown[0]}, which the class names do not"
                    f" have ({known}); fix the label or pass --names with every class"
                )
            out.append(keep_classes(detections, self.class_ids))
        return out


def names_from_labels(root: Path, label_format: MirroredLabelFormat) -> dict[int, str]:
    """When no data.yaml is given: ``{id: "class<id>"}`` for ids 0..max of the lines under ``root`` that parse."""
    highest = -1
    for path in root.rglob("*.txt"):
        try:
            text = path.read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError):
            continue
        highest = max([highest, *label_format.class_ids(text)])
    return {i: f"class{i}" for i in range(highest + 1)}


def build_mirrored_labels(settings: RunSettings, root_value: str, label_format: MirroredLabelFormat) -> MirroredLabels:
    """A mirrored-labels source rooted at ``root_value``: its names from ``--names``, else a data.yaml beside the
    labels, else ``class<id>`` for every id the labels use; ``--classes`` resolved against them."""
    from autoannotate.review.labels import find_data_yaml, read_names

    p = settings.prompts
    root = Path(root_value).expanduser()
    names_file = Path(p.names).expanduser() if p.names else find_data_yaml(root)
    names = read_names(names_file) if names_file is not None else names_from_labels(root, label_format)
    source = MirroredLabels(label_format, root, names)  # refuses a missing directory first
    where = "--names" if names_file is not None else f"the {label_format.what}"
    source.class_ids = resolve_classes(p.classes, names, where)
    return source


def read_box_labels(path: Path, resolution_wh: tuple[int, int]) -> Detections:
    """The boxes of one YOLO label file in pixels of a ``resolution_wh`` image, clipped to it (confidence 1); none
    without a file.

    Box lines ``class cx cy w h`` and polygon lines (their bounding box) are read by
    ``dataset.yolo_seg.iter_label_lines``; the first line that does not parse raises ImageError naming it.
    """
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        return Detections.empty()
    except (OSError, UnicodeDecodeError) as err:
        raise ImageError(f"cannot read box labels {str(path)!r}: {err}") from None
    width, height = resolution_wh
    size = np.array([width, height, width, height], dtype=np.float64)
    xyxy, cls = [], []
    for row in iter_label_lines(text, boxes=True):
        if isinstance(row, LineProblem):
            raise ImageError(f"{str(path)!r} line {row.line}: {row.message}")
        box_xyxyn = np.concatenate([row.polygon_norm.min(axis=0), row.polygon_norm.max(axis=0)])
        xyxy.append(np.clip(box_xyxyn * size, 0, size))
        cls.append(row.class_id)
    n = len(xyxy)
    return Detections(np.array(xyxy, np.float32).reshape(n, 4), np.array(cls, np.int64), np.ones(n, np.float32))


def _box_label_class_ids(text: str) -> Iterator[int]:
    for row in iter_label_lines(text, boxes=True):
        if not isinstance(row, LineProblem):
            yield row.class_id


#: ``--boxes-from``: YOLO detection labels (``class cx cy w h``; polygon lines give their bounding box).
BOX_LABELS = MirroredLabelFormat(
    flag="--boxes-from",
    what="box labels",
    contents="a directory of YOLO detection labels",
    read=read_box_labels,
    class_ids=_box_label_class_ids,
)


class LabelBoxes(MirroredLabels):
    """The ``--boxes-from`` source over ``boxes_root``: ``MirroredLabels`` of ``BOX_LABELS``."""

    def __init__(self, boxes_root: Path, names: dict[int, str], class_ids: tuple[int, ...] | None = None) -> None:
        super().__init__(BOX_LABELS, boxes_root, names, class_ids)


def names_from_boxes(boxes_root: Path) -> dict[int, str]:
    """When no data.yaml is given: ``{id: "class<id>"}`` for ids 0..max of the box label lines that parse."""
    return names_from_labels(boxes_root, BOX_LABELS)


def build_label_boxes(settings: RunSettings) -> MirroredLabels:
    """The ``--boxes-from`` source (``build_mirrored_labels``)."""
    assert settings.prompts.boxes_from is not None  # PROMPT_SOURCES picks this source only then
    return build_mirrored_labels(settings, settings.prompts.boxes_from, BOX_LABELS)
