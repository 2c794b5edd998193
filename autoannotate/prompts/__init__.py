"""Prompt sources: where the prompts (boxes, or points) come from. ``PROMPT_SOURCES`` is the registry (name ->
entry); the first entry that wants a run's settings serves it. A new source (e.g. text-prompted YOLOE) is one module
and one entry.

Importing this package never imports torch: each entry imports its module when it builds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from autoannotate.errors import ConfigError
from autoannotate.prompts.base import PromptSource, resolve_classes
from autoannotate.segmenters.base import BOX_PROMPTS, POINT_PROMPTS

if TYPE_CHECKING:
    from autoannotate.config import RunSettings

__all__ = [
    "PROMPT_SOURCES",
    "PromptSource",
    "PromptSourceEntry",
    "prompt_entry",
    "prompt_source_for",
    "resolve_classes",
]


@dataclass(frozen=True)
class PromptSourceEntry:
    """``wants(settings)``: whether this source serves a run with these settings; ``build(settings, device)``: the
    source, loaded on ``device`` (the run's one device choice), its ``--classes`` resolved; ``prompt_kinds``: the
    kinds of prompt its ``Detections`` hold (``segmenters.base``), every one of which the segmenter must take."""

    name: str
    wants: Callable[[RunSettings], bool]
    build: Callable[[RunSettings, Any], PromptSource]
    prompt_kinds: frozenset[str] = frozenset({BOX_PROMPTS})


def _build_labels(settings: RunSettings, device: Any) -> PromptSource:
    from autoannotate.prompts.labels import build_label_boxes

    return build_label_boxes(settings)


def _build_points(settings: RunSettings, device: Any) -> PromptSource:
    from autoannotate.prompts.points import build_label_points

    return build_label_points(settings)


def _build_open_vocab(settings: RunSettings, device: Any) -> PromptSource:
    from autoannotate.prompts.open_vocab import build_open_vocab

    return build_open_vocab(settings, device)


def _build_yolo(settings: RunSettings, device: Any) -> PromptSource:
    from autoannotate.prompts.yolo import build_detector

    return build_detector(settings, device)


#: In order of precedence: ``--boxes-from`` or ``--points-from`` labels when given (the settings allow one of them),
#: else an open-vocabulary detector when the classes come from prompts (text, exemplars or saved embeddings), else
#: the YOLO detector with its own classes.
PROMPT_SOURCES: dict[str, PromptSourceEntry] = {
    "labels": PromptSourceEntry("labels", lambda s: s.prompts.boxes_from is not None, _build_labels),
    "points": PromptSourceEntry(
        "points", lambda s: s.prompts.points_from is not None, _build_points, frozenset({BOX_PROMPTS, POINT_PROMPTS})
    ),
    "open_vocab": PromptSourceEntry("open_vocab", lambda s: s.prompts.open_vocabulary, _build_open_vocab),
    "yolo": PromptSourceEntry("yolo", lambda s: True, _build_yolo),
}


def prompt_entry(name: str) -> PromptSourceEntry:
    """The registered source ``name``; ConfigError (one line, naming the known ones) otherwise."""
    entry = PROMPT_SOURCES.get(name)
    if entry is None:
        raise ConfigError(f"unknown prompt source {name!r}: known sources are {', '.join(PROMPT_SOURCES)}")
    return entry


def prompt_source_for(settings: RunSettings) -> PromptSourceEntry:
    """The first registered source that wants ``settings``."""
    for entry in PROMPT_SOURCES.values():
        if entry.wants(settings):
            return entry
    raise ConfigError(f"no prompt source serves these settings (known sources: {', '.join(PROMPT_SOURCES)})")
