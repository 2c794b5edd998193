"""Visual exemplars (``--exemplars DIR``): a few images with YOLO box labels become YOLOE class embeddings.

``DIR`` is a small detection dataset: ``DIR/images/**`` with labels mirroring them under ``DIR/labels/``, or images
with their ``.txt`` label beside them. ``--names`` names the classes. Each image's boxes go through YOLOE's
visual-prompt encoder (ultralytics' ``YOLOEVPDetectPredictor.get_vpe``, one embedding per class present in the
image); a class's embedding is the mean over the images that show it, L2-normalised, as ultralytics' validator
builds them from a reference dataset (``YOLOEDetectValidator.get_visual_pe``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from autoannotate.errors import AutoAnnotateError, ConfigError, one_line
from autoannotate.inputs.decode import read_image_bgr
from autoannotate.inputs.listing import iter_items, resolve_data
from autoannotate.prompts.labels import read_box_labels
from autoannotate.types import Detections

MAX_EXEMPLAR_IMAGES = 1000  # exemplars are "a few images"; their embeddings are computed one image at a time


@dataclass(frozen=True)
class Exemplar:
    """One exemplar image, its label file, and its boxes (pixel ``xyxy``, class ids of ``--names``)."""

    image: Path
    label: Path
    image_bgr: np.ndarray
    boxes: Detections


def read_exemplars(root_text: str, names: dict[int, str]) -> list[Exemplar]:
    """Every exemplar image of ``root_text`` that has boxes, read and checked against ``names``.

    Raises ConfigError (one line) for a missing folder, an unreadable image or label, a class id ``names`` lacks,
    no box at all, or a class of ``names`` no exemplar shows (its embedding would be undefined).
    """
    root = Path(root_text).expanduser()
    if not root.is_dir():
        raise ConfigError(f"--exemplars {root_text!r} is not a directory of images with YOLO box labels")
    if sorted(names) != list(range(len(names))):
        raise ConfigError("--names for --exemplars must number its classes 0..N-1 without gaps")
    # ultralytics' layout (DIR/images/a.jpg -> DIR/labels/a.txt), else each label beside its image
    split = (root / "images").is_dir()
    listed_root, labels_root = (root / "images", root / "labels") if split else (root, root)
    try:
        items = list(iter_items(resolve_data(str(listed_root))))
    except AutoAnnotateError as err:
        raise ConfigError(f"--exemplars {root_text!r}: {one_line(err, 160)}") from None
    if len(items) > MAX_EXEMPLAR_IMAGES:
        raise ConfigError(
            f"--exemplars {root_text!r} holds {len(items)} images; at most {MAX_EXEMPLAR_IMAGES} are taken (a few"
            " good examples per class are enough)"
        )
    out: list[Exemplar] = []
    for item in items:
        image = Path(item.origin)
        label = labels_root / item.rel_path.with_suffix(".txt")
        try:
            image_bgr = read_image_bgr(image)
            height, width = image_bgr.shape[:2]
            boxes = read_box_labels(label, (width, height))
        except AutoAnnotateError as err:
            raise ConfigError(f"--exemplars: {one_line(err, 160)}") from None
        unknown = sorted(set(boxes.class_id.tolist()) - set(names))
        if unknown:
            raise ConfigError(
                f"--exemplars label {str(label)!r} uses class id {unknown[0]}, which --names lacks (ids 0.."
                f"{len(names) - 1}); fix the label or the names"
            )
        keep = (boxes.xyxy[:, 2] > boxes.xyxy[:, 0]) & (boxes.xyxy[:, 3] > boxes.xyxy[:, 1])  # no empty boxes
        boxes = boxes.select(keep)
        if len(boxes):
            out.append(Exemplar(image, label, image_bgr, boxes))
    if not out:
        raise ConfigError(
            f"--exemplars {root_text!r} has no image with a box label (class cx cy w h in images' .txt files, under"
            " labels/ or beside them)"
        )
    shown = {int(c) for e in out for c in e.boxes.class_id}
    missing = [names[c] for c in names if c not in shown]
    if missing:
        raise ConfigError(
            f"no exemplar shows class {missing[0]!r}{f' (and {len(missing) - 1} more)' if len(missing) > 1 else ''}"
            " of --names: add a boxed example of it to --exemplars, or drop it from the names"
        )
    return out


def exemplars_sha256(exemplars: list[Exemplar], names: dict[int, str]) -> str:
    """One digest of the exemplar files (every image's and label's bytes, by path) and the class names: any change
    to an exemplar changes it, so a rerun redoes the labels it decides."""
    digest = hashlib.sha256()
    for name in (names[c] for c in sorted(names)):
        digest.update(b"name\0" + name.encode("utf-8") + b"\0")
    for exemplar in sorted(exemplars, key=lambda e: str(e.image)):
        for path in (exemplar.image, exemplar.label):
            digest.update(str(path.name).encode("utf-8") + b"\0")
            digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def visual_embeddings(yolo: Any, exemplars: list[Exemplar], names: dict[int, str], imgsz: int, device: Any) -> Any:
    """Class embeddings ``(1, len(names), D)`` (a torch tensor on the model's device) from the exemplars' boxes,
    through ultralytics' visual-prompt predictor on ``yolo`` (a YOLOE model)."""
    import torch
    import torch.nn.functional as F
    from ultralytics.models.yolo.yoloe import YOLOEVPDetectPredictor, YOLOEVPSegPredictor

    predictor_cls = YOLOEVPSegPredictor if yolo.model.task == "segment" else YOLOEVPDetectPredictor
    overrides = {
        "task": yolo.model.task,
        "mode": "predict",
        "save": False,
        "batch": 1,
        "imgsz": imgsz,
        "device": str(device),
        "verbose": False,
    }
    predictor = predictor_cls(overrides=overrides)
    total: torch.Tensor | None = None
    counts = torch.zeros(len(names))
    for exemplar in exemplars:
        present = sorted({int(c) for c in exemplar.boxes.class_id})
        local = {cid: i for i, cid in enumerate(present)}  # the predictor wants ids 0..k-1 per image
        predictor.set_prompts(
            {
                "bboxes": exemplar.boxes.xyxy.astype(np.float32),
                "cls": np.array([local[int(c)] for c in exemplar.boxes.class_id], np.int64),
            }
        )
        if predictor.model is None:
            predictor.setup_model(model=yolo.model, verbose=False)
        with torch.no_grad():
            vpe = predictor.get_vpe(exemplar.image_bgr)  # (1, k, D), one per class present, normalised
        vpe = vpe.detach().float()
        if total is None:
            total = torch.zeros(len(names), vpe.shape[-1], device=vpe.device)
        for cid, index in local.items():
            total[cid] += vpe[0, index]
            counts[cid] += 1
    assert total is not None  # read_exemplars returns at least one image with boxes
    mean = total / counts.to(total.device).clamp(min=1).unsqueeze(1)
    return F.normalize(mean, dim=-1, p=2).unsqueeze(0)
