"""Box-prompted MobileSAM/SAM segmentation: reference preprocessing, batched encoder, one mask per box.

The numerics follow the MobileSAM reference predictor (``mobile_sam.SamPredictor``) step by step:

1. ``prepare_image``: HWC uint8 RGB resized with Pillow bilinear so that its longest side is 1024, exactly as
   ``ResizeLongestSide.apply_image`` does (pure CPU, thread-safe, meant for decode worker threads).
2. ``BoxSegmenter.segment``: normalise with the pixel mean/std, *then* zero-pad bottom/right to 1024x1024 (the
   reference order; ultralytics pads first), run the image encoder once over the batch of images, and per image run
   the prompt encoder and mask decoder over all its boxes with ``multimask_output=False``.
3. Postprocess like ``Sam.postprocess_masks``: bilinear upscale of the 256x256 logits to the padded 1024x1024 frame,
   crop to the resized image, bilinear resize to the original size, threshold at 0.

The model architectures come from ultralytics (``ultralytics.models.sam.build``); the variant is recognised from the
checkpoint's contents, not from its file name. ultralytics is imported lazily so that importing this module is cheap.
"""

from __future__ import annotations

import pickle
import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from autoannotate.assets import asset_url
from autoannotate.errors import ModelError, one_line
from autoannotate.runtime.cpu_kernels import onednn_for, use_onednn

__all__ = [
    "LOW_RES_SIZE",
    "SAM_ASSET_NAMES",
    "SAM_IMAGE_SIZE",
    "SAM_VARIANTS",
    "BoxSegmenter",
    "PreparedImage",
    "SegmentationResult",
    "default_batch_size",
    "default_decoder_batch_size",
    "detect_sam_variant",
    "load_sam",
    "prepare_image",
    "resolve_sam_weights",
]

#: Side of the square frame the SAM image encoder works in; prepared images have this longest side.
SAM_IMAGE_SIZE = 1024
#: Side of the low-resolution logits the mask decoder returns.
LOW_RES_SIZE = 256
#: Variant names returned by ``load_sam`` (ultralytics asset naming; sam_h has no ultralytics asset).
SAM_VARIANTS = ("mobile_sam", "sam_b", "sam_l", "sam_h")
#: Checkpoints that ultralytics publishes in its assets release and that this module can load.
SAM_ASSET_NAMES = frozenset({"mobile_sam.pt", "sam_b.pt", "sam_l.pt"})

# SAM's ImageNet pixel statistics (RGB, 0-255), used only if a model does not carry them as buffers.
_PIXEL_MEAN_RGB = (123.675, 116.28, 103.53)
_PIXEL_STD_RGB = (58.395, 57.12, 57.375)
# (ViT embed dim, number of blocks) -> variant.
_VIT_VARIANTS = {(768, 12): "sam_b", (1024, 24): "sam_l", (1280, 32): "sam_h"}
_SAM_FLAG_HINT = "pass a SAM or MobileSAM checkpoint with --sam-model (e.g. mobile_sam.pt)"
# Bytes of float32 full-resolution logits allowed per postprocessing chunk.
_POSTPROCESS_BUDGET_BYTES = 256 * 1024**2
# Above this many bytes of (N, H, W) bool masks, masks are computed one box at a time when asked for.
_EAGER_MASK_BYTES = 256 * 1024**2


# --------------------------------------------------------------------------------------------------------------------
# Weights: resolve, recognise, load
# --------------------------------------------------------------------------------------------------------------------


