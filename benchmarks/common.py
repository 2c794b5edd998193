"""Helpers shared by the benchmarks: stand-in weights, synthetic images, the machine, label rasterising.

Nothing here downloads: every model is built from an ultralytics architecture file with random weights.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
SAMPLE_IMAGES_DIR = REPO_ROOT / "sample_data" / "images"
RANDOM_WEIGHTS_SCRIPT = REPO_ROOT / "scripts" / "random_weights.py"

#: ``(width, height)`` of generated images, cycled through in order.
SYNTHETIC_SIZES_WH = ((640, 480), (1280, 720), (810, 1080), (1920, 1080))

#: How the MobileSAM stand-in is derived from ``scripts/random_weights.py``'s random checkpoint.
#: ``random``: as written. Its predicted IoU scores are all below 0.25, so ultralytics' SAM predictor (which drops
#: masks scoring <= conf=0.25) drops every mask, while autoannotate keeps them (no score filter). Masks are a
#: high-frequency speckle over the whole image (thousands of parts, ~30k-vertex polygons): worst case for polygons.
#: ``random-kept``: ``random`` with the IoU head's last layer set to predict 0.9 for every mask, so both tools keep
#: every mask and write the same detections. Masks are unchanged (the same speckle).
#: ``flat``: ``random-kept`` with the mask decoder's last upscaling layer and hypernetwork outputs set to constants,
#: so every mask is the whole image (one part, a 4-vertex polygon): the cheapest possible polygons.
SAM_STANDINS = ("random", "random-kept", "flat")
_STANDIN_IOU_SCORE = 0.9


@dataclass(frozen=True)
class StandinWeights:
    """Local random-weight files. ``mobile_sam`` is named exactly ``mobile_sam.pt``: ultralytics' ``SAM()`` picks its
    builder from the file name."""

    yolov8s: Path
    yolo11n: Path
    mobile_sam: Path
    standin: str


def build_standin_weights(weights_dir: Path, standin: str) -> StandinWeights:
    """Build (or reuse, if present) the random-weight files under ``weights_dir``. Deterministic (seed 0)."""
    if standin not in SAM_STANDINS:
        raise ValueError(f"standin must be one of {SAM_STANDINS}, got {standin!r}")
    weights_dir.mkdir(parents=True, exist_ok=True)
    random_sam = weights_dir / "mobile_sam_random.pt"
    yolo11n = weights_dir / "yolo11n_random.pt"
    if not (random_sam.is_file() and yolo11n.is_file()):
        subprocess.run([sys.executable, str(RANDOM_WEIGHTS_SCRIPT), str(weights_dir)], check=True, capture_output=True)
    yolov8s = weights_dir / "yolov8s_random.pt"
    if not yolov8s.is_file():
        _build_random_yolo("yolov8s.yaml", yolov8s)
    mobile_sam = weights_dir / standin / "mobile_sam.pt"
    if not mobile_sam.is_file():
        mobile_sam.parent.mkdir(parents=True, exist_ok=True)
        _write_sam_standin(random_sam, mobile_sam, standin)
    return StandinWeights(yolov8s=yolov8s, yolo11n=yolo11n, mobile_sam=mobile_sam, standin=standin)


def _build_random_yolo(cfg: str, path: Path) -> None:
    """A YOLO detector from its architecture file, random weights, COCO class names (as scripts/random_weights.py)."""
    import torch
    from ultralytics import YOLO
    from ultralytics.utils import ROOT, YAML

    torch.manual_seed(0)
    detector = YOLO(cfg)
    detector.model.names = YAML.load(ROOT / "cfg" / "datasets" / "coco.yaml")["names"]
    detector.save(str(path))


def _write_sam_standin(random_sam: Path, out: Path, standin: str) -> None:
    import torch

    state = torch.load(random_sam, map_location="cpu", weights_only=True)
    if standin in ("random-kept", "flat"):
        state["mask_decoder.iou_prediction_head.layers.2.weight"].zero_()
        state["mask_decoder.iou_prediction_head.layers.2.bias"].fill_(_STANDIN_IOU_SCORE)
    if standin == "flat":
        # Upscaled embedding = GELU(1) everywhere and hypernetwork output = 1/C: every logit is GELU(1) > 0.
        state["mask_decoder.output_upscaling.3.weight"].zero_()
        state["mask_decoder.output_upscaling.3.bias"].fill_(1.0)
        for key in [k for k in state if k.startswith("mask_decoder.output_hypernetworks_mlps.")]:
            if ".layers.2." in key:
                if key.endswith("weight"):
                    state[key].zero_()
                else:
                    state[key].fill_(1.0 / state[key].shape[0])
    torch.save(state, out)


# --------------------------------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------------------------------


def synthetic_scene_bgr(rng: np.random.Generator, resolution_wh: tuple[int, int]) -> np.ndarray:
    """A smooth synthetic scene: a colour gradient with 6-12 blurred ellipses and rectangles. ``(H, W, 3)`` uint8."""
    width, height = resolution_wh
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    corner_colours = rng.uniform(40, 215, size=(2, 3)).astype(np.float32)
    t = ((xs / max(width - 1, 1) + ys / max(height - 1, 1)) / 2)[..., None]
    image = (corner_colours[0] * (1 - t) + corner_colours[1] * t).astype(np.uint8)
    for _ in range(int(rng.integers(6, 13))):
        colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
        cx, cy = int(rng.integers(0, width)), int(rng.integers(0, height))
        half_w = int(rng.integers(width // 20 + 1, width // 4 + 2))
        half_h = int(rng.integers(height // 20 + 1, height // 4 + 2))
        if rng.random() < 0.5:
            angle = float(rng.uniform(0, 180))
            cv2.ellipse(image, (cx, cy), (half_w, half_h), angle, 0, 360, colour, thickness=-1)
        else:
            cv2.rectangle(image, (cx - half_w, cy - half_h), (cx + half_w, cy + half_h), colour, thickness=-1)
    sigma_px = max(width, height) / 400
    return cv2.GaussianBlur(image, (0, 0), sigmaX=sigma_px)


def write_synthetic_images(
    folder: Path,
    count: int,
    *,
    seed: int = 0,
    sizes_wh: tuple[tuple[int, int], ...] = SYNTHETIC_SIZES_WH,
    prefix: str = "synth",
    suffix: str = ".jpg",
) -> list[Path]:
    """Write ``count`` synthetic scenes to ``folder`` as ``<prefix>_<index>_<W>x<H><suffix>`` (unique stems)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for index in range(count):
        width, height = sizes_wh[index % len(sizes_wh)]
        path = folder / f"{prefix}_{index:04d}_{width}x{height}{suffix}"
        if not cv2.imwrite(str(path), synthetic_scene_bgr(rng, (width, height))):
            raise OSError(f"cannot write {path}")
        paths.append(path)
    return paths


