"""FastSAM (``FastSAM-s.pt``, ``FastSAM-x.pt``): a YOLOv8-seg model that segments everything once per image, then
one of its masks is picked for each box, as ultralytics' ``FastSAMPredictor`` picks it for a box prompt.

How an image is segmented:

1. ``FastSAMSegmenter.prepare``: the RGB image as the BGR array ultralytics' predictors take (CPU only).
2. ``FastSAMSegmenter.segment``: ultralytics' public ``FastSAM`` model (``FastSAMPredictor``) runs once per image,
   without prompts, with ``retina_masks=True`` (masks at the image's own resolution): its YOLOv8-seg forward, NMS
   (``FastSAMSettings``), and the masks of everything it found, each with its confidence. Images of one shape go
   through the model as one batch (ultralytics letterboxes a batch of mixed shapes to a square, which would change
   the masks, so mixed shapes are batched by shape).
3. ``select_masks``: for each box, the mask of maximum IoU with the box (``|mask inside box| / (|box| + |mask| -
   |mask inside box|)``, the box cast to int pixels and clipped to the image), as ``FastSAMPredictor.prompt`` picks
   it, but one mask per box, in box order: ``prompt`` returns the union of the picked masks in mask order, so two
   boxes picking one mask give one result and the order is the model's. No mask found in an image: every box gets
   an empty mask.

Scores: ``Masks.scores`` is the picked mask's detection confidence (NaN for an empty mask); ``stability`` is NaN
(FastSAM predicts no mask logits around a threshold).

Trust: FastSAM checkpoints are pickled ultralytics models (a ``SegmentationModel``), not plain state dicts, so loading
one unpickles it, as ``--det-model`` does for a YOLO checkpoint: pass only files you trust. Recognition
(``recognise_fastsam``) reads the file's pickle opcodes without unpickling anything.
"""

from __future__ import annotations

import pickletools
import zipfile
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from autoannotate.errors import ModelError, one_line
from autoannotate.runtime.device import release_device_memory
from autoannotate.segmenters.base import BOX_PROMPTS, SegmenterEntry
from autoannotate.segmenters.weights import weights_source
from autoannotate.types import Detections, Masks

__all__ = [
    "FASTSAM_ENTRY",
    "FASTSAM_VARIANTS",
    "FastSAMSegmenter",
    "FastSAMSettings",
    "recognise_fastsam",
    "select_masks",
]

#: Variant names, by the width of the YOLOv8-seg stem convolution (its ``out_channels``): 64 x the model's width
#: multiple, 0.50 in YOLOv8s (FastSAM-s) and 1.25 in YOLOv8x (FastSAM-x).
_STEM_WIDTH_VARIANTS = {32: "fastsam_s", 80: "fastsam_x"}
FASTSAM_VARIANTS = tuple(_STEM_WIDTH_VARIANTS.values())
# The pickled class of a FastSAM model, as a pickle's GLOBAL opcode names it.
_MODEL_GLOBAL = "ultralytics.nn.tasks SegmentationModel"
# Opcodes that store the top of the stack in the memo: they push nothing.
_MEMO_PUTS = frozenset({"PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"})
_MEMO_GETS = frozenset({"GET", "BINGET", "LONG_BINGET"})
_INT_OPS = frozenset({"BININT", "BININT1", "BININT2", "INT", "LONG", "LONG1", "LONG4"})
# Largest data.pkl read (the pickle only: the tensors are separate zip entries); ultralytics models' are < 1 MB.
_MAX_PICKLE_BYTES = 64 * 1024**2


# --------------------------------------------------------------------------------------------------------------------
# Recognition: the pickle's opcodes, never unpickled
# --------------------------------------------------------------------------------------------------------------------


