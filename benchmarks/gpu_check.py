"""The checks and numbers for the day a GPU machine is lent for a few minutes: one command, under 5 minutes.

    bash benchmarks/gpu_check.sh [--wheels DIR] [--cpu-smoke] [--keep] [--work-dir DIR]

(``gpu_check.sh`` installs carried wheels, then runs this file.) Everything is built here: random-weight models
(``scripts/random_weights.py``), synthetic images and YOLO box labels for ``--boxes-from``. Nothing is downloaded.

Each check prints ``PASS name: detail``, ``FAIL name: detail`` or ``SKIP name: reason``; the exit status is 1 when
any check failed, else 0. A table of numbers follows (nothing asserted on them).

Two SAM stand-ins, because of what random weights do to the host side: ``speckle`` is ``mobile_sam_random.pt`` as
``scripts/random_weights.py`` writes it, whose masks are a fine speckle over the whole image with logits near 0
everywhere (the worst case for precision, so the one that tests byte-identity and ``--half``), but whose polygons
cost 0.3-2 s of GIL-bound Python per mask at 1080p-4000x3000: 300 boxes of it on 4000x3000 images would take
minutes per image. ``flat`` (``common.SAM_STANDINS``: every mask is the whole image, a 4-vertex polygon) runs the
same networks at the same cost on the GPU with almost free polygons, so the GPU runs at scale (1080p and
4000x3000, 20 and 300 boxes, the out-of-memory retry) use it. On the CPU (``--cpu-smoke``, or no CUDA) there is one
small set and the speckle stand-in only.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

import cv2
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (
    RANDOM_WEIGHTS_SCRIPT,
    _write_sam_standin,
    mask_iou,
    rasterise_polygon,
    read_label_polygons,
    synthetic_scene_bgr,
)

#: The class names of the ``--names`` data.yaml; box labels use ids 0..2.
CLASS_NAMES = ("red", "green", "blue")
#: The one line ``--device 0`` must print on a machine where torch sees no CUDA device (autoannotate/runtime/device.py).
NO_CUDA_DEVICE_LINE = "error: invalid --device '0': this machine has no CUDA device that torch sees; use '' or 'cpu'"
#: Sampling period of the GPU utilisation sampler.
UTILISATION_PERIOD_S = 0.2
#: Seconds the GPU run may take before it starts no further step that only gives numbers (the checks always run):
#: the whole run stays under 5 minutes.
GPU_BUDGET_S = 270.0
#: A numbers-only step starts only with at least this many seconds of the budget left (the longest, a YOLO run, ~30).
OPTIONAL_STEP_RESERVE_S = 30.0


# --------------------------------------------------------------------------------------------------------------------
# Sizes
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scale:
    """How large every part of the check is: the GPU's (under 5 minutes on an H100 host) or the CPU smoke's (well
    under 2 minutes on 2 cores).

    ``scale_sizes_wh``: one entry per image of the set the scale runs use (the GPU's ``flat`` stand-in runs); its
    images alternate ``boxes_few`` and ``boxes_many`` boxes within each size. ``precision_sizes_wh`` and
    ``precision_boxes``: the images and boxes of the speckle runs (fp32 twice, ``--half``; on the CPU the only set).
    ``encoder_batches``: the batches the encoder alone is timed at (none on the CPU, where the ``predict`` rows
    already give its time at batch 1). ``oom_*``: the out-of-memory retry's images (GPU).
    """

    name: str
    scale_sizes_wh: tuple[tuple[int, int], ...]
    precision_sizes_wh: tuple[tuple[int, int], ...]
    precision_boxes: tuple[int, ...]
    boxes_few: int
    boxes_many: int
    encoder_batches: tuple[int, ...]
    warmup_calls: int
    timed_calls: int
    polygon_masks: int
    oom_wh: tuple[int, int]
    oom_images: int
    oom_boxes: int
    run_timeout_s: float


GPU_SCALE = Scale(
    name="gpu",
    scale_sizes_wh=((1920, 1080),) * 8 + ((4000, 3000),) * 4,
    precision_sizes_wh=((1920, 1080),) * 2,
    precision_boxes=(20, 20),
    boxes_few=20,
    boxes_many=300,
    encoder_batches=(1, 8),
    warmup_calls=2,
    timed_calls=3,
    polygon_masks=6,
    oom_wh=(4000, 3000),
    oom_images=8,
    oom_boxes=20,
    run_timeout_s=240.0,
)

CPU_SCALE = Scale(
    name="cpu-smoke",
    scale_sizes_wh=(),
    precision_sizes_wh=((320, 240), (400, 300)),
    precision_boxes=(12, 3),
    boxes_few=3,
    boxes_many=12,
    encoder_batches=(),
    warmup_calls=0,
    timed_calls=1,
    polygon_masks=3,
    oom_wh=(400, 300),
    oom_images=0,
    oom_boxes=0,
    run_timeout_s=150.0,
)


# --------------------------------------------------------------------------------------------------------------------
# Report: checks and numbers
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class Report:
    """What the run found: each check's status, printed as it is known, and the numbers, printed at the end."""

    statuses: dict[str, str] = field(default_factory=dict)
    numbers: list[tuple[str, str]] = field(default_factory=list)

    def check(self, status: str, name: str, detail: str) -> None:
        self.statuses[name] = status
        print(f"{status} {name}: {detail}", flush=True)

    def number(self, metric: str, value: str) -> None:
        self.numbers.append((metric, value))

    @property
    def failed(self) -> bool:
        return "FAIL" in self.statuses.values()

    def print_numbers(self) -> None:
        width = max((len(metric) for metric, _ in self.numbers), default=0)
        print("numbers (nothing asserted):", flush=True)
        for metric, value in self.numbers:
            print(f"  {metric.ljust(width)}  {value}", flush=True)


def guarded_check(report: Report, name: str, body: Callable[[], tuple[str, str]]) -> None:
    """Run one check; an exception in it is that check's FAIL (with its one-line reason), not the end of the run."""
    try:
        status, detail = body()
    except Exception as err:  # a check that breaks is a failed check, the others still run
        status, detail = "FAIL", f"raised {type(err).__name__}: {one_line(str(err))}"
    report.check(status, name, detail)


def guarded_numbers(report: Report, what: str, body: Callable[[], None]) -> None:
    """Measure some numbers; an exception leaves one ``n/a`` row saying why, and the run goes on."""
    try:
        body()
    except Exception as err:  # numbers are informative only
        report.number(what, f"n/a ({type(err).__name__}: {one_line(str(err))})")


def one_line(text: str, limit: int = 300) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


# --------------------------------------------------------------------------------------------------------------------
# Inputs: weights, images, box labels
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Weights:
    """Random-weight files: the YOLO11n detector, the speckle SAM (as written) and the flat SAM derived from it."""

    yolo: Path
    speckle: Path
    flat: Path | None


def build_weights(folder: Path, with_flat: bool) -> Weights:
    """``scripts/random_weights.py`` run in this process (the same code, without another interpreter start)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("random_weights", RANDOM_WEIGHTS_SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with contextlib.redirect_stdout(sys.stderr):  # its "wrote ..." line is no check line
        module.main(str(folder))
    speckle = folder / "mobile_sam_random.pt"
    flat = None
    if with_flat:
        flat = folder / "flat" / "mobile_sam_flat.pt"  # the name says nothing the loader uses: it reads contents
        flat.parent.mkdir(parents=True, exist_ok=True)
        _write_sam_standin(speckle, flat, "flat")
    return Weights(yolo=folder / "yolo11n_random.pt", speckle=speckle, flat=flat)


@dataclass(frozen=True)
class ImageSet:
    """A folder of synthetic JPEGs (``images/``), their ``--boxes-from`` labels (``boxes/``) and ``names.yaml``.

    ``sizes_wh`` and ``boxes``: per image stem, its ``(W, H)`` and its number of boxes."""

    root: Path
    sizes_wh: dict[str, tuple[int, int]]
    boxes: dict[str, int]

    @property
    def images(self) -> Path:
        return self.root / "images"

    @property
    def box_labels(self) -> Path:
        return self.root / "boxes"

    @property
    def names(self) -> Path:
        return self.root / "names.yaml"

    def image_path(self, stem: str) -> Path:
        return self.images / f"{stem}.jpg"

    def stems_by_size(self) -> dict[tuple[int, int], list[str]]:
        out: dict[tuple[int, int], list[str]] = {}
        for stem, wh in self.sizes_wh.items():
            out.setdefault(wh, []).append(stem)
        return out


def box_label_lines(rng: np.random.Generator, count: int) -> list[str]:
    """``count`` YOLO ``class cx cy w h`` lines (normalised), boxes 4-40% of each side, inside the image."""
    lines = []
    for _ in range(count):
        w, h = rng.uniform(0.04, 0.4, 2)
        cx, cy = rng.uniform(w / 2, 1 - w / 2), rng.uniform(h / 2, 1 - h / 2)
        lines.append(f"{int(rng.integers(0, len(CLASS_NAMES)))} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}")
    return lines


def write_image_set(
    root: Path, sizes_wh: Sequence[tuple[int, int]], box_counts: Sequence[int], seed: int, prefix: str
) -> ImageSet:
    """Write the images, labels and names file. One synthetic scene per size, each further image of that size a
    rolled and flipped copy of it: a 4000x3000 scene takes ~3 s to draw, a copy milliseconds, and each image still
    differs from the others."""
    images, labels = root / "images", root / "boxes"
    images.mkdir(parents=True, exist_ok=True)
    labels.mkdir(parents=True, exist_ok=True)
    (root / "names.yaml").write_text(
        "names:\n" + "".join(f"  {i}: {name}\n" for i, name in enumerate(CLASS_NAMES)), encoding="utf-8"
    )
    rng = np.random.default_rng(seed)
    bases: dict[tuple[int, int], np.ndarray] = {}
    sizes: dict[str, tuple[int, int]] = {}
    boxes: dict[str, int] = {}
    for index, (wh, count) in enumerate(zip(sizes_wh, box_counts, strict=True)):
        if wh not in bases:
            bases[wh] = synthetic_scene_bgr(rng, wh)
        image = np.roll(bases[wh], shift=index * 97, axis=1)
        if index % 2:
            image = image[::-1]
        stem = f"{prefix}_{index:02d}_{wh[0]}x{wh[1]}_{count}boxes"
        if not cv2.imwrite(str(images / f"{stem}.jpg"), np.ascontiguousarray(image)):
            raise OSError(f"cannot write {stem}.jpg")
        (labels / f"{stem}.txt").write_text("\n".join(box_label_lines(rng, count)) + "\n", encoding="utf-8")
        sizes[stem], boxes[stem] = wh, count
    return ImageSet(root, sizes, boxes)


def alternating_counts(sizes_wh: Sequence[tuple[int, int]], few: int, many: int) -> list[int]:
    """Within each size, images alternate ``few`` and ``many`` boxes (so every size has both)."""
    seen: dict[tuple[int, int], int] = {}
    counts = []
    for wh in sizes_wh:
        counts.append(few if seen.get(wh, 0) % 2 == 0 else many)
        seen[wh] = seen.get(wh, 0) + 1
    return counts


def read_boxes_xyxy(image_set: ImageSet, stem: str) -> np.ndarray:
    """The pixel boxes of one image, read by autoannotate's own ``--boxes-from`` reader."""
    from autoannotate.prompts.labels import read_box_labels

    return read_box_labels(image_set.box_labels / f"{stem}.txt", image_set.sizes_wh[stem]).xyxy


def read_rgb(path: Path) -> np.ndarray:
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise OSError(f"cannot read {path}")
    return np.ascontiguousarray(bgr[..., ::-1])


# --------------------------------------------------------------------------------------------------------------------
# CLI runs (subprocesses)
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunResult:
    """One finished ``autoannotate run --json``: exit status, its summary event, stderr, wall time, output dir."""

    name: str
    returncode: int
    summary: dict[str, Any] | None
    stderr: str
    wall_s: float
    out_dir: Path
    utilisation: list[float] | None = None
    utilisation_source: str = "n/a"

    def problem(self, expected_images: int) -> str | None:
        """Why this run is not a clean run of ``expected_images`` images (every label written), or None."""
        if self.returncode != 0:
            return f"{self.name} exited {self.returncode}: {one_line(self.stderr[-600:])}"
        if self.summary is None:
            return f"{self.name} printed no --json summary"
        if self.summary.get("failed") or self.summary.get("labeled") != expected_images:
            return (
                f"{self.name}: {self.summary.get('labeled')} of {expected_images} labelled, "
                f"{self.summary.get('failed')} failed"
            )
        return None


def run_args(image_set: ImageSet, out_dir: Path, sam: Path, device: str, *extra: str) -> list[str]:
    """``autoannotate run`` options over ``image_set``'s box labels; ``--runtime torch`` so that a cached OpenVINO
    conversion of these (deterministic) weights never changes what a CPU run measures."""
    return [
        "run",
        "--data",
        str(image_set.images),
        "--output-dir",
        str(out_dir),
        "--boxes-from",
        str(image_set.box_labels),
        "--names",
        str(image_set.names),
        "--sam-model",
        str(sam),
        "--device",
        device,
        "--runtime",
        "torch",
        "--json",
        *extra,
    ]


def run_cli(name: str, args: list[str], out_dir: Path, timeout_s: float, sample_gpu: bool = False) -> RunResult:
    """``python -m autoannotate.cli ARGS`` as a subprocess (the console script's module), optionally sampling GPU
    utilisation meanwhile."""
    command = [sys.executable, "-m", "autoannotate.cli", *args]
    sampler = UtilisationSampler() if sample_gpu else None
    started = time.perf_counter()
    with sampler if sampler is not None else contextlib.nullcontext():
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, check=False)
            returncode, stdout, stderr = done.returncode, done.stdout, done.stderr
        except subprocess.TimeoutExpired as err:
            returncode, stdout = -9, _text(err.stdout)
            stderr = _text(err.stderr) + f"\n(killed after {timeout_s:.0f} s)"
    wall_s = time.perf_counter() - started
    summary = next((event for event in _json_events(stdout) if event.get("event") == "summary"), None)
    samples = sampler.samples if sampler is not None else None
    source = sampler.source if sampler is not None else "n/a"
    return RunResult(name, returncode, summary, stderr, wall_s, out_dir, samples, source)


