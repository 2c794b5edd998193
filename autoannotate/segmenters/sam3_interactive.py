"""SAM 3 (and SAM 3.1) box-prompted segmentation with SAM 3's interactive model: one mask per box.

SAM 3 checkpoints (``sam3.pt``) hold two models: a text/box-prompted *detector* (``detector.*``) and a
point/box-prompted *tracker* (``tracker.*``) that reuses the detector's ViT through its SAM-2-style neck. What this
module loads is the tracker's image path, ultralytics' ``SAM3Model``
(``ultralytics.models.sam.build_sam3.build_interactive_sam3``, 474M parameters): the detector's ViT trunk and
``sam2_convs`` neck, the tracker's ``sam_prompt_encoder``, ``sam_mask_decoder`` and ``no_mem_embed``; the video
memory modules stay unused. SAM 3.1 checkpoints nest the tracker's point-prompt head as ``tracker.model.interactive_*``
/ ``tracker.model.interactivity_*`` and call the neck ``interactive_convs``; ``sam3_key`` maps both layouts onto the
model's names (as ultralytics' loader does).

The numerics are Meta's ``sam3.model.sam1_task_predictor.SAM3InteractiveImagePredictor``'s (box prompts,
``multimask_output=False``), by way of ``sam2.Sam2Segmenter``, whose steps it shares: ``Resize((1008, 1008))``
(bilinear, antialiased, aspect ratio not kept), ``Normalize`` with mean 0.5 and std 0.5, the ViT and SAM-2 neck over
the batch of images, ``no_mem_embed`` on the lowest level, a box as its corners labelled 2 and 3, the decoder over all
boxes of an image in chunks; then what SAM 3's predictor adds: holes of up to 256 low-res pixels filled
(``fill_holes``) before the 288x288 logits are resized bilinearly to the original size and thresholded at 0.

Weights are gated on their hub (https://huggingface.co/facebook/sam3) and never downloaded: a bare ``sam3.pt`` that is
not found locally is refused in one line that says where to request it (``weights.resolve_weights``).

``write_random_checkpoint`` writes a random-weight checkpoint in the real file's key layout, for tests and benchmarks.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

import cv2
import numpy as np
import torch

from autoannotate.errors import ModelError, one_line
from autoannotate.segmenters.base import SegmenterEntry
from autoannotate.segmenters.sam2 import Sam2Segmenter, to_device
from autoannotate.segmenters.weights import SAM_FLAG_HINT, read_state_dict, weights_source

__all__ = [
    "MAX_HOLE_AREA",
    "SAM3_ENTRY",
    "SAM3_VARIANTS",
    "Sam3Segmenter",
    "build_sam3_model",
    "checkpoint_state_dict",
    "explain_sam3",
    "fill_holes",
    "load_sam3_model",
    "recognise_sam3",
    "sam3_key",
    "write_random_checkpoint",
]

#: Background regions of the low-res logits up to this many pixels become foreground: the reference predictor's
#: ``max_hole_area`` (``SAM3InteractiveImagePredictor``'s default; SAM 2's predictor defaults to none).
MAX_HOLE_AREA = 256
#: Variant names: SAM 3 (``detector.*`` / ``tracker.*`` keys) and SAM 3.1 (its renamed interactive head).
SAM3_VARIANTS = ("sam3", "sam3.1")

# SAM 3.1's names for the interactive head and neck -> SAM 3's (applied to every key, in this order).
_SAM31_RENAMES = (
    ("tracker.model.interactive_", "tracker."),
    ("tracker.model.interactivity_", "tracker."),
    ("interactive_convs", "sam2_convs"),
)
# File prefix (SAM 3 layout) -> SAM3Model prefix, for the parts that box prompts run through.
_FILE_TO_MODEL = (
    ("detector.backbone.vision_backbone.", "image_encoder.vision_backbone."),
    ("tracker.", ""),
)
# SAM3Model parameters that box prompts need (prefixes, and whole names); the rest (video memory) is never run.
_NEEDED_PREFIXES = (
    "image_encoder.vision_backbone.trunk.",
    "image_encoder.vision_backbone.sam2_convs.",
    "sam_prompt_encoder.",
    "sam_mask_decoder.",
)
_NEEDED_NAMES = frozenset({"no_mem_embed"})
# The model's other modules, as the real file names them (``write_random_checkpoint``'s inverse mapping).
_MODEL_TO_FILE = (
    ("image_encoder.vision_backbone.", "detector.backbone.vision_backbone."),
    ("memory_attention.", "tracker.transformer.encoder."),
    ("memory_encoder.", "tracker.maskmem_backbone."),
    ("", "tracker."),
)
_SAM3_MARKER = re.compile(r"^(detector|tracker)\.")


# --------------------------------------------------------------------------------------------------------------------
# Weights: key layout, recognise, load
# --------------------------------------------------------------------------------------------------------------------


def sam3_key(file_key: str) -> str | None:
    """The ``SAM3Model`` parameter name of a checkpoint key, None for a key box prompts never use.

    Takes both the real files' layout (``detector.backbone.vision_backbone.trunk.*``, ``tracker.sam_mask_decoder.*``,
    SAM 3.1's ``tracker.model.interactive_*`` and ``interactive_convs``) and a ``SAM3Model.state_dict()`` saved as is
    (``image_encoder.vision_backbone.*``, ``sam_mask_decoder.*``)."""
    key = file_key
    for old, new in _SAM31_RENAMES:
        key = key.replace(old, new)
    for old, new in _FILE_TO_MODEL:
        if key.startswith(old):
            key = new + key[len(old) :]
            break
    return key if key in _NEEDED_NAMES or key.startswith(_NEEDED_PREFIXES) else None


def _parts_found(keys: list[str]) -> dict[str, bool]:
    """Which of the needed parts (by prefix or name) some key maps onto."""
    mapped = {m for k in keys if (m := sam3_key(k)) is not None}
    parts = {p: any(m.startswith(p) for m in mapped) for p in _NEEDED_PREFIXES}
    parts.update({n: n in mapped for n in _NEEDED_NAMES})
    return parts


def _classify(state_dict: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """``(variant, None)`` for a SAM 3 checkpoint with every part box prompts need; ``(None, why)`` for a SAM 3 file
    lacking some of them; ``(None, None)`` for anything else. Reads key names only."""
    keys = [str(k) for k in state_dict]
    parts = _parts_found(keys)
    sam3_layout = any(_SAM3_MARKER.match(k) for k in keys)
    as_saved_model = any(k.startswith("image_encoder.vision_backbone.trunk.") for k in keys)
    if not (sam3_layout or as_saved_model):
        return None, None
    if all(parts.values()):
        renamed = any(k.startswith(("tracker.model.interactiv",)) or "interactive_convs" in k for k in keys)
        return ("sam3.1" if renamed else "sam3"), None
    lacking = ", ".join(_file_key(p).rstrip(".") for p, found in parts.items() if not found)
    return None, (
        f"is a SAM 3 checkpoint without the interactive (box-prompt) model's weights (no {lacking}; a detector-only "
        f"or video-only export?)"
    )


def recognise_sam3(state_dict: Mapping[str, Any]) -> str | None:
    """``"sam3"`` or ``"sam3.1"`` for a checkpoint holding SAM 3's interactive model (names only), else None.

    Needs the ViT trunk and SAM-2 neck (``detector.backbone.vision_backbone.{trunk,sam2_convs}.*``; SAM 3.1:
    ``interactive_convs``), the prompt encoder and mask decoder (``tracker.sam_prompt_encoder.*``,
    ``tracker.sam_mask_decoder.*``; SAM 3.1: ``tracker.model.interactive_*``) and ``tracker.no_mem_embed``.
    """
    return _classify(state_dict)[0]


def explain_sam3(state_dict: Mapping[str, Any]) -> str | None:
    """Why a SAM 3 checkpoint that ``recognise_sam3`` refuses is not loaded (parts missing), as a clause after the
    file's name; None for a file that is no SAM 3 checkpoint (or one it recognises)."""
    return _classify(state_dict)[1]