def recognise_fastsam(path: Path) -> str | None:
    """``"fastsam_s"`` or ``"fastsam_x"`` for a FastSAM checkpoint, read by content (any file name), else None.

    The file must be a zip-format torch checkpoint whose ``*/data.pkl`` pickles an ultralytics ``SegmentationModel``
    (a ``GLOBAL``/``STACK_GLOBAL`` opcode naming ``ultralytics.nn.tasks.SegmentationModel``). The size is the stem
    width: the first ``out_channels`` pickled (the first ``Conv2d``, ``model.0.conv``), 32 for YOLOv8s-seg and 80 for
    YOLOv8x-seg; other widths (YOLOv8n/m/l-seg) are no FastSAM release and give None. Nothing is unpickled: the opcodes
    are only listed (``pickletools.genops``), so a hostile file runs nothing here.

    None (the registry then reads the file as a state dict, with its usual messages): not a zip, no ``data.pkl``, a
    pickle that is not a segmentation model (a YOLO detection model, a state dict), or of another width.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            pickles = [info for info in archive.infolist() if info.filename.endswith("/data.pkl")]
            if len(pickles) != 1 or pickles[0].file_size > _MAX_PICKLE_BYTES:
                return None
            data = archive.read(pickles[0])
        return _variant_from_pickle(data)
    except (OSError, zipfile.BadZipFile, ValueError, EOFError, KeyError):
        return None


def _variant_from_pickle(data: bytes) -> str | None:
    """The variant named by a checkpoint pickle's opcodes (see ``recognise_fastsam``), None if none."""
    memo: dict[int, Any] = {}
    pushed: list[Any] = []  # the arguments of the latest opcodes that push a value (strings and ints are enough)
    segmentation_model = False
    expect_width = False
    for opcode, arg, _ in pickletools.genops(data):
        name = opcode.name
        if name in _MEMO_PUTS:
            memo[len(memo) if name == "MEMOIZE" else int(str(arg))] = pushed[-1] if pushed else None
            continue
        value = memo.get(int(str(arg))) if name in _MEMO_GETS else arg
        if name == "GLOBAL":
            segmentation_model |= value == _MODEL_GLOBAL
        elif name == "STACK_GLOBAL" and len(pushed) >= 2:
            segmentation_model |= f"{pushed[-2]} {pushed[-1]}" == _MODEL_GLOBAL
        elif expect_width:
            if not segmentation_model:
                return None
            return _STEM_WIDTH_VARIANTS.get(value) if name in _INT_OPS and isinstance(value, int) else None
        elif value == "out_channels":
            expect_width = True  # the next value pushed is the first Conv2d's out_channels
        pushed = [*pushed[-1:], value]
    return None


# --------------------------------------------------------------------------------------------------------------------
# Per-box selection
# --------------------------------------------------------------------------------------------------------------------


def select_masks(masks: torch.Tensor, xyxy: np.ndarray) -> torch.Tensor:
    """For each box, the index of the mask of maximum IoU with it, as ``FastSAMPredictor.prompt`` picks it.

    Args:
        masks: ``(M, H, W)`` 0/1 masks in the image frame (ultralytics' retina masks, uint8), M >= 1.
        xyxy: ``(N, 4)`` boxes in the same frame, pixels; cast to int32 (truncated) and clipped to the image, as
            ``prompt`` does.

    Returns:
        ``(N,)`` int64 indices into ``masks`` (the first on ties, ``torch.argmax``), on ``masks.device``.
    """
    from ultralytics.utils.ops import clip_boxes

    height, width = masks.shape[1:]
    boxes = clip_boxes(torch.as_tensor(xyxy, dtype=torch.int32, device=masks.device).reshape(-1, 4), (height, width))
    box_areas = (boxes[:, 3] - boxes[:, 1]) * (boxes[:, 2] - boxes[:, 0])
    # int32 counts: the same values as ultralytics' int64 sums (up to 2**31 pixels), ~10x faster on CPU; the division
    # casts both to float32 either way, so the IoUs and their argmax are the same.
    inside = torch.stack(
        [masks[:, y1:y2, x1:x2].sum(dim=(1, 2), dtype=torch.int32) for x1, y1, x2, y2 in boxes.tolist()]
    )  # (N, M)
    union = box_areas[:, None] + masks.sum(dim=(1, 2), dtype=torch.int32) - inside
    return torch.argmax(inside / union, dim=1)


