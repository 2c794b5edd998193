"""Box prompts from existing YOLO detection labels instead of a detector: a detection dataset becomes a
segmentation dataset, class ids kept.

Label files mirror the images (``<boxes_root>/<rel path>.txt``, suffix replaced) and hold ``class cx cy w h``
normalised lines; polygon lines are accepted too (their bounding box is the prompt). An image without a label file
is a negative sample (no boxes).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

import numpy as np

from autoannotate.dataset.yolo_seg import LineProblem, iter_label_lines
from autoannotate.errors import ConfigError, ImageError
from autoannotate.prompts.base import keep_classes, resolve_classes
from autoannotate.types import Detections

if TYPE_CHECKING:
    from autoannotate.config import RunSettings


class LabelBoxes:
    """A prompt source (``prompts.base.PromptSource``): each image's boxes from its detection label file.

    Thread-safe (stateless). ``names``: the classes the labels may use (data.yaml's); a label line whose class is
    not among them fails its image, as ultralytics' trainer would refuse the dataset. ``class_ids``: the
    ``--classes`` filter, already resolved (``resolve_classes``).
    """

    weights_path = None

    def __init__(self, boxes_root: Path, names: dict[int, str], class_ids: tuple[int, ...] | None = None) -> None:
        if not boxes_root.is_dir():
            raise ConfigError(f"--boxes-from {str(boxes_root)!r} is not a directory of YOLO detection labels")
        self.boxes_root = boxes_root
        self.names = names
        self.class_ids = class_ids

    def boxes(self, images_bgr: Sequence[np.ndarray], rel_paths: Sequence[PurePosixPath]) -> list[Detections]:
        """Detections for each image from its label file, in that image's pixel frame (confidence 1)."""
        out = []
        for image, rel_path in zip(images_bgr, rel_paths, strict=True):
            height, width = image.shape[:2]
            path = self.boxes_root / rel_path.with_suffix(".txt")
            detections = read_box_labels(path, (width, height))
            unknown = sorted(set(detections.class_id.tolist()) - set(self.names))
            if unknown:
                known = f"ids 0..{max(self.names)}" if self.names else "no classes"
                raise ImageError(
                    f"box labels {str(path)!r} use class id {unknown[0]}, which the class names do not have"
                    f" ({known}); fix the label or pass --names with every class"
                )
            out.append(keep_classes(detections, self.class_ids))
        return out


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


def names_from_boxes(boxes_root: Path) -> dict[int, str]:
    """When no data.yaml is given: ``{id: "class<id>"}`` for ids 0..max of the lines that ``LabelBoxes`` reads."""
    highest = -1
    for path in boxes_root.rglob("*.txt"):
        try:
            text = path.read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError):
            continue
        for row in iter_label_lines(text, boxes=True):
            if not isinstance(row, LineProblem):
                highest = max(highest, row.class_id)
    return {i: f"class{i}" for i in range(highest + 1)}


def build_label_boxes(settings: RunSettings) -> LabelBoxes:
    """The ``--boxes-from`` source: its names from ``--names``, else a data.yaml beside the labels, else
    ``class<id>`` for every id the labels use; ``--classes`` resolved against them."""
    from autoannotate.review.labels import find_data_yaml, read_names

    p = settings.prompts
    assert p.boxes_from is not None  # PROMPT_SOURCES picks this source only then
    boxes_root = Path(p.boxes_from).expanduser()
    names_file = Path(p.names).expanduser() if p.names else find_data_yaml(boxes_root)
    names = read_names(names_file) if names_file is not None else names_from_boxes(boxes_root)
    source = LabelBoxes(boxes_root, names)  # refuses a missing directory first
    source.class_ids = resolve_classes(p.classes, names, "--names" if names_file is not None else "the box labels")
    return source