def resolve_sam_weights(
    name_or_path: str | Path,
    *,
    download: Callable[..., Any] | None = None,
) -> Path:
    """Find the SAM checkpoint file to load, downloading a known ultralytics asset if needed.

    Args:
        name_or_path: A path to a local checkpoint (used as is, whatever its name), or an ultralytics asset name
            (``mobile_sam.pt``, ``sam_b.pt``, ``sam_l.pt``) that is looked up in ultralytics' weights directory and
            otherwise downloaded.
        download: The download function, ``ultralytics.utils.downloads.attempt_download_asset`` by default
            (injectable for tests).

    Returns:
        The path of an existing file.

    Raises:
        ModelError: The path does not exist, or the asset cannot be downloaded (e.g. offline). The message names the
            URL to fetch the file from by hand and the ``--sam-model`` flag.
    """
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    if path.exists():
        raise ModelError(f"SAM weights path {str(path)!r} is not a file; pass --sam-model PATH to a .pt checkpoint")
    name = path.name
    is_bare_name = str(name_or_path) == name
    if is_bare_name and re.fullmatch(r"(sam2(\.1)?_\w+|sam3)\.pt", name):
        raise ModelError(f"SAM weights {name!r}: SAM2/SAM3 checkpoints are not supported; {_SAM_FLAG_HINT} or sam_b.pt")
    if not (is_bare_name and name in SAM_ASSET_NAMES):
        raise ModelError(
            f"SAM weights {str(path)!r} does not exist; pass --sam-model PATH to an existing checkpoint "
            f"or one of {', '.join(sorted(SAM_ASSET_NAMES))} to download it"
        )

    manual = f"download {name} from {asset_url(name)} and then pass --sam-model /path/to/{name}"
    try:
        fetch: Callable[..., Any]
        if download is None:
            from ultralytics.utils.downloads import attempt_download_asset

            fetch = attempt_download_asset
        else:
            fetch = download
        # retry=1 (passed on to safe_download): fail fast offline instead of sleeping through back-off retries.
        found = Path(str(fetch(name, retry=1)))
    except Exception as err:  # network, disk, HTTP, ultralytics internals: all mean "get the file by hand"
        raise ModelError(f"SAM weights {name} could not be downloaded ({one_line(err, 100)}); {manual}") from err
    if not found.is_file():
        raise ModelError(f"SAM weights {name} could not be downloaded; {manual}")
    return found


# The global that torch's weights-only unpickler refused, as its message names it ("Unsupported global: GLOBAL
# ultralytics.nn.tasks.DetectionModel was not an allowed global", "unsupported GLOBAL posix.system whose module
# posix is blocked"); no name means the file is no pickle it can follow at all (text, truncated, corrupt).
_REFUSED_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")
_CONVERT_HINT = (
    "if you trust the file, load it in Python yourself and keep its weights only with "
    "torch.save(model.state_dict(), 'sam_weights.pt'), then pass --sam-model sam_weights.pt"
)


def _read_checkpoint(path: Path) -> Any:
    """``torch.load`` on CPU with torch's weights-only unpickler, and never anything else.

    Unpickling an arbitrary object runs whatever its pickle names (``os.system`` included), so a file that the
    weights-only loader refuses is refused here too, saying which object it holds and how to convert it. Every
    checkpoint this module knows (the SAM and MobileSAM releases, ultralytics' mobile_sam.pt, sam_b.pt, sam_l.pt) is
    a plain state dict that loads without allowing any extra type.
    """
    try:
        with warnings.catch_warnings():
            # e.g. "Detected pickle protocol 4": noise on stderr for a file that is then refused in one line anyway
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        refused = _REFUSED_GLOBAL.search(str(err))
        if refused is not None:
            raise ModelError(_refused_object_message(path, refused.group(1))) from None
        # torch's text is a paragraph about its defaults; the reason proper follows "WeightsUnpickler error:"
        _, _, reason = str(err).partition("WeightsUnpickler error:")
        cause: Exception = pickle.UnpicklingError(reason.split("Check the documentation")[0]) if reason else err
    except Exception as err:
        cause = err
    raise ModelError(
        f"SAM weights {str(path)!r} cannot be read as a PyTorch checkpoint (corrupt, truncated or not a .pt "
        f"file: {one_line(cause, 100)}); {_SAM_FLAG_HINT}"
    ) from None


