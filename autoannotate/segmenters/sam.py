"""Box-prompted MobileSAM/SAM segmentation: variants recognised by content, batched encoder, one mask per box.

The numerics follow the MobileSAM reference predictor (``mobile_sam.SamPredictor``) step by step:

1. ``BoxSegmenter.prepare`` (``sam_transforms.prepare_image``): HWC uint8 RGB resized with Pillow bilinear so that its
   longest side is 1024, exactly as ``ResizeLongestSide.apply_image`` does (pure CPU, for decode worker threads).
2. ``BoxSegmenter.predict``: normalise with the pixel mean/std, *then* zero-pad bottom/right to 1024x1024 (the
   reference order; ultralytics pads first), run the image encoder once over the batch of images, and per image run
   the prompt encoder and mask decoder over all its boxes with ``multimask_output=False``.
3. Postprocess like ``Sam.postprocess_masks`` (``sam_transforms.postprocess_logits``): bilinear upscale of the
   256x256 logits to the padded 1024x1024 frame, crop to the resized image, bilinear resize to the original size,
   threshold at 0. ``BoxSegmenter.segment`` returns these as ``types.Masks``.

The model architectures come from ultralytics (``ultralytics.models.sam.build``); the variant is recognised from the
checkpoint's contents, not from its file name (``recognise_sam``), and ``SAM_ENTRY`` is this family's entry in
``autoannotate.segmenters.SEGMENTERS``. ultralytics is imported lazily so that importing this module is cheap.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch
import torch.nn.functional as F

from autoannotate.errors import ModelError, one_line
from autoannotate.runtime.cpu_attention import chunk_window_attention
from autoannotate.runtime.cpu_kernels import fuse_for_cpu, onednn_for, use_onednn
from autoannotate.runtime.device import half_dtype, host_to_device, page_locked, release_device_memory
from autoannotate.segmenters.base import BOX_PROMPTS, POINT_PROMPTS, SegmenterEntry
from autoannotate.segmenters.prompting import InstancePrompts, checked_prompts, prompt_arrays
from autoannotate.segmenters.sam_decoder import ImageSide, shared_image_decoder
from autoannotate.segmenters.sam_transforms import (
    LOW_RES_SIZE,
    SAM_IMAGE_SIZE,
    PreparedImage,
    SegmentationResult,
    all_finite,
    finished_masks,
    prepare_image,
)
from autoannotate.segmenters.weights import SAM_FLAG_HINT, read_state_dict, resolve_weights, weights_source
from autoannotate.types import Detections, Masks

if TYPE_CHECKING:
    from autoannotate.runtime.openvino_parts import OpenVinoSettings
    from autoannotate.segmenters.sam_openvino import OpenVinoSam

__all__ = [
    "SAM_ASSET_NAMES",
    "SAM_ENTRY",
    "SAM_VARIANTS",
    "BoxSegmenter",
    "default_batch_size",
    "default_decoder_batch_size",
    "detect_sam_variant",
    "explain_sam",
    "load_sam",
    "recognise_sam",
]

#: Variant names returned by ``load_sam`` (ultralytics asset naming; sam_h has no ultralytics asset).
SAM_VARIANTS = ("mobile_sam", "sam_b", "sam_l", "sam_h")
#: Checkpoints that ultralytics publishes in its assets release and that this module can load.
SAM_ASSET_NAMES = frozenset({"mobile_sam.pt", "sam_b.pt", "sam_l.pt"})

# SAM's ImageNet pixel statistics (RGB, 0-255), used only if a model does not carry them as buffers.
_PIXEL_MEAN_RGB = (123.675, 116.28, 103.53)
_PIXEL_STD_RGB = (58.395, 57.12, 57.375)
# (ViT embed dim, number of blocks) -> variant.
_VIT_VARIANTS = {(768, 12): "sam_b", (1024, 24): "sam_l", (1280, 32): "sam_h"}
_NOT_SAM = "is not a SAM/MobileSAM checkpoint (no SAM image encoder, prompt encoder and mask decoder weights found)"


# --------------------------------------------------------------------------------------------------------------------
# Weights: recognise, load
# --------------------------------------------------------------------------------------------------------------------


def _classify(state_dict: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """``(variant, None)`` for a checkpoint this module loads; ``(None, why)`` for one of the SAM family that it does
    not (an unknown ViT size; SAM 2 and SAM 3 are ``segmenters.sam2``'s and ``segmenters.sam3_interactive``'s),
    ``why`` a clause such as ``"is a SAM ViT checkpoint of unknown size ..."``; else ``(None, None)``. Reads key names
    and ``.shape`` only."""
    keys = [str(k) for k in state_dict]
    has_heads = any(k.startswith("mask_decoder.") for k in keys) and any(k.startswith("prompt_encoder.") for k in keys)
    if has_heads and any(k.startswith("image_encoder.layers.") for k in keys):
        return "mobile_sam", None
    patch = state_dict.get("image_encoder.patch_embed.proj.weight")
    block_ids = {m.group(1) for k in keys if (m := re.match(r"image_encoder\.blocks\.(\d+)\.", k))}
    if has_heads and patch is not None and block_ids:
        embed_dim, depth = int(patch.shape[0]), len(block_ids)
        variant = _VIT_VARIANTS.get((embed_dim, depth))
        if variant is None:
            return None, (
                f"is a SAM ViT checkpoint of unknown size (embed dim {embed_dim}, {depth} blocks; known: "
                f"ViT-B 768/12, ViT-L 1024/24, ViT-H 1280/32)"
            )
        return variant, None
    return None, None


def recognise_sam(state_dict: Mapping[str, Any]) -> str | None:
    """The ``SAM_VARIANTS`` name of a state dict (name -> tensor; names and shapes only), None when not one of them.

    ``"mobile_sam"``: TinyViT encoder (``image_encoder.layers.*``); ``"sam_b"`` / ``"sam_l"`` / ``"sam_h"``: ViT
    encoder ``image_encoder.blocks.N``, told apart by the patch-embedding width 768/1024/1280 and the block count
    12/24/32. Each also needs the ``prompt_encoder.*`` and ``mask_decoder.*`` weights.
    """
    return _classify(state_dict)[0]


def explain_sam(state_dict: Mapping[str, Any]) -> str | None:
    """Why a SAM-family state dict that ``recognise_sam`` refuses is not loaded (an unknown ViT size), as a
    clause after the file's name; None for a checkpoint that is no SAM at all (or one it recognises)."""
    return _classify(state_dict)[1]


