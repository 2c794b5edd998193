"""Can the host side keep a GPU busy? Images/s per core of everything autoannotate does on the CPU, with no model.

    python benchmarks/bench_host_capacity.py [--images 64] [--boxes 20] [--size 1080p|4k|small] [--masks crops|full]
    python benchmarks/bench_host_capacity.py --boxes 300 --images 32 --distinct 2    # a crowded scene

On a GPU, MobileSAM takes ~12 ms per image, so the host must decode, prepare, turn masks into polygons and
quality figures, and write labels for 83 images/s or the GPU waits. There is no GPU here, so this measures the host
side alone: the real ``autoannotate.pipeline.Annotator`` runs over real JPEG files, with a prompt source that returns
stored boxes and a segmenter that returns stored masks, computing nothing a model would.

The stored masks are what MobileSAM's ``BoxSegmenter`` hands the pipeline: low-res ``(N, 256, 256)`` logits of an
irregular blob per box (a few ellipses plus smoothed noise, ~60% of the box) in host memory, and the masks they
upscale to (by the real ``postprocess_logits``, once, at set-up), turned into ``types.Masks`` by the real
``SegmentationResult.to_masks`` (SAM's stability score from the logits, on the host). ``--masks`` picks their form:

- ``crops`` (default where ``types.MaskCrop`` exists): what MobileSAM returns on a GPU, each mask as the crop of its
  foreground (``sam_transforms.finished_masks``); the stand-in copies the stored crops into one buffer, as the
  pinned copy from the device fills one.
- ``full``: full-size masks, held when ``N * H * W`` fits 256 MiB (the stand-in writes every byte of them, as a
  device-to-host copy of full masks does), else rendered from the logits on the host one at a time by the real
  ``postprocess_logits`` (the write pool pays that). MobileSAM's form on a CPU, and on a GPU before crops.

``prepare`` is MobileSAM's real one (resize to 1024). It prints:

- per stage, ms per image (median over ``--stage-images``): the real ``Annotator.process_batch`` on one thread
  pinned to one core, its parts timed apart by wrappers around what it calls (``InputItem.read_bgr``, the stand-in
  segmenter, ``Masks.crop``/``mask``, ``mask_to_polygons``, ``write_text_atomic``, image link, journal; the quality
  figures are what is left of ``Annotator._finish``), in two passes (before and after the end-to-end runs), each
  stage keeping the lower median;
- ``Annotator.run`` end to end with ``cpu_workers=1`` pinned to one core and ``cpu_workers=2`` pinned to two
  (``os.sched_setaffinity`` on every thread of the process), side by side, alternating, best of ``--repeats``
  after one warm-up run; images/s, images/s per core, and the 1->2 scaling;
- the linear extrapolation of the per-core rate to 16 cores against the 83 images/s a GPU needs, capped by what
  does not grow with cores (the one inference thread; the write pool's threads, each image written on one), with
  the stage that bounds it.

No timing is asserted. ``--work-dir`` keeps the images and every run's dataset (``runs/<name>/labels``).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar
from unittest import mock

import cv2
import numpy as np
import torch
from common import (
    OtherLoadMeter,
    load_average_line,
    machine_lines,
    median,
    package_fingerprint,
    synthetic_scene_bgr,
    wait_for_quiet,
    warn_if_changed,
)

import autoannotate.pipeline as pipeline_module
import autoannotate.types as types_module
from autoannotate.dataset.layout import DatasetLayout, plan_layout, prepare_output
from autoannotate.inputs.base import InputItem
from autoannotate.inputs.listing import iter_items, resolve_data
from autoannotate.pipeline import Annotator
from autoannotate.polygons import PolygonPolicy
from autoannotate.resume import Journal, LabelEntry
from autoannotate.runtime.allocator import tune_host_allocator
from autoannotate.runtime.device import plan_compute
from autoannotate.segmenters.sam_transforms import (
    LOW_RES_SIZE,
    SAM_IMAGE_SIZE,
    PreparedImage,
    SegmentationResult,
    postprocess_logits,
    prepare_image,
    preprocess_hw,
    stability_on_device,
)
from autoannotate.types import Detections, ImageOutcome, Masks, Status

T = TypeVar("T")

#: ``--size`` -> ``(width, height)`` of the generated JPEGs.
SIZES_WH = {"small": (320, 240), "1080p": (1920, 1080), "4k": (4000, 3000)}
#: MobileSAM on a GPU, ms per image: what the host side has to keep up with.
GPU_MS_PER_IMAGE = 12.0
TARGET_CORES = 16
#: ``--masks full``: full-size masks are held when ``N * H * W`` bytes fit this, else rendered one at a time (as
#: ``segmenters/sam_transforms.py``'s ``_EAGER_MASK_BYTES``).
EAGER_MASK_BYTES = 256 * 1024**2
#: ``Annotator.run`` admits at most ``2 * infer_workers + 2`` batches not yet yielded (its ``max_in_flight``), and
#: finishes each image of them (masks, polygons, write) in its own write-pool task: at most this many batches' images
#: are written at once, by at most the write pool's threads.
MAX_BATCHES_IN_FLIGHT = 2 * 1 + 2
#: What ``types.MaskCrop`` is, where this version of autoannotate has it (``--masks crops``).
MASK_CROP = getattr(types_module, "MaskCrop", None)
HAS_CROPS = MASK_CROP is not None and "crops" in {f.name for f in dataclasses.fields(SegmentationResult)}
BACKGROUND_LOGIT = -20.0  # low-res logit outside every blob (SAM's background is strongly negative)
PEAK_LOGIT = 12.0  # logit at a blob's most certain pixel
MASK_FILL_FRACTION = 0.6  # of the box's low-res pixels above the threshold
POSTPROCESS_CHUNK_BOXES = 16  # masks upscaled at once at set-up
CLASS_COUNT = 8
CROWD_BOXES = 20  # beyond this many boxes per image, boxes get smaller (``box_width_range``)
JPEG_QUALITY = 90
NOISE_TILE_PX = 509  # texture tile side: not a multiple of 8, so JPEG blocks never repeat exactly
FINGERPRINT = "bench_host_capacity"


# --------------------------------------------------------------------------------------------------------------------
# Stage clock
# --------------------------------------------------------------------------------------------------------------------

#: What the wrappers time, per image (seconds); the table's rows are derived from these.
CLOCK_KEYS = ("read", "decode", "to_host", "stability", "infer", "masks", "polygons", "write", "finish", "image")


class StageClock:
    """Seconds per timed call of the image in progress, then every image's (one thread at a time: the serial pass).

    A key already being timed is not timed again inside itself (``Masks.crop`` calls ``Masks.mask``)."""

    def __init__(self) -> None:
        self.current = dict.fromkeys(CLOCK_KEYS, 0.0)
        self.images: list[dict[str, float]] = []
        self._active: set[str] = set()

    @contextlib.contextmanager
    def timing(self, key: str) -> Iterator[None]:
        if key in self._active:
            yield
            return
        self._active.add(key)
        started = time.perf_counter()
        try:
            yield
        finally:
            self.current[key] += time.perf_counter() - started
            self._active.discard(key)

    def timed(self, key: str, function: Callable[..., T]) -> Callable[..., T]:
        """``function``, timed under ``key``."""

        def wrapper(*args: Any, **kwargs: Any) -> T:
            with self.timing(key):
                return function(*args, **kwargs)

        return wrapper

    def next_image(self) -> None:
        self.images.append(self.current)
        self.current = dict.fromkeys(CLOCK_KEYS, 0.0)


@dataclass(frozen=True)
class TimedMasks(Masks):
    """``Masks`` whose ``crop`` and ``mask`` (what the writer asks for each instance) are timed."""

    clock: StageClock | None = field(default=None, compare=False)

    def mask(self, index: int) -> np.ndarray:
        assert self.clock is not None
        with self.clock.timing("masks"):
            return super().mask(index)

    def crop(self, index: int) -> Any:
        assert self.clock is not None
        with self.clock.timing("masks"):
            return super().crop(index)  # only called where Masks has it


class TimedItem:
    """An ``InputItem`` whose decoding and image link are timed; everything else is the item's own."""

    def __init__(self, item: InputItem, clock: StageClock) -> None:
        self._item = item
        self._clock = clock

    def read_bgr(self) -> np.ndarray:
        with self._clock.timing("read"):
            return self._item.read_bgr()

    def place(self, layout: DatasetLayout) -> None:
        with self._clock.timing("write"):
            self._item.place(layout)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._item, name)


