"""``instances.jsonl``: one JSON row per detection, for finding bad auto-labels fast. Pure formatting."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from autoannotate.quality import InstanceQuality


def instance_rows(
    image: str,
    label_key: str,
    quality: Iterable[InstanceQuality],
    names: Mapping[int, str],
    frame: Mapping[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Rows for one image: its path, its label file (relative to the output dir), the class name, and the figures;
    for a video frame also ``video``, ``frame`` (its index) and ``t`` (seconds), from its ``frame`` record."""
    rows = []
    for item in quality:
        row: dict[str, Any] = {"image": image, "label": label_key}
        if frame is not None:
            row.update(video=frame.get("video"), frame=frame.get("index"), t=frame.get("t"))
        row.update(item.to_dict())
        row["class_name"] = names.get(item.class_id, str(item.class_id))
        rows.append(row)
    return rows


def format_rows(rows: Iterable[Mapping[str, Any]]) -> str:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def score_summary(scores: list[float]) -> dict[str, float] | None:
    """min / p10 / median / p90 / max of SAM's predicted IoU over kept instances (None when there are none)."""
    if not scores:
        return None
    ordered = sorted(scores)

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * (len(ordered) - 1) + 0.5))], 4)

    return {"min": at(0.0), "p10": at(0.1), "median": at(0.5), "p90": at(0.9), "max": at(1.0)}
