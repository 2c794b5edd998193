"""The YOLO prompt source: any ultralytics detection, segmentation or pose model, used for its boxes only.

Everything that touches ``ultralytics.YOLO`` lives here, so the rest of the package is testable without models.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

import numpy as np
import torch

from autoannotate.assets import asset_url
from autoannotate.config import NO_SEGMENTER
from autoannotate.errors import ModelError, logs_held, one_line
from autoannotate.prompts.base import resolve_classes
from autoannotate.runtime.cpu_kernels import onednn_for, use_onednn
from autoannotate.types import Detections

if TYPE_CHECKING:
    from autoannotate.config import RunSettings

#: Environment variable: ``torchvision`` keeps ultralytics' CPU warm-up and with it torchvision's NMS kernel
#: (``_skip_cpu_warm_up``).
NMS_ENV_VAR = "AUTOANNOTATE_NMS"

# YOLO tasks whose predictions carry axis-aligned boxes: detection, segmentation and pose models (a pose model is a
# person detector with keypoints; the keypoints are not used). Classification has no boxes, OBB rotated ones.
_DETECTOR_TASKS = frozenset({"detect", "segment", "pose"})


@dataclass(frozen=True)
class DetectSettings:
    """Detector options, ultralytics' ``auto_annotate`` defaults."""

    conf: float = 0.25
    iou: float = 0.45
    imgsz: int = 640
    max_det: int = 300
    class_ids: tuple[int, ...] | None = None
    half: bool = False  # fp16 on CUDA (ultralytics ignores it on CPU)
    agnostic_nms: bool = False  # NMS across classes (always passed: YOLOE's predict defaults it to on)
    masks: bool = False  # keep a segmentation model's own masks, at the image's resolution (--sam-model none)


def _resolve_detector_weights(name_or_path: str) -> str:
    """A local file (or export directory) as is; an ultralytics asset name is left to ultralytics to download."""
    from ultralytics.utils.downloads import GITHUB_ASSETS_NAMES

    path = Path(name_or_path).expanduser()
    if path.exists():
        return str(path)
    if path.name == name_or_path and name_or_path in GITHUB_ASSETS_NAMES:
        return name_or_path
    raise ModelError(f"detector model {name_or_path!r} does not exist: pass --det-model PATH to a YOLO model file")


# Files that are certainly no model (ultralytics would take an image for a video or image "source" and then fail
# deep inside its backend with a TypeError): refused by name, before ultralytics is asked.
_NOT_MODEL_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".txt", ".csv", ".json", ".mp4", ".avi"}
)


def _refuse_non_model_file(weights: str, source: str) -> None:
    path = Path(source)
    if path.suffix.lower() in _NOT_MODEL_SUFFIXES and path.is_file():
        raise ModelError(
            f"--det-model {weights!r} is a {path.suffix.lower()[1:]} file, not a model; pass a YOLO detection or"
            " segmentation model (e.g. yolo11x.pt) with --det-model"
        )


@dataclass(frozen=True)
class Letterboxed:
    """An image letterboxed ahead of the detector's call (``Detector.prepare``, in the decode pool): the pixels its
    model sees (BGR, resized and padded by the predictor's own ``pre_transform``) and the shape of the image they
    came from, into whose frame the boxes are mapped back."""

    pixels_bgr: np.ndarray
    original_hw: tuple[int, int]