class TimedJournal(Journal):
    """The run's journal, its records timed as part of writing."""

    def __init__(self, path: Path, clock: StageClock) -> None:
        super().__init__(path)
        self._clock = clock

    def pending(self, key: str) -> None:
        with self._clock.timing("write"):
            super().pending(key)

    def done(self, key: str, entry: LabelEntry, rows: list[dict[str, Any]] | None = None) -> None:
        with self._clock.timing("write"):
            super().done(key, entry, rows)


class TimedAnnotator(Annotator):
    """``Annotator`` with its three stages timed as wholes (decode, infer, finish); the parts come from the wrappers.

    Overrides private methods: if the pipeline renames them, ``check_clock`` says so instead of printing zeros."""

    def __init__(self, *args: Any, clock: StageClock, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.clock = clock

    def _decode(self, source: InputItem) -> tuple[np.ndarray, Any]:
        with self.clock.timing("decode"):
            return super()._decode(source)

    def _infer_batch(self, items: list[Any]) -> list[Any]:
        with self.clock.timing("infer"):
            return super()._infer_batch(items)

    def _finish(self, item: Any) -> ImageOutcome:
        with self.clock.timing("finish"):
            return super()._finish(item)


# --------------------------------------------------------------------------------------------------------------------
# Stored boxes and masks
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StoredInstance:
    """One box's stored segmenter output: its logits where they are not background, and its upscaled mask as the
    crop of its foreground (``x0``, ``y0``: the crop's top-left pixel in the image)."""

    logits: np.ndarray  # (h, w) float32, at ``logits_yx`` of the (256, 256) low-res frame
    logits_yx: tuple[int, int]
    mask_crop: np.ndarray  # (h, w) bool
    mask_xy: tuple[int, int]


@dataclass(frozen=True)
class StoredImage:
    """What the detector and the segmenter return for one image (shared by every image cycling through this set)."""

    detections: Detections
    iou_pred: np.ndarray  # (N,) float32
    instances: tuple[StoredInstance, ...]
    original_hw: tuple[int, int]
    input_hw: tuple[int, int]
    stability: np.ndarray  # (N,) float64, what a GPU counts on the device (sam_transforms.stability_on_device)


def box_width_range(count: int) -> tuple[float, float]:
    """Box widths as fractions of the image width: 5-45%, shrunk by ``sqrt(CROWD_BOXES / count)`` beyond
    ``CROWD_BOXES`` boxes, so that a crowded scene's boxes cover the image about as much as 20 boxes do (300 boxes
    of up to 45% of the image each would be no photo's)."""
    shrink = math.sqrt(min(1.0, CROWD_BOXES / count))
    return 0.05 * shrink, 0.45 * shrink


def random_boxes_xyxy(rng: np.random.Generator, resolution_wh: tuple[int, int], count: int) -> np.ndarray:
    """``(count, 4)`` float32 boxes of varied sizes: widths log-uniform over ``box_width_range``, aspect up to 2:1
    either way, placed anywhere inside the image."""
    width, height = resolution_wh
    low, high = box_width_range(count)
    box_w = np.exp(rng.uniform(math.log(low), math.log(high), count)) * width
    box_h = np.minimum(box_w * np.exp(rng.uniform(-0.7, 0.7, count)), 0.9 * height)
    box_w = np.maximum(box_w, 4.0)
    box_h = np.maximum(box_h, 4.0)
    x1 = rng.uniform(0, 1, count) * (width - box_w)
    y1 = rng.uniform(0, 1, count) * (height - box_h)
    return np.stack([x1, y1, x1 + box_w, y1 + box_h], axis=1).astype(np.float32)


def blob_field(rng: np.random.Generator, hw: tuple[int, int]) -> np.ndarray:
    """``(h, w)`` float32, high inside an irregular blob: a union of 3-5 rotated ellipses plus smoothed noise."""
    h, w = hw
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    field_values: np.ndarray = np.full((h, w), -np.inf, np.float32)
    for _ in range(int(rng.integers(3, 6))):
        cx, cy = rng.uniform(0.3, 0.7) * w, rng.uniform(0.3, 0.7) * h
        rx, ry = rng.uniform(0.2, 0.45) * w, rng.uniform(0.2, 0.45) * h
        angle = rng.uniform(0, math.pi)
        cos, sin = math.cos(angle), math.sin(angle)
        u = ((xx - cx) * cos + (yy - cy) * sin) / rx
        v = (-(xx - cx) * sin + (yy - cy) * cos) / ry
        field_values = np.maximum(field_values, 1.0 - (u * u + v * v))
    noise: np.ndarray = rng.standard_normal((h, w)).astype(np.float32)
    noise = cv2.GaussianBlur(noise, (0, 0), sigmaX=max(0.6, min(h, w) / 8))
    return field_values + 0.3 * noise / max(float(noise.std()), 1e-6)


def stored_image(rng: np.random.Generator, resolution_wh: tuple[int, int], boxes: int) -> StoredImage:
    """Boxes, scores, MobileSAM-like logits and the masks they upscale to, for one image."""
    width, height = resolution_wh
    original_hw = (height, width)
    input_hw = preprocess_hw(original_hw)
    low_res_per_px = SAM_IMAGE_SIZE / max(height, width) * LOW_RES_SIZE / SAM_IMAGE_SIZE
    xyxy = random_boxes_xyxy(rng, resolution_wh, boxes)
    regions = []
    for box in xyxy:
        x1, y1 = (math.floor(v * low_res_per_px) for v in box[:2])
        x2, y2 = (math.ceil(v * low_res_per_px) for v in box[2:])
        x2, y2 = min(LOW_RES_SIZE, max(x2, x1 + 2)), min(LOW_RES_SIZE, max(y2, y1 + 2))
        blob = blob_field(rng, (y2 - y1, x2 - x1))
        threshold = float(np.quantile(blob, 1.0 - MASK_FILL_FRACTION))
        logits = ((blob - threshold) * (PEAK_LOGIT / max(float(blob.max()) - threshold, 1e-6))).astype(np.float32)
        regions.append((logits, (y1, x1)))
    instances = []
    stability: list[np.ndarray] = []
    for start in range(0, boxes, POSTPROCESS_CHUNK_BOXES):
        chunk = regions[start : start + POSTPROCESS_CHUNK_BOXES]
        frames = np.full((len(chunk), 1, LOW_RES_SIZE, LOW_RES_SIZE), BACKGROUND_LOGIT, np.float32)
        for index, (logits, (y, x)) in enumerate(chunk):
            frames[index, 0, y : y + logits.shape[0], x : x + logits.shape[1]] = logits
        stability.append(stability_on_device(torch.from_numpy(frames), input_hw))
        masks = postprocess_logits(torch.from_numpy(frames), input_hw, original_hw, 0.0).numpy()
        for (logits, logits_yx), mask in zip(chunk, masks, strict=True):
            mx, my, mw, mh = cv2.boundingRect(mask.view(np.uint8))
            instances.append(StoredInstance(logits, logits_yx, mask[my : my + mh, mx : mx + mw].copy(), (mx, my)))
    detections = Detections(
        xyxy,
        np.arange(boxes, dtype=np.int64) % CLASS_COUNT,
        rng.uniform(0.3, 0.95, boxes).astype(np.float32),
    )
    iou_pred = rng.uniform(0.7, 0.99, boxes).astype(np.float32)
    return StoredImage(detections, iou_pred, tuple(instances), original_hw, input_hw, np.concatenate(stability))


class StoredBoxes:
    """Stands in for the detector (``prompts.base.PromptSource``): each image's stored boxes, by its key."""

    class_ids = None
    weights_path = None

    def __init__(self, by_rel_path: dict[PurePosixPath, Detections]) -> None:
        self._by_rel_path = by_rel_path
        self.names = {class_id: f"class{class_id}" for class_id in range(CLASS_COUNT)}

    def boxes(self, images_bgr: Sequence[np.ndarray], rel_paths: Sequence[PurePosixPath]) -> list[Detections]:
        return [self._by_rel_path[rel_path] for rel_path in rel_paths]


class StoredMaskSegmenter:
    """Stands in for MobileSAM (``segmenters.base.Segmenter``) with no model: ``prepare`` is MobileSAM's real one;
    ``segment`` hands back the stored logits and masks of the boxes it is given, in the form ``masks_form`` names,
    through the real ``SegmentationResult.to_masks``, so the pipeline gets the ``Masks`` MobileSAM returns.

    With a ``clock``, its steps are timed and its ``Masks`` time what the writer asks of them."""

    variant = "stored_masks"
    weights_path = None

    def __init__(self, stored: Sequence[StoredImage], masks_form: str, clock: StageClock | None = None) -> None:
        self._by_boxes = {image.detections.xyxy.tobytes(): image for image in stored}
        self.masks_form = masks_form
        self.clock = clock

    def prepare(self, image_rgb: np.ndarray) -> PreparedImage:
        return prepare_image(image_rgb)

    def default_batch(self) -> int:
        return 8  # MobileSAM's on CUDA (segmenters/sam.py default_batch_size)

    def release_cached_memory(self) -> None:
        pass

    def segment(self, prepared: Sequence[PreparedImage], prompts: Sequence[Detections]) -> list[Masks]:
        if self.clock is None:
            return [self.result(image, det).to_masks() for image, det in zip(prepared, prompts, strict=True)]
        out: list[Masks] = []
        for image, det in zip(prepared, prompts, strict=True):
            with self.clock.timing("to_host"):
                result = self.result(image, det)
            with self.clock.timing("stability"):
                masks = result.to_masks()
            fields = {f.name: getattr(masks, f.name) for f in dataclasses.fields(Masks)}
            out.append(TimedMasks(**fields, clock=self.clock))
        return out

    def result(self, image: PreparedImage, det: Detections) -> SegmentationResult:
        """The stored decoder output for ``det``'s boxes as ``BoxSegmenter`` hands it over, in host memory: as
        crops with the stability scores counted on the GPU (``sam_transforms.finished_masks``: no low-res logits
        on the host), or the low-res logits and full-size masks (held, or none: rendered on demand). Building them
        stands in for a real run's copies from the device, which also run on the inference thread."""
        stored = self._by_boxes[det.xyxy.tobytes()]
        if image.original_hw != stored.original_hw:
            raise ValueError(f"stored masks are {stored.original_hw}, the image is {image.original_hw}")
        if self.masks_form == "crops":
            crops = packed_crops(stored.instances)
            return SegmentationResult(
                stored.iou_pred, None, image.input_hw, image.original_hw, crops=crops, stability=stored.stability
            )
        count = len(stored.instances)
        low_res = np.full((count, LOW_RES_SIZE, LOW_RES_SIZE), BACKGROUND_LOGIT, np.float32)
        for index, instance in enumerate(stored.instances):
            (y, x), (h, w) = instance.logits_yx, instance.logits.shape
            low_res[index, y : y + h, x : x + w] = instance.logits
        extra: dict[str, Any] = {}
        if count * image.original_hw[0] * image.original_hw[1] <= EAGER_MASK_BYTES:
            held = np.empty((count, *image.original_hw), bool)
            held.fill(False)  # every byte written, as a device-to-host copy of full masks writes them
            for index, instance in enumerate(stored.instances):
                (x, y), (h, w) = instance.mask_xy, instance.mask_crop.shape
                held[index, y : y + h, x : x + w] = instance.mask_crop
            extra["eager_masks"] = held
        return SegmentationResult(stored.iou_pred, low_res, image.input_hw, image.original_hw, **extra)


def packed_crops(instances: Sequence[StoredInstance]) -> tuple[Any, ...]:
    """The crops as ``sam_transforms.postprocess_to_crops`` returns them: views into one buffer that the copy from
    the device filled (here: one copy of the stored crops)."""
    assert MASK_CROP is not None  # --masks crops needs it
    packed = np.concatenate([instance.mask_crop.reshape(-1) for instance in instances])
    crops, at = [], 0
    for instance in instances:
        h, w = instance.mask_crop.shape
        crops.append(MASK_CROP(packed[at : at + h * w].reshape(h, w), *instance.mask_xy))
        at += h * w
    return tuple(crops)


# --------------------------------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------------------------------


def textured_scene_bgr(rng: np.random.Generator, resolution_wh: tuple[int, int], tile: np.ndarray) -> np.ndarray:
    """``common.synthetic_scene_bgr`` plus a photo-like texture (``tile``, shifted at random), so that the JPEG
    holds as many coefficients as a photo's and decodes about as slowly (~0.5 MB at 1080p, quality 90)."""
    width, height = resolution_wh
    scene = synthetic_scene_bgr(rng, resolution_wh).astype(np.int16)
    dy, dx = (int(v) for v in rng.integers(0, NOISE_TILE_PX, 2))
    reps = (-(-(height + dy) // NOISE_TILE_PX), -(-(width + dx) // NOISE_TILE_PX), 1)
    texture = np.tile(tile, reps)[dy : dy + height, dx : dx + width]
    return np.clip(scene + texture, 0, 255).astype(np.uint8)


def texture_tile(rng: np.random.Generator) -> np.ndarray:
    """``(T, T, 3)`` int16: blurred noise (surface texture) plus fine noise (sensor grain)."""
    shape = (NOISE_TILE_PX, NOISE_TILE_PX, 3)
    coarse = cv2.GaussianBlur(rng.standard_normal(shape).astype(np.float32), (0, 0), sigmaX=1.5) * 40
    fine = rng.standard_normal(shape).astype(np.float32) * 6
    return (coarse + fine).astype(np.int16)


def write_images(folder: Path, count: int, distinct: int, resolution_wh: tuple[int, int], seed: int) -> list[Path]:
    """``count`` JPEGs ``img_<index>.jpg``: ``distinct`` generated scenes, the rest byte copies of them in turn
    (decoding costs the same; generating a 4k scene takes seconds)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    tile = texture_tile(rng)
    paths: list[Path] = []
    for index in range(count):
        path = folder / f"img_{index:04d}.jpg"
        if index < distinct:
            image = textured_scene_bgr(rng, resolution_wh, tile)
            if not cv2.imwrite(str(path), image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]):
                raise OSError(f"cannot write {path}")
        else:
            shutil.copyfile(paths[index % distinct], path)
        paths.append(path)
    return paths


# --------------------------------------------------------------------------------------------------------------------
# Pinning
# --------------------------------------------------------------------------------------------------------------------


def pin_process(cpus: frozenset[int]) -> None:
    """Restrict every thread of this process to ``cpus`` (torch's and OpenCV's pools included; threads started later
    inherit it from the thread that starts them), and size torch's pool as the CLI's GPU plan does for that many
    cores (``runtime.device.plan_compute``; only ``--masks full``'s render path uses torch on the host)."""
    for task in os.listdir("/proc/self/task"):
        with contextlib.suppress(ProcessLookupError):  # a thread that just ended
            os.sched_setaffinity(int(task), cpus)
    torch.set_num_threads(plan_compute(torch.device("cuda"), len(cpus)).torch_threads)


# --------------------------------------------------------------------------------------------------------------------
# Workload and runs
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Workload:
    """The images on disk, the stored sets and the stand-in models that serve them."""

    photos_dir: Path
    stored: tuple[StoredImage, ...]
    prompts: StoredBoxes
    masks_form: str
    batch: int


@dataclass(frozen=True)
class RunResult:
    """One ``Annotator.run`` over every image."""

    cpu_workers: int
    cores: int
    images: int
    wall_s: float
    cpu_s: float  # this process's CPU time during the run
    other_cores: float  # other processes' CPU meanwhile, in cores

    @property
    def images_per_s(self) -> float:
        return self.images / self.wall_s

    @property
    def images_per_s_per_core(self) -> float:
        return self.images_per_s / self.cores


def new_annotator(
    workload: Workload, out_dir: Path, cpu_workers: int, clock: StageClock | None = None, polygon_processes: int = 0
) -> tuple[Annotator, Journal, list[InputItem]]:
    """A fresh dataset at ``out_dir`` (whatever was there is removed), its journal, and the pipeline as the CLI
    builds it for a GPU (one inference worker, default polygon policy); with ``clock``, every part timed
    (``TimedAnnotator``)."""
    shutil.rmtree(out_dir, ignore_errors=True)  # a dataset of an earlier run in the same --work-dir
    spec = resolve_data(str(workload.photos_dir))
    layout = plan_layout(spec, str(workload.photos_dir), str(out_dir))
    prepare_output(layout)
    journal = Journal(out_dir / "journal.jsonl") if clock is None else TimedJournal(out_dir / "journal.jsonl", clock)
    segmenter = StoredMaskSegmenter(workload.stored, workload.masks_form, clock)
    args = (workload.prompts, segmenter, PolygonPolicy(), layout)
    kwargs: dict[str, Any] = {
        "batch": workload.batch,
        "fingerprint": FINGERPRINT,
        "journal": journal,
        "class_names": workload.prompts.names,
        "infer_workers": 1,
        "cpu_workers": cpu_workers,
        "polygon_processes": polygon_processes,
    }
    annotator = Annotator(*args, **kwargs) if clock is None else TimedAnnotator(*args, clock=clock, **kwargs)
    return annotator, journal, list(iter_items(spec))


def run_pipeline(
    workload: Workload, out_dir: Path, cpu_workers: int, cpus: frozenset[int], polygon_processes: int = 0
) -> RunResult:
    """``Annotator.run`` over every image with ``cpu_workers`` threads per pool (and ``polygon_processes``
    processes making the polygons, as a GPU run on 4 or more cores does), the process pinned to ``cpus``."""
    pin_process(cpus)
    annotator, journal, items = new_annotator(workload, out_dir, cpu_workers, polygon_processes=polygon_processes)
    meter = OtherLoadMeter()
    meter.start()
    cpu_before_s = time.process_time()
    started = time.perf_counter()
    outcomes = list(annotator.run(items))
    wall_s = time.perf_counter() - started
    cpu_s = time.process_time() - cpu_before_s
    other_cores = meter.other_cores()
    journal.close(remove=False)
    check_outcomes(outcomes)
    return RunResult(cpu_workers, len(cpus), len(outcomes), wall_s, cpu_s, other_cores)


def check_outcomes(outcomes: Sequence[ImageOutcome]) -> None:
    failed = [outcome for outcome in outcomes if outcome.status != Status.OK]
    if failed:
        raise RuntimeError(f"{len(failed)} images not ok, e.g. {failed[0].rel_path}: {failed[0].error}")


# --------------------------------------------------------------------------------------------------------------------
# Per-stage timing
# --------------------------------------------------------------------------------------------------------------------

#: ``(row, pool, label)`` of the stage table, in pipeline order. ``pool``: the ``Annotator`` thread that runs it
#: (``decode`` and ``write`` have ``cpu_workers`` threads each; ``infer`` is one thread on a GPU; ``main`` is the
#: thread iterating ``run``).
STAGES = (
    ("decode", "decode", "decode (read_image_bgr)"),
    ("prepare", "decode", "segmenter.prepare (+BGR->RGB)"),
    ("to_host", "infer", "masks to host (copy stand-in)"),
    ("stability", "infer", "stability scores (to_masks)"),
    ("infer_other", "infer", "infer, rest (prompts, bookkeeping)"),
    ("masks", "write", "Masks.crop / mask (render)"),
    ("polygons", "write", "polygons (mask_to_polygons)"),
    ("quality", "write", "quality figures + lines (_finish rest)"),
    ("write", "write", "write (label, link, journal)"),
    ("other", "main", "process_batch rest (admission)"),
)
POOLS = ("decode", "infer", "write", "main")


def stage_rows(clocked: dict[str, float]) -> dict[str, float]:
    """One image's table rows (seconds) from its clock: the wholes minus their timed parts."""
    return {
        "decode": clocked["read"],
        "prepare": clocked["decode"] - clocked["read"],
        "to_host": clocked["to_host"],
        "stability": clocked["stability"],
        "infer_other": clocked["infer"] - clocked["to_host"] - clocked["stability"],
        "masks": clocked["masks"],
        "polygons": clocked["polygons"],
        "quality": clocked["finish"] - clocked["masks"] - clocked["polygons"] - clocked["write"],
        "write": clocked["write"],
        "other": clocked["image"] - clocked["decode"] - clocked["infer"] - clocked["finish"],
    }


@dataclass(frozen=True)
class StagePass:
    """One serial pass: per image, its table rows and its real total (seconds), and what its masks looked like."""

    rows: tuple[dict[str, float], ...]
    totals_s: tuple[float, ...]
    mask_fill: tuple[float, ...]  # mask area / box area, per instance
    points: tuple[int, ...]  # polygon points per instance
    lines: int
    boxes: int
    other_cores: float  # other processes' CPU during the pass, in cores

    def ms_per_image(self, row: str) -> float:
        return 1000 * median([image[row] for image in self.rows])

    def total_ms_per_image(self) -> float:
        return 1000 * median(list(self.totals_s))


def measure_stages(workload: Workload, items: Sequence[InputItem], out_dir: Path) -> StagePass:
    """The real ``Annotator.process_batch`` over ``items`` one image at a time in the calling thread (pin it first),
    its parts timed by ``StageClock`` wrappers."""
    clock = StageClock()
    annotator, journal, _ = new_annotator(workload, out_dir, 1, clock)
    meter = OtherLoadMeter()
    meter.start()
    outcomes = []
    with (
        mock.patch.object(
            pipeline_module, "mask_to_polygons", clock.timed("polygons", pipeline_module.mask_to_polygons)
        ),
        mock.patch.object(
            pipeline_module, "write_text_atomic", clock.timed("write", pipeline_module.write_text_atomic)
        ),
    ):
        for item in items:
            with clock.timing("image"):
                outcomes += annotator.process_batch([TimedItem(item, clock)], [None])
            clock.next_image()
    journal.close(remove=False)
    check_outcomes(outcomes)
    check_clock(clock)
    fill, points = [], []
    for outcome in outcomes:
        xyxy = workload.prompts.boxes([], [outcome.rel_path])[0].xyxy
        for figures, (x1, y1, x2, y2) in zip(outcome.quality, xyxy, strict=True):
            fill.append(figures.mask_area / max(1.0, float((x2 - x1) * (y2 - y1))))
            points.append(figures.points)
    return StagePass(
        rows=tuple(stage_rows(image) for image in clock.images),
        totals_s=tuple(image["image"] for image in clock.images),
        mask_fill=tuple(fill),
        points=tuple(points),
        lines=sum(outcome.instances for outcome in outcomes),
        boxes=sum(outcome.detections for outcome in outcomes),
        other_cores=meter.other_cores(),
    )


def check_clock(clock: StageClock) -> None:
    """Every wrapper was called: the pipeline still calls what this benchmark times (else update it)."""
    never = [key for key in CLOCK_KEYS if key != "to_host" and not any(image[key] for image in clock.images)]
    if never:
        raise RuntimeError(
            f"nothing timed under {never}: autoannotate.pipeline no longer calls what bench_host_capacity.py wraps"
        )


@dataclass(frozen=True)
class StageTable:
    """Per row, ms per image: each the lower median of the passes (a burst of someone else's work, or of the
    hypervisor's, rarely spans both)."""

    ms: dict[str, float]
    total_ms: float  # the real process_batch, per image (lower median)

    def pool_ms(self, pool: str) -> float:
        return sum(self.ms[row] for row, row_pool, _ in STAGES if row_pool == pool)

    def sum_ms(self) -> float:
        return sum(self.ms.values())


def stage_table(passes: Sequence[StagePass]) -> StageTable:
    ms = {row: min(p.ms_per_image(row) for p in passes) for row, _, _ in STAGES}
    return StageTable(ms, min(p.total_ms_per_image() for p in passes))


# --------------------------------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------------------------------


def print_stage_table(table: StageTable, passes: Sequence[StagePass]) -> None:
    """Per stage and per pool: ms per image, ms per box where it grows with boxes, share of the host's work."""
    first = passes[0]
    images = len(first.rows)
    boxes_per_image = first.boxes / max(1, images)
    print(
        f"\nmasks: {median(list(first.mask_fill)):.0%} of their box (median), {median(list(first.points)):.0f} polygon"
        f" points (median), {first.lines} lines for {first.boxes} boxes"
    )
    print(
        f"per stage: the real Annotator.process_batch, one image at a time on one thread pinned to one core; median"
        f" over {images} images ({boxes_per_image:.0f} boxes each), lower of {len(passes)} passes:"
    )
    print(f"{'stage':40} {'pool':7} {'ms/image':>9} {'ms/box':>8} {'share':>6}")
    total_ms = table.sum_ms()
    per_box_rows = ("stability", "masks", "polygons", "quality")
    for row, pool, label in STAGES:
        ms = table.ms[row]
        per_box = f"{ms / boxes_per_image:8.3f}" if row in per_box_rows else " " * 8
        print(f"{label:40} {pool:7} {ms:9.2f} {per_box} {ms / total_ms:6.0%}")
    for pool in POOLS:
        ms = table.pool_ms(pool)
        print(f"{'  pool total':40} {pool:7} {ms:9.2f} {'':8} {ms / total_ms:6.0%}")
    print(f"{'sum of the rows':40} {'':7} {total_ms:9.2f}")
    print(f"{'process_batch, whole (median of totals)':40} {'(real)':7} {table.total_ms:9.2f}")
    other_cores = ", ".join(f"{p.other_cores:.2f}" for p in passes)
    print(f"other load during the passes: {other_cores} cores")


def print_runs(runs: list[RunResult], batch: int) -> dict[int, RunResult]:
    """Every end-to-end run, then the best per worker count; returns the best."""
    print(f"\nend to end, Annotator.run (infer_workers=1, batch {batch}), every run in order:")
    header = ("workers", "cores", "wall s", "images/s", "img/s/core", "cores busy", "other")
    print(" ".join(f"{name:>{width}}" for name, width in zip(header, (7, 5, 7, 9, 10, 10, 6), strict=True)))
    for run in runs:
        print(
            f"{run.cpu_workers:7d} {run.cores:5d} {run.wall_s:7.2f} {run.images_per_s:9.1f}"
            f" {run.images_per_s_per_core:10.1f} {run.cpu_s / run.wall_s:10.2f} {run.other_cores:6.2f}"
        )
    best: dict[int, RunResult] = {}
    for run in runs:
        if run.cores not in best or run.images_per_s > best[run.cores].images_per_s:
            best[run.cores] = run
    print("best per configuration:")
    for cores in sorted(best):
        run = best[cores]
        print(
            f"  cpu_workers={run.cpu_workers} on {cores} core(s): {run.images_per_s:.1f} images/s,"
            f" {run.images_per_s_per_core:.1f} images/s per core"
        )
    if 1 in best and 2 in best:
        scaling = best[2].images_per_s / best[1].images_per_s
        print(f"1->2 worker scaling: {scaling:.2f}x (2.00x = linear, {scaling / 2:.0%} efficiency)")
    return best


@dataclass(frozen=True)
class Cap:
    """An upper bound on images/s at ``TARGET_CORES`` cores, and the stage that sets it."""

    images_per_s: float
    bounding: str


def print_extrapolation(table: StageTable, runs: list[RunResult], best: dict[int, RunResult], batch: int) -> None:
    """The 16-core line: the per-core rate times 16, capped by what does not grow with cores (the one inference
    thread, the main thread, the images in flight and the write pool's threads), with the stage that binds."""
    needed_images_per_s = 1000 / GPU_MS_PER_IMAGE
    basis = best[2] if 2 in best else best[1]
    per_core = [run.images_per_s_per_core for run in runs if run.cores == basis.cores]

    def largest(pool: str | None) -> tuple[str, float]:
        rows = [stage for stage in STAGES if pool is None or stage[1] == pool]
        row, _, label = max(rows, key=lambda stage: table.ms[stage[0]])
        return label, table.ms[row]

    label, ms = largest(None)
    write_label, write_row_ms = largest("write")
    infer_ms, main_ms, write_ms = table.pool_ms("infer"), table.pool_ms("main"), table.pool_ms("write")
    host_workers = getattr(plan_compute(torch.device("cuda"), TARGET_CORES), "host_workers", 4)
    writers = min(host_workers, MAX_BATCHES_IN_FLIGHT * batch)
    caps = [
        Cap(basis.images_per_s_per_core * TARGET_CORES, f"{label}, {ms:.2f} of {table.sum_ms():.2f} host ms/image"),
        Cap(1000 / max(infer_ms, 1e-9), f"the one inference thread's host work, {infer_ms:.2f} ms/image"),
        Cap(1000 / max(main_ms, 1e-9), f"the main thread's admission work, {main_ms:.2f} ms/image"),
        Cap(
            writers * 1000 / max(write_ms, 1e-9),
            f"{write_label}, {write_row_ms:.2f} of {write_ms:.2f} write-pool ms/image, on at most {writers} write"
            f" threads ({host_workers} in the pool, {MAX_BATCHES_IN_FLIGHT} batches of {batch} in flight)",
        ),
    ]
    binding = min(caps, key=lambda cap: cap.images_per_s)
    verdict = "keeps up" if binding.images_per_s >= needed_images_per_s else "does not keep up"
    print(
        f"\n{TARGET_CORES}-core extrapolation: {binding.images_per_s:.0f} img/s vs {needed_images_per_s:.0f} img/s"
        f" needed for MobileSAM at {GPU_MS_PER_IMAGE:.0f} ms/image -> {verdict} (bounding stage: {binding.bounding})"
    )
    print(
        f"  linear: {basis.images_per_s_per_core:.1f} images/s per core (best {basis.cores}-core run; the runs gave"
        f" {min(per_core):.1f}-{max(per_core):.1f}) x {TARGET_CORES} = {caps[0].images_per_s:.0f} img/s"
        f" ({min(per_core) * TARGET_CORES:.0f}-{max(per_core) * TARGET_CORES:.0f})"
    )
    print(
        f"  caps that do not grow with cores: the inference thread {caps[1].images_per_s:.0f} img/s, the main thread"
        f" {caps[2].images_per_s:.0f} img/s, the write pool ({writers} threads busy at most, {write_ms:.1f}"
        f" ms/image each) {caps[3].images_per_s:.0f} img/s"
    )
    stall_free_images_per_s = TARGET_CORES * 1000 / table.sum_ms()
    print(
        f"  from the stage medians instead (no VM stalls, no pipeline overhead): {TARGET_CORES} x 1000 /"
        f" {table.sum_ms():.1f} ms = {stall_free_images_per_s:.0f} img/s, before the caps"
    )
    if 1 in best and 2 in best:
        speedup = best[2].images_per_s / best[1].images_per_s
        if speedup > 1:
            # Amdahl: the share of the work that one thread at a time can do (the GIL, the single threads) that
            # makes two cores give ``speedup``; it bounds every larger core count.
            serial_fraction = min(1.0, 2 / speedup - 1)
            amdahl_speedup = 1 / (serial_fraction + (1 - serial_fraction) / TARGET_CORES)
            amdahl_images_per_s = min(best[1].images_per_s * amdahl_speedup, *(cap.images_per_s for cap in caps[1:]))
            print(
                f"  Amdahl with the serial share the 1->2 scaling implies ({serial_fraction:.0%}: the GIL, the single"
                f" threads): {amdahl_speedup:.1f}x the 1-core rate = {amdahl_images_per_s:.0f} img/s (pessimistic"
                " when the 2-core rows are noisy)"
            )
        else:
            print("  a second core gave no speedup: the threads wait on each other (the GIL), more cores add nothing")
    decode_ms = table.pool_ms("decode")
    print(
        f"  the CLI's GPU plan at {TARGET_CORES} cores gives each host pool {host_workers} threads: decode pool at most"
        f" {host_workers * 1000 / decode_ms:.0f} img/s ({decode_ms:.1f} ms/image per thread), write pool at most"
        f" {writers * 1000 / write_ms:.0f} img/s (threads alone, before the GIL)"
    )


# --------------------------------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------------------------------


def build_workload(args: argparse.Namespace, work: Path) -> Workload:
    """Write the JPEGs and precompute every stored set (``--distinct`` of them, cycled over the images)."""
    resolution_wh = SIZES_WH[args.size]
    distinct = max(1, min(args.distinct, args.images))
    photos_dir = work / "photos"
    paths = write_images(photos_dir, args.images, distinct, resolution_wh, args.seed)
    rng = np.random.default_rng([args.seed, 1])
    stored = tuple(stored_image(rng, resolution_wh, args.boxes) for _ in range(distinct))
    by_rel_path = {PurePosixPath(path.name): stored[index % distinct].detections for index, path in enumerate(paths)}
    return Workload(photos_dir, stored, StoredBoxes(by_rel_path), args.masks, args.batch)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=64, help="JPEGs per end-to-end run")
    parser.add_argument("--boxes", type=int, default=20, help="boxes (masks) per image; try 300 for a crowded scene")
    parser.add_argument("--size", choices=sorted(SIZES_WH), default="1080p", help="image size (small: 320x240)")
    parser.add_argument(
        "--masks",
        choices=("crops", "full"),
        default="crops" if HAS_CROPS else "full",
        help="the masks' form: crops (MobileSAM on a GPU) or full (held, or rendered per mask on the host)",
    )
    parser.add_argument("--distinct", type=int, default=8, help="distinct scenes and box sets, cycled over images")
    parser.add_argument("--stage-images", type=int, default=8, help="images timed stage by stage, per pass")
    parser.add_argument("--repeats", type=int, default=3, help="end-to-end runs per configuration (best kept)")
    parser.add_argument("--batch", type=int, default=8, help="images per inference call (8: MobileSAM on CUDA)")
    parser.add_argument(
        "--polygon-processes",
        type=int,
        default=0,
        help="also run cpu_workers=2 on 2 cores with the polygons made in this many processes (a GPU run's plan)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work-dir", type=Path, help="keep images and datasets here (default: a temporary dir)")
    parser.add_argument(
        "--quiet-wait-s",
        type=float,
        default=20,
        help="first wait up to this long for other processes to use < 0.3 cores (0: do not wait)",
    )
    args = parser.parse_args(argv)
    if min(args.images, args.boxes, args.repeats, args.stage_images, args.batch, args.distinct) < 1:
        parser.error("--images, --boxes, --repeats, --stage-images, --batch and --distinct must be >= 1")
    if args.masks == "crops" and not HAS_CROPS:
        parser.error("--masks crops: this autoannotate has no types.MaskCrop (its segmenters return full masks)")
    return args


def measure(args: argparse.Namespace, work: Path, usable_cpus: list[int]) -> None:
    """Set up, time the stages, run end to end, report."""
    setup_started = time.perf_counter()
    workload = build_workload(args, work)
    width, height = SIZES_WH[args.size]
    jpeg_kb = median([path.stat().st_size / 1000 for path in workload.photos_dir.glob("*.jpg")])
    low, high = box_width_range(args.boxes)
    if args.masks == "crops":
        form = "crops of their foreground (MobileSAM on a GPU)"
    elif args.boxes * width * height <= EAGER_MASK_BYTES:
        form = "full-size, held (N*H*W <= 256 MiB)"
    else:
        form = "full-size, rendered per mask on the host (N*H*W > 256 MiB)"
    print(
        f"workload: {args.images} JPEGs {width}x{height} (median {jpeg_kb:.0f} kB, quality {JPEG_QUALITY}),"
        f" {args.boxes} boxes/image ({low:.0%}-{high:.0%} of the width), masks {form},"
        f" polygon policy merge / tolerance 1 px;"
        f" set up in {time.perf_counter() - setup_started:.1f} s"
    )
    if args.quiet_wait_s > 0:
        waited_s, load = wait_for_quiet(args.quiet_wait_s)
        print(f"waited {waited_s:.0f} s for a quiet machine (other load {load:.2f} cores)")

    runs_dir = work / "runs"
    one_core = frozenset(usable_cpus[:1])
    stage_items = list(iter_items(resolve_data(str(workload.photos_dir))))[: args.stage_images]
    pin_process(one_core)
    measure_stages(workload, stage_items[:1], runs_dir / "warmup")  # one-off costs (first calls, heap growth)
    passes = [measure_stages(workload, stage_items, runs_dir / "stages-0")]

    configurations = [(1, one_core)]
    if len(usable_cpus) >= 2:
        configurations.append((2, frozenset(usable_cpus[:2])))
    else:
        print("only one usable core: the 2-worker run is skipped")
    # The first run grows the heap to what the batches in flight need (page faults a long run pays once).
    warm_up = run_pipeline(workload, runs_dir / "warmup-e2e", *configurations[-1])
    print(f"\nwarm-up run (not counted): {warm_up.images_per_s:.1f} images/s on {warm_up.cores} core(s)")
    runs = []
    for repeat in range(args.repeats):
        for cpu_workers, cpus in configurations if repeat % 2 == 0 else configurations[::-1]:
            name = f"workers{cpu_workers}-cores{len(cpus)}-{repeat}"
            runs.append(run_pipeline(workload, runs_dir / name, cpu_workers, cpus))
    best = print_runs(runs, args.batch)
    if args.polygon_processes and len(usable_cpus) >= 2:
        two_cores = frozenset(usable_cpus[:2])
        with_processes = [
            run_pipeline(workload, runs_dir / f"processes-{repeat}", 2, two_cores, args.polygon_processes)
            for repeat in range(args.repeats)
        ]
        fastest = max(with_processes, key=lambda run: run.images_per_s)
        rates = ", ".join(f"{run.images_per_s:.1f}" for run in with_processes)
        print(
            f"polygons in {args.polygon_processes} processes, cpu_workers=2 on 2 cores: {rates} images/s (best"
            f" {fastest.images_per_s:.1f}, other load {fastest.other_cores:.2f}) against"
            f" {best[2].images_per_s:.1f} with the write threads: {fastest.images_per_s / best[2].images_per_s:.2f}x"
        )

    pin_process(one_core)
    passes.append(measure_stages(workload, stage_items, runs_dir / "stages-1"))
    table = stage_table(passes)
    print_stage_table(table, passes)
    print_extrapolation(table, runs, best, args.batch)
    print(
        "\nnotes: host side only (no detector, no SAM compute; the GPU's own time is the 12 ms). cores busy ="
        " this process's CPU time / wall time; other = other processes' CPU meanwhile, in cores (above ~0.2 a"
        " row is inflated by someone else's work). Linear extrapolation ignores the GIL (mask_to_polygons and"
        " the quality figures are partly Python) and memory bandwidth: a 2-core row whose cores busy stays near 1"
        " had its threads waiting on each other, not on the cores."
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    tune_host_allocator()  # as `autoannotate run` does
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="bench_host_capacity_"))
    work.mkdir(parents=True, exist_ok=True)
    usable_cpus = sorted(os.sched_getaffinity(0))
    try:
        print("\n".join(machine_lines()))
        source_before = package_fingerprint()
        print(f"autoannotate: {source_before}")
        measure(args, work, usable_cpus)
        print(load_average_line("after"))
        warn_if_changed(source_before)
    finally:
        pin_process(frozenset(usable_cpus))
        if args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