def image_resolution_wh(path: Path) -> tuple[int, int]:
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise OSError(f"cannot read {path}")
    return int(image.shape[1]), int(image.shape[0])


# --------------------------------------------------------------------------------------------------------------------
# Machine
# --------------------------------------------------------------------------------------------------------------------


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_flags_of_interest() -> str:
    """The SIMD features that decide torch's CPU kernels (bf16 autocast needs avx512_bf16 or amx_bf16)."""
    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "avx512_vnni")
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown"
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return " ".join(flag for flag in wanted if flag in flags) or "none of " + " ".join(wanted)


def machine_lines() -> list[str]:
    """Human-readable lines describing this machine and the library versions."""
    import torch
    import ultralytics

    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 1
    load_1m, load_5m, _ = os.getloadavg()
    return [
        f"cpu: {cpu_model()} ({cpu_flags_of_interest()})",
        f"cores: {os.cpu_count()} logical, {usable} usable by this process",
        f"torch {torch.__version__}, default torch threads {torch.get_num_threads()}, "
        f"ultralytics {ultralytics.__version__}, python {platform.python_version()}",
        f"load average before: {load_1m:.2f} (1 min), {load_5m:.2f} (5 min)",
    ]


def load_average_line(when: str) -> str:
    load_1m, load_5m, _ = os.getloadavg()
    return f"load average {when}: {load_1m:.2f} (1 min), {load_5m:.2f} (5 min)"


# --------------------------------------------------------------------------------------------------------------------
# Labels
# --------------------------------------------------------------------------------------------------------------------


def read_label_polygons(path: Path) -> list[np.ndarray]:
    """The ``(K, 2)`` normalised polygons of a YOLO-seg label file, one per line; ``[]`` for a missing file."""
    if not path.is_file():
        return []
    polygons = []
    for line in path.read_text(encoding="utf-8").splitlines():
        fields = line.split()
        if len(fields) >= 7:
            polygons.append(np.asarray(fields[1:], dtype=np.float64).reshape(-1, 2))
    return polygons


def count_label_lines(path: Path) -> int | None:
    """Instances (non-empty lines) in a label file; ``None`` when the file does not exist."""
    if not path.is_file():
        return None
    return sum(1 for line in path.read_text(encoding="utf-8").splitlines() if line.strip())


