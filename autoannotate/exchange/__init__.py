"""Round trips with annotation tools: export a run's labels as predictions people correct, and read their
corrections back. One module per tool (``labelstudio``, ``cvat``), each with an exporter and a reader of the tool's
export; ``apply`` writes what a reader returns into the dataset as human-reviewed labels."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ImportedLabel:
    """The corrected label of one image: ``label_key`` is the label's path relative to the output dir
    (``labels/a/b.txt``, the manifest's key); ``instances``: ``(class_id, polygon_norm)`` in the tool's order, each
    polygon float64 ``(K, 2)`` x, y in [0, 1] of the image (K >= 3). An empty tuple: the person removed every
    instance (a negative sample)."""

    label_key: str
    instances: tuple[tuple[int, np.ndarray], ...]


@dataclass(frozen=True)
class ImportedLabels:
    """What a reader found in an export: the labels to write, and one line per item it skipped and why."""

    labels: tuple[ImportedLabel, ...]
    warnings: tuple[str, ...] = ()