class Detector:
    """A loaded YOLO model with fixed settings. ``detect`` takes a batch of BGR images (or what ``prepare`` made of
    them) and returns their boxes."""

    def __init__(
        self,
        model: object,
        settings: DetectSettings,
        device: torch.device,
        weights_path: str | None = None,
        names: dict[int, str] | None = None,
    ) -> None:
        self._model = model
        self.settings = settings
        self.device = device
        self.weights_path = weights_path  # the local file that was loaded (after any download)
        self._names = names  # read once at load: for an exported model, reading them loads its backend
        self._letterboxer: object | None = None  # the predictor ``warm_up`` set up, whose letterbox ``prepare`` uses

    @classmethod
    def from_weights(cls, weights: str, device: torch.device, onednn: bool | None = None) -> Detector:
        """Load ``weights`` (a path or ultralytics asset name). Raises ModelError with a one-line fix.

        ``onednn``: on CPU, fuse the model's batch norms into its convolutions now (as ultralytics' predictor would on
        its first call) and run its float32 convolutions through oneDNN; default: ``cpu_kernels.onednn_for`` decides
        (x86-64 unless ``AUTOANNOTATE_CPU_KERNELS=default``). Ignored on other devices.
        """
        from ultralytics import YOLO

        source = _resolve_detector_weights(weights)
        _refuse_non_model_file(weights, source)
        try:
            with logs_held():  # a file that fails to load also logs a task-guess warning first: one line only
                model = YOLO(source)
                # Non-PyTorch formats (ONNX, TensorRT, ...) load lazily, on first use: reading the names loads them
                # now, so a file that is no model fails here, as a ModelError, rather than as a bug later.
                names = _class_names(model)
        except (ConnectionError, TimeoutError) as err:
            name = Path(weights).name
            raise ModelError(
                f"detector model {name!r} is not on this machine and could not be downloaded ({type(err).__name__});"
                f" download {asset_url(name)} and pass --det-model /path/to/{name}"
            ) from None
        except Exception as err:  # ultralytics raises many types for a bad file; all mean "not a detector"
            raise ModelError(
                f"{weights!r} is not a loadable YOLO detector ({one_line(err, 100)});"
                " pass a YOLO detection, segmentation or pose model (.pt, or an export ultralytics loads) with"
                " --det-model"
            ) from None
        task = getattr(model, "task", None)
        if task not in _DETECTOR_TASKS:
            raise ModelError(
                f"{weights!r} is a YOLO {task!r} model, not a detector; pass a detection, segmentation or pose model"
                " with --det-model"
            )
        if os.environ.get(NMS_ENV_VAR, "").strip().lower() != "torchvision":
            model.add_callback("on_predict_start", _skip_cpu_warm_up)
        if onednn_for(device, onednn):
            _use_onednn(model)
        loaded = getattr(model, "ckpt_path", None) or source
        return cls(model, DetectSettings(), device, str(loaded), names)

    def with_settings(self, settings: DetectSettings) -> Detector:
        return Detector(self._model, settings, self.device, self.weights_path, self._names)

    def with_names(self, names: dict[int, str]) -> Detector:
        """This detector after its model's classes were set to ``names`` (an open-vocabulary model)."""
        return Detector(self._model, self.settings, self.device, self.weights_path, dict(names))

    @property
    def gives_masks(self) -> bool:
        """Whether ``boxes`` returns the model's own masks with its boxes: a segmentation model asked for them."""
        return self.settings.masks and getattr(self._model, "task", None) == "segment"

    @property
    def model(self) -> object:
        """The ultralytics model object (``YOLO``, ``YOLOE``, ``YOLOWorld``)."""
        return self._model

    @property
    def names(self) -> dict[int, str]:
        """Class id -> name, as the model was trained (ids unchanged)."""
        return dict(self._names) if self._names is not None else _class_names(self._model)

    def resolve_classes(self, classes: Sequence[str] | None) -> tuple[int, ...] | None:
        """``--classes`` entries to class ids of this detector (``prompts.base.resolve_classes``)."""
        return resolve_classes(classes, self.names, "the detector")

    @property
    def class_ids(self) -> tuple[int, ...] | None:
        """The classes it returns (applied inside ultralytics' NMS), or None for all."""
        return self.settings.class_ids

    def warm_up(self) -> None:
        """Pay the first call's one-off costs now, on a blank image: ultralytics' predictor setup and model warm-up,
        and the imports of its postprocessing (~3 s of a 10-image CPU run's first label on the Xeon VM).
        ``models.load_models`` runs it while the segmenter loads. PyTorch models only (as ``_use_onednn`` tells
        them): an export's backend may fix its batch size on its first call. Later detections do not depend on it."""
        if isinstance(getattr(self._model, "model", None), torch.nn.Module):
            self._predict([np.zeros((64, 64, 3), np.uint8)])
            if not self.gives_masks:
                # kept, not looked up per image: a model may replace its predictor (YOLOE does, between prompt
                # kinds), and decode threads must never see one whose model is not set up yet
                self._letterboxer = getattr(self._model, "predictor", None)

    def prepare(self, image_bgr: np.ndarray) -> np.ndarray | Letterboxed:
        """The optional prompt-source step run in the decode pool (``prompts.base.PromptSource``): the image
        letterboxed as the model will see it, so that the inference thread neither resizes full-resolution pixels
        nor batches by raw shape (images of different sizes with one letterboxed shape, e.g. 1080p and 4K frames,
        share a batch). The letterboxing is the predictor's own ``pre_transform`` of the image alone, which is what
        ``detect`` would have had it do, by the predictor ``warm_up`` set up. The image itself where that does not
        hold or does not pay, i.e. where ``warm_up`` kept no predictor: an exported model (its backend decides its
        input shape on its first call), a segmentation model asked for its masks (they come at the size of the
        pixels given), a detector not warmed up (an open-vocabulary one) or whose warm-up failed."""
        predictor = self._letterboxer
        if predictor is None:
            return image_bgr
        (pixels,) = predictor.pre_transform([image_bgr])  # type: ignore[attr-defined]
        return Letterboxed(pixels, (int(image_bgr.shape[0]), int(image_bgr.shape[1])))

    def boxes(
        self, images_bgr: Sequence[np.ndarray | Letterboxed], rel_paths: Sequence[PurePosixPath]
    ) -> list[Detections]:
        """The prompt-source interface (``prompts.base.PromptSource``): run the detector (``rel_paths`` unused)."""
        return self.detect(images_bgr)

    def detect(self, images_bgr: Sequence[np.ndarray | Letterboxed]) -> list[Detections]:
        """Boxes for each image (HxWx3 uint8 BGR, or ``prepare``'s ``Letterboxed``), batched, in each image's own
        pixel frame. Output aligned with the input.

        Images are batched per shape of the pixels given: ultralytics letterboxes a batch of one shape with minimal
        padding and a mixed batch to a full square, so grouping by shape keeps every image's boxes independent of
        what it was batched with (and equal to a one-image call). A letterboxed batch passes through the
        predictor's letterbox unchanged (one shape, already a multiple of the stride at the model's size), and its
        boxes are mapped back to their images by ultralytics' ``scale_boxes``, the call its postprocessing makes.
        """
        pixels = [image.pixels_bgr if isinstance(image, Letterboxed) else image for image in images_bgr]
        out: list[Detections | None] = [None] * len(images_bgr)
        groups: dict[tuple[int, ...], list[int]] = {}
        for index, image in enumerate(pixels):
            groups.setdefault(tuple(image.shape), []).append(index)
        for indices in groups.values():
            for index, detections in zip(indices, self._predict([pixels[i] for i in indices]), strict=True):
                given = images_bgr[index]
                out[index] = _boxes_to_original(detections, given) if isinstance(given, Letterboxed) else detections
        return [d if d is not None else Detections.empty() for d in out]

    def _predict(self, images_bgr: list[np.ndarray]) -> list[Detections]:
        s = self.settings
        threads = torch.get_num_threads()
        with_masks = self.gives_masks
        results = self._model.predict(  # type: ignore[attr-defined]
            images_bgr,
            conf=s.conf,
            iou=s.iou,
            imgsz=s.imgsz,
            max_det=s.max_det,
            classes=list(s.class_ids) if s.class_ids is not None else None,
            agnostic_nms=s.agnostic_nms,
            device=self.device,
            batch=len(images_bgr),
            verbose=False,
            save=False,
            **_precision_kwargs(s.half),
            # retina masks: upsampled from the model's mask prototypes to the original image, not the letterbox
            **({"retina_masks": True} if with_masks else {}),
        )
        if torch.get_num_threads() != threads:  # ultralytics' predictor setup resets it; keep the caller's choice
            torch.set_num_threads(threads)
        out = []
        for result in results:
            boxes = result.boxes
            if boxes is None or len(boxes) == 0:
                out.append(Detections.empty())
                continue
            masks = None
            if with_masks:
                # (N, H, W) at the original size, already thresholded by ultralytics (values 0 and 1)
                masks = result.masks.data.detach().cpu().numpy() > 0.5 if result.masks is not None else None
                if masks is None or masks.shape != (len(boxes), *result.orig_shape):
                    raise ModelError(f"the segmentation model gave no image-size mask for its {len(boxes)} boxes")
            out.append(
                Detections(
                    xyxy=boxes.xyxy.detach().float().cpu().numpy().astype(np.float32),
                    class_id=boxes.cls.detach().cpu().numpy().astype(np.int64),
                    confidence=boxes.conf.detach().float().cpu().numpy().astype(np.float32),
                    masks=masks,
                )
            )
        return out