def _text(value: str | bytes | None) -> str:
    if value is None:
        return ""
    return value.decode(errors="replace") if isinstance(value, bytes) else value


def _json_events(stdout: str) -> list[dict[str, Any]]:
    events = []
    for line in stdout.splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            event = json.loads(line)
            if isinstance(event, dict):
                events.append(event)
    return events


class UtilisationSampler:
    """GPU utilisation (percent) every ``UTILISATION_PERIOD_S`` in a thread while a run goes: ``nvidia-smi`` where
    it exists, else ``torch.cuda.utilization()`` (NVML through pynvml), else nothing (``source`` says which)."""

    def __init__(self) -> None:
        self.samples: list[float] = []
        self.source = "n/a"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._read = self._pick_reader()

    def _pick_reader(self) -> Callable[[], float] | None:
        smi = shutil.which("nvidia-smi")
        if smi is not None:
            command = [smi, "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"]

            def read_smi() -> float:
                out = subprocess.run(command, capture_output=True, text=True, timeout=5, check=True).stdout
                return float(out.split()[0])

            with contextlib.suppress(Exception):
                read_smi()
                self.source = "nvidia-smi"
                return read_smi

        with contextlib.suppress(Exception):
            torch.cuda.utilization()
            self.source = "torch.cuda.utilization"
            return lambda: float(torch.cuda.utilization())
        return None

    def __enter__(self) -> UtilisationSampler:
        if self._read is not None:
            self._thread = threading.Thread(target=self._loop, name="gpu-util-sampler", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _loop(self) -> None:
        read = self._read
        assert read is not None
        while not self._stop.wait(UTILISATION_PERIOD_S):
            with contextlib.suppress(Exception):
                self.samples.append(read())


# --------------------------------------------------------------------------------------------------------------------
# Comparing outputs
# --------------------------------------------------------------------------------------------------------------------


def label_files(out_dir: Path) -> dict[str, bytes]:
    """Every label file under ``out_dir/labels``, by path relative to it."""
    root = out_dir / "labels"
    return {path.relative_to(root).as_posix(): path.read_bytes() for path in sorted(root.rglob("*.txt"))}


def byte_differences(out_a: Path, out_b: Path) -> tuple[int, list[str]]:
    """``(files compared, names that differ or exist on one side only)``."""
    a, b = label_files(out_a), label_files(out_b)
    differing = sorted(name for name in a.keys() | b.keys() if a.get(name) != b.get(name))
    return len(a.keys() | b.keys()), differing


@dataclass(frozen=True)
class IouStats:
    """Per-instance mask IoU between two label sets (same line index), and how many files' line counts differ."""

    ious: list[float]
    files_with_other_line_count: int

    def text(self) -> str:
        if not self.ious:
            return f"no instance compared ({self.files_with_other_line_count} files with other line counts)"
        lowest, mean = min(self.ious), statistics.fmean(self.ious)
        other = f", {self.files_with_other_line_count} files with another line count" * bool(
            self.files_with_other_line_count
        )
        return f"mean {mean:.4f} min {lowest:.4f} over {len(self.ious)} instances{other}"


def label_ious(out_a: Path, out_b: Path, image_set: ImageSet, stems: Sequence[str] | None = None) -> IouStats:
    """Rasterise each label line's polygon (``cv2.fillPoly`` at the image size) in both outputs and compare the
    same line index: how far two runs' labels agree, per instance."""
    ious: list[float] = []
    other_counts = 0
    for stem in stems if stems is not None else list(image_set.sizes_wh):
        wh = image_set.sizes_wh[stem]
        polygons_a = read_label_polygons(out_a / "labels" / f"{stem}.txt")
        polygons_b = read_label_polygons(out_b / "labels" / f"{stem}.txt")
        other_counts += len(polygons_a) != len(polygons_b)
        for poly_a, poly_b in zip(polygons_a, polygons_b, strict=False):
            mask_a = rasterise_polygon(poly_a, wh, pixel_centres=True)
            mask_b = rasterise_polygon(poly_b, wh, pixel_centres=True)
            ious.append(mask_iou(mask_a, mask_b))
    return IouStats(ious, other_counts)


def mask_ious(result_a: Any, result_b: Any) -> list[float]:
    """Per-box IoU of two ``SegmentationResult``s' full-size masks (same boxes, same order)."""
    return [mask_iou(result_a.mask(i), result_b.mask(i)) for i in range(min(len(result_a), len(result_b)))]


# --------------------------------------------------------------------------------------------------------------------
# In-process measurements
# --------------------------------------------------------------------------------------------------------------------


def synchroniser(device: torch.device) -> Callable[[], None]:
    """A function that waits for ``device``'s queued work (nothing to wait for on the CPU)."""
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def timed_ms(call: Callable[[], Any], sync: Callable[[], None], warmup: int, repeats: int) -> float:
    """Median milliseconds of ``call`` over ``repeats`` after ``warmup`` untimed calls, synchronised each side."""
    for _ in range(warmup):
        call()
    sync()
    times = []
    for _ in range(max(1, repeats)):
        started = time.perf_counter()
        call()
        sync()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


@contextlib.contextmanager
def encoder_clock(segmenter: Any, sync: Callable[[], None]) -> Iterator[list[float]]:
    """Milliseconds of each image-encoder forward while the block runs, from hooks on the model's
    ``image_encoder`` (public ``nn.Module`` hooks: no private state of the segmenter is touched)."""
    encoder = segmenter.model.image_encoder
    started: list[float] = []
    durations_ms: list[float] = []

    def before(module: object, inputs: object) -> None:
        sync()
        started.append(time.perf_counter())

    def after(module: object, inputs: object, output: object) -> None:
        sync()
        durations_ms.append((time.perf_counter() - started.pop()) * 1000)

    handles = [encoder.register_forward_pre_hook(before), encoder.register_forward_hook(after)]
    try:
        yield durations_ms
    finally:
        for handle in handles:
            handle.remove()


@dataclass(frozen=True)
class PredictTiming:
    """One image's ``predict`` split into stages: encoder, the rest of predict per box (prompt encoder, decoder,
    copies), postprocessing per box (measured apart on the same logits)."""

    total_ms: float
    encoder_ms: float
    decoder_ms_per_box: float
    postprocess_ms_per_box: float
    result: Any
    logits: torch.Tensor  # (N, 1, 256, 256) float32 low-res logits, on the segmenter's device


def time_predict(segmenter: Any, prepared: Any, boxes: np.ndarray, sync: Callable[[], None]) -> PredictTiming:
    """Time ``segmenter.predict`` on one image, then its postprocessing alone on the logits it made (caught on
    their way to ``finished_masks``: on a GPU they never reach the host)."""
    import autoannotate.segmenters.sam as sam_module
    from autoannotate.segmenters.sam_transforms import postprocess_in_chunks

    caught: list[torch.Tensor] = []
    finished_masks = sam_module.finished_masks

    def catching(low_res: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        caught.append(low_res)
        return finished_masks(low_res, *args, **kwargs)

    with encoder_clock(segmenter, sync) as encoder_ms, mock.patch.object(sam_module, "finished_masks", catching):
        sync()
        started = time.perf_counter()
        (result,) = segmenter.predict([prepared], [boxes])
        sync()
        total_ms = (time.perf_counter() - started) * 1000
    logits = caught[-1]
    sync()
    started = time.perf_counter()
    postprocess_in_chunks(logits, result.input_hw, result.original_hw, result.mask_threshold)
    sync()
    post_ms = (time.perf_counter() - started) * 1000
    n = max(1, len(boxes))
    # masks made in predict (held, or a GPU's crops); lazy ones are not part of it
    made = result.eager_masks is not None or getattr(result, "crops", None) is not None
    in_predict_post_ms = post_ms if made else 0.0
    decoder_ms = max(0.0, total_ms - sum(encoder_ms) - in_predict_post_ms)
    return PredictTiming(total_ms, sum(encoder_ms), decoder_ms / n, post_ms / n, result, logits)


def count_syncs(call: Callable[[], Any]) -> int | None:
    """Host-device synchronisations during ``call``, as torch's sync debug mode reports them (CUDA only)."""
    try:
        previous = torch.cuda.get_sync_debug_mode()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                call()
            finally:
                torch.cuda.set_sync_debug_mode(previous)
    except Exception:
        return None
    return sum("synchroniz" in str(w.message).lower() for w in caught)


def encoder_dtypes(device: torch.device) -> list[tuple[str, torch.dtype]]:
    """The dtypes to time the encoder in: fp32, bf16 where the device has it, fp16 on CUDA (CPU autocast's fp16 is
    no path autoannotate takes)."""
    dtypes: list[tuple[str, torch.dtype]] = [("fp32", torch.float32)]
    if device.type == "cpu" or torch.cuda.is_bf16_supported():
        dtypes.append(("bf16", torch.bfloat16))
    if device.type == "cuda":
        dtypes.append(("fp16", torch.float16))
    return dtypes


def time_encoder_ms_per_image(
    segmenter: Any, dtype: torch.dtype, batch: int, scale: Scale, sync: Callable[[], None]
) -> float:
    """The image encoder alone on a ``batch`` of normalised 1024x1024 inputs (channels-last, as ``predict`` feeds
    it), under autocast for a reduced dtype: milliseconds per image."""
    device = segmenter.device
    x = torch.randn(batch, 3, 1024, 1024, device=device).contiguous(memory_format=torch.channels_last)
    autocast = (
        contextlib.nullcontext() if dtype == torch.float32 else torch.autocast(device_type=device.type, dtype=dtype)
    )
    encoder = segmenter.model.image_encoder

    def call() -> None:
        with torch.inference_mode(), autocast:
            encoder(x)

    return timed_ms(call, sync, scale.warmup_calls, scale.timed_calls) / batch


# --------------------------------------------------------------------------------------------------------------------
# The checks
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class Context:
    """What every step reads: the scale, the devices, the inputs, and the runs done so far (by name)."""

    scale: Scale
    on_gpu: bool
    cli_device: str
    work: Path
    weights: Weights
    precision: ImageSet
    scale_set: ImageSet | None
    deadline: float = float("inf")
    runs: dict[str, RunResult] = field(default_factory=dict)

    def time_left_s(self) -> float:
        """Seconds until the budget's deadline (``time.monotonic``); infinite without a budget."""
        return self.deadline - time.monotonic()

    @property
    def torch_device(self) -> torch.device:
        return torch.device("cuda", 0) if self.on_gpu else torch.device("cpu")

    def run(self, name: str, image_set: ImageSet, sam: Path, *extra: str, sample_gpu: bool = False) -> RunResult:
        out = self.work / "out" / name
        result = run_cli(
            name,
            run_args(image_set, out, sam, self.cli_device, *extra),
            out,
            self.scale.run_timeout_s,
            sample_gpu=sample_gpu,
        )
        self.runs[name] = result
        return result


def probe_stem(image_set: ImageSet) -> str:
    """The image in-process checks use: the largest of the set, with the most boxes among those."""
    return max(image_set.sizes_wh, key=lambda stem: (np.prod(image_set.sizes_wh[stem]), image_set.boxes[stem]))


def runs_problem(ctx: Context, names: Sequence[str]) -> tuple[str, str]:
    """PASS when every named run labelled all of its images with exit 0, else FAIL with the first problem."""
    details = []
    for name in names:
        result = ctx.runs[name]
        image_set = ctx.precision if name.startswith("precision") else ctx.scale_set
        assert image_set is not None
        problem = result.problem(len(image_set.sizes_wh))
        if problem is not None:
            return "FAIL", problem
        summary = result.summary or {}
        details.append(
            f"{name}: exit 0, {summary.get('labeled')} images, {summary.get('instances')} instances"
            f" in {summary.get('seconds')} s"
        )
    return "PASS", "; ".join(details)


def do_cli_runs(ctx: Context, report: Report) -> None:
    """The subprocess runs the checks read: the speckle set fp32 twice (deterministic) and ``--half``; on a GPU
    also the scale set fp32 (GPU utilisation sampled) and ``--half``."""
    w = ctx.weights
    ctx.run("precision-fp32", ctx.precision, w.speckle, "--deterministic")
    ctx.run("precision-fp32-again", ctx.precision, w.speckle, "--deterministic")
    ctx.run("precision-half", ctx.precision, w.speckle, "--deterministic", "--half")
    scale_names: list[str] = []
    if ctx.on_gpu and ctx.scale_set is not None and w.flat is not None:
        # default batching (--batch 0: 8 images a step on CUDA), no --deterministic: the throughput users get
        ctx.run("scale-fp32", ctx.scale_set, w.flat, sample_gpu=True)
        ctx.run("scale-half", ctx.scale_set, w.flat, "--half")
        scale_names = ["scale-fp32", "scale-half"]
    guarded_check(report, "run-fp32", lambda: runs_problem(ctx, ["precision-fp32", *scale_names[:1]]))
    guarded_check(report, "run-half", lambda: runs_problem(ctx, ["precision-half", *scale_names[1:]]))
    guarded_check(report, "byte-identical", lambda: byte_identical(ctx))


def run_yolo(ctx: Context) -> None:
    """One more timed run (GPU): the scale set with the YOLO11n stand-in as detector (``--conf 1e-4 --max-det``
    few), instead of the box labels."""
    assert ctx.scale_set is not None and ctx.weights.flat is not None
    yolo_args = ["--det-model", str(ctx.weights.yolo), "--conf", "1e-4", "--max-det", str(ctx.scale.boxes_few)]
    out = ctx.work / "out" / "scale-yolo"
    args = run_args(ctx.scale_set, out, ctx.weights.flat, ctx.cli_device, *yolo_args)
    drop = args.index("--boxes-from")
    del args[drop : drop + 4]  # neither --boxes-from nor --names: the detector gives the boxes and the names
    ctx.runs["scale-yolo"] = run_cli("scale-yolo", args, out, ctx.scale.run_timeout_s)


def run_on_cpu(ctx: Context) -> None:
    """The speckle set once more on the CPU (GPU machine), to compare its labels with the GPU fp32 run's."""
    out = ctx.work / "out" / "precision-cpu"
    args = run_args(ctx.precision, out, ctx.weights.speckle, "cpu", "--deterministic")
    ctx.runs["precision-cpu"] = run_cli("precision-cpu", args, out, ctx.scale.run_timeout_s)


def byte_identical(ctx: Context) -> tuple[str, str]:
    first, again = ctx.runs["precision-fp32"], ctx.runs["precision-fp32-again"]
    for result in (first, again):
        problem = result.problem(len(ctx.precision.sizes_wh))
        if problem is not None:
            return "FAIL", problem
    compared, differing = byte_differences(first.out_dir, again.out_dir)
    if compared == 0:
        return "FAIL", "no label files to compare"
    if differing:
        return "FAIL", f"{len(differing)} of {compared} label files differ between two --deterministic runs: " + (
            ", ".join(differing[:5])
        )
    instances = (first.summary or {}).get("instances")
    return "PASS", f"{compared} label files ({instances} instances, speckle stand-in) byte-identical across two runs"


def check_bad_device(ctx: Context) -> tuple[str, str]:
    """One CUDA index too many (``--device 1`` on a one-GPU machine; ``--device 0`` where torch sees no CUDA
    device): exit 2 and exactly one stderr line, the ``error: invalid --device`` one."""
    index = torch.cuda.device_count() if ctx.on_gpu else 0
    out = ctx.work / "out" / "bad-device"
    args = run_args(ctx.precision, out, ctx.weights.speckle, str(index))
    result = run_cli("bad-device", args, out, ctx.scale.run_timeout_s)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    shown = " | ".join(lines[:3])
    if result.returncode != 2:
        return "FAIL", f"--device {index} exited {result.returncode}, expected 2; stderr: {one_line(shown)}"
    if len(lines) != 1:
        return "FAIL", f"--device {index}: {len(lines)} stderr lines, expected 1: {one_line(shown)}"
    if ctx.on_gpu:
        if not lines[0].startswith(f"error: invalid --device '{index}'"):
            return "FAIL", f"--device {index}: unexpected line {lines[0]!r}"
    elif lines[0] != NO_CUDA_DEVICE_LINE:
        return "FAIL", f"--device 0: line {lines[0]!r}, expected {NO_CUDA_DEVICE_LINE!r}"
    return "PASS", f"--device {index} exited 2 with one line: {lines[0]}"


def check_params_on_device(ctx: Context) -> tuple[str, str]:
    """``load_models`` as a run calls it: every parameter of the segmenter's torch model, and of a YOLO
    detector's, on the CUDA device."""
    from autoannotate.config import build_settings
    from autoannotate.models import load_models

    if not ctx.on_gpu:
        return "SKIP", "no CUDA device (CPU smoke)"
    expected = ctx.torch_device
    base = {
        "data": str(ctx.precision.images),
        "device": ctx.cli_device,
        "runtime": "torch",
        "sam_model": str(ctx.weights.speckle),
    }
    label_boxes = {"boxes_from": str(ctx.precision.box_labels), "names": str(ctx.precision.names)}
    detector = {"det_model": str(ctx.weights.yolo), "conf": 1e-4, "max_det": ctx.scale.boxes_few}
    counted: list[str] = []
    for what, overrides in (("--boxes-from", label_boxes), ("YOLO detector", detector)):
        models = load_models(build_settings(None, {**base, **overrides}))
        modules: list[tuple[str, Any]] = [("segmenter", torch_module_of(models.segmenter))]
        if what == "YOLO detector":
            yolo = getattr(models.prompts, "model", None)
            modules.append(("detector", getattr(yolo, "model", None)))
        for role, module in modules:
            if not isinstance(module, torch.nn.Module):
                return "FAIL", f"{what}: found no torch module for the {role} ({type(module).__name__})"
            params = list(module.named_parameters())
            elsewhere = [name for name, p in params if p.device != expected]
            if elsewhere or not params:
                where = {str(p.device) for _, p in params}
                return (
                    "FAIL",
                    f"{what}: {len(elsewhere)} of {len(params)} {role} parameters on {where}: {elsewhere[:3]}",
                )
            counted.append(f"{what}: {role} {len(params)}")
        del models
        release_gpu_memory(expected)
    return "PASS", f"every parameter on {expected} ({', '.join(counted)})"


def torch_module_of(segmenter: Any) -> Any:
    """The segmenter's torch model: its public ``model`` property where it has one, else ``_model``."""
    module = getattr(segmenter, "model", None)
    return module if module is not None else getattr(segmenter, "_model", None)


def check_half_finite(ctx: Context, report: Report) -> tuple[str, str]:
    """``BoxSegmenter(half=True).predict``: every predicted IoU and low-res logit finite; which dtype half used and
    how many batches or chunks were redone in float32. Also times fp32 and half ``predict`` per stage."""
    from autoannotate.runtime.device import half_dtype
    from autoannotate.segmenters.sam import BoxSegmenter

    device = ctx.torch_device
    sync = synchroniser(device)
    stem = probe_stem(ctx.precision)
    rgb = read_rgb(ctx.precision.image_path(stem))
    boxes = read_boxes_xyxy(ctx.precision, stem)
    w, h = ctx.precision.sizes_wh[stem]
    half = BoxSegmenter.from_weights(ctx.weights.speckle, device, half=True)
    prepared = half.prepare(rgb)
    for _ in range(ctx.scale.warmup_calls):
        half.predict([prepared], [boxes])
    timing = time_predict(half, prepared, boxes, sync)
    result = timing.result
    finite_iou = bool(np.isfinite(result.iou_pred).all())
    finite_logits = bool(torch.isfinite(timing.logits).all())
    dtype = str(half_dtype(device)).removeprefix("torch.")
    record_predict_timing(report, f"half ({dtype})", timing, len(boxes), (w, h))
    if device.type == "cuda":  # the CPU smoke skips the fp32 twin: each cold call takes seconds on 2 cores
        guarded_numbers(
            report, "fp32 predict", lambda: record_fp32_predict(report, ctx, prepared, boxes, result, (w, h))
        )
    else:
        record_polygons(report, ctx, result, len(boxes), (w, h))
    redone = half.redone_in_f32
    detail = (
        f"{len(boxes)} boxes on {w}x{h}: iou_pred finite {finite_iou}, low_res_logits finite {finite_logits},"
        f" half dtype {dtype}, redone_in_f32={redone}"
    )
    return ("PASS" if finite_iou and finite_logits else "FAIL"), detail


def record_fp32_predict(
    report: Report, ctx: Context, prepared: Any, boxes: np.ndarray, half_result: Any, wh: tuple[int, int]
) -> None:
    """fp32 ``predict`` on the same image and boxes as the half one (GPU): its stages, the masks' agreement with
    half, polygons, host-device syncs, and TF32 on against off."""
    from autoannotate.segmenters.sam import BoxSegmenter

    device = ctx.torch_device
    fp32 = BoxSegmenter.from_weights(ctx.weights.speckle, device)
    for _ in range(ctx.scale.warmup_calls):
        fp32.predict([prepared], [boxes])
    timing = time_predict(fp32, prepared, boxes, synchroniser(device))
    record_predict_timing(report, "fp32", timing, len(boxes), wh)
    ious = mask_ious(timing.result, half_result)
    if ious:
        report.number(
            f"mask IoU half vs fp32, in-process ({len(ious)} boxes, {wh[0]}x{wh[1]})",
            f"mean {statistics.fmean(ious):.4f} min {min(ious):.4f}",
        )
    record_polygons(report, ctx, timing.result, len(boxes), wh)
    syncs = count_syncs(lambda: fp32.predict([prepared], [boxes]))
    report.number(f"syncs per image, fp32 predict ({len(boxes)} boxes)", "n/a" if syncs is None else str(syncs))
    record_tf32(report, fp32, prepared, boxes, wh)


def record_predict_timing(report: Report, label: str, timing: PredictTiming, boxes: int, wh: tuple[int, int]) -> None:
    where = f"{wh[0]}x{wh[1]}, {boxes} boxes"
    report.number(f"predict {label}: encoder ms ({where})", f"{timing.encoder_ms:.1f}")
    report.number(f"predict {label}: decoder ms per box", f"{timing.decoder_ms_per_box:.2f}")
    report.number(f"predict {label}: postprocess ms per box", f"{timing.postprocess_ms_per_box:.2f}")
    report.number(f"predict {label}: total ms per image", f"{timing.total_ms:.1f}")


def record_polygons(report: Report, ctx: Context, result: Any, boxes: int, wh: tuple[int, int]) -> None:
    """``mask_to_polygons`` on the first few masks (speckle): ms per mask, times the boxes for ms per image."""
    from autoannotate.polygons import PolygonPolicy, mask_to_polygons

    policy = PolygonPolicy()
    masks = [result.mask(i) for i in range(min(ctx.scale.polygon_masks, len(result)))]
    if not masks:
        return
    started = time.perf_counter()
    vertices = sum(sum(len(p) for p in mask_to_polygons(mask, policy)) for mask in masks)
    ms_per_mask = (time.perf_counter() - started) * 1000 / len(masks)
    report.number(
        f"polygons ms per image ({wh[0]}x{wh[1]}, {boxes} speckle masks)",
        f"{ms_per_mask * boxes:.0f} ({ms_per_mask:.1f} per mask, {vertices / len(masks):.0f} vertices per mask,"
        f" from {len(masks)} masks)",
    )


def record_tf32(report: Report, fp32: Any, prepared: Any, boxes: np.ndarray, wh: tuple[int, int]) -> None:
    """Masks with TF32 allowed (matmul and cuDNN) against TF32 off (what ``--deterministic`` sets), same boxes."""
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    try:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        (strict,) = fp32.predict([prepared], [boxes])
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        (tf32,) = fp32.predict([prepared], [boxes])
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
    ious = mask_ious(strict, tf32)
    report.number(
        f"mask IoU TF32 on vs off, in-process ({len(ious)} boxes, {wh[0]}x{wh[1]})",
        f"mean {statistics.fmean(ious):.4f} min {min(ious):.4f}" if ious else "n/a",
    )


def record_decode(report: Report, image_set: ImageSet) -> None:
    """``cv2.imread`` of the set's JPEGs, median milliseconds per image of each size."""
    for (w, h), stems in image_set.stems_by_size().items():
        times_ms = []
        for stem in stems:
            started = time.perf_counter()
            if cv2.imread(str(image_set.image_path(stem)), cv2.IMREAD_COLOR) is None:
                raise OSError(f"cannot read {stem}.jpg")
            times_ms.append((time.perf_counter() - started) * 1000)
        report.number(f"decode ms per image (cv2.imread, {w}x{h} JPEG)", f"{statistics.median(times_ms):.1f}")


def record_detector(report: Report, ctx: Context, image_set: ImageSet) -> None:
    """The YOLO11n stand-in as a run builds it (``build_detector``: ``--conf 1e-4 --max-det`` few boxes), one image
    per call, after its warm-up: milliseconds per image of each size."""
    from autoannotate.config import build_settings
    from autoannotate.prompts.yolo import build_detector

    overrides = {
        "data": str(image_set.images),
        "det_model": str(ctx.weights.yolo),
        "conf": 1e-4,
        "max_det": ctx.scale.boxes_few,
        "device": ctx.cli_device,
    }
    detector = build_detector(build_settings(None, overrides), ctx.torch_device)
    detector.warm_up()
    sync = synchroniser(ctx.torch_device)
    sizes = image_set.stems_by_size()
    if not ctx.on_gpu:  # one size shows the path works; each call takes seconds on 2 cores
        probe = probe_stem(image_set)
        sizes = {image_set.sizes_wh[probe]: [probe]}
    for (w, h), stems in sizes.items():
        bgr = np.ascontiguousarray(read_rgb(image_set.image_path(stems[0]))[..., ::-1])
        found: list[int] = []

        def detect(image: np.ndarray = bgr, counts: list[int] = found) -> None:
            counts.append(len(detector.detect([image])[0]))

        ms = timed_ms(detect, sync, ctx.scale.warmup_calls, ctx.scale.timed_calls)
        report.number(f"detector ms per image (YOLO11n, imgsz 640, {w}x{h})", f"{ms:.1f} ({found[-1]} boxes)")


def record_encoders(report: Report, ctx: Context) -> None:
    """The image encoder alone per dtype and batch (fp32 weights, autocast for bf16 and fp16)."""
    from autoannotate.segmenters.sam import BoxSegmenter

    device = ctx.torch_device
    if not ctx.scale.encoder_batches:
        report.number("encoder ms per image, per dtype and batch", "see the predict rows (batch 1; CPU smoke)")
        return
    segmenter = BoxSegmenter.from_weights(ctx.weights.speckle, device)
    sync = synchroniser(device)
    for label, dtype in encoder_dtypes(device):
        for batch in ctx.scale.encoder_batches:
            ms = time_encoder_ms_per_image(segmenter, dtype, batch, ctx.scale, sync)
            report.number(f"encoder ms per image, {label}, batch {batch}", f"{ms:.1f}")
    del segmenter
    release_gpu_memory(device)


def release_gpu_memory(device: torch.device) -> None:
    """Hand the models and tensors of a finished step back, so the next step's peak and cap see none of them."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def record_peak_memory(report: Report, ctx: Context) -> None:
    """Peak GPU memory of one ``predict`` on the largest image with the most boxes (4000x3000, 300), fp32 and half."""
    from autoannotate.segmenters.sam import BoxSegmenter

    device = ctx.torch_device
    image_set = ctx.scale_set or ctx.precision
    stem = probe_stem(image_set)
    w, h = image_set.sizes_wh[stem]
    boxes = read_boxes_xyxy(image_set, stem)
    for label, half in (("fp32", False), ("half", True)):
        segmenter = BoxSegmenter.from_weights(ctx.weights.speckle, device, half=half)
        prepared = segmenter.prepare(read_rgb(image_set.image_path(stem)))
        release_gpu_memory(device)
        torch.cuda.reset_peak_memory_stats(device)
        segmenter.predict([prepared], [boxes])
        torch.cuda.synchronize(device)
        peak_gib = torch.cuda.max_memory_allocated(device) / 1024**3
        report.number(f"peak GPU memory, predict {label} ({w}x{h}, {len(boxes)} boxes)", f"{peak_gib:.2f} GiB")
        del segmenter
    release_gpu_memory(device)


def segmenter_peaks(weights: Path, device: torch.device, image_set: ImageSet, batches: Sequence[int]) -> list[int]:
    """Peak GPU bytes allocated by one ``predict`` over the first ``batch`` images of the set, for each batch."""
    from autoannotate.segmenters.sam import BoxSegmenter

    segmenter = BoxSegmenter.from_weights(weights, device)
    stems = list(image_set.sizes_wh)[: max(batches)]
    prepared = [segmenter.prepare(read_rgb(image_set.image_path(stem))) for stem in stems]
    boxes = [read_boxes_xyxy(image_set, stem) for stem in stems]
    peaks = []
    for batch in batches:
        release_gpu_memory(device)
        torch.cuda.reset_peak_memory_stats(device)
        segmenter.predict(prepared[:batch], boxes[:batch])
        torch.cuda.synchronize(device)
        peaks.append(int(torch.cuda.max_memory_allocated(device)))
    return peaks


def check_oom_retry(ctx: Context) -> tuple[str, str]:
    """Cap this process's GPU memory between the peaks of a segmenter batch of 1 and of 8 images (4000x3000, 20
    boxes each), then ``autoannotate run --batch 8`` in this process: the out-of-memory errors must be retried in
    smaller batches until every image has its label, exit 0."""
    from typer.testing import CliRunner

    from autoannotate.cli import app

    if not ctx.on_gpu or ctx.weights.flat is None:
        return "SKIP", "no CUDA device (CPU smoke)"
    scale, device = ctx.scale, ctx.torch_device
    oom_set = write_image_set(
        ctx.work / "oom", [scale.oom_wh] * scale.oom_images, [scale.oom_boxes] * scale.oom_images, 3, "oom"
    )
    stems = list(oom_set.sizes_wh)
    peak_one, peak_all = segmenter_peaks(ctx.weights.flat, device, oom_set, (1, len(stems)))
    release_gpu_memory(device)
    total = torch.cuda.get_device_properties(device).total_memory
    fraction = (peak_one + peak_all) / 2 / total
    held_mib = torch.cuda.memory_allocated(device) / 1024**2
    ooms_before = int(torch.cuda.memory_stats(device).get("num_ooms", 0))
    out = ctx.work / "out" / "oom-retry"
    args = run_args(oom_set, out, ctx.weights.flat, ctx.cli_device, "--batch", str(len(stems)))
    torch.cuda.set_per_process_memory_fraction(fraction, device)
    try:
        result = CliRunner().invoke(app, args, catch_exceptions=True)
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, device)
        release_gpu_memory(device)
    ooms = int(torch.cuda.memory_stats(device).get("num_ooms", 0)) - ooms_before
    summary = next((e for e in _json_events(result.stdout) if e.get("event") == "summary"), None)
    labels = len(label_files(out)) if (out / "labels").is_dir() else 0
    what = (
        f"peaks {peak_one / 1024**3:.2f} GiB (1 image) and {peak_all / 1024**3:.2f} GiB ({len(stems)} images),"
        f" cap {fraction * total / 1024**3:.2f} GiB ({fraction:.4f} of {total / 1024**3:.0f} GiB, {held_mib:.0f} MiB"
        f" held before), {ooms} out-of-memory error(s) in the run, exit {result.exit_code},"
        f" {labels}/{len(stems)} labels"
    )
    if result.exit_code != 0 or summary is None or summary.get("failed") or labels != len(stems):
        tail = one_line(result.output[-400:]) if result.output else repr(result.exception)
        return "FAIL", f"{what}; {tail}"
    if ooms == 0:
        return "SKIP", f"inconclusive, no out-of-memory error happened under the cap: {what}"
    return "PASS", what


def record_runs(report: Report, ctx: Context) -> None:
    """Images/s of every run, GPU utilisation during the scale fp32 run, and how the runs' labels agree."""
    for name, result in ctx.runs.items():
        summary = result.summary or {}
        report.number(
            f"run {name}: images/s",
            f"{summary.get('images_per_s', 'n/a')} ({summary.get('images', '?')} images in"
            f" {summary.get('seconds', '?')} s; process {result.wall_s:.1f} s, exit {result.returncode})",
        )
    sampled = ctx.runs.get("scale-fp32")
    if sampled is not None and sampled.utilisation:
        samples = sampled.utilisation
        report.number(
            "GPU utilisation % during run scale-fp32",
            f"mean {statistics.fmean(samples):.0f} max {max(samples):.0f} ({len(samples)} samples,"
            f" {sampled.utilisation_source})",
        )
    else:
        report.number("GPU utilisation % during run scale-fp32", "n/a" if ctx.on_gpu else "n/a (no GPU)")
    pairs = [("precision-half", "precision-fp32", "mask IoU half vs fp32, labels")]
    if ctx.on_gpu:
        pairs.append(("precision-cpu", "precision-fp32", "mask IoU CPU fp32 vs GPU fp32, labels"))
    for name_a, name_b, label in pairs:
        a, b = ctx.runs.get(name_a), ctx.runs.get(name_b)
        if a is None or b is None or a.returncode != 0 or b.returncode != 0:
            report.number(label, "n/a (a run failed or was skipped)")
            continue
        report.number(f"{label} (speckle, per instance)", label_ious(a.out_dir, b.out_dir, ctx.precision).text())
    if not ctx.on_gpu:
        report.number("mask IoU CPU fp32 vs GPU fp32", "n/a (no GPU)")
        report.number("mask IoU TF32 on vs off", "n/a (no GPU)")
        report.number("syncs per image", "n/a (no GPU)")
        report.number("peak GPU memory", "n/a (no GPU)")


# --------------------------------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    description = (__doc__ or "").split("\n\n")[0]
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument(
        "--cpu-smoke", action="store_true", help="the CPU-sized checks even where CUDA is available (~1-2 min)"
    )
    parser.add_argument(
        "--work-dir", type=Path, default=None, help="write inputs and outputs here and keep them (default: a temp dir)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary work dir and print its path")
    parser.add_argument(
        "--budget-s",
        type=float,
        default=None,
        help=f"start no numbers-only step after this many seconds less {OPTIONAL_STEP_RESERVE_S:.0f}"
        f" (default: {GPU_BUDGET_S:.0f} on a GPU, none on the CPU; 0: none)",
    )
    return parser.parse_args(argv)


def ultralytics_logs_to_stderr() -> None:
    """ultralytics logs to stdout, where this script's check lines go: import it while stdout points at stderr (it
    prints its settings notice on import), then move any handler still on stdout, as ``autoannotate run`` does."""
    import logging

    with contextlib.redirect_stdout(sys.stderr):
        import ultralytics  # noqa: F401
    for handler in logging.getLogger("ultralytics").handlers:
        if isinstance(handler, logging.StreamHandler) and handler.stream is sys.stdout:
            handler.setStream(sys.stderr)


def header_lines(on_gpu: bool, scale: Scale, budget_s: float) -> list[str]:
    """The machine and versions the numbers belong to, and what the run will do."""
    import platform

    device = torch.cuda.get_device_name(0) if on_gpu else "cpu"
    cuda = torch.version.cuda if torch.cuda.is_available() else "none"
    sets = f"speckle set {len(scale.precision_sizes_wh)} images ({'/'.join(map(str, scale.precision_boxes))} boxes)"
    if on_gpu and scale.scale_sizes_wh:
        sets += (
            f", flat set {len(scale.scale_sizes_wh)} images ({scale.boxes_few}/{scale.boxes_many} boxes,"
            f" {' and '.join(sorted({f'{w}x{h}' for w, h in scale.scale_sizes_wh}))})"
        )
    return [
        f"gpu_check: scale {scale.name}, device {device}, {os.cpu_count()} cores, torch {torch.__version__}"
        f" (CUDA {cuda}), python {platform.python_version()}",
        f"gpu_check: {sets}; time budget for numbers-only steps: {f'{budget_s:.0f} s' if budget_s > 0 else 'none'}",
    ]


def prepare_inputs(work: Path, on_gpu: bool, scale: Scale) -> tuple[Weights, ImageSet, ImageSet | None]:
    """Random-weight models and the synthetic image sets (with box labels and names) under ``work``."""
    weights = build_weights(work / "weights", with_flat=on_gpu)
    precision = write_image_set(work / "precision", scale.precision_sizes_wh, scale.precision_boxes, 1, "speckle")
    scale_set = None
    if on_gpu and scale.scale_sizes_wh:
        counts = alternating_counts(scale.scale_sizes_wh, scale.boxes_few, scale.boxes_many)
        scale_set = write_image_set(work / "scale", scale.scale_sizes_wh, counts, 2, "scale")
    return weights, precision, scale_set


def run_checks(ctx: Context, report: Report) -> None:
    """The checks first (always run), then the steps that only give numbers, each started only while the time
    budget has ``OPTIONAL_STEP_RESERVE_S`` left; last the table of the runs. The in-process memory cap of
    ``oom-retry`` is lifted again before anything after it runs."""
    do_cli_runs(ctx, report)
    guarded_check(report, "bad-device", lambda: check_bad_device(ctx))
    guarded_check(report, "params-on-device", lambda: check_params_on_device(ctx))
    guarded_check(report, "half-finite", lambda: check_half_finite(ctx, report))
    guarded_check(report, "oom-retry", lambda: check_oom_retry(ctx))
    image_set = ctx.scale_set or ctx.precision
    optional: list[tuple[str, Callable[[], None]]] = [
        ("decode", lambda: record_decode(report, image_set)),
        ("detector", lambda: record_detector(report, ctx, image_set)),
        ("encoder", lambda: record_encoders(report, ctx)),
    ]
    if ctx.on_gpu and ctx.scale_set is not None and ctx.weights.flat is not None:
        optional += [
            ("peak GPU memory", lambda: record_peak_memory(report, ctx)),
            ("run scale-yolo", lambda: run_yolo(ctx)),
            ("run precision-cpu", lambda: run_on_cpu(ctx)),
        ]
    for what, step in optional:
        if ctx.time_left_s() < OPTIONAL_STEP_RESERVE_S:
            report.number(what, f"skipped: under {OPTIONAL_STEP_RESERVE_S:.0f} s of the time budget left")
            continue
        guarded_numbers(report, what, step)
    guarded_numbers(report, "runs", lambda: record_runs(report, ctx))


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    on_gpu = torch.cuda.is_available() and not args.cpu_smoke
    budget_s = args.budget_s if args.budget_s is not None else (GPU_BUDGET_S if on_gpu else 0.0)
    deadline = time.monotonic() + budget_s if budget_s > 0 else float("inf")
    scale = GPU_SCALE if on_gpu else CPU_SCALE
    for line in header_lines(on_gpu, scale, budget_s):
        print(line, flush=True)
    ultralytics_logs_to_stderr()
    if not on_gpu:  # as `autoannotate run` does on the CPU: in-process timings without its page faults
        from autoannotate.runtime.allocator import tune_host_allocator

        tune_host_allocator()
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="gpu_check_"))
    work.mkdir(parents=True, exist_ok=True)
    report = Report()
    try:
        weights, precision, scale_set = prepare_inputs(work, on_gpu, scale)
        print(f"inputs ready after {time.perf_counter() - started:.1f} s", flush=True)
        ctx = Context(scale, on_gpu, "0" if on_gpu else "cpu", work, weights, precision, scale_set, deadline)
        run_checks(ctx, report)
        report.print_numbers()
    finally:
        if args.work_dir is None and not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        elif args.keep:
            print(f"work dir kept: {work}", flush=True)
    counts = {status: list(report.statuses.values()).count(status) for status in ("PASS", "SKIP", "FAIL")}
    print(
        f"gpu_check: {counts['PASS']} PASS, {counts['SKIP']} SKIP, {counts['FAIL']} FAIL"
        f" in {time.perf_counter() - started:.0f} s",
        flush=True,
    )
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