def detect_sam_variant(state_dict: Mapping[str, Any], source: str = "checkpoint") -> str:
    """``recognise_sam``, raising instead of returning None.

    Args:
        state_dict: Parameter name -> tensor (only names and ``.shape`` are read, so meta tensors work).
        source: How to name the checkpoint in error messages (e.g. ``weights.weights_source(path)``).

    Returns:
        One of ``SAM_VARIANTS``.

    Raises:
        ModelError: An unknown ViT size, or not a SAM checkpoint at all.
    """
    variant, why = _classify(state_dict)
    if variant is None:
        raise ModelError(f"{source} {why or _NOT_SAM}; {SAM_FLAG_HINT}")
    return variant


def _build_architecture(variant: str) -> torch.nn.Module:
    """The ultralytics SAM architecture of ``variant``, randomly initialised on CPU (no download)."""
    from ultralytics.models.sam import build

    builders: dict[str, Callable[..., torch.nn.Module]] = {
        "mobile_sam": build.build_mobile_sam,
        "sam_b": build.build_sam_vit_b,
        "sam_l": build.build_sam_vit_l,
        "sam_h": build.build_sam_vit_h,
    }
    return builders[variant](checkpoint=None)


def load_sam(weights: str | Path, variant: str | None = None) -> tuple[torch.nn.Module, str]:
    """Load a SAM/MobileSAM checkpoint into the matching ultralytics architecture, on CPU, in eval mode.

    Args:
        weights: Path of a checkpoint: a plain state dict, or a dict holding one under ``"model"`` or
            ``"state_dict"``. The variant is recognised from the contents (see ``detect_sam_variant``).
        variant: The ``SAM_VARIANTS`` name already recognised (by the registry); the weights must still match it.

    Returns:
        ``(model, variant)``: the ultralytics ``SAMModel`` (with ``.image_encoder``, ``.prompt_encoder``,
        ``.mask_decoder``) on CPU in eval mode, and its variant name from ``SAM_VARIANTS``.

    Raises:
        ModelError: Unreadable file, not a SAM checkpoint, unsupported variant, or weights that do not match the
            architecture (strict loading).
    """
    path = Path(weights)
    source = weights_source(path)
    if variant is not None and variant not in SAM_VARIANTS:
        raise ModelError(f"unknown SAM variant {variant!r} (known: {', '.join(SAM_VARIANTS)}); {SAM_FLAG_HINT}")
    if not path.is_file():
        raise ModelError(f"{source} does not exist; pass --sam-model PATH to an existing checkpoint")
    state_dict = read_state_dict(path)
    variant = variant or detect_sam_variant(state_dict, source)
    model = _build_architecture(variant)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    wrong_shape = [k for k in expected if k in state_dict and state_dict[k].shape != expected[k].shape]
    if missing or unexpected or wrong_shape:
        examples = ", ".join((missing + unexpected + wrong_shape)[:3])
        raise ModelError(
            f"{source} does not match the {variant} architecture ({len(missing)} missing, {len(unexpected)} "
            f"unexpected, {len(wrong_shape)} mis-shaped tensors, e.g. {examples}); the file may be damaged or from "
            f"an incompatible SAM fork; {SAM_FLAG_HINT}"
        )
    try:
        model.load_state_dict(state_dict, strict=True)
    except Exception as err:
        raise ModelError(
            f"{source} could not be loaded into the {variant} architecture ({one_line(err, 100)}); {SAM_FLAG_HINT}"
        ) from err
    # eval() after loading, not only before: TinyViT attention caches its bias table when switched to eval mode,
    # and the builders switch to eval before any weights are loaded.
    model.eval()
    return model, variant


