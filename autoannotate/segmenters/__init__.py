"""Segmenters by content: ``SEGMENTERS``, a public registry of the families this package loads, and
``load_segmenter``, which picks the family that recognises a checkpoint's tensors (never its file name).

In the manner of segment-anything's ``sam_model_registry``, the registry is a plain dict: add an entry (in a test,
``monkeypatch.setitem(SEGMENTERS, "fake", SegmenterEntry(...))``) and ``load_segmenter`` asks it too, in insertion
order. Importing this package never imports torch: the built-in entries import their module on first use.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from autoannotate.errors import ModelError
from autoannotate.segmenters.base import Segmenter, SegmenterEntry

if TYPE_CHECKING:
    import torch

__all__ = ["SEGMENTERS", "Segmenter", "SegmenterEntry", "lazy_entry", "load_segmenter"]


@dataclass(frozen=True)
class _Deferred:
    """Calls ``field`` of the entry ``module.entry``, importing ``module`` on the first call; None where the entry
    has no such function (a None field)."""

    module: str
    entry: str
    field: str

    def __call__(self, *args: Any) -> Any:
        target: SegmenterEntry = getattr(importlib.import_module(self.module), self.entry)
        function: Callable[..., Any] | None = getattr(target, self.field, None)
        return None if function is None else function(*args)


def lazy_entry(
    name: str,
    module: str,
    entry: str,
    *,
    variants: tuple[str, ...],
    assets: frozenset[str] = frozenset(),
    keyword: str | None = None,
) -> SegmenterEntry:
    """An entry that stands for ``module.entry`` (a ``SegmenterEntry``) without importing ``module`` until the
    registry asks it something; ``variants`` and ``assets`` are given here so that messages need no import. Its
    ``recognise_file`` returns None where ``module.entry`` has none."""
    return SegmenterEntry(
        name=name,
        recognise=_Deferred(module, entry, "recognise"),
        load=_Deferred(module, entry, "load"),
        variants=variants,
        assets=assets,
        explain=_Deferred(module, entry, "explain"),
        keyword=keyword,
        recognise_file=_Deferred(module, entry, "recognise_file"),
    )


#: Registered segmenter families, asked in this order which of them recognises a checkpoint.
SEGMENTERS: dict[str, SegmenterEntry] = {
    "sam": lazy_entry(
        "sam",
        "autoannotate.segmenters.sam",
        "SAM_ENTRY",
        variants=("mobile_sam", "sam_b", "sam_l", "sam_h"),
        assets=frozenset({"mobile_sam.pt", "sam_b.pt", "sam_l.pt"}),
    ),
    "sam2": lazy_entry(
        "sam2",
        "autoannotate.segmenters.sam2",
        "SAM2_ENTRY",
        variants=tuple(f"sam{v}_{s}" for v in ("2", "2.1") for s in ("t", "s", "b+", "l")),
        assets=frozenset(f"sam{v}_{s}.pt" for v in ("2", "2.1") for s in "tsbl"),
    ),
    "fastsam": lazy_entry(
        "fastsam",
        "autoannotate.segmenters.fastsam",
        "FASTSAM_ENTRY",
        variants=("fastsam_s", "fastsam_x"),
        assets=frozenset({"FastSAM-s.pt", "FastSAM-x.pt"}),
    ),
    "sam3": lazy_entry(
        "sam3",
        "autoannotate.segmenters.sam3_interactive",
        "SAM3_ENTRY",
        variants=("sam3", "sam3.1"),
    ),
    "detector_masks": lazy_entry(
        "detector_masks",
        "autoannotate.segmenters.detector_masks",
        "DETECTOR_MASKS_ENTRY",
        variants=(),
        keyword="none",
    ),
}


def load_segmenter(
    name_or_path: str | Path,
    device: str | torch.device,
    half: bool = False,
    *,
    download: Callable[..., Any] | None = None,
) -> Segmenter:
    """Find, read and recognise a checkpoint, then load it with the first registered family that recognises it.

    Args:
        name_or_path: A checkpoint path (any name), or an asset name of a registered family (``mobile_sam.pt``),
            downloaded from ultralytics' assets when not found locally (see ``weights.resolve_weights``), or a
            family's keyword (``"none"``: no model, the detector's own masks).
        device: Where the model runs (``"cpu"``, ``"cuda:0"``, a ``torch.device``).
        half: Reduced-precision inference (each family says how).
        download: The asset download function (injectable for tests).

    A family with a ``recognise_file`` (FastSAM: its checkpoints are pickled models) is asked about the file first;
    the others about its state dict.

    Returns:
        The loaded ``Segmenter``, its ``variant`` the one its family recognised.

    Raises:
        ModelError: One line naming the file and the fix: missing file, failed download, a pickled object or an
            unreadable file, a checkpoint of a family that is not supported (an unknown SAM or SAM 2 size, a partial
            SAM 3), or one that no registered family recognises.
    """
    from autoannotate.segmenters.weights import SAM_FLAG_HINT, read_state_dict, resolve_weights, weights_source

    entries = list(SEGMENTERS.values())
    for entry in entries:
        if entry.keyword is not None and str(name_or_path) == entry.keyword:
            return entry.load(None, device, half, entry.keyword)
    entries = [e for e in entries if e.keyword is None]
    path = resolve_weights(name_or_path, assets=frozenset().union(*(e.assets for e in entries)), download=download)
    # Families whose checkpoints are pickled models (which read_state_dict refuses) recognise the file itself.
    for entry in entries:
        file_variant = entry.recognise_file(path) if entry.recognise_file is not None else None
        if file_variant is not None:
            return entry.load(path, device, half, file_variant)
    # Memory-mapped: recognition reads names and shapes only, and the chosen family reads the tensors it loads.
    state_dict = read_state_dict(path, mmap=True)
    for entry in entries:
        variant = entry.recognise(state_dict)
        if variant is not None:
            del state_dict
            return entry.load(path, device, half, variant)
    reasons = (entry.explain(state_dict) for entry in entries if entry.explain is not None)
    reason = next((r for r in reasons if r), None)
    if reason is None:
        known = ", ".join(dict.fromkeys(v for e in entries for v in (e.variants or (e.name,))))
        reason = f"is not a checkpoint of a known segmenter (known: {known})"
    raise ModelError(f"{weights_source(path)} {reason}; {SAM_FLAG_HINT}")