def rasterise_polygon(polygon_xyn: np.ndarray, resolution_wh: tuple[int, int], *, pixel_centres: bool) -> np.ndarray:
    """``(H, W)`` bool mask of one normalised polygon drawn with ``cv2.fillPoly``.

    ``pixel_centres=True``: coordinates are ``(x + 0.5) / W`` (autoannotate), so pixel ``x = value * W - 0.5``.
    ``pixel_centres=False``: coordinates are ``x / W`` (ultralytics' ``masks.xyn``), so ``x = value * W``.
    """
    width, height = resolution_wh
    xy_px = polygon_xyn * np.array([width, height], dtype=np.float64)
    if pixel_centres:
        xy_px -= 0.5
    canvas = np.zeros((height, width), dtype=np.uint8)
    cv2.fillPoly(canvas, [np.rint(xy_px).astype(np.int32).reshape(-1, 1, 2)], color=1)
    return canvas.astype(bool)


def mask_iou(mask_a: np.ndarray, mask_b: np.ndarray) -> float:
    """Intersection over union; two empty masks count as identical (1.0)."""
    union = int(np.count_nonzero(mask_a | mask_b))
    return 1.0 if union == 0 else int(np.count_nonzero(mask_a & mask_b)) / union


def median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def package_fingerprint() -> str:
    """The git commit plus a hash of the ``autoannotate`` sources as they are on disk now (others edit them too)."""
    import hashlib

    digest = hashlib.sha256()
    for path in sorted((REPO_ROOT / "autoannotate").rglob("*.py")):
        digest.update(path.relative_to(REPO_ROOT).as_posix().encode())
        digest.update(path.read_bytes())
    head = subprocess.run(
        ["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    return f"commit {head or 'unknown'}, sources sha256 {digest.hexdigest()[:12]}"


def warn_if_changed(source_before: str) -> None:
    """Warn when the package's sources changed while a benchmark ran (its numbers then mix two versions)."""
    source_after = package_fingerprint()
    if source_after != source_before:
        print(f"WARNING: autoannotate changed during the run ({source_after}); rerun for consistent numbers")


# --------------------------------------------------------------------------------------------------------------------
# Running a measured subprocess
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProcessMeasurement:
    """One finished subprocess: wall clock, its own CPU time, and what everything else on the machine used meanwhile.

    ``other_cores`` is the CPU time of all other processes during the run divided by its wall time (0 = the machine
    was ours; 1 = another process kept a whole core busy). On a shared machine this says how far to trust ``wall_s``.
    """

    wall_s: float
    cpu_s: float
    other_cores: float
    returncode: int


def machine_busy_cpu_s() -> float:
    """CPU seconds all processes have used since boot (every non-idle field of /proc/stat's ``cpu`` line)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def run_measured(command: list[str], stdout_path: Path, stderr_path: Path) -> ProcessMeasurement:
    """Run ``command`` with stdout/stderr to files; its own rusage comes from ``wait4`` (not all children's)."""
    import time

    with stdout_path.open("wb") as stdout, stderr_path.open("wb") as stderr:
        busy_before = machine_busy_cpu_s()
        started = time.perf_counter()
        child = subprocess.Popen(command, stdout=stdout, stderr=stderr)
        _, status, usage = os.wait4(child.pid, 0)
        wall_s = time.perf_counter() - started
        busy_s = machine_busy_cpu_s() - busy_before
    child.returncode = os.waitstatus_to_exitcode(status)
    cpu_s = usage.ru_utime + usage.ru_stime
    return ProcessMeasurement(wall_s, cpu_s, max(0.0, busy_s - cpu_s) / wall_s, child.returncode)


def own_cpu_s() -> float:
    """CPU seconds of this process and its waited-for children."""
    import resource

    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


class OtherLoadMeter:
    """CPU used by other processes between ``start()`` and ``other_cores()``, in cores (for in-process timings)."""

    def __init__(self) -> None:
        self._busy_s = self._own_s = self._started = 0.0

    def start(self) -> None:
        import time

        self._busy_s, self._own_s, self._started = machine_busy_cpu_s(), own_cpu_s(), time.perf_counter()

    def other_cores(self) -> float:
        import time

        wall_s = time.perf_counter() - self._started
        other_s = (machine_busy_cpu_s() - self._busy_s) - (own_cpu_s() - self._own_s)
        return max(0.0, other_s) / wall_s if wall_s > 0 else 0.0


def wait_for_quiet(max_wait_s: float, threshold_cores: float = 0.3, window_s: float = 3.0) -> tuple[float, float]:
    """Wait (while idle) until other processes use under ``threshold_cores`` over a ``window_s`` window.

    Gives up after ``max_wait_s``. Returns (seconds waited, the last window's load in cores). On a machine shared with
    other work this keeps the measurements from starting in the middle of someone else's job.
    """
    import time

    started = time.perf_counter()
    load = 0.0
    while True:
        meter = OtherLoadMeter()
        meter.start()
        time.sleep(window_s)
        load = meter.other_cores()
        waited_s = time.perf_counter() - started
        if load < threshold_cores or waited_s >= max_wait_s:
            return waited_s, load