def default_batch_size(device: torch.device | str) -> int:
    """How many images to pass to one ``BoxSegmenter.segment`` call on ``device``.

    1 on CPU (batching the TinyViT encoder on CPU is slower per image than one at a time), 8 on CUDA.
    """
    return 8 if torch.device(device).type == "cuda" else 1


def default_decoder_batch_size(device: torch.device | str) -> int:
    """Most boxes per mask-decoder call on ``device``: 32 on CUDA (one launch sequence for a typical image), 2 on
    CPU. Nothing is shared between the boxes of one call there (the image side is computed once per image anyway,
    ``sam_decoder``), and each box carries ~30 MB of its own activations, so larger calls only spill the caches:
    MobileSAM's decoder at one thread on the Intel Xeon VM, ms per box for 32 boxes in chunks of 1/2/4/8/16/32
    (best-worst of 3 rounds, ``benchmarks/bench_decoder.py --chunks 1,2,4,8,16,32 --openvino``): PyTorch 129-224 /
    118-181 / 142-194 / 154-269 / 185-310 / 276-327; OpenVINO 151-203 / 144-148 / 123-146 / 120-154 / 124-143 /
    141-167. Two rather than one: half the calls, and on OpenVINO only two prompt shapes ever reach the compiled
    decoder (each new shape is planned on its first call)."""
    return 32 if torch.device(device).type == "cuda" else 2


# --------------------------------------------------------------------------------------------------------------------
# Segmenter
# --------------------------------------------------------------------------------------------------------------------