def _refused_object_message(path: Path, global_name: str) -> str:
    """Why a checkpoint holding a pickled object (``global_name``, as the pickle names it) is not loaded."""
    source = f"SAM weights {str(path)!r}"
    shown = global_name if len(global_name) <= 60 else global_name[:57] + "..."
    if global_name.startswith("ultralytics."):
        # recognised from the refused class's name alone: nothing of the file is unpickled to say what it is
        return (
            f"{source} is an Ultralytics model checkpoint (e.g. YOLO, it holds a pickled {shown}), not a "
            f"SAM/MobileSAM state dict; {_SAM_FLAG_HINT}"
        )
    return (
        f"{source} is not a plain state dict: it holds a pickled object ({shown}), and unpickling one can run "
        f"arbitrary code, so it is not loaded; {_CONVERT_HINT}"
    )


def _unwrap_state_dict(checkpoint: Any, source: str) -> dict[str, torch.Tensor]:
    """The tensor state dict inside ``checkpoint``: the checkpoint itself, or its ``"model"``/``"state_dict"``."""
    if isinstance(checkpoint, Mapping):
        for key in ("model", "state_dict"):
            inner = checkpoint.get(key)
            if isinstance(inner, torch.nn.Module):
                from_ultralytics = type(inner).__module__.startswith("ultralytics")
                kind = "an Ultralytics model checkpoint (e.g. YOLO)" if from_ultralytics else "a pickled model"
                raise ModelError(
                    f"{source} is {kind} holding a {type(inner).__name__}, not a SAM/MobileSAM checkpoint; "
                    f"{_SAM_FLAG_HINT}"
                )
            if isinstance(inner, Mapping):
                checkpoint = inner
                break
    if isinstance(checkpoint, torch.nn.Module):
        raise ModelError(
            f"{source} is a pickled {type(checkpoint).__name__}, not a SAM/MobileSAM state dict; {_SAM_FLAG_HINT}"
        )
    if not isinstance(checkpoint, Mapping) or not checkpoint:
        raise ModelError(f"{source} is not a SAM/MobileSAM checkpoint (no state dict inside); {_SAM_FLAG_HINT}")
    state_dict = {str(k): v for k, v in checkpoint.items() if isinstance(v, torch.Tensor)}
    # Checkpoints saved from a DistributedDataParallel wrapper carry a "module." prefix on every key.
    if state_dict and all(k.startswith("module.") for k in state_dict):
        state_dict = {k.removeprefix("module."): v for k, v in state_dict.items()}
    return state_dict


def detect_sam_variant(state_dict: Mapping[str, Any], source: str = "checkpoint") -> str:
    """Recognise the SAM variant of a state dict from its keys and shapes (never from a file name).

    Args:
        state_dict: Parameter name -> tensor (only names and ``.shape`` are read, so meta tensors work).
        source: How to name the checkpoint in error messages (e.g. its path).

    Returns:
        One of ``SAM_VARIANTS``: ``"mobile_sam"`` (TinyViT encoder, ``image_encoder.layers.*``), or ``"sam_b"`` /
        ``"sam_l"`` / ``"sam_h"`` (ViT encoder ``image_encoder.blocks.N``, told apart by the patch-embedding width
        768/1024/1280 and the block count 12/24/32).

    Raises:
        ModelError: A SAM2/SAM3 checkpoint (not supported), an unknown ViT size, or not a SAM checkpoint at all.
    """
    keys = [str(k) for k in state_dict]
    # SAM3 checkpoints hold a detector and a tracker half; SAM2 ones a Hiera trunk and memory modules.
    if any(k.startswith(("detector.", "tracker.")) for k in keys):
        raise ModelError(f"{source} is a SAM3 checkpoint, which is not supported; {_SAM_FLAG_HINT}")
    sam2_markers = ("memory_attention.", "memory_encoder.", "sam_mask_decoder.", "image_encoder.trunk.")
    if any(k.startswith(sam2_markers) for k in keys):
        raise ModelError(f"{source} is a SAM2 checkpoint, which is not supported; {_SAM_FLAG_HINT}")
    has_heads = any(k.startswith("mask_decoder.") for k in keys) and any(k.startswith("prompt_encoder.") for k in keys)
    if has_heads and any(k.startswith("image_encoder.layers.") for k in keys):
        return "mobile_sam"
    patch = state_dict.get("image_encoder.patch_embed.proj.weight")
    block_ids = {m.group(1) for k in keys if (m := re.match(r"image_encoder\.blocks\.(\d+)\.", k))}
    if has_heads and patch is not None and block_ids:
        embed_dim, depth = int(patch.shape[0]), len(block_ids)
        variant = _VIT_VARIANTS.get((embed_dim, depth))
        if variant is None:
            raise ModelError(
                f"{source} is a SAM ViT checkpoint of unknown size (embed dim {embed_dim}, {depth} blocks; known: "
                f"ViT-B 768/12, ViT-L 1024/24, ViT-H 1280/32); {_SAM_FLAG_HINT}"
            )
        return variant
    raise ModelError(
        f"{source} is not a SAM/MobileSAM checkpoint (no SAM image encoder, prompt encoder and mask decoder "
        f"weights found); {_SAM_FLAG_HINT}"
    )


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