# --------------------------------------------------------------------------------------------------------------------
# The segmenter
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FastSAMSettings:
    """What the everything-segmentation runs with; the defaults are those of ``FastSAM(path)(image, ...)``.

    Attributes:
        conf: Minimum confidence of a mask (ultralytics' predict default, 0.25; FastSAM's own examples use 0.4). A
            box whose best mask falls below it picks among the rest, or gets an empty mask if none is left.
        iou: NMS IoU threshold between masks' boxes (ultralytics' default 0.7; FastSAM's examples use 0.9).
        max_det: Most masks per image before the per-box pick (ultralytics' default 300).
        imgsz: Inference size; None: the checkpoint's training size (1024 for the FastSAM releases), else 640.
    """

    conf: float = 0.25
    iou: float = 0.7
    max_det: int = 300
    imgsz: int | None = None

    def predict_kwargs(self) -> dict[str, Any]:
        """The settings as ultralytics predict arguments."""
        kwargs: dict[str, Any] = {"conf": self.conf, "iou": self.iou, "max_det": self.max_det}
        if self.imgsz is not None:
            kwargs["imgsz"] = self.imgsz
        return kwargs


def default_batch_size(device: torch.device | str) -> int:
    """Images per ``segment`` call on ``device``: 1 on CPU (nothing gained by batching), 8 on CUDA."""
    return 8 if torch.device(device).type == "cuda" else 1


