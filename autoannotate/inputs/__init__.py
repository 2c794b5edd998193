"""Input kinds: what ``--data`` may hold and how each file becomes items to annotate.

``INPUT_KINDS`` is the registry (name -> ``InputKind``): image files, and video files whose kept frames are items; a
new kind is one module and one entry here.
The listing of ``--data`` (directories, lists, globs, stdin) is shared by all kinds (``inputs.listing``); nothing
outside an input kind reads an item's file as pixels.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from autoannotate.errors import ConfigError
from autoannotate.inputs.base import InputItem, InputKind, ListingContext, StandaloneFile
from autoannotate.inputs.image import IMAGE_KIND
from autoannotate.inputs.video import VIDEO_KIND

__all__ = [
    "INPUT_KINDS",
    "InputItem",
    "InputKind",
    "ListingContext",
    "StandaloneFile",
    "input_kind",
    "input_suffixes",
    "item_from_dict",
    "kind_for",
]

#: Name -> input kind. The first kind is the fallback for a listed file whose suffix no kind claims (it is then
#: reported by that kind's reader, never silently dropped).
INPUT_KINDS: dict[str, InputKind] = {IMAGE_KIND.name: IMAGE_KIND, VIDEO_KIND.name: VIDEO_KIND}


def input_kind(name: str) -> InputKind:
    """The registered kind ``name``; ConfigError (one line, naming the known kinds) otherwise."""
    kind = INPUT_KINDS.get(name)
    if kind is None:
        raise ConfigError(f"unknown input kind {name!r}: known kinds are {', '.join(INPUT_KINDS)}")
    return kind


def input_suffixes() -> frozenset[str]:
    """Every suffix (lower case, with the dot) some registered kind reads."""
    return frozenset(suffix for kind in INPUT_KINDS.values() for suffix in kind.suffixes)


def kind_for(path: Path) -> InputKind:
    """The kind that reads ``path`` (by suffix, any letter case); the first registered kind when none claims it."""
    suffix = path.suffix.lower()
    for kind in INPUT_KINDS.values():
        if suffix in kind.suffixes:
            return kind
    return next(iter(INPUT_KINDS.values()))


def item_from_dict(data: Mapping[str, Any]) -> InputItem:
    """The inverse of ``InputItem.to_dict`` (a distributed worker rebuilds the driver's items with it)."""
    return input_kind(str(data.get("kind", ""))).from_dict(data)