def load_sam(weights: str | Path) -> tuple[torch.nn.Module, str]:
    """Load a SAM/MobileSAM checkpoint into the matching ultralytics architecture, on CPU, in eval mode.

    Args:
        weights: Path of a checkpoint: a plain state dict, or a dict holding one under ``"model"`` or
            ``"state_dict"``. The variant is recognised from the contents (see ``detect_sam_variant``).

    Returns:
        ``(model, variant)``: the ultralytics ``SAMModel`` (with ``.image_encoder``, ``.prompt_encoder``,
        ``.mask_decoder``) on CPU in eval mode, and its variant name from ``SAM_VARIANTS``.

    Raises:
        ModelError: Unreadable file, not a SAM checkpoint, unsupported variant, or weights that do not match the
            architecture (strict loading).
    """
    path = Path(weights)
    source = f"SAM weights {str(path)!r}"
    if not path.is_file():
        raise ModelError(f"{source} does not exist; pass --sam-model PATH to an existing checkpoint")
    state_dict = _unwrap_state_dict(_read_checkpoint(path), source)
    variant = detect_sam_variant(state_dict, source)
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
            f"an incompatible SAM fork; {_SAM_FLAG_HINT}"
        )
    try:
        model.load_state_dict(state_dict, strict=True)
    except Exception as err:
        raise ModelError(
            f"{source} could not be loaded into the {variant} architecture ({one_line(err, 100)}); {_SAM_FLAG_HINT}"
        ) from err
    # eval() after loading, not only before: TinyViT attention caches its bias table when switched to eval mode,
    # and the builders switch to eval before any weights are loaded.
    model.eval()
    return model, variant


# --------------------------------------------------------------------------------------------------------------------
# Images and results
# --------------------------------------------------------------------------------------------------------------------


def _preprocess_hw(original_hw: tuple[int, int], long_side: int = SAM_IMAGE_SIZE) -> tuple[int, int]:
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
    input_hw = _preprocess_hw(original_hw)
    # Same calls as torchvision's to_pil_image + resize on a PIL image: Image.fromarray, then Image.resize with
    # the (w, h) size and the BILINEAR filter.
    pil = Image.fromarray(np.ascontiguousarray(image_rgb))
    resized = np.asarray(pil.resize((input_hw[1], input_hw[0]), Image.Resampling.BILINEAR))
    chw = torch.from_numpy(np.ascontiguousarray(resized.transpose(2, 0, 1)))
    return PreparedImage(image_1024_chw=chw, original_hw=original_hw, input_hw=input_hw)