class FastSAMSegmenter:
    """The ``Segmenter`` of FastSAM checkpoints: box prompts, one mask per box (see the module docstring).

    ``half``: fp16 inference on CUDA (ultralytics' ``quantize=16``, its former ``half=True``); on CPU, bfloat16
    autocast around the forward (ultralytics itself runs fp32 on CPU), which agrees with fp32 to a mask IoU >= 0.99
    but is 3-5x slower on a CPU without native bfloat16.

    ``settings`` (``FastSAMSettings``) are the ultralytics predict defaults unless given; tests with random weights
    pass a very low ``conf``. The ultralytics model is stateful: call ``segment`` from one thread at a time.
    """

    prompt_kinds = frozenset({BOX_PROMPTS})

    def __init__(
        self,
        weights_path: Path,
        device: str | torch.device = "cpu",
        half: bool = False,
        variant: str = "fastsam_x",
        settings: FastSAMSettings | None = None,
    ) -> None:
        from ultralytics import FastSAM

        self._weights_path = Path(weights_path)
        self._device = torch.device(device)
        self._half = half
        self._variant = variant
        self.settings = settings if settings is not None else FastSAMSettings()
        try:
            self._model = FastSAM(str(weights_path))
        except Exception as err:  # ultralytics raises anything from a file it cannot load as a model
            raise ModelError(
                f"{weights_source(weights_path)} cannot be loaded as a FastSAM model ({one_line(err, 100)}); "
                f"pass FastSAM-s.pt or FastSAM-x.pt with --sam-model"
            ) from err

    @property
    def variant(self) -> str:
        """``"fastsam_s"`` or ``"fastsam_x"``."""
        return self._variant

    @property
    def weights_path(self) -> Path | None:
        """The checkpoint file."""
        return self._weights_path

    @property
    def device(self) -> torch.device:
        return self._device

    def prepare(self, image_rgb: np.ndarray) -> np.ndarray:
        """``(H, W, 3)`` uint8 RGB -> the ``(H, W, 3)`` uint8 BGR array ultralytics' predictors read."""
        return np.ascontiguousarray(image_rgb[..., ::-1])

    def segment(self, prepared: Sequence[np.ndarray], prompts: Sequence[Detections]) -> list[Masks]:
        """One ``Masks`` per image, 1:1 with its boxes, ``(H, W)`` bool in the original frame (module docstring).

        Images without a box are not run through the model. Only box prompts are read (``xyxy``).
        """
        if len(prepared) != len(prompts):
            raise ValueError(f"{len(prepared)} images but {len(prompts)} prompt sets")
        out: list[Masks | None] = [None] * len(prepared)
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for index, (image, det) in enumerate(zip(prepared, prompts, strict=True)):
            if len(det) == 0:
                out[index] = Masks.empty((int(image.shape[0]), int(image.shape[1])))
            else:
                by_shape.setdefault(tuple(image.shape), []).append(index)
        for indices in by_shape.values():
            results = self._everything([prepared[i] for i in indices])
            for index, result in zip(indices, results, strict=True):
                out[index] = self._pick(result, prompts[index].xyxy)
        return [m for m in out if m is not None]

    def _everything(self, images_bgr: list[np.ndarray]) -> list[Any]:
        """ultralytics ``Results`` of the prompt-free FastSAM prediction, one per image (all of one shape)."""
        autocast: AbstractContextManager[Any] = (
            torch.autocast("cpu", dtype=torch.bfloat16) if self._half and self._device.type == "cpu" else nullcontext()
        )
        kwargs = self.settings.predict_kwargs()
        if self._half and self._device.type == "cuda":
            kwargs["quantize"] = 16  # ultralytics' fp16 (its deprecated ``half=True``)
        with autocast:
            results = self._model.predict(
                images_bgr, retina_masks=True, device=str(self._device), batch=len(images_bgr), verbose=False, **kwargs
            )
        return list(results)

    def _pick(self, result: Any, xyxy: np.ndarray) -> Masks:
        """The mask ``select_masks`` picks for each box, with its confidence; empty masks if nothing was found."""
        height, width = (int(v) for v in result.orig_shape)
        n = len(xyxy)
        if len(result) == 0 or result.masks is None:
            nan = np.full(n, np.nan)
            return Masks(nan.astype(np.float32), nan, (height, width), np.zeros((n, height, width), bool))
        masks = result.masks.data
        if tuple(masks.shape[1:]) != (height, width):  # retina masks are at the image's size; anything else is a bug
            raise RuntimeError(f"FastSAM masks of shape {tuple(masks.shape)} for an image of {(height, width)}")
        picked = select_masks(masks, xyxy)
        scores = result.boxes.conf[picked].float().cpu().numpy().astype(np.float32)
        held = masks[picked].bool().cpu().numpy()
        return Masks(scores, np.full(n, np.nan), (height, width), held)

    def default_batch(self) -> int:
        """Images per ``segment`` call on this segmenter's device (``default_batch_size``)."""
        return default_batch_size(self._device)

    def release_cached_memory(self) -> None:
        """Return cached CUDA memory to the device (after an out-of-memory error); nothing to do on CPU."""
        release_device_memory(self._device)


def load_fastsam(path: Path | None, device: str | torch.device, half: bool, variant: str) -> FastSAMSegmenter:
    """The registry's ``load``: a ``FastSAMSegmenter`` with the default ``FastSAMSettings``."""
    if path is None:
        raise ModelError("FastSAM needs a checkpoint; pass --sam-model FastSAM-s.pt or FastSAM-x.pt")
    return FastSAMSegmenter(path, device, half, variant)


#: The registry entry: recognised from the file (a pickled model), never from a state dict.
FASTSAM_ENTRY = SegmenterEntry(
    name="fastsam",
    recognise=lambda state_dict: None,
    load=load_fastsam,
    variants=FASTSAM_VARIANTS,
    assets=frozenset({"FastSAM-s.pt", "FastSAM-x.pt"}),
    recognise_file=recognise_fastsam,
)
