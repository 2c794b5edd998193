"""Box- and point-prompted SAM 2 / SAM 2.1 segmentation: variants recognised by content, batched encoder, one mask
per instance.

The numerics follow Meta's reference predictor (``sam2.sam2_image_predictor.SAM2ImagePredictor``) step by step:

1. ``Sam2Segmenter.prepare`` keeps the decoded image (HWC uint8) as it is; ``segment`` then, on the model's device,
   does what ``SAM2Transforms`` does: ``ToTensor`` (``/ 255``), ``Resize((1024, 1024))`` (bilinear, antialiased, the
   aspect ratio *not* kept, no padding), ``Normalize`` with the ImageNet mean/std of the 0-1 range.
2. The image encoder (Hiera trunk and FPN neck) runs once over the batch of images; the two high-resolution levels go
   through the decoder's ``conv_s0``/``conv_s1`` and ``no_mem_embed`` is added to the lowest-resolution one, as
   ``SAM2Base.forward_image`` and ``set_image`` do (here on ``(B, C, H, W)`` maps directly: the reference's
   flatten/permute round trip is the identity on values, and it assumes one image).
3. A box becomes its two corners as points labelled 2 and 3 (``_predict``), followed by the instance's own points;
   coordinates are divided by the original width/height and multiplied by 1024 (``transform_coords``). The prompt
   encoder and mask decoder run over all instances of an image in chunks, ``multimask_output=False`` (the decoder
   then picks its most stable token as SAM 2 does: ``dynamic_multimask_via_stability``).
4. The 256x256 logits are resized bilinearly to the original size and thresholded at 0
   (``SAM2Transforms.postprocess_masks``; hole filling and sprinkle removal are off, the predictor's default).

SAM 2.0 and 2.1 share the image path; 2.1 adds video-memory tensors (``no_obj_embed_spatial``,
``obj_ptr_tpos_proj``) by which it is told apart from 2.0, never by the file name. The architectures come from
ultralytics (``ultralytics.models.sam.build``); the image encoder, prompt encoder and mask decoder are loaded strictly
from the checkpoint, the video-memory modules (unused for images) are checked against the architecture too.
``SAM2_ENTRY`` is this family's entry in ``autoannotate.segmenters.SEGMENTERS``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F

from autoannotate.errors import ModelError, one_line
from autoannotate.runtime.cpu_kernels import onednn_for, use_onednn
from autoannotate.runtime.device import half_dtype, host_to_device, page_locked, release_device_memory
from autoannotate.segmenters.base import BOX_PROMPTS, POINT_PROMPTS, SegmenterEntry
from autoannotate.segmenters.prompting import InstancePrompts, checked_prompts, prompt_arrays
from autoannotate.segmenters.sam import default_batch_size, default_decoder_batch_size
from autoannotate.segmenters.sam_transforms import SegmentationResult, all_finite, finished_masks
from autoannotate.segmenters.weights import SAM_FLAG_HINT, read_state_dict, weights_source
from autoannotate.types import Detections, Masks

__all__ = [
    "SAM2_ASSET_NAMES",
    "SAM2_ENTRY",
    "SAM2_VARIANTS",
    "Sam2Prepared",
    "Sam2Segmenter",
    "explain_sam2",
    "load_sam2",
    "recognise_sam2",
    "to_device",
]

#: Variant names (``sam2.1_b+`` is Meta's ``sam2.1_hiera_base_plus``; ultralytics names its asset ``sam2.1_b.pt``).
SAM2_VARIANTS = tuple(f"sam{v}_{s}" for v in ("2", "2.1") for s in ("t", "s", "b+", "l"))
#: SAM 2 and 2.1 checkpoints published in ultralytics' assets release (Meta's files, as ``{"model": state_dict}``).
SAM2_ASSET_NAMES = frozenset(f"sam{v}_{s}.pt" for v in ("2", "2.1") for s in "tsbl")

# (Hiera embed dim, number of blocks) -> size, and size -> ultralytics builder name.
_HIERA_SIZES = {(96, 12): "t", (96, 16): "s", (112, 24): "b+", (144, 48): "l"}
_BUILDERS = {"t": "build_sam2_t", "s": "build_sam2_s", "b+": "build_sam2_b", "l": "build_sam2_l"}
# Key prefixes only SAM 2 checkpoints have: its image predictor's three parts first, then the video memory.
_SAM2_MARKERS = (
    "image_encoder.trunk.",
    "sam_prompt_encoder.",
    "sam_mask_decoder.",
    "memory_attention.",
    "memory_encoder.",
)
# Tensors SAM 2.1 adds to 2.0 (video memory only); their presence alone tells the versions apart.
_SAM21_ONLY = ("no_obj_embed_spatial", "obj_ptr_tpos_proj.")
# What the image predictor uses; the rest of a checkpoint is the video memory.
_IMAGE_PARTS = ("image_encoder.", "sam_prompt_encoder.", "sam_mask_decoder.", "no_mem_embed")
# SAM2Transforms: ImageNet statistics of the 0-1 range.
_MEAN_RGB = (0.485, 0.456, 0.406)
_STD_RGB = (0.229, 0.224, 0.225)


# --------------------------------------------------------------------------------------------------------------------
# Weights: recognise, load
# --------------------------------------------------------------------------------------------------------------------


def _classify(state_dict: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """``(variant, None)``, or ``(None, why)`` for a SAM 2 checkpoint of unknown size, else ``(None, None)``."""
    keys = [str(k) for k in state_dict]
    if not any(k.startswith(_SAM2_MARKERS) for k in keys):
        return None, None
    lacking = [h.rstrip(".") for h in _SAM2_MARKERS[:3] if not any(k.startswith(h) for k in keys)]
    if lacking:
        return None, f"is a partial SAM 2 checkpoint (no {', '.join(lacking)} weights; damaged or not a full model)"
    patch = state_dict.get("image_encoder.trunk.patch_embed.proj.weight")
    blocks = {m.group(1) for k in keys if (m := re.match(r"image_encoder\.trunk\.blocks\.(\d+)\.", k))}
    if patch is None or not blocks:
        return None, "is a SAM 2 checkpoint without a Hiera trunk patch embedding or blocks (damaged?)"
    size = _HIERA_SIZES.get((int(patch.shape[0]), len(blocks)))
    if size is None:
        return None, (
            f"is a SAM 2 checkpoint of unknown size (Hiera embed dim {int(patch.shape[0])}, {len(blocks)} blocks; "
            "known: tiny 96/12, small 96/16, base+ 112/24, large 144/48)"
        )
    version = "2.1" if any(k.startswith(_SAM21_ONLY) for k in keys) else "2"
    return f"sam{version}_{size}", None


def recognise_sam2(state_dict: Mapping[str, Any]) -> str | None:
    """The ``SAM2_VARIANTS`` name of a state dict (names and shapes only), None when it is no SAM 2 checkpoint.

    A SAM 2 checkpoint has a Hiera trunk (``image_encoder.trunk.*``), ``sam_prompt_encoder.*`` and
    ``sam_mask_decoder.*``; its size is the trunk's patch-embedding width and block count (t 96/12, s 96/16,
    b+ 112/24, l 144/48); 2.1 holds ``no_obj_embed_spatial`` / ``obj_ptr_tpos_proj.*``, 2.0 does not.
    """
    return _classify(state_dict)[0]


def explain_sam2(state_dict: Mapping[str, Any]) -> str | None:
    """Why a SAM 2 state dict that ``recognise_sam2`` refuses is not loaded (unknown size), else None."""
    return _classify(state_dict)[1]


def _build_architecture(variant: str) -> torch.nn.Module:
    """The ultralytics SAM 2 architecture of ``variant``'s size, randomly initialised on CPU (no download).

    ultralytics builds the 2.1 video-memory extras only for a checkpoint path naming "sam2.1"; the image path is the
    same for both versions, so the 2.0 architecture serves both (``load_sam2`` checks the extras' shapes)."""
    from ultralytics.models.sam import build

    builder = cast(Callable[..., torch.nn.Module], getattr(build, _BUILDERS[variant.rsplit("_", 1)[1]]))
    return builder(checkpoint=None)


def load_sam2(weights: str | Path, variant: str | None = None) -> tuple[torch.nn.Module, str]:
    """Load a SAM 2 / 2.1 checkpoint into the matching ultralytics ``SAM2Model``, on CPU, in eval mode.

    Args:
        weights: A checkpoint path: a state dict, or a dict holding one under ``"model"`` (Meta's layout).
        variant: The ``SAM2_VARIANTS`` name already recognised (by the registry); else recognised here.

    Returns:
        ``(model, variant)``.

    Raises:
        ModelError: Unreadable file, not a SAM 2 checkpoint, or tensors that do not match the architecture.
    """
    path = Path(weights)
    source = weights_source(path)
    if not path.is_file():
        raise ModelError(f"{source} does not exist; pass --sam-model PATH to an existing checkpoint")
    state_dict = read_state_dict(path)
    found, why = _classify(state_dict)
    if found is None or (variant is not None and variant != found):
        raise ModelError(f"{source} {why or 'is not a SAM 2 checkpoint'}; {SAM_FLAG_HINT}")
    variant = found
    model = _build_architecture(variant)
    expected = model.state_dict()
    extras = [k for k in state_dict if k not in expected and k.startswith(_SAM21_ONLY)]
    is_v20 = variant.startswith("sam2_")
    missing = [k for k in expected if k not in state_dict and (k.startswith(_IMAGE_PARTS) or is_v20)]
    unexpected = [k for k in state_dict if k not in expected and k not in extras]
    wrong_shape = [k for k in expected if k in state_dict and state_dict[k].shape != expected[k].shape]
    if missing or unexpected or wrong_shape or (extras and is_v20):
        examples = ", ".join((missing + unexpected + wrong_shape)[:3])
        raise ModelError(
            f"{source} does not match the {variant} architecture ({len(missing)} missing, {len(unexpected)} "
            f"unexpected, {len(wrong_shape)} mis-shaped tensors, e.g. {examples}); the file may be damaged or from "
            f"an incompatible SAM 2 fork; {SAM_FLAG_HINT}"
        )
    try:
        model.load_state_dict({k: v for k, v in state_dict.items() if k not in extras}, strict=True)
    except Exception as err:
        raise ModelError(
            f"{source} could not be loaded into the {variant} architecture ({one_line(err, 100)}); {SAM_FLAG_HINT}"
        ) from err
    model.eval()
    return model, variant


# --------------------------------------------------------------------------------------------------------------------
# Segmenter
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sam2Prepared:
    """A decoded image waiting for the SAM 2 encoder: ``image_hwc`` the ``(H, W, 3)`` uint8 RGB tensor on CPU,
    ``original_hw`` its ``(H, W)``, the frame of input prompts and output masks."""

    image_hwc: torch.Tensor
    original_hw: tuple[int, int]


@dataclass(frozen=True)
class _Features:
    """One image's encoder output: ``image_embed`` ``(1, C, h, w)`` and the high-resolution levels, each
    ``(1, C_i, h_i, w_i)``, in the decoder's order."""

    image_embed: torch.Tensor
    high_res: tuple[torch.Tensor, ...]


class Sam2Segmenter:
    """Prompted SAM 2 predictor over batches of images; one mask per instance, in order (a ``Segmenter``).

    The image size, the pixel statistics and ``_encode`` are what a related family (SAM 3's interactive model, same
    prompt encoder and decoder) overrides. The device is the model's.
    """

    #: Box prompts, point prompts, and both together (``segmenters.base.prompt_kinds``).
    prompt_kinds = frozenset({BOX_PROMPTS, POINT_PROMPTS})
    #: ``SAM2Transforms``' mean and std (RGB, 0-1 range).
    pixel_mean_rgb: tuple[float, float, float] = _MEAN_RGB
    pixel_std_rgb: tuple[float, float, float] = _STD_RGB

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        half: bool = False,
        decoder_batch_size: int | None = None,
        variant: str = "unknown",
        weights_path: Path | None = None,
    ) -> None:
        """Wrap a SAM 2 model (ultralytics ``SAM2Model``: ``.image_encoder``, ``.sam_prompt_encoder``,
        ``.sam_mask_decoder``, ``.no_mem_embed``, ``.image_size``).

        Args:
            model: The model; it is switched to eval mode.
            half: Encoder and decoder under autocast in ``runtime.device.half_dtype`` (bfloat16 on the CPU and on GPUs
                that have it, else float16); the prompt encoder and the postprocessing stay in float32.
            decoder_batch_size: At most this many instances per decoder call (default
                ``sam.default_decoder_batch_size(device)``); results do not depend on it beyond float rounding.
            variant, weights_path: For reporting (``load_sam2`` returns the variant).
        """
        for part in ("image_encoder", "sam_prompt_encoder", "sam_mask_decoder"):
            if not isinstance(getattr(model, part, None), torch.nn.Module):
                raise ModelError(f"the model given to {type(self).__name__} has no {part} module: not a SAM 2 model")
        if decoder_batch_size is not None and decoder_batch_size < 1:
            raise ValueError(f"decoder_batch_size must be >= 1, got {decoder_batch_size}")
        self._model = model.eval()
        self._parts = cast(Any, model)
        self.image_size = int(self._parts.image_size)
        self._half = bool(half)
        self._redone_in_f32 = 0
        self._decoder_batch_size = decoder_batch_size
        self._variant = variant
        self._weights_path = weights_path

    @classmethod
    def _load(cls, path: Path, device: torch.device | str, half: bool, variant: str | None) -> Sam2Segmenter:
        """``load_sam2(path, variant)`` moved to ``device`` (oneDNN layers on CPU as ``onednn_for`` decides)."""
        model, variant = load_sam2(path, variant)
        return cls(to_device(model, device), half=half, variant=variant, weights_path=path)

    @property
    def model(self) -> torch.nn.Module:
        """The wrapped model."""
        return self._model

    @property
    def variant(self) -> str:
        """The variant name (``"sam2.1_t"``, ...)."""
        return self._variant

    @property
    def weights_path(self) -> Path | None:
        """The checkpoint file the model was loaded from."""
        return self._weights_path

    @property
    def half(self) -> bool:
        """Whether encoder and decoder run under reduced-precision autocast."""
        return self._half

    @property
    def redone_in_f32(self) -> int:
        """How many encoder batches and decoder chunks gave non-finite values in half precision and were computed
        again in float32."""
        return self._redone_in_f32

    @property
    def device(self) -> torch.device:
        """The device of the model's parameters, where all computation runs."""
        return next(self._model.parameters()).device

    def default_batch(self) -> int:
        """Images per ``segment`` call: 1 on CPU (one image per core), 8 on CUDA (``sam.default_batch_size``)."""
        return default_batch_size(self.device)

    def release_cached_memory(self) -> None:
        """Return cached CUDA memory to the device (after an out-of-memory error); nothing to do on CPU."""
        release_device_memory(self.device)

    def prepare(self, image_rgb: np.ndarray) -> Sam2Prepared:
        """``(H, W, 3)`` uint8 RGB array -> ``Sam2Prepared`` (CPU, thread-safe; the resize happens in ``segment``,
        on the model's device)."""
        if not (
            isinstance(image_rgb, np.ndarray)
            and image_rgb.ndim == 3
            and image_rgb.shape[2] == 3
            and image_rgb.dtype == np.uint8
            and 0 not in image_rgb.shape[:2]
        ):
            shape = getattr(image_rgb, "shape", None)
            raise ValueError(f"image_rgb must be an (H, W, 3) uint8 RGB array with H, W >= 1, got {shape}")
        tensor = page_locked(torch.from_numpy(np.ascontiguousarray(image_rgb)), self.device)  # for CUDA: pinned here
        return Sam2Prepared(tensor, (int(image_rgb.shape[0]), int(image_rgb.shape[1])))

    def _autocast(self, device: torch.device, half: bool | None = None) -> AbstractContextManager[Any]:
        if not (self._half if half is None else half):
            return nullcontext()
        return torch.autocast(device_type=device.type, dtype=half_dtype(device))

    def _encoder_input(self, image: Sam2Prepared, device: torch.device) -> torch.Tensor:
        """``(3, S, S)`` float32: ``ToTensor``, ``Resize((S, S))`` (bilinear, antialiased), ``Normalize``."""
        x = image.image_hwc
        x = host_to_device(x, device)  # on CUDA asynchronous: pinned in ``prepare``
        x = x.permute(2, 0, 1).contiguous().float().div(255)
        size = (self.image_size, self.image_size)
        x = F.interpolate(x[None], size=size, mode="bilinear", align_corners=False, antialias=True)[0]
        mean = torch.tensor(self.pixel_mean_rgb, dtype=torch.float32, device=device).view(-1, 1, 1)
        std = torch.tensor(self.pixel_std_rgb, dtype=torch.float32, device=device).view(-1, 1, 1)
        return (x - mean) / std

    def _encode(self, batch: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """``(B, 3, S, S)`` -> ``(image_embed (B, C, h, w), high-res levels [(B, C_i, h_i, w_i)])``, as
        ``SAM2Base.forward_image`` followed by ``set_image_batch``'s ``no_mem_embed`` addition."""
        levels = list(self._backbone(batch)["backbone_fpn"])
        decoder = self._parts.sam_mask_decoder
        if getattr(self._parts, "use_high_res_features_in_sam", True):
            levels[0] = decoder.conv_s0(levels[0])
            levels[1] = decoder.conv_s1(levels[1])
        embed = levels[-1]
        if getattr(self._parts, "directly_add_no_mem_embed", True):
            # no_mem_embed is (1, 1, C) over the (HW, B, C) flattening; on (B, C, H, W) it adds per channel.
            embed = embed + self._parts.no_mem_embed.reshape(1, -1, 1, 1)
        return embed, levels[:-1]

    def _backbone(self, batch: torch.Tensor) -> dict[str, Any]:
        """The image encoder's output for ``(B, 3, S, S)``: ``backbone_fpn``, levels from high to low resolution."""
        return cast(dict[str, Any], self._parts.image_encoder(batch))

    def _refine_logits(self, low_res: torch.Tensor) -> torch.Tensor:
        """The reference's postprocessing of ``(N, 1, L, L)`` low-res logits before they are resized (none here)."""
        return low_res

    def segment(self, prepared: Sequence[Sam2Prepared], prompts: Sequence[Detections]) -> list[Masks]:
        """Segment every instance of every image (``predict``) as ``types.Masks``: ``scores`` the predicted IoU,
        ``stability`` of each instance's low-res logits, in each image's original frame."""
        boxes_xyxy, points, box_given = prompt_arrays(prompts)
        return [result.to_masks() for result in self.predict(prepared, boxes_xyxy, points=points, box_given=box_given)]

    def predict(
        self,
        images: Sequence[Sam2Prepared],
        boxes_xyxy: Sequence[np.ndarray],
        *,
        points: Sequence[Sequence[np.ndarray] | None] | None = None,
        box_given: Sequence[np.ndarray | None] | None = None,
    ) -> list[SegmentationResult]:
        """Segment every instance of every image; one encoder pass over all images that have any.

        Args:
            images: Prepared images (``prepare``).
            boxes_xyxy: One ``(N_i, 4)`` array per image, pixel ``x1 y1 x2 y2`` in its original frame (N_i may be 0:
                the image is then not encoded).
            points: Per image, None or one ``(K, 3)`` pixel ``x y label`` array per instance (1 positive, 0
                negative), prompted after its box corners where ``box_given`` says the box is a prompt.
            box_given: Per image, None (every box is a prompt) or ``(N_i,)`` bool.

        Returns:
            One ``SegmentationResult`` per image (``stretched``: the logits cover the whole resized image), masks
            aligned 1:1 with the instances.
        """
        boxes_per_image, prompts_per_image = checked_prompts(images, boxes_xyxy, points, box_given)
        frame = (self.image_size, self.image_size)
        results: list[SegmentationResult | None] = [
            None if len(b) else SegmentationResult.empty(img.original_hw, frame)
            for img, b in zip(images, boxes_per_image, strict=True)
        ]
        todo = [i for i, b in enumerate(boxes_per_image) if len(b)]
        if todo:
            device = self.device
            with torch.inference_mode():
                batch = torch.stack([self._encoder_input(images[i], device) for i in todo])
                with self._autocast(device):
                    embed, high_res = self._encode(batch)
                if self._half and not all_finite(embed, *high_res):  # fp16 overflow: this batch again in float32
                    self._redone_in_f32 += 1
                    embed, high_res = self._encode(batch)
                image_pe = self._parts.sam_prompt_encoder.get_dense_pe()
                for k, i in enumerate(todo):
                    features = _Features(embed[k : k + 1], tuple(level[k : k + 1] for level in high_res))
                    results[i] = self._decode(features, image_pe, images[i], boxes_per_image[i], prompts_per_image[i])
        return [r for r in results if r is not None]

    def _decode(
        self,
        features: _Features,
        image_pe: torch.Tensor,
        image: Sam2Prepared,
        boxes_xyxy: np.ndarray,
        prompts: InstancePrompts,
    ) -> SegmentationResult:
        """All instances of one image, in groups of one prompt shape, each in chunks of the decoder batch."""
        device = features.image_embed.device
        h0, w0 = image.original_hw
        side = self.image_size
        # transform_coords: float32 on the device, divided by the original width/height, times the input size.
        scale = torch.tensor([w0, h0], dtype=torch.float32, device=device)
        corners = torch.as_tensor(boxes_xyxy, dtype=torch.float32, device=device).reshape(-1, 2, 2) / scale * side
        chunk = self._decoder_batch_size or default_decoder_batch_size(device)
        n = len(boxes_xyxy)
        low_res: torch.Tensor | None = None
        iou_pred = torch.empty((n,), dtype=torch.float32, device=device)
        for with_box, n_points, members in prompts.groups():
            for start in range(0, len(members), chunk):
                index = members[start : start + chunk]
                coords, labels = self._prompt_points(corners, prompts, index, with_box, n_points, scale, side)
                # float32 even with half=True: the Fourier encoding of coordinates in bfloat16 moves them by pixels.
                sparse, dense = self._parts.sam_prompt_encoder(points=(coords, labels), boxes=None, masks=None)
                logits, iou = self._decode_chunk(features, image_pe, sparse, dense, self._half)
                if self._half and not all_finite(logits, iou):  # one sync per chunk, only in half precision
                    self._redone_in_f32 += 1
                    logits, iou = self._decode_chunk(features, image_pe, sparse, dense, False)
                if low_res is None:
                    low_res = torch.empty((n, 1, *logits.shape[-2:]), dtype=torch.float32, device=device)
                at = torch.as_tensor(index, dtype=torch.int64, device=device)
                low_res[at] = logits.float()
                iou_pred[at] = iou.float()[:, 0]
        assert low_res is not None  # n >= 1 instances, each in one group
        low_res = self._refine_logits(low_res)
        threshold = float(getattr(self._model, "mask_threshold", 0.0))
        frame = (4 * low_res.shape[-2], 4 * low_res.shape[-1])  # stability_score reads the whole logits
        finished = finished_masks(low_res, frame, image.original_hw, threshold, stretched=True)
        return SegmentationResult(
            iou_pred=iou_pred.cpu().numpy().astype(np.float32, copy=False),
            low_res_logits=finished.low_res_logits,
            input_hw=frame,
            original_hw=image.original_hw,
            eager_masks=finished.eager_masks,
            mask_threshold=threshold,
            stretched=True,
            crops=finished.crops,
            stability=finished.stability,
        )

    def _decode_chunk(
        self, features: _Features, image_pe: torch.Tensor, sparse: torch.Tensor, dense: torch.Tensor, half: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The mask decoder on one chunk of prompts: ``(logits (B, 1, h, w), iou (B, 1))``, under autocast if
        ``half`` (else in float32, the features converted)."""
        embed = features.image_embed if half else features.image_embed.float()
        high_res = [level if half else level.float() for level in features.high_res]
        with self._autocast(features.image_embed.device, half):
            logits, iou, _, _ = self._parts.sam_mask_decoder(
                image_embeddings=embed,
                image_pe=image_pe,
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=False,
                repeat_image=True,
                high_res_features=high_res,
            )
        return logits, iou

    @staticmethod
    def _prompt_points(
        corners: torch.Tensor,
        prompts: InstancePrompts,
        index: list[int],
        with_box: bool,
        n_points: int,
        scale: torch.Tensor,
        side: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, K', 2)`` float32 coordinates in the input frame and ``(B, K')`` int32 labels of the instances
        ``index``: box corners (labels 2, 3) first where ``with_box``, then the instance's points."""
        device = corners.device
        parts_xy: list[torch.Tensor] = []
        parts_label: list[torch.Tensor] = []
        if with_box:
            parts_xy.append(corners[index])
            parts_label.append(torch.tensor([[2, 3]], dtype=torch.int32, device=device).repeat(len(index), 1))
        if n_points:
            xy_label = np.stack([prompts.points[i] for i in index])  # (B, K, 3) float64
            xy = torch.as_tensor(xy_label[..., :2], dtype=torch.float32, device=device) / scale * side
            parts_xy.append(xy)
            parts_label.append(torch.as_tensor(xy_label[..., 2], dtype=torch.int32, device=device))
        return torch.cat(parts_xy, dim=1), torch.cat(parts_label, dim=1)


def to_device(model: torch.nn.Module, device: torch.device | str) -> torch.nn.Module:
    """``model`` on ``device`` (oneDNN float32 layers on CPU where ``onednn_for`` says so), or a one-line
    ModelError."""
    target = torch.device(device)
    try:
        model = model.to(target)
    except (RuntimeError, AssertionError, ValueError) as err:
        raise ModelError(
            f"cannot move the segmenter to device {str(device)!r} ({one_line(err, 100)}); choose an available "
            f"device (e.g. cpu)"
        ) from err
    if onednn_for(target, None):
        use_onednn(model)
    return model


def _load_entry(path: Path | None, device: torch.device | str, half: bool, variant: str) -> Sam2Segmenter:
    """``SegmenterEntry.load`` for this family (it always loads from a file)."""
    if path is None:
        raise ModelError(f"a SAM 2 segmenter needs a checkpoint file; {SAM_FLAG_HINT}")
    return Sam2Segmenter._load(path, device, half, variant)


#: This family's entry in ``autoannotate.segmenters.SEGMENTERS`` (which holds a lazy stand-in for it).
SAM2_ENTRY = SegmenterEntry(
    name="sam2",
    recognise=recognise_sam2,
    load=_load_entry,
    variants=SAM2_VARIANTS,
    assets=SAM2_ASSET_NAMES,
    explain=explain_sam2,
)