@dataclass(frozen=True)
class SegmentationResult:
    """Masks for one image, aligned 1:1 and in order with the boxes that prompted them.

    Attributes:
        iou_pred: ``(N,)`` float32, SAM's predicted IoU of each mask.
        low_res_logits: ``(N, 256, 256)`` float32 decoder logits in the padded 1024x1024 frame (scaled by 1/4).
        input_hw, original_hw: the resized (longest side 1024) and original ``(H, W)``.
        eager_masks: ``(N, H, W)`` bool when they fit a memory budget, else None and ``mask(i)`` computes each one
            on demand, so that a huge image with many boxes never holds all its full-size masks at once.
    """

    iou_pred: np.ndarray
    low_res_logits: np.ndarray
    input_hw: tuple[int, int]
    original_hw: tuple[int, int]
    eager_masks: np.ndarray | None = None
    mask_threshold: float = 0.0

    def __len__(self) -> int:
        return len(self.iou_pred)

    def mask(self, index: int) -> np.ndarray:
        """``(H, W)`` bool mask of box ``index``, exactly as the batched postprocessing computes it."""
        if self.eager_masks is not None:
            return self.eager_masks[index]
        logits = torch.from_numpy(self.low_res_logits[index : index + 1, None])
        return postprocess_logits(logits, self.input_hw, self.original_hw, self.mask_threshold)[0].numpy()

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
    low_res: torch.Tensor, input_hw: tuple[int, int], original_hw: tuple[int, int], threshold: float
) -> torch.Tensor:
    """``(N, 1, 256, 256)`` float32 logits -> ``(N, H, W)`` bool masks on the same device.

    As the reference ``Sam.postprocess_masks`` then ``> threshold``: bilinear (align_corners=False) upscale to the
    padded 1024 frame, crop to ``input_hw``, bilinear resize to ``original_hw``.
    """
    x = F.interpolate(low_res, (SAM_IMAGE_SIZE, SAM_IMAGE_SIZE), mode="bilinear", align_corners=False)
    x = x[..., : input_hw[0], : input_hw[1]]
    x = F.interpolate(x, original_hw, mode="bilinear", align_corners=False)
    return x[:, 0] > threshold


def default_batch_size(device: torch.device | str) -> int:
    """How many images to pass to one ``BoxSegmenter.segment`` call on ``device``.

    1 on CPU (batching the TinyViT encoder on CPU is slower per image than one at a time), 8 on CUDA.
    """
    return 8 if torch.device(device).type == "cuda" else 1


def default_decoder_batch_size(device: torch.device | str) -> int:
    """Most boxes per mask-decoder call on ``device``: 32 on CUDA (one launch sequence for a typical image), 8 on
    CPU, where time per box is the same from 1 to 32 boxes per call but a chunk of 32 holds ~1 GB of activations."""
    return 32 if torch.device(device).type == "cuda" else 8


# --------------------------------------------------------------------------------------------------------------------
# Segmenter
# --------------------------------------------------------------------------------------------------------------------


def _validated_boxes(boxes_xyxy: np.ndarray, index: int) -> np.ndarray:
    """``(N, 4)`` float64 copy of one image's boxes, or ValueError naming the image index."""
    boxes = np.asarray(boxes_xyxy)
    if boxes.size == 0:
        return np.zeros((0, 4), np.float64)
    if boxes.ndim != 2 or boxes.shape[1] != 4 or not np.issubdtype(boxes.dtype, np.number):
        raise ValueError(f"boxes_xyxy[{index}] must be an (N, 4) numeric array, got shape {boxes.shape}")
    boxes = boxes.astype(np.float64)
    if not np.isfinite(boxes).all():
        raise ValueError(f"boxes_xyxy[{index}] contains NaN or infinite coordinates")
    return boxes


