"""What a prompt source provides (``PromptSource``), and the one rule that turns ``--classes`` into class ids.

A prompt source gives each image its box prompts as ``Detections`` (pixel ``xyxy``, class ids, confidences). It owns
its class names (what data.yaml lists) and its class filter: it returns only the classes that ``--classes`` kept,
resolved against its own names by ``resolve_classes``. Nothing here imports torch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import PurePosixPath
from typing import Protocol

import numpy as np

from autoannotate.errors import ConfigError
from autoannotate.types import Detections


class PromptSource(Protocol):
    """Box prompts for batches of images. Called from one thread at a time (the pipeline serialises calls).

    Optional:

    - ``warm_up() -> None``, the first call's one-off costs paid ahead; ``models.load_models`` runs it in a thread
      while the segmenter loads and joins it before the first image (``prompts.yolo.Detector.warm_up``).
    - ``prepare(image_bgr) -> object``, the CPU-side work on one image that needs no model (e.g. letterboxing),
      run by the pipeline's decode threads, several at once; ``boxes`` is then given what it returned instead of
      the image (``prompts.yolo.Detector.prepare``).
    """

    @property
    def names(self) -> dict[int, str]:
        """Class id -> name, every class it may return (data.yaml's ``names``)."""
        ...

    @property
    def class_ids(self) -> tuple[int, ...] | None:
        """The classes it returns (``--classes``, resolved), or None for all."""
        ...

    @property
    def weights_path(self) -> str | None:
        """The model file it loaded (its sha256 decides whether a rerun redoes labels), or None."""
        ...

    def boxes(self, images_bgr: Sequence[np.ndarray], rel_paths: Sequence[PurePosixPath]) -> list[Detections]:
        """Box prompts of each image (HxWx3 uint8 BGR, or what the source's own ``prepare`` made of it; keyed by
        ``rel_path``), aligned with the input, each in its image's pixel frame. Raises ImageError for a batch whose
        prompts cannot be read (retried image by image)."""
        ...


def resolve_classes(classes: Sequence[str] | None, names: Mapping[int, str], owner: str) -> tuple[int, ...] | None:
    """``--classes`` entries (ids, or names in any letter case) to the ids of ``names``, in the order given,
    duplicates dropped. ``owner`` names where the names come from in the error (``"the detector"``, ``"--names"``).

    Raises ConfigError (one line) for an id that ``names`` lacks or a name it does not hold.
    """
    if classes is None:
        return None
    by_name = {name.lower(): cid for cid, name in names.items()}
    ids: list[int] = []
    for item in classes:
        if item.lstrip("-").isdigit():
            cid = int(item)
            if cid not in names:
                known = f"ids 0..{max(names)}" if names else "no classes"
                raise ConfigError(f"invalid --classes id {cid}: {owner} has {known}")
        elif item.lower() in by_name:
            cid = by_name[item.lower()]
        else:
            sample = ", ".join(list(names.values())[:8])
            raise ConfigError(f"invalid --classes name {item!r}: not a class of {owner} (e.g. {sample})")
        if cid not in ids:
            ids.append(cid)
    return tuple(ids)


def keep_classes(detections: Detections, class_ids: tuple[int, ...] | None) -> Detections:
    """Only the detections whose class is in ``class_ids`` (all when None), in order."""
    if class_ids is None or not len(detections):
        return detections
    keep = np.isin(detections.class_id, np.asarray(class_ids, np.int64))
    return detections.select(keep)