def _boxes_to_original(detections: Detections, image: Letterboxed) -> Detections:
    """``detections`` of the letterboxed pixels, in the frame of the image they came from (clipped to it)."""
    if not len(detections):
        return detections
    from ultralytics.utils.ops import scale_boxes

    # a float32 tensor, as ultralytics' postprocessing scales them: the same arithmetic, bit for bit
    xyxy = torch.from_numpy(detections.xyxy.copy())
    scale_boxes(image.pixels_bgr.shape[:2], xyxy, image.original_hw)  # in place
    return dataclasses.replace(detections, xyxy=xyxy.numpy().astype(np.float32))


def _class_names(model: object) -> dict[int, str]:
    raw = getattr(model, "names", None) or {}
    if isinstance(raw, list | tuple):
        raw = dict(enumerate(raw))
    return {int(k): str(v) for k, v in dict(raw).items()}


def _skip_cpu_warm_up(predictor: object) -> None:
    """An ``on_predict_start`` callback (ultralytics' public hook, run before its first-batch warm-up): on CPU, mark
    the predictor warmed up. There its warm-up runs no forward for a PyTorch model; all it does is ``import
    torchvision`` so that NMS takes torchvision's kernel, and that import pulls in ``torch._dynamo``: 2.3-3 s before
    the first label (``python -X importtime``, Xeon VM), a tenth of a 10-photo run. Without it ultralytics' NMS uses
    its own ``TorchNMS``, which keeps the same boxes except degenerate ones (a zero-area box's IoU is 0/0: torchvision
    keeps it, ``TorchNMS`` drops it) and among boxes of exactly equal score, where they may keep different ones. A
    GPU predictor still warms up: there it runs the model once. ``AUTOANNOTATE_NMS=torchvision`` keeps ultralytics'
    own behaviour (the import, then torchvision's NMS), for byte-parity with ultralytics on tied scores."""
    device = getattr(predictor, "device", None)
    if isinstance(device, torch.device) and device.type == "cpu":
        predictor.done_warmup = True  # type: ignore[attr-defined]