class BoxSegmenter:
    """Box-prompted SAM predictor over batches of images; one mask per box, in box order.

    The device is the model's: move the model (``from_weights(..., device=...)`` does) and the segmenter follows.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        half: bool = False,
        decoder_batch_size: int | None = None,
        variant: str | None = None,
    ) -> None:
        """Wrap a SAM model (``.image_encoder``, ``.prompt_encoder``, ``.mask_decoder`` as built by ultralytics).

        Args:
            model: The SAM model; it is switched to eval mode.
            half: Run encoder and decoder under autocast, float16 on CUDA and bfloat16 on CPU (logits are converted
                back to float32 before postprocessing).
            decoder_batch_size: At most this many boxes per mask-decoder call (default
                ``default_decoder_batch_size(device)``). The decoder holds ~30 MB of float32 activations per box
                (the image embedding is repeated per box), so this bounds memory on images with hundreds of boxes;
                results do not depend on it beyond float rounding.
            variant: The variant name, for reporting (``load_sam`` returns it).
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
                f"the SAM image encoder works at {img_size} px, this predictor needs {SAM_IMAGE_SIZE}; {_SAM_FLAG_HINT}"
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
        self._half = bool(half)
        self._decoder_batch_size = decoder_batch_size
        self._variant = variant

    @classmethod
    def from_weights(
        cls,
        weights: str | Path,
        device: torch.device | str,
        half: bool = False,
        onednn: bool | None = None,
    ) -> BoxSegmenter:
        """Resolve (``resolve_sam_weights``), load (``load_sam``) and move a checkpoint to ``device``.

        Args:
            onednn: On CPU, run the float32 linear layers and convolutions through oneDNN; default:
                ``cpu_kernels.onednn_for`` decides (x86-64 unless ``AUTOANNOTATE_CPU_KERNELS=default``). Ignored on
                other devices.

        Raises:
            ModelError: As ``resolve_sam_weights`` and ``load_sam``, or the device cannot take the model.
        """
        model, variant = load_sam(resolve_sam_weights(weights))
        target = torch.device(device)
        try:
            model = model.to(target)
        except (RuntimeError, AssertionError, ValueError) as err:
            raise ModelError(
                f"cannot move the SAM model to device {str(device)!r} ({one_line(err, 100)}); choose an available "
                f"device (e.g. cpu)"
            ) from err
        if onednn_for(target, onednn):
            use_onednn(model)
        return cls(model, half=half, variant=variant)

    def release_cached_memory(self) -> None:
        """Return cached CUDA memory to the device (after an out-of-memory error); nothing to do on CPU."""
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    @property
    def model(self) -> torch.nn.Module:
        """The wrapped SAM model."""
        return self._model

    @property
    def variant(self) -> str | None:
        """The variant name (``"mobile_sam"``, ``"sam_b"``, ...) if known."""
        return self._variant

    @property
    def half(self) -> bool:
        """Whether encoder and decoder run under reduced-precision autocast."""
        return self._half

    @property
    def device(self) -> torch.device:
        """The device of the model's parameters, where all computation runs."""
        return next(self._model.parameters()).device

    def _autocast(self, device: torch.device) -> AbstractContextManager[Any]:
        if not self._half:
            return nullcontext()
        if device.type == "cuda":
            return torch.autocast(device_type="cuda", dtype=torch.float16)
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)

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
        x = image.image_1024_chw
        # On CUDA: page-locked host memory lets the copy run asynchronously with the host.
        x = x.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else x.to(device)
        x = (x.float() - mean) / std
        h, w = image.input_hw
        return F.pad(x, (0, SAM_IMAGE_SIZE - w, 0, SAM_IMAGE_SIZE - h))

    def segment(
        self,
        images: Sequence[PreparedImage],
        boxes_xyxy: Sequence[np.ndarray],
    ) -> list[SegmentationResult]:
        """Segment every box of every image; one encoder pass over all images that have boxes.

        Args:
            images: Prepared images (``prepare_image``); pass ``default_batch_size(device)`` at a time.
            boxes_xyxy: One ``(N_i, 4)`` float array per image: pixel ``x1, y1, x2, y2`` in that image's
                original ``(H, W)`` frame. ``N_i`` may be 0 (the image is then not encoded at all).

        Returns:
            One ``SegmentationResult`` per image, in order; masks ``(N_i, H, W)`` bool aligned 1:1 with the boxes.

        Raises:
            ValueError: ``images`` and ``boxes_xyxy`` differ in length, or boxes are not finite ``(N, 4)`` arrays.
        """
        if len(images) != len(boxes_xyxy):
            raise ValueError(f"got {len(images)} images but {len(boxes_xyxy)} box arrays; pass one array per image")
        boxes_per_image = [_validated_boxes(b, i) for i, b in enumerate(boxes_xyxy)]
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
                with self._autocast(device):
                    embeddings = self._image_encoder(batch)
                image_pe = self._dense_pe()
                for k, i in enumerate(todo):
                    results[i] = self._segment_one(
                        embeddings[k : k + 1], image_pe, images[i], boxes_per_image[i], device
                    )
        return [r for r in results if r is not None]

    def _segment_one(
        self,
        embedding: torch.Tensor,
        image_pe: torch.Tensor,
        image: PreparedImage,
        boxes_xyxy: np.ndarray,
        device: torch.device,
    ) -> SegmentationResult:
        """Decode all boxes of one image from its ``(1, C, 64, 64)`` embedding and postprocess the masks."""
        (h0, w0), (h1, w1) = image.original_hw, image.input_hw
        # Reference apply_boxes: float64 scaling per axis, then float32 on the device.
        scale_xyxy = np.array([w1 / w0, h1 / h0, w1 / w0, h1 / h0], np.float64)
        boxes_input = torch.as_tensor(boxes_xyxy * scale_xyxy, dtype=torch.float32, device=device)

        chunk = self._decoder_batch_size or default_decoder_batch_size(device)
        logits_chunks, iou_chunks = [], []
        for start in range(0, len(boxes_input), chunk):
            # The prompt encoder stays in float32 even with half=True: box corners go through a Fourier
            # positional encoding whose matmul, autocast to bfloat16 (8-bit mantissa), would move them by up to
            # ~4 px of the 1024 frame.
            sparse, dense = self._prompt_encoder(points=None, boxes=boxes_input[start : start + chunk], masks=None)
            with self._autocast(device):
                logits, iou = self._mask_decoder(
                    image_embeddings=embedding,
                    image_pe=image_pe,
                    sparse_prompt_embeddings=sparse,
                    dense_prompt_embeddings=dense,
                    multimask_output=False,
                )
            logits_chunks.append(logits.float())
            iou_chunks.append(iou.float())
        low_res = torch.cat(logits_chunks)  # (N, 1, 256, 256)
        iou_pred = torch.cat(iou_chunks)[:, 0]

        threshold = float(getattr(self._model, "mask_threshold", 0.0))
        h, w = image.original_hw
        eager = len(low_res) * h * w <= _EAGER_MASK_BYTES
        return SegmentationResult(
            iou_pred=iou_pred.cpu().numpy().astype(np.float32, copy=False),
            low_res_logits=low_res[:, 0].cpu().numpy().astype(np.float32, copy=False),
            input_hw=image.input_hw,
            original_hw=image.original_hw,
            eager_masks=self._postprocess(low_res, image.input_hw, image.original_hw, threshold) if eager else None,
            mask_threshold=threshold,
        )

    def _postprocess(
        self, low_res: torch.Tensor, input_hw: tuple[int, int], original_hw: tuple[int, int], threshold: float
    ) -> np.ndarray:
        """``postprocess_logits`` in chunks of boxes, so that the full-resolution float32 logits stay under
        ~256 MB; thresholds on the device so that only booleans are copied to the host."""
        h, w = original_hw
        per_box_bytes = 4 * (SAM_IMAGE_SIZE * SAM_IMAGE_SIZE + h * w)
        chunk = max(1, _POSTPROCESS_BUDGET_BYTES // per_box_bytes)
        masks = np.empty((len(low_res), h, w), dtype=bool)
        for start in range(0, len(low_res), chunk):
            masks[start : start + chunk] = (
                postprocess_logits(low_res[start : start + chunk], input_hw, original_hw, threshold).cpu().numpy()
            )
        return masks