def build_sam3_model() -> torch.nn.Module:
    """ultralytics' interactive ``SAM3Model`` with random weights, on CPU, in eval mode (nothing is downloaded)."""
    # ultralytics' SAM 3 imports torchvision on its first box prompt, and ultralytics' NMS takes torchvision's kernel
    # once it is imported (``prompts.yolo._skip_cpu_warm_up``): imported here, at load, every image's detections of
    # a run use the same NMS, whichever image comes first.
    import torchvision  # noqa: F401
    from ultralytics.models.sam.build_sam3 import build_interactive_sam3

    # The builder always loads a checkpoint file (non-strictly): an empty one leaves the random initialisation.
    with tempfile.TemporaryDirectory(prefix="autoannotate-sam3-") as tmp:
        empty = Path(tmp) / "empty.pt"
        torch.save({}, empty)
        return build_interactive_sam3(str(empty)).eval()


def load_sam3_model(path: Path, variant: str | None = None) -> tuple[torch.nn.Module, str]:
    """Load the interactive part of a SAM 3 / 3.1 checkpoint into ``build_sam3_model()``'s architecture.

    Args:
        path: The checkpoint: a state dict in the real files' layout (``detector.*``, ``tracker.*``), possibly under
            ``"model"``, read with torch's weights-only unpickler.
        variant: The variant already recognised (by the registry); recognised here when None.

    Returns:
        ``(model, variant)``: ultralytics' ``SAM3Model`` on CPU, eval mode, every parameter that box prompts run
        through loaded from the file (the video memory modules keep their random initialisation, never run).

    Raises:
        ModelError: Unreadable file, no SAM 3 interactive model inside, or tensors missing or mis-shaped for the
            architecture (one line, naming a few).
    """
    source = weights_source(path)
    state_dict = read_state_dict(path, mmap=True)
    variant_found, why = _classify(state_dict)
    if variant_found is None:
        raise ModelError(f"{source} {why or 'is not a SAM 3 checkpoint'}; {SAM_FLAG_HINT}")
    model = build_sam3_model()
    expected = {k: v for k, v in model.state_dict().items() if sam3_key(k) == k}
    mapped = {m: v for k, v in state_dict.items() if (m := sam3_key(k)) is not None}
    missing = [k for k in expected if k not in mapped]
    unexpected = [k for k in mapped if k not in expected]
    wrong_shape = [k for k in expected if k in mapped and tuple(mapped[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or wrong_shape:
        examples = ", ".join((missing + unexpected + wrong_shape)[:3])
        raise ModelError(
            f"{source} does not match the SAM 3 interactive architecture ({len(missing)} missing, {len(unexpected)} "
            f"unexpected, {len(wrong_shape)} mis-shaped tensors, e.g. {examples}); the file may be damaged or from "
            f"an incompatible SAM 3 release; {SAM_FLAG_HINT}"
        )
    try:
        # Not strict only for the video memory modules, which are not in ``mapped``; the rest was checked above.
        model.load_state_dict(mapped, strict=False)
    except Exception as err:
        raise ModelError(
            f"{source} could not be loaded into the SAM 3 interactive architecture ({one_line(err, 100)}); "
            f"{SAM_FLAG_HINT}"
        ) from err
    return model.eval(), variant or variant_found


def _file_key(model_key: str) -> str:
    for old, new in _MODEL_TO_FILE:
        if model_key.startswith(old):
            return new + model_key[len(old) :]
    return model_key  # unreachable: the last rule matches every name


def checkpoint_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A ``SAM3Model``'s tensors under the names a real ``sam3.pt`` gives them: ``detector.backbone.vision_backbone.*``
    for the ViT and its necks, ``tracker.transformer.encoder.*`` / ``tracker.maskmem_backbone.*`` for the video memory,
    ``tracker.*`` for the rest (the inverse of ``sam3_key``, for tests and benchmarks)."""
    return {_file_key(k): v for k, v in model.state_dict().items()}


def write_random_checkpoint(path: Path, *, seed: int = 0) -> None:
    """Save a random-weight SAM 3 interactive model at ``path`` in the real ``sam3.pt`` key layout
    (``checkpoint_state_dict``), for tests and benchmarks. About 1.9 GB (float32)."""
    torch.manual_seed(seed)
    torch.save(checkpoint_state_dict(build_sam3_model()), path)


# --------------------------------------------------------------------------------------------------------------------
# Segmenter
# --------------------------------------------------------------------------------------------------------------------


def fill_holes(low_res: torch.Tensor, max_area: int = MAX_HOLE_AREA, threshold: float = 0.0) -> torch.Tensor:
    """The reference ``SAM2Transforms.postprocess_masks`` hole filling, on ``(N, 1, L, L)`` float32 logits.

    Every 8-connected region of background (logits ``<= threshold``) of at most ``max_area`` pixels, wherever it lies
    (a region touching the border too), gets the logit ``threshold + 10``, so that it is foreground once resized.
    Components are labelled with OpenCV on the host (the reference uses scikit-image's ``label`` on CPU, full
    connectivity, or an equivalent CUDA kernel); the logits stay on their device.
    """
    if max_area <= 0 or len(low_res) == 0:
        return low_res
    background = (low_res[:, 0] <= threshold).to(torch.uint8).cpu().numpy()
    holes = np.zeros_like(background, dtype=bool)
    for i, plane in enumerate(background):
        count, labels, stats, _ = cv2.connectedComponentsWithStats(plane, connectivity=8)
        small = np.flatnonzero(stats[1:count, cv2.CC_STAT_AREA] <= max_area) + 1
        if len(small):
            holes[i] = np.isin(labels, small)
    if not holes.any():
        return low_res
    fill = torch.from_numpy(holes).to(low_res.device)[:, None]
    return torch.where(fill, torch.full_like(low_res, threshold + 10.0), low_res)


class Sam3Segmenter(Sam2Segmenter):
    """SAM 3's interactive model behind the SAM 2 predictor (a ``Segmenter``): the same prompt encoder, decoder and
    batching, with the reference ``SAM3InteractiveImagePredictor``'s differences: the image resized to the model's
    1008x1008 and normalised with mean 0.5 / std 0.5 (``SAM2Transforms`` as SAM 3 configures it), the ViT trunk and
    its SAM-2 neck as encoder (``forward_image_sam2``), and holes of up to ``MAX_HOLE_AREA`` low-res pixels filled
    before the logits are resized to the original size (so ``stability`` is that of the filled logits)."""

    pixel_mean_rgb = (0.5, 0.5, 0.5)
    pixel_std_rgb = (0.5, 0.5, 0.5)

    @classmethod
    def _load(cls, path: Path, device: torch.device | str, half: bool, variant: str | None) -> Sam3Segmenter:
        """``load_sam3_model(path, variant)`` moved to ``device``."""
        model, variant = load_sam3_model(path, variant)
        return cls(to_device(model, device), half=half, variant=variant, weights_path=path)

    def _backbone(self, batch: torch.Tensor) -> dict[str, Any]:
        """The ViT trunk and SAM-2 neck of SAM 3's backbone (``SAM3VLBackbone.forward_image_sam2``)."""
        return cast(dict[str, Any], self._parts.image_encoder.forward_image_sam2(batch))

    def _refine_logits(self, low_res: torch.Tensor) -> torch.Tensor:
        """``fill_holes`` (``MAX_HOLE_AREA``), as the reference predictor does before resizing."""
        return fill_holes(low_res.float(), MAX_HOLE_AREA, float(getattr(self._model, "mask_threshold", 0.0)))


def _load_entry(path: Path | None, device: torch.device | str, half: bool, variant: str) -> Sam3Segmenter:
    """``SegmenterEntry.load`` for this family (it always loads from a file)."""
    if path is None:
        raise ModelError(f"a SAM 3 segmenter needs a checkpoint file; {SAM_FLAG_HINT}")
    return Sam3Segmenter._load(path, device, half, variant)


#: This family's entry in ``autoannotate.segmenters.SEGMENTERS`` (which holds a lazy stand-in for it).
SAM3_ENTRY = SegmenterEntry(
    name="sam3",
    recognise=recognise_sam3,
    load=_load_entry,
    variants=SAM3_VARIANTS,
    explain=explain_sam3,
)