class BoxSegmenter:
    """Box-prompted SAM predictor over batches of images; one mask per box, in box order (a ``Segmenter``).

    ``prepare`` (CPU, any thread), then ``segment`` (``types.Masks``) or ``predict`` (SAM's raw outputs, with the
    low-res logits). The device is the model's: move the model (``from_weights(..., device=...)`` does) and the
    segmenter follows.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        half: bool = False,
        decoder_batch_size: int | None = None,
        variant: str = "unknown",
        weights_path: Path | None = None,
    ) -> None:
        """Wrap a SAM model (``.image_encoder``, ``.prompt_encoder``, ``.mask_decoder`` as built by ultralytics).

        Args:
            model: The SAM model; it is switched to eval mode.
            half: Run encoder and decoder under autocast in ``runtime.device.half_dtype`` (bfloat16 on the CPU and
                on GPUs that have it, else float16); logits are converted back to float32 before postprocessing. A
                batch's embeddings or a decoder chunk's outputs that are not finite are computed again in float32
                (``redone_in_f32`` counts them).
            decoder_batch_size: At most this many boxes per mask-decoder call (default
                ``default_decoder_batch_size(device)``). The decoder holds ~30 MB of float32 activations per box
                (the image embedding is repeated per box), so this bounds memory on images with hundreds of boxes;
                results do not depend on it beyond float rounding.
            variant: The variant name, for reporting (``load_sam`` returns it).
            weights_path: The checkpoint the model was loaded from, for reporting.
        """
        for part in ("image_encoder", "prompt_encoder", "mask_decoder"):
            if not isinstance(getattr(model, part, None), torch.nn.Module):
                raise ModelError(
                    f"the model given to BoxSegmenter has no {part} module, so it is not a SAM model; load one with "
                    f"autoannotate.segmenters.sam.load_sam or BoxSegmenter.from_weights"
                )
        if not callable(getattr(model.prompt_encoder, "get_dense_pe", None)):
            raise ModelError(
                "the SAM prompt encoder has no get_dense_pe(); load the model with autoannotate.segmenters.sam.load_sam"
            )
        img_size = getattr(model.image_encoder, "img_size", SAM_IMAGE_SIZE)
        if img_size != SAM_IMAGE_SIZE:
            raise ModelError(
                f"the SAM image encoder works at {img_size} px, this predictor needs {SAM_IMAGE_SIZE}; {SAM_FLAG_HINT}"
            )
        if decoder_batch_size is not None and decoder_batch_size < 1:
            raise ValueError(f"decoder_batch_size must be >= 1, got {decoder_batch_size}")
        self._model = model.eval()
        # Typed handles on the three parts (nn.Module attribute access is untyped); they move with the model.
        parts = cast(Any, model)
        self._image_encoder = cast(Callable[[torch.Tensor], torch.Tensor], parts.image_encoder)
        self._prompt_encoder = cast(Callable[..., tuple[torch.Tensor, torch.Tensor]], parts.prompt_encoder)
        self._mask_decoder = cast(Callable[..., tuple[torch.Tensor, torch.Tensor]], parts.mask_decoder)
        self._dense_pe = cast(Callable[[], torch.Tensor], parts.prompt_encoder.get_dense_pe)
        self._shared_decoder = shared_image_decoder(parts.mask_decoder)
        self._openvino: OpenVinoSam | None = None  # use_openvino: the encoder and decoder compiled by OpenVINO
        self._half = bool(half)
        self._redone_in_f32 = 0
        self._decoder_batch_size = decoder_batch_size
        self._variant = variant
        self._weights_path = weights_path

    @classmethod
    def from_weights(
        cls,
        weights: str | Path,
        device: torch.device | str,
        half: bool = False,
        onednn: bool | None = None,
    ) -> BoxSegmenter:
        """Resolve (``weights.resolve_weights``), load (``load_sam``) and move a checkpoint to ``device``.

        Args:
            weights: A checkpoint path, or one of ``SAM_ASSET_NAMES`` (downloaded if not found locally).
            device: Where the model runs.
            half: See ``BoxSegmenter``.
            onednn: On CPU, run the float32 linear layers and convolutions through oneDNN; default:
                ``cpu_kernels.onednn_for`` decides (x86-64 unless ``AUTOANNOTATE_CPU_KERNELS=default``). Ignored on
                other devices.

        Raises:
            ModelError: As ``resolve_weights`` and ``load_sam``, or the device cannot take the model.
        """
        return cls._load(resolve_weights(weights, assets=SAM_ASSET_NAMES), device, half, None, onednn)

    @classmethod
    def _load(
        cls, path: Path, device: torch.device | str, half: bool, variant: str | None, onednn: bool | None = None
    ) -> BoxSegmenter:
        """``load_sam(path, variant)`` moved to ``device`` (oneDNN layers on CPU as ``onednn_for`` decides)."""
        model, variant = load_sam(path, variant)
        target = torch.device(device)
        try:
            model = model.to(target)
        except (RuntimeError, AssertionError, ValueError) as err:
            raise ModelError(
                f"cannot move the SAM model to device {str(device)!r} ({one_line(err, 100)}); choose an available "
                f"device (e.g. cpu)"
            ) from err
        encoder = getattr(model, "image_encoder", None)
        if onednn_for(target, onednn):
            if isinstance(encoder, torch.nn.Module):
                fuse_for_cpu(encoder)  # BatchNorms folded, GELUs as oneDNN post-ops (TinyViT); checked per block
            use_onednn(model)
        if target.type == "cpu" and isinstance(encoder, torch.nn.Module):
            chunk_window_attention(encoder)  # TinyViT's windows a cache-sized group at a time (any CPU: same output)
        return cls(model, half=half, variant=variant, weights_path=path)

    #: Box prompts, point prompts, and both together (``segmenters.base.prompt_kinds``).
    prompt_kinds = frozenset({BOX_PROMPTS, POINT_PROMPTS})

    def release_cached_memory(self) -> None:
        """Return cached CUDA memory to the device (after an out-of-memory error); nothing to do on CPU."""
        release_device_memory(self.device)

    def use_openvino(self, settings: OpenVinoSettings, model_sha256: str | None, convert: bool = True) -> str:
        """Run the image encoder and the mask decoder on OpenVINO from now on (``segmenters.sam_openvino``); the
        prompt encoder and postprocessing stay in PyTorch. ``settings.precision`` ``"bf16"`` is what ``half`` means
        there.

        Args:
            settings: See ``runtime.openvino_parts.OpenVinoSettings``.
            model_sha256: The checkpoint's sha256, for the cache key (None: a digest of the weights).
            convert: Convert the parts when the cache does not hold them (else raise).

        Returns:
            What runs, for the manifest and the console, e.g. ``"openvino 2026.4.1 f32 (converted)"``.

        Raises:
            OpenVinoUnavailable: One line: not installed, not a CPU float32 model, or a part failed to convert or
                compile (nothing changed: PyTorch keeps running it).
        """
        from autoannotate.runtime.openvino_parts import OpenVinoUnavailable, openvino_version
        from autoannotate.segmenters.sam_openvino import openvino_sam

        if self.device.type != "cpu":
            raise OpenVinoUnavailable(f"OpenVINO runs on the CPU, this model is on {self.device}")
        if self._shared_decoder is None:
            raise OpenVinoUnavailable(f"{self._variant}'s mask decoder has no OpenVINO path")
        self._openvino = openvino_sam(self._model, self._shared_decoder, self._variant, model_sha256, settings, convert)
        how = "converted and cached" if self._openvino.converted else "from the cache"
        return f"openvino {openvino_version()} {self._openvino.precision} ({how})"

    @property
    def runtime(self) -> str:
        """``"openvino"`` once ``use_openvino`` succeeded, else ``"torch"``."""
        return "torch" if self._openvino is None else "openvino"

    @property
    def model(self) -> torch.nn.Module:
        """The wrapped SAM model."""
        return self._model

    @property
    def variant(self) -> str:
        """The variant name (``"mobile_sam"``, ``"sam_b"``, ...), ``"unknown"`` for a model given as is."""
        return self._variant

    @property
    def weights_path(self) -> Path | None:
        """The checkpoint file the model was loaded from (None for a model given as is)."""
        return self._weights_path

    def prepare(self, image_rgb: np.ndarray) -> PreparedImage:
        """``sam_transforms.prepare_image``: ``(H, W, 3)`` uint8 RGB resized to longest side 1024 (CPU only,
        thread-safe; the pipeline calls it in its decode workers), page-locked there for a CUDA device."""
        prepared = prepare_image(image_rgb)
        pixels = page_locked(prepared.image_1024_chw, self.device)
        return prepared if pixels is prepared.image_1024_chw else dataclasses.replace(prepared, image_1024_chw=pixels)

    def default_batch(self) -> int:
        """Images per ``segment`` call on this segmenter's device (``default_batch_size``)."""
        return default_batch_size(self.device)

    @property
    def half(self) -> bool:
        """Whether encoder and decoder run under reduced-precision autocast."""
        return self._half

    @property
    def device(self) -> torch.device:
        """The device of the model's parameters, where all computation runs."""
        return next(self._model.parameters()).device

    @property
    def redone_in_f32(self) -> int:
        """How many encoder batches and decoder chunks gave non-finite values in half precision and were computed
        again in float32 (on OpenVINO too)."""
        return self._redone_in_f32 + (self._openvino.redone_in_f32 if self._openvino is not None else 0)

    def _autocast(self, device: torch.device, half: bool | None = None) -> AbstractContextManager[Any]:
        if not (self._half if half is None else half):
            return nullcontext()
        return torch.autocast(device_type=device.type, dtype=half_dtype(device))

    def _pixel_stats(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """``(3, 1, 1)`` float32 mean and std on ``device``: the model's buffers, else SAM's constants."""
        mean = getattr(self._model, "pixel_mean", None)
        std = getattr(self._model, "pixel_std", None)
        if not (isinstance(mean, torch.Tensor) and isinstance(std, torch.Tensor)):
            mean, std = torch.tensor(_PIXEL_MEAN_RGB), torch.tensor(_PIXEL_STD_RGB)
        return (
            mean.reshape(3, 1, 1).to(device=device, dtype=torch.float32),
            std.reshape(3, 1, 1).to(device=device, dtype=torch.float32),
        )

    def _encoder_input(
        self, image: PreparedImage, device: torch.device, mean: torch.Tensor, std: torch.Tensor
    ) -> torch.Tensor:
        """``(3, 1024, 1024)`` float32: normalised, then zero-padded bottom/right (the reference order)."""
        x = host_to_device(image.image_1024_chw, device)  # on CUDA asynchronous: pinned in ``prepare``
        x = (x.float() - mean) / std
        h, w = image.input_hw
        return F.pad(x, (0, SAM_IMAGE_SIZE - w, 0, SAM_IMAGE_SIZE - h))

    def segment(self, prepared: Sequence[PreparedImage], prompts: Sequence[Detections]) -> list[Masks]:
        """Segment every instance of every image: ``predict`` with each image's boxes and points, as ``types.Masks``
        (``SegmentationResult.to_masks``).

        Returns:
            One ``Masks`` per image, in order, aligned 1:1 with its instances, in its original ``(H, W)`` frame:
            ``scores`` SAM's predicted IoU (float32), ``stability`` ``quality.stability_score`` of each instance's
            low-res logits, the masks held when they fit a memory budget, else computed one at a time by ``render``.

        Raises:
            ValueError: As ``predict``.
        """
        boxes_xyxy, points, box_given = prompt_arrays(prompts)
        return [result.to_masks() for result in self.predict(prepared, boxes_xyxy, points=points, box_given=box_given)]

    def predict(
        self,
        images: Sequence[PreparedImage],
        boxes_xyxy: Sequence[np.ndarray],
        *,
        points: Sequence[Sequence[np.ndarray] | None] | None = None,
        box_given: Sequence[np.ndarray | None] | None = None,
    ) -> list[SegmentationResult]:
        """Segment every instance of every image; one encoder pass over all images that have any.

        Args:
            images: Prepared images (``prepare``); pass ``default_batch()`` at a time.
            boxes_xyxy: One ``(N_i, 4)`` float array per image: pixel ``x1, y1, x2, y2`` in that image's
                original ``(H, W)`` frame. ``N_i`` may be 0 (the image is then not encoded at all).
            points: Per image, None (box prompts only) or one ``(K, 3)`` array per instance, pixel ``x y label``
                (1 positive, 0 negative), prompted together with its box where ``box_given`` says so, as
                ``SamPredictor.predict(point_coords, point_labels, box)`` does for one instance.
            box_given: Per image, None (every box is a prompt) or ``(N_i,)`` bool: which boxes are prompts.

        Returns:
            One ``SegmentationResult`` per image, in order; masks ``(N_i, H, W)`` bool aligned 1:1 with the boxes.

        Raises:
            ValueError: ``images`` and ``boxes_xyxy`` differ in length, or boxes are not finite ``(N, 4)`` arrays.
        """
        boxes_per_image, prompts_per_image = checked_prompts(images, boxes_xyxy, points, box_given)
        results: list[SegmentationResult | None] = [
            None if len(b) else SegmentationResult.empty(img.original_hw, img.input_hw)
            for img, b in zip(images, boxes_per_image, strict=True)
        ]
        todo = [i for i, b in enumerate(boxes_per_image) if len(b)]
        if todo:
            device = self.device
            with torch.inference_mode():
                mean, std = self._pixel_stats(device)
                batch = torch.stack([self._encoder_input(images[i], device, mean, std) for i in todo])
                # Channels-last: the TinyViT stem and stage-1 depthwise convolutions run 3-4x faster in this
                # layout on CPU (oneDNN), and the later stages already produce it; values are unchanged.
                batch = batch.contiguous(memory_format=torch.channels_last)
                if self._openvino is not None:
                    embeddings = self._openvino.encode(batch)
                else:
                    with self._autocast(device):
                        embeddings = self._image_encoder(batch)
                    if self._half and not all_finite(embeddings):  # fp16 overflow: redo in float32
                        self._redone_in_f32 += 1
                        embeddings = self._image_encoder(batch)
                image_pe = self._dense_pe()
                for k, i in enumerate(todo):
                    results[i] = self._segment_one(
                        embeddings[k : k + 1], image_pe, images[i], boxes_per_image[i], prompts_per_image[i], device
                    )
        return [r for r in results if r is not None]

    def _segment_one(
        self,
        embedding: torch.Tensor,
        image_pe: torch.Tensor,
        image: PreparedImage,
        boxes_xyxy: np.ndarray,
        prompts: InstancePrompts,
        device: torch.device,
    ) -> SegmentationResult:
        """Decode all instances of one image from its ``(1, C, 64, 64)`` embedding and postprocess the masks.

        Instances are decoded in groups of one prompt shape (box or not, number of points), each in chunks of at
        most the decoder batch; outputs go back to instance order.
        """
        (h0, w0), (h1, w1) = image.original_hw, image.input_hw
        # Reference apply_boxes / apply_coords: float64 scaling per axis, then float32 on the device.
        scale_xyxy = np.array([w1 / w0, h1 / h0, w1 / w0, h1 / h0], np.float64)
        boxes_input = torch.as_tensor(boxes_xyxy * scale_xyxy, dtype=torch.float32, device=device)
        chunk = self._decoder_batch_size or default_decoder_batch_size(device)
        n = len(boxes_xyxy)
        low_res = torch.empty((n, 1, LOW_RES_SIZE, LOW_RES_SIZE), dtype=torch.float32, device=device)
        iou_pred = torch.empty((n,), dtype=torch.float32, device=device)
        sides: dict[bool, ImageSide] = {}  # the decoder's work shared by all prompts of this image, per precision
        shared = self._openvino or self._shared_decoder

        def decode(sparse: torch.Tensor, dense: torch.Tensor, half: bool) -> tuple[torch.Tensor, torch.Tensor]:
            image_embedding = embedding if half else embedding.float()
            with self._autocast(device, half):
                if shared is None:
                    return self._mask_decoder(
                        image_embeddings=image_embedding,
                        image_pe=image_pe,
                        sparse_prompt_embeddings=sparse,
                        dense_prompt_embeddings=dense,
                        multimask_output=False,
                    )
                # No mask prompt: every prompt's dense embedding is the same no-mask vector.
                if half not in sides:
                    sides[half] = shared.image_side(image_embedding, image_pe, dense[:1])
                return shared(sides[half], sparse)

        for with_box, n_points, members in prompts.groups():
            for start in range(0, len(members), chunk):
                index = members[start : start + chunk]
                point_input = None
                if n_points:
                    xy_label = np.stack([prompts.points[i] for i in index]).astype(np.float64)  # (B, K, 3)
                    coords = torch.as_tensor(xy_label[..., :2] * scale_xyxy[:2], dtype=torch.float32, device=device)
                    labels = torch.as_tensor(xy_label[..., 2], dtype=torch.int64, device=device)
                    point_input = (coords, labels)
                # The prompt encoder stays in float32 even with half=True: box corners and points go through a
                # Fourier positional encoding whose matmul, autocast to bfloat16 (8-bit mantissa), would move them by
                # up to ~4 px of the 1024 frame.
                sparse, dense = self._prompt_encoder(
                    points=point_input, boxes=boxes_input[index] if with_box else None, masks=None
                )
                logits, iou = decode(sparse, dense, self._half)
                # OpenVINO checks and redoes its own; here one sync per chunk, only in half precision
                if self._half and self._openvino is None and not all_finite(logits, iou):
                    self._redone_in_f32 += 1
                    logits, iou = decode(sparse, dense, False)
                at = torch.as_tensor(index, dtype=torch.int64, device=device)
                low_res[at] = logits.float()
                iou_pred[at] = iou.float()[:, 0]

        threshold = float(getattr(self._model, "mask_threshold", 0.0))
        finished = finished_masks(low_res, image.input_hw, image.original_hw, threshold)
        return SegmentationResult(
            iou_pred=iou_pred.cpu().numpy().astype(np.float32, copy=False),
            low_res_logits=finished.low_res_logits,
            input_hw=image.input_hw,
            original_hw=image.original_hw,
            eager_masks=finished.eager_masks,
            mask_threshold=threshold,
            crops=finished.crops,
            stability=finished.stability,
        )


def _load_entry(path: Path | None, device: torch.device | str, half: bool, variant: str) -> BoxSegmenter:
    """``SegmenterEntry.load`` for this family (it always loads from a file)."""
    if path is None:
        raise ModelError(f"a SAM/MobileSAM segmenter needs a checkpoint file; {SAM_FLAG_HINT}")
    return BoxSegmenter._load(path, device, half, variant)


#: This family's entry in ``autoannotate.segmenters.SEGMENTERS`` (which holds a lazy stand-in for it).
SAM_ENTRY = SegmenterEntry(
    name="sam",
    recognise=recognise_sam,
    load=_load_entry,
    variants=SAM_VARIANTS,
    assets=SAM_ASSET_NAMES,
    explain=explain_sam,
)