def _use_onednn(yolo: object) -> None:
    """Fuse batch norms into convolutions with ultralytics' own ``fuse`` (which its predictor runs on its first call
    anyway, and skips when nothing is left to fuse) and route the fused float32 convolutions to oneDNN. The fusing
    must come first: it replaces the convolutions with new plain ``nn.Conv2d`` modules. The predictor deep-copies the
    model, which keeps the routed classes."""
    network = getattr(yolo, "model", None)
    fuse = getattr(network, "fuse", None)
    if not isinstance(network, torch.nn.Module) or not callable(fuse):
        return  # an exported model (ONNX, TensorRT, ...): no torch layers to route
    try:
        fuse(verbose=False)
    except (RuntimeError, AttributeError, TypeError, ValueError):
        # An architecture whose fuse() fails here would fail the same way in ultralytics' predictor, which reports
        # it on the first image; without a fused model there is nothing stable to route, so leave it as it is.
        return
    use_onednn(network)


def _precision_kwargs(half: bool) -> dict[str, object]:
    """fp16 for ultralytics' predictor: ``quantize=16`` where it exists (``half`` is deprecated there), else
    ``half=True``; nothing at all for fp32, so no deprecation warning is printed."""
    if not half:
        return {}
    from ultralytics.cfg import DEFAULT_CFG_DICT

    return {"quantize": 16} if "quantize" in DEFAULT_CFG_DICT else {"half": True}


def detect_settings(settings: RunSettings, class_ids: tuple[int, ...] | None) -> DetectSettings:
    """The run's detector thresholds, with ``class_ids`` its resolved ``--classes``."""
    p = settings.prompts
    return DetectSettings(
        conf=p.conf,
        iou=p.iou,
        imgsz=p.imgsz,
        max_det=p.max_det,
        class_ids=class_ids,
        half=settings.runtime.half,
        agnostic_nms=p.agnostic_nms,
        masks=settings.segmenter.sam_model == NO_SEGMENTER,
    )


def build_detector(settings: RunSettings, device: torch.device) -> Detector:
    """The ``--det-model`` detector on ``device`` with the run's thresholds, ``--classes`` resolved against it."""
    detector = Detector.from_weights(settings.prompts.det_model, device)
    return detector.with_settings(detect_settings(settings, detector.resolve_classes(settings.prompts.classes)))
