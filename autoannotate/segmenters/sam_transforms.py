"""SAM's pure transforms: the reference resize of an image for the encoder, and the upscaling of the decoder's logits.

``prepare_image`` is the reference ``ResizeLongestSide(1024).apply_image`` (Pillow bilinear, bit-identical);
``postprocess_logits`` is the reference ``Sam.postprocess_masks`` followed by the threshold. ``SegmentationResult``
holds what the SAM decoder returned for one image (predicted IoU, low-res logits, the two frames) and turns it into
the torch-free ``types.Masks`` the pipeline reads. No model here: these run in decode worker threads and tests.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from autoannotate.quality import STABILITY_OFFSET, low_res_image_hw, stability_score
from autoannotate.types import MaskCrop, Masks

__all__ = [
    "LOW_RES_SIZE",
    "SAM_IMAGE_SIZE",
    "PreparedImage",
    "SegmentationResult",
    "postprocess_in_chunks",
    "postprocess_logits",
    "prepare_image",
    "preprocess_hw",
]

#: Side of the square frame the SAM image encoder works in; prepared images have this longest side.
SAM_IMAGE_SIZE = 1024
#: Side of the low-resolution logits the mask decoder returns.
LOW_RES_SIZE = 256


def preprocess_hw(original_hw: tuple[int, int], long_side: int = SAM_IMAGE_SIZE) -> tuple[int, int]:
    """``(h', w')`` with longest side ``long_side``, rounded exactly like ``ResizeLongestSide.get_preprocess_shape``."""
    h, w = original_hw
    scale = long_side * 1.0 / max(h, w)
    return int(h * scale + 0.5), int(w * scale + 0.5)


@dataclass(frozen=True)
class PreparedImage:
    """An image resized for the SAM encoder, not yet normalised or padded.

    Attributes:
        image_1024_chw: ``(3, h', w')`` uint8 RGB tensor on CPU, contiguous, with ``max(h', w') == 1024``.
        original_hw: ``(H, W)`` of the image as decoded, the frame of input boxes and output masks.
        input_hw: ``(h', w')`` after resizing (the frame the encoder sees before padding to 1024x1024).
    """

    image_1024_chw: torch.Tensor
    original_hw: tuple[int, int]
    input_hw: tuple[int, int]

    def __post_init__(self) -> None:
        t = self.image_1024_chw
        if t.dtype != torch.uint8 or t.ndim != 3 or t.shape[0] != 3 or tuple(t.shape[1:]) != tuple(self.input_hw):
            raise ValueError(
                f"image_1024_chw must be a (3, {self.input_hw[0]}, {self.input_hw[1]}) uint8 tensor matching "
                f"input_hw, got {tuple(t.shape)} {t.dtype}"
            )
        if max(self.input_hw) != SAM_IMAGE_SIZE:
            raise ValueError(f"input_hw must have longest side {SAM_IMAGE_SIZE}, got {self.input_hw}")


def prepare_image(image_rgb: np.ndarray) -> PreparedImage:
    """Resize an image for SAM exactly like the reference ``ResizeLongestSide(1024).apply_image``.

    The reference converts to PIL and resizes with PIL bilinear; this calls Pillow directly with the same size and
    filter, so the pixels are bit-identical. Pure CPU, no torch threads, safe to call from worker threads.

    Args:
        image_rgb: ``(H, W, 3)`` uint8 RGB array (convert BGR, grayscale or RGBA before calling).

    Returns:
        The ``PreparedImage`` with a ``(3, h', w')`` uint8 tensor, ``max(h', w') == 1024``.

    Raises:
        ValueError: Not an ``(H, W, 3)`` uint8 array with ``H, W >= 1``.
    """
    if not isinstance(image_rgb, np.ndarray):
        raise ValueError(f"image_rgb must be a numpy array (H, W, 3) uint8 RGB, got {type(image_rgb).__name__}")
    if image_rgb.ndim != 3 or image_rgb.shape[2] != 3 or image_rgb.dtype != np.uint8 or 0 in image_rgb.shape[:2]:
        raise ValueError(
            f"image_rgb must be an (H, W, 3) uint8 RGB array with H, W >= 1, got shape {image_rgb.shape} "
            f"dtype {image_rgb.dtype}"
        )
    original_hw = (int(image_rgb.shape[0]), int(image_rgb.shape[1]))
    input_hw = preprocess_hw(original_hw)
    # Same calls as torchvision's to_pil_image + resize on a PIL image: Image.fromarray, then Image.resize with
    # the (w, h) size and the BILINEAR filter.
    pil = Image.fromarray(np.ascontiguousarray(image_rgb))
    resized = np.asarray(pil.resize((input_hw[1], input_hw[0]), Image.Resampling.BILINEAR))
    chw = torch.from_numpy(np.ascontiguousarray(resized.transpose(2, 0, 1)))
    return PreparedImage(image_1024_chw=chw, original_hw=original_hw, input_hw=input_hw)


@dataclass(frozen=True)
class SegmentationResult:
    """What SAM's decoder returned for one image, aligned 1:1 and in order with the boxes that prompted them
    (``BoxSegmenter.predict``); ``to_masks()`` gives the ``types.Masks`` every segmenter returns.

    Attributes:
        iou_pred: ``(N,)`` float32, SAM's predicted IoU of each mask.
        low_res_logits: ``(N, 256, 256)`` float32 decoder logits in the padded 1024x1024 frame (scaled by 1/4); None
            on a GPU, where they stay on the device (``stability`` is computed there instead).
        input_hw, original_hw: the resized (longest side 1024) and original ``(H, W)``.
        stretched: The logits cover the whole image resized to a square (SAM 2 and 3: no padding, ``input_hw`` is
            that square, four times the logits' side), rather than SAM's padded longest-side frame.
        eager_masks: ``(N, H, W)`` bool when they fit a memory budget, else None and ``mask(i)`` computes each one
            on demand, so that a huge image with many boxes never holds all its full-size masks at once.
        crops: On a GPU instead, each mask as the crop of its foreground (``postprocess_to_crops``).
        stability: ``(N,)`` float64 ``quality.stability_score`` of each, when computed with the masks (on a GPU).
    """

    iou_pred: np.ndarray
    low_res_logits: np.ndarray | None
    input_hw: tuple[int, int]
    original_hw: tuple[int, int]
    eager_masks: np.ndarray | None = None
    mask_threshold: float = 0.0
    stretched: bool = False
    crops: tuple[MaskCrop, ...] | None = None
    stability: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.iou_pred)

    def mask(self, index: int) -> np.ndarray:
        """``(H, W)`` bool mask of box ``index``, exactly as the batched postprocessing computes it."""
        if self.eager_masks is not None:
            return self.eager_masks[index]
        if self.crops is not None:
            return self.crops[index].full(self.original_hw)
        if self.low_res_logits is None:
            raise ValueError("a SegmentationResult needs its masks held, as crops, or its low-res logits")
        logits = torch.from_numpy(self.low_res_logits[index : index + 1, None])
        return postprocess_logits(
            logits, self.input_hw, self.original_hw, self.mask_threshold, stretched=self.stretched
        )[0].numpy()

    @property
    def masks(self) -> np.ndarray:
        """All masks, ``(N, H, W)`` bool (materialised: prefer ``mask(i)`` for large images)."""
        if self.eager_masks is not None:
            return self.eager_masks
        h, w = self.original_hw
        out = np.empty((len(self), h, w), dtype=bool)
        for index in range(len(self)):
            out[index] = self.mask(index)
        return out

    def to_masks(self) -> Masks:
        """The torch-free ``Masks``: ``scores`` = ``iou_pred`` (float32); ``stability`` = ``quality.stability_score``
        of each box's low-res logits cropped to ``input_hw``, (N,) float64 so that the 6-decimal figures written
        from it are those of the float ``stability_score`` returns; the eager masks held, or ``mask`` as ``render``.
        """
        if self.stability is not None:
            stability = self.stability
        elif self.low_res_logits is not None:
            stability = np.array(
                [stability_score(self.low_res_logits[i], self.input_hw) for i in range(len(self))], dtype=np.float64
            )
        else:
            raise ValueError("a SegmentationResult needs its stability or its low-res logits")
        scores = self.iou_pred.astype(np.float32, copy=False)
        if self.eager_masks is not None:
            return Masks(scores, stability, self.original_hw, held=self.eager_masks)
        if self.crops is not None:
            return Masks(scores, stability, self.original_hw, crops=self.crops)
        return Masks(scores, stability, self.original_hw, render=self.mask)

    @classmethod
    def empty(cls, original_hw: tuple[int, int], input_hw: tuple[int, int] = (0, 0)) -> SegmentationResult:
        """The result for an image with no boxes: zero masks of shape ``(0, H, W)``."""
        return cls(
            np.zeros((0,), np.float32),
            np.zeros((0, LOW_RES_SIZE, LOW_RES_SIZE), np.float32),
            input_hw,
            original_hw,
            np.zeros((0, *original_hw), bool),
        )


def postprocess_logits(
    low_res: torch.Tensor,
    input_hw: tuple[int, int],
    original_hw: tuple[int, int],
    threshold: float,
    *,
    stretched: bool = False,
) -> torch.Tensor:
    """``(N, 1, L, L)`` float32 logits -> ``(N, H, W)`` bool masks on the same device.

    As the reference ``Sam.postprocess_masks`` then ``> threshold``: bilinear (align_corners=False) upscale to the
    padded 1024 frame, crop to ``input_hw``, bilinear resize to ``original_hw``. ``stretched`` (SAM 2 and 3, whose
    square input is the whole image resized, as ``SAM2Transforms.postprocess_masks``): one bilinear resize of the
    logits to ``original_hw``.
    """
    if stretched:
        return F.interpolate(low_res, original_hw, mode="bilinear", align_corners=False)[:, 0] > threshold
    x = F.interpolate(low_res, (SAM_IMAGE_SIZE, SAM_IMAGE_SIZE), mode="bilinear", align_corners=False)
    x = x[..., : input_hw[0], : input_hw[1]]
    x = F.interpolate(x, original_hw, mode="bilinear", align_corners=False)
    return x[:, 0] > threshold


# Bytes of float32 full-resolution logits allowed per postprocessing chunk.
_POSTPROCESS_BUDGET_BYTES = 256 * 1024**2
# Above this many bytes of (N, H, W) bool masks (off a GPU), masks are computed one box at a time when asked for.
_EAGER_MASK_BYTES = 256 * 1024**2


def _boxes_per_chunk(low_res: torch.Tensor, original_hw: tuple[int, int], stretched: bool) -> int:
    """Boxes whose float32 logits, upscaled to the model's frame and to the image, fit ``_POSTPROCESS_BUDGET_BYTES``."""
    h, w = original_hw
    frame = low_res.shape[-1] * 4 if stretched else SAM_IMAGE_SIZE
    return max(1, _POSTPROCESS_BUDGET_BYTES // (4 * (frame * frame + h * w)))


def postprocess_in_chunks(
    low_res: torch.Tensor,
    input_hw: tuple[int, int],
    original_hw: tuple[int, int],
    threshold: float,
    *,
    stretched: bool = False,
) -> np.ndarray:
    """``postprocess_logits`` of ``(N, 1, L, L)`` logits in chunks of boxes, so that the full-resolution float32
    logits stay under ~256 MB; thresholds on the logits' device so that only booleans are copied to the host.
    Returns ``(N, H, W)`` bool."""
    h, w = original_hw
    chunk = _boxes_per_chunk(low_res, original_hw, stretched)
    masks = np.empty((len(low_res), h, w), dtype=bool)
    for start in range(0, len(low_res), chunk):
        part = low_res[start : start + chunk]
        masks[start : start + chunk] = (
            postprocess_logits(part, input_hw, original_hw, threshold, stretched=stretched).cpu().numpy()
        )
    return masks


def all_finite(*tensors: torch.Tensor) -> bool:
    """Whether every value of every tensor is finite (one synchronisation each on a GPU): the half-precision check
    after which a segmenter computes an encoder batch or a decoder chunk again in float32."""
    return all(bool(torch.isfinite(t).all()) for t in tensors)


def postprocess_to_crops(
    low_res: torch.Tensor,
    input_hw: tuple[int, int],
    original_hw: tuple[int, int],
    threshold: float,
    *,
    stretched: bool = False,
) -> tuple[MaskCrop, ...]:
    """``postprocess_logits`` of ``(N, 1, L, L)`` logits, each mask returned as the crop of its foreground
    (``types.MaskCrop``), in chunks as ``postprocess_in_chunks``.

    Upsampling, thresholding and each mask's foreground box happen on the logits' device; only the boxes' pixels
    come back, packed into one buffer per chunk (page-locked on CUDA, so that the copy is one DMA): two
    synchronisations per chunk (the boxes, then the pixels), whatever the number of boxes. On a GPU this replaces
    copying ``N`` full-size masks to pageable memory and scanning each whole on the host. The masks are those of
    ``postprocess_in_chunks``, bit for bit.
    """
    h, w = original_hw
    chunk = _boxes_per_chunk(low_res, original_hw, stretched)
    on_cuda = low_res.device.type == "cuda"
    crops: list[MaskCrop] = []
    for start in range(0, len(low_res), chunk):
        part = low_res[start : start + chunk]
        masks = postprocess_logits(part, input_hw, original_hw, threshold, stretched=stretched)
        rows, cols = masks.any(dim=2), masks.any(dim=1)  # (C, H), (C, W): which rows and columns have foreground
        y1 = rows.to(torch.uint8).argmax(dim=1)
        y2 = h - rows.flip(1).to(torch.uint8).argmax(dim=1)
        x1 = cols.to(torch.uint8).argmax(dim=1)
        x2 = w - cols.flip(1).to(torch.uint8).argmax(dim=1)
        boxes = torch.stack([x1, y1, x2, y2, rows.any(dim=1).to(x1.dtype)], dim=1).tolist()
        pieces = [masks[i, b[1] : b[3], b[0] : b[2]].reshape(-1) for i, b in enumerate(boxes) if b[4]]
        flat = torch.cat(pieces) if pieces else masks.new_zeros((0,))
        packed = torch.empty(flat.shape, dtype=torch.bool, pin_memory=on_cuda)
        packed.copy_(flat, non_blocking=on_cuda)
        if on_cuda:
            torch.cuda.current_stream(low_res.device).synchronize()
        pixels = packed.numpy()
        at = 0
        for x_1, y_1, x_2, y_2, has in boxes:
            if not has:
                crops.append(MaskCrop(np.zeros((0, 0), bool), 0, 0))
                continue
            size = (y_2 - y_1) * (x_2 - x_1)
            crops.append(MaskCrop(pixels[at : at + size].reshape(y_2 - y_1, x_2 - x_1), x_1, y_1))
            at += size
    return tuple(crops)


def stability_on_device(low_res: torch.Tensor, input_hw: tuple[int, int]) -> np.ndarray:
    """``quality.stability_score`` of each of ``(N, 1, L, L)`` logits, counted on their device: ``(N,)`` float64,
    the same numbers (both are ratios of the same two pixel counts), without copying the logits to the host."""
    h, w = low_res_image_hw(input_hw)
    crop = low_res[:, 0, :h, :w]
    counts = torch.stack([(crop > STABILITY_OFFSET).sum((1, 2)), (crop > -STABILITY_OFFSET).sum((1, 2))], 1)
    strict, loose = counts.cpu().numpy().astype(np.float64).T
    return np.divide(strict, loose, out=np.ones_like(strict), where=loose > 0)


@dataclass(frozen=True)
class FinishedMasks:
    """What a segmenter keeps of an image's masks (``SegmentationResult``'s fields of the same names): on a GPU the
    crops and the stability scores, computed there, and no low-res logits on the host; elsewhere the logits, and the
    full masks when they fit ``_EAGER_MASK_BYTES`` (else each is computed when the writer asks for it, so that a huge
    image with many boxes never holds them all)."""

    low_res_logits: np.ndarray | None
    eager_masks: np.ndarray | None = None
    crops: tuple[MaskCrop, ...] | None = None
    stability: np.ndarray | None = None


def finished_masks(
    low_res: torch.Tensor,
    input_hw: tuple[int, int],
    original_hw: tuple[int, int],
    threshold: float,
    *,
    stretched: bool = False,
) -> FinishedMasks:
    """``FinishedMasks`` of ``(N, 1, L, L)`` float32 logits on their device (see there)."""
    if low_res.device.type == "cuda":
        crops = postprocess_to_crops(low_res, input_hw, original_hw, threshold, stretched=stretched)
        return FinishedMasks(None, crops=crops, stability=stability_on_device(low_res, input_hw))
    logits = low_res[:, 0].cpu().numpy().astype(np.float32, copy=False)
    h, w = original_hw
    if len(low_res) * h * w > _EAGER_MASK_BYTES:
        return FinishedMasks(logits)
    return FinishedMasks(logits, postprocess_in_chunks(low_res, input_hw, original_hw, threshold, stretched=stretched))
