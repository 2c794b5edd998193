"""autoannotate vs ultralytics ``auto_annotate``: same images, models, settings and CPU, measured side by side.

    python benchmarks/bench_vs_ultralytics.py [--sam-standin flat] [--images 15] [--max-det 8] [--repeats 2]
                                              [--keep] [--skip-half]
    python benchmarks/bench_vs_ultralytics.py --photos DIR --count 10 --det-model yolov8s.pt
                                              [--sam-model mobile_sam.pt] [--runtime openvino]

Both tools run as separate processes, alternating (U A U A ...), on one flat folder: the three sample images plus
``--images`` generated scenes. Both use the same random-weight YOLOv8s and MobileSAM stand-ins (see ``--sam-standin``
and ``common.SAM_STANDINS``), ``--conf 1e-4 --max-det K --iou 0.45 --imgsz 640`` and device cpu. Prints the machine,
every run, a summary table with the autoannotate/ultralytics speed ratios (whole process, images only, once warm),
the seconds from process start to the first label file of each tool, the per-image instance counts of both tools,
and for ``--half`` the mask agreement with the float32 run. No timing is asserted.

Real-photos mode: ``--photos DIR`` takes the first ``--count`` photos of DIR (recursive, sorted by path) instead of
the samples and generated scenes, and ``--det-model`` any real detector file (a trained YOLO: detection, segmentation
or pose); ``--conf`` then defaults to 0.25 and ``--max-det`` to 300, ultralytics' defaults. ``--sam-model`` a real
MobileSAM checkpoint, else the stand-in (the speed of SAM does not depend on its weights).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from common import (
    SAM_STANDINS,
    SAMPLE_IMAGES_DIR,
    ProcessMeasurement,
    StandinWeights,
    build_standin_weights,
    count_label_lines,
    image_resolution_wh,
    load_average_line,
    machine_lines,
    mask_iou,
    median,
    package_fingerprint,
    rasterise_polygon,
    read_label_polygons,
    run_measured,
    wait_for_quiet,
    warn_if_changed,
    write_synthetic_images,
)

RUNNER = Path(__file__).resolve().with_name("ultralytics_runner.py")
IOU_THRESHOLD = 0.45
IMGSZ_PX = 640
BUSY_CORES = 0.2  # a run during which other processes used more CPU than this is retried (--retry-busy)

ULTRALYTICS, ULTRALYTICS_ALL_CORES, AUTOANNOTATE = ("ultralytics", "ultralytics all cores", "autoannotate")


@dataclass(frozen=True)
class Settings:
    conf: float
    max_det: int
    runtimes: tuple[str, ...] = ()  # autoannotate's --runtime values, each with its own rows (empty: not passed)


@dataclass(frozen=True)
class Inputs:
    """The flat image folder both tools read, and each image's ``(W, H)`` by stem."""

    images_dir: Path
    resolution_wh_by_stem: dict[str, tuple[int, int]]


@dataclass(frozen=True)
class RunResult:
    variant: str
    repeat: int
    images: int
    process_s: float  # wall clock of the whole subprocess: interpreter start, imports, model loading, images
    cpu_s: float  # CPU time of the whole subprocess (user + system, all threads)
    first_label_s: float  # from the process's start to its first label file (by modification time); nan if none
    other_cores: float  # other processes' CPU use during the run, in cores (0 = quiet machine)
    steady_s: float  # the images only (see the notes printed under the table)
    compute: str  # threads / workers the tool used
    label_dir: Path
    detail: str
    in_flight: int = 1  # images the tool works on at once

    def after_first_s(self) -> tuple[int, float]:
        """``(images counted, seconds from the first label file to the last)``, from the label files' modification
        times: the throughput once a tool is warm (models set up, first image out). A tool with ``in_flight`` images
        under way had the others of its first batch nearly done when the first label appeared, so those are not
        counted: ``labels - in_flight`` images (conservative for a tool with several in flight)."""
        mtimes_ns = sorted(path.stat().st_mtime_ns for path in self.label_dir.rglob("*.txt"))
        counted = len(mtimes_ns) - self.in_flight
        if counted < 1:
            return 0, 0.0
        return counted, (mtimes_ns[-1] - mtimes_ns[0]) / 1e9


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=15, help="generated images added to the 3 sample images")
    parser.add_argument("--photos", type=Path, help="real-photos mode: a folder of photos (instead of --images)")
    parser.add_argument("--count", type=int, default=0, help="with --photos: use the first N photos (0: all)")
    parser.add_argument("--det-model", type=Path, help="a real detector file (default: the random YOLOv8s stand-in)")
    parser.add_argument("--sam-model", type=Path, help="a real MobileSAM checkpoint (default: the stand-in)")
    parser.add_argument(
        "--runtime",
        help="autoannotate's --runtime, or several comma-separated (e.g. torch,openvino): each adds its own"
        " autoannotate rows, the first is compared with --half and the labels (default: not passed, i.e. auto)",
    )
    parser.add_argument(
        "--max-det", type=int, help="detections per image (default 8 with the stand-in detector, else 300)"
    )
    parser.add_argument(
        "--conf", type=float, help="detector confidence (default 1e-4 with the stand-in detector, else 0.25)"
    )
    parser.add_argument("--repeats", type=int, default=2, help="runs of each tool, alternating")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory and print its path")
    parser.add_argument("--skip-half", action="store_true", help="do not run autoannotate --half")
    parser.add_argument(
        "--skip-all-cores",
        action="store_true",
        help="do not run the extra ultralytics variant patched to use every core (it uses cpu_count - 1)",
    )
    parser.add_argument(
        "--sam-standin",
        choices=SAM_STANDINS,
        default="flat",
        help="flat (default): whole-image masks, polygons as cheap as for real blob-shaped masks; random-kept: the "
        "random model's speckle masks, thousands of parts each, the polygon stress case; see common.py",
    )
    parser.add_argument("--weights-dir", type=Path, help="reuse/build the stand-in weights here (default: temp)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated images")
    parser.add_argument(
        "--retry-busy",
        type=int,
        default=1,
        help=f"rerun a run this many times while other processes used > {BUSY_CORES} cores during it",
    )
    parser.add_argument(
        "--quiet-wait-s",
        type=float,
        default=120,
        help="before each run, wait up to this long for other processes to use < 0.3 cores (0: do not wait)",
    )
    return parser.parse_args()


# --------------------------------------------------------------------------------------------------------------------
# Inputs and tools
# --------------------------------------------------------------------------------------------------------------------


IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp"})


def prepare_photos(folder: Path, photos: Path, count: int) -> Inputs:
    """Copy the first ``count`` photos below ``photos`` (sorted by path; 0 = all) into ``folder``, flat, each name
    prefixed by its rank so that names stay unique and in order."""
    found = sorted(p for p in photos.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    chosen = found[:count] if count else found
    if not chosen or (count and len(chosen) < count):
        raise SystemExit(f"--photos {photos}: {len(found)} photos found, {count or 'at least 1'} needed")
    folder.mkdir(parents=True)
    for rank, path in enumerate(chosen):
        shutil.copy2(path, folder / f"{rank:04d}_{path.name}")
    return Inputs(folder, {path.stem: image_resolution_wh(path) for path in sorted(folder.iterdir())})


def real_models(weights: StandinWeights, det_model: Path | None, sam_model: Path | None, work: Path) -> StandinWeights:
    """The stand-ins with the user's real files in their place (``yolov8s`` is then whatever detector was given);
    a SAM file is linked as ``mobile_sam.pt``, the name ultralytics' ``SAM()`` picks its builder by."""
    if det_model is not None:
        weights = dataclasses.replace(weights, yolov8s=det_model.resolve())
    if sam_model is not None:
        link = work / "real_sam" / "mobile_sam.pt"
        link.parent.mkdir(parents=True)
        link.symlink_to(sam_model.resolve())
        weights = dataclasses.replace(weights, mobile_sam=link, standin="real weights")
    return weights


def first_label_s(label_dir: Path, started_epoch_s: float) -> float:
    """Seconds from ``started_epoch_s`` to the oldest label file under ``label_dir`` (nan when there is none)."""
    mtimes = [path.stat().st_mtime for path in label_dir.rglob("*.txt")]
    return min(mtimes) - started_epoch_s if mtimes else float("nan")


def prepare_inputs(folder: Path, generated: int, seed: int) -> Inputs:
    """Copy the sample images (flattened) and write ``generated`` synthetic ones into ``folder``."""
    folder.mkdir(parents=True)
    for path in sorted(SAMPLE_IMAGES_DIR.rglob("*")):
        if path.is_file() and path.suffix.lower() in {".jpg", ".jpeg", ".png"}:
            target = folder / path.name
            if target.exists():
                raise FileExistsError(f"two sample images share the name {path.name}; the folder must be flat")
            shutil.copy2(path, target)
    write_synthetic_images(folder, generated, seed=seed)
    sizes = {path.stem: image_resolution_wh(path) for path in sorted(folder.iterdir())}
    return Inputs(folder, sizes)


def autoannotate_command() -> list[str]:
    """The installed console script beside this interpreter, else ``python -m autoannotate.cli``."""
    script = Path(sys.executable).with_name("autoannotate")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "autoannotate.cli"]


def cli_has_half() -> bool:
    shown = subprocess.run([*autoannotate_command(), "run", "--help"], capture_output=True, text=True, check=False)
    return "--half" in shown.stdout


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def manifest_compute(output_dir: Path) -> tuple[str, int]:
    """How autoannotate used the CPU, from its run manifest (fields present in newer versions only), and how many
    images it had in flight."""
    try:
        manifest = json.loads((output_dir / "autoannotate.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "no manifest", 1
    workers, threads = manifest.get("infer_workers"), manifest.get("torch_threads")
    if not workers:
        return "compute plan not recorded", 1
    return f"{workers} inference workers x {threads} torch threads", int(workers) * int(manifest.get("batch") or 1)


def manifest_runtime(output_dir: Path) -> str:
    """What ran autoannotate's segmenter, from its run manifest (recorded by newer versions only)."""
    try:
        manifest = json.loads((output_dir / "autoannotate.json").read_text(encoding="utf-8"))
        return str(manifest["models"]["segmenter"].get("runtime", "torch (not recorded)"))
    except (OSError, ValueError, KeyError):
        return "not recorded"


def _run_logged(command: list[str], log_stem: Path) -> tuple[ProcessMeasurement, str]:
    """Run ``command``; its stdout/stderr go to ``<log_stem>.out/.err``. Returns the measurement and stdout."""
    out_path, err_path = log_stem.with_suffix(".out"), log_stem.with_suffix(".err")
    measured = run_measured(command, out_path, err_path)
    if measured.returncode != 0:
        tail = "\n".join(err_path.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-8:])
        raise RuntimeError(f"{' '.join(command)} exited with {measured.returncode}:\n{tail}")
    return measured, out_path.read_text(encoding="utf-8")


def run_ultralytics(
    variant: str, repeat: int, inputs: Inputs, weights: StandinWeights, settings: Settings, work: Path, threads: int
) -> RunResult:
    name = _run_name(variant, repeat, work)
    out_dir, result_path = work / "out" / name, work / "logs" / f"{name}.json"
    command = [
        sys.executable,
        str(RUNNER),
        f"--data={inputs.images_dir}",
        f"--det-model={weights.yolov8s}",
        f"--sam-model={weights.mobile_sam}",
        f"--output-dir={out_dir}",
        f"--result={result_path}",
        f"--conf={settings.conf}",
        f"--iou={IOU_THRESHOLD}",
        f"--imgsz={IMGSZ_PX}",
        f"--max-det={settings.max_det}",
        f"--threads={threads}",
    ]
    started_epoch_s = time.time()
    measured, _ = _run_logged(command, work / "logs" / name)
    timing = json.loads(result_path.read_text(encoding="utf-8"))
    detail = (
        f"import {timing['import_s']:.1f}s, load cold {timing['load_cold_s']:.1f}s / warm {timing['load_warm_s']:.1f}s,"
        f" auto_annotate call {timing['call_s']:.1f}s"
    )
    images = len(inputs.resolution_wh_by_stem)
    compute = f"1 process x {timing['torch_threads']} torch threads"
    return RunResult(
        variant,
        repeat,
        images,
        measured.wall_s,
        measured.cpu_s,
        first_label_s(out_dir, started_epoch_s),
        measured.other_cores,
        timing["steady_s"],
        compute,
        out_dir,
        detail,
    )


def run_autoannotate(
    variant: str, repeat: int, inputs: Inputs, weights: StandinWeights, settings: Settings, work: Path
) -> RunResult:
    name = _run_name(variant, repeat, work)
    out_dir = work / "out" / name
    command = [
        *autoannotate_command(),
        "run",
        "--data",
        str(inputs.images_dir),
        "--output-dir",
        str(out_dir),
        "--json",
        "--det-model",
        str(weights.yolov8s),
        "--sam-model",
        str(weights.mobile_sam),
        "--conf",
        str(settings.conf),
        "--iou",
        str(IOU_THRESHOLD),
        "--imgsz",
        str(IMGSZ_PX),
        "--max-det",
        str(settings.max_det),
        "--device",
        "cpu",
    ]
    if variant.endswith(" --half"):
        command.append("--half")
    if "--runtime " in variant:
        command += ["--runtime", variant.split("--runtime ")[1].split()[0]]
    started_epoch_s = time.time()
    measured, stdout = _run_logged(command, work / "logs" / name)
    events = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    summary = next(event for event in events if event.get("event") == "summary")
    detail = (
        f"summary: {summary['images']} images, {summary['instances']} instances, {summary['empty_masks']} empty masks,"
        f" {summary['failed']} failed, {summary['seconds']}s, {summary['images_per_s']} img/s;"
        f" segmenter runtime: {manifest_runtime(out_dir)}"
    )
    compute, in_flight = manifest_compute(out_dir)
    return RunResult(
        variant,
        repeat,
        summary["images"],
        measured.wall_s,
        measured.cpu_s,
        first_label_s(out_dir / "labels", started_epoch_s),
        measured.other_cores,
        summary["seconds"],
        compute,
        out_dir / "labels",
        detail,
        in_flight,
    )


def _run_name(variant: str, repeat: int, work: Path) -> str:
    """A name for this run's output dir and logs that no earlier run (or retry) used: autoannotate resumes from an
    existing output dir, which would skip the images."""
    base = f"{variant.replace(' ', '_').replace('-', '')}_r{repeat}"
    name, attempt = base, 0
    while (work / "out" / name).exists():
        attempt += 1
        name = f"{base}_attempt{attempt}"
    return name


# --------------------------------------------------------------------------------------------------------------------
# Comparisons
# --------------------------------------------------------------------------------------------------------------------


def compare_counts(inputs: Inputs, ultralytics_dir: Path, autoannotate_dir: Path) -> list[str]:
    """Per image: instances written by each tool, and who has fewer."""
    lines = [f"{'image':<34} {'W x H':>10} {'ultralytics':>11} {'autoannotate':>12}  note"]
    equal = 0
    for stem, (width, height) in inputs.resolution_wh_by_stem.items():
        ultra = count_label_lines(ultralytics_dir / f"{stem}.txt")
        auto = count_label_lines(autoannotate_dir / f"{stem}.txt") or 0
        ultra_n = ultra or 0
        if ultra_n == auto:
            note, equal = "", equal + 1
        elif ultra_n < auto:
            note = f"ultralytics dropped {auto - ultra_n} masks"
        else:
            note = f"autoannotate has {ultra_n - auto} fewer"
        if ultra is None:
            note = (note + "; " if note else "") + "ultralytics wrote no file (no detections)"
        shown = "-" if ultra is None else str(ultra)
        lines.append(f"{stem:<34} {f'{width}x{height}':>10} {shown:>11} {auto:>12}  {note}")
    lines.append(f"same instance count on {equal}/{len(inputs.resolution_wh_by_stem)} images")
    return lines


def mean_mask_iou(
    inputs: Inputs, dir_a: Path, centres_a: bool, dir_b: Path, centres_b: bool
) -> tuple[float | None, float | None, int, list[str]]:
    """Mean and min IoU of line i of A vs line i of B, rasterised at image size, over images whose counts match.

    Returns (mean IoU, min IoU, instances compared, stems skipped because the counts differ).
    """
    ious: list[float] = []
    skipped: list[str] = []
    for stem, resolution_wh in inputs.resolution_wh_by_stem.items():
        polygons_a = read_label_polygons(dir_a / f"{stem}.txt")
        polygons_b = read_label_polygons(dir_b / f"{stem}.txt")
        if len(polygons_a) != len(polygons_b):
            skipped.append(stem)
            continue
        for polygon_a, polygon_b in zip(polygons_a, polygons_b, strict=True):
            mask_a = rasterise_polygon(polygon_a, resolution_wh, pixel_centres=centres_a)
            mask_b = rasterise_polygon(polygon_b, resolution_wh, pixel_centres=centres_b)
            ious.append(mask_iou(mask_a, mask_b))
    if not ious:
        return None, None, 0, skipped
    return float(np.mean(ious)), float(np.min(ious)), len(ious), skipped


def same_files(dir_a: Path, dir_b: Path) -> bool:
    """Whether two label folders hold the same file names with the same bytes."""
    names_a = sorted(p.name for p in dir_a.glob("*.txt"))
    names_b = sorted(p.name for p in dir_b.glob("*.txt"))
    return names_a == names_b and all((dir_a / n).read_bytes() == (dir_b / n).read_bytes() for n in names_a)


# --------------------------------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------------------------------


def print_runs(results: list[RunResult]) -> None:
    print("\nruns, in the order they ran (other load = CPU used by other processes meanwhile, in cores):")
    for r in results:
        print(
            f"  {r.variant:<40} #{r.repeat + 1}  process {r.process_s:6.1f}s (cpu {r.cpu_s:6.1f}s)"
            f"  first label {r.first_label_s:5.1f}s  images {r.steady_s:6.1f}s  other load {r.other_cores:4.2f}"
            f"  [{r.compute}]\n      {r.detail}"
        )


def print_table(results: list[RunResult], variants: list[str]) -> None:
    header = (
        f"{'tool':<40} {'images':>6} {'steady s':>9} {'s/img':>6} {'img/s':>6} {'x ultra':>8}"
        f" {'process s':>10} {'img/s':>6} {'x ultra':>8} {'cpu s':>7} {'other load':>10}"
    )
    print(f"\nmedian over repeats; 'x ultra' = this tool's images/s / ultralytics' images/s (same column)\n{header}")
    base = [r for r in results if r.variant == ULTRALYTICS]
    base_steady_s = median([r.steady_s for r in base])
    base_process_s = median([r.process_s for r in base])
    for variant in variants:
        runs = [r for r in results if r.variant == variant]
        images = runs[0].images
        steady_s = median([r.steady_s for r in runs])
        process_s = median([r.process_s for r in runs])
        print(
            f"{variant:<40} {images:>6} {steady_s:>9.1f} {steady_s / images:>6.2f} {images / steady_s:>6.3f}"
            f" {base_steady_s / steady_s:>8.2f} {process_s:>10.1f} {images / process_s:>6.3f}"
            f" {base_process_s / process_s:>8.2f} {median([r.cpu_s for r in runs]):>7.1f}"
            f" {median([r.other_cores for r in runs]):>10.2f}"
        )
    print_warm_table(results, variants)
    print("\ntime to first label (process start to the first label file written), median over repeats:")
    for variant in variants:
        shown = median([r.first_label_s for r in results if r.variant == variant])
        print(f"  {variant:<40} {shown:6.1f} s")
    print(
        "steady s: autoannotate = the --json summary 'seconds' (after both models are loaded: first-image detector"
        " setup and every image, decode to label file).\n"
        "          ultralytics = auto_annotate() call time minus a warm YOLO()+SAM() construction timed in the same"
        " process (auto_annotate loads its models inside the call; see ultralytics_runner.py).\n"
        "process s: wall clock of the whole subprocess (interpreter, imports, model loading, images, exit);"
        " cpu s: its user + system CPU time.\n"
        "other load: CPU time used by every other process during the run / its wall time, in cores. Above ~0.2 the"
        " wall times are inflated by other work on this machine and the ratios are less trustworthy."
    )


def print_warm_table(results: list[RunResult], variants: list[str]) -> None:
    """Throughput once warm: images after the first label file / seconds from the first label file to the last."""

    warm = {id(r): r.after_first_s() for r in results}  # (images, seconds): each label folder listed once

    def warm_s_per_image(run: RunResult) -> float:
        images, seconds = warm[id(run)]
        return seconds / images if images else float("nan")

    base = median([warm_s_per_image(r) for r in results if r.variant == ULTRALYTICS])
    print(
        "\nthroughput once warm (what a long run gets): images after the first label file (less the others in flight"
        " with it) / seconds from the first label file to the last, by file modification time; median over repeats"
        f"\n{'tool':<40} {'images':>6} {'seconds':>8} {'s/img':>6} {'img/s':>6} {'x ultra':>8}"
    )
    for variant in variants:
        runs = [r for r in results if r.variant == variant]
        s_per_image = median([warm_s_per_image(r) for r in runs])
        images, _ = warm[id(runs[0])]
        seconds = median([warm[id(r)][1] for r in runs])
        print(
            f"{variant:<40} {images:>6} {seconds:>8.1f} {s_per_image:>6.2f} {1 / s_per_image:>6.3f}"
            f" {base / s_per_image:>8.2f}"
        )


def print_labels(inputs: Inputs, results: list[RunResult], variants: list[str], half_ran: bool) -> None:
    """Labels of ultralytics against the first autoannotate row, and of that row's ``--half`` against it."""
    first = {r.variant: r for r in results if r.repeat == 0}
    auto_name = next(v for v in variants if v.startswith(AUTOANNOTATE))
    ultra_dir, auto_dir = first[ULTRALYTICS].label_dir, first[auto_name].label_dir
    print("\nsame labels? instances per image (first repeat):")
    print("\n".join(f"  {line}" for line in compare_counts(inputs, ultra_dir, auto_dir)))
    mean_iou, min_iou, compared, skipped = mean_mask_iou(inputs, ultra_dir, False, auto_dir, True)
    if mean_iou is not None:
        print(
            f"  mask IoU ultralytics vs autoannotate, line by line on images with equal counts: mean {mean_iou:.3f},"
            f" min {min_iou:.3f} over {compared} instances (ultralytics keeps outer contours only, joins parts"
            " differently and writes x/W; autoannotate keeps holes and writes pixel centres)"
        )
    for variant in variants:
        repeats = [r for r in results if r.variant == variant]
        if len(repeats) < 2:
            continue
        identical = all(same_files(repeats[0].label_dir, r.label_dir) for r in repeats[1:])
        print(f"  {variant}: label files identical across its {len(repeats)} repeats: {'yes' if identical else 'NO'}")
    if half_ran:
        half_dir = first[f"{auto_name} --half"].label_dir
        mean_iou, min_iou, compared, skipped = mean_mask_iou(inputs, auto_dir, True, half_dir, True)
        print("\n--half (bf16 autocast) vs float32 autoannotate, same inputs:")
        if mean_iou is None:
            print("  no instance to compare")
        else:
            print(f"  mean mask IoU {mean_iou:.4f}, min {min_iou:.4f} over {compared} instances")
        if skipped:
            print(f"  instance counts differ (not compared) on: {', '.join(skipped)}")
        print("  (label polygons rasterised at image size; the polygon policy's simplification acts on both)")


def sam_mask_agreement(inputs: Inputs, weights: StandinWeights, settings: Settings) -> tuple[float, float, int]:
    """``--half`` vs float32 on SAM's own masks, before any polygon: the same boxes (the float32 detector's) go to a
    float32 and a half ``BoxSegmenter`` in this process; returns (mean IoU, min IoU, masks compared)."""
    import torch

    from autoannotate.inputs.decode import read_image_bgr
    from autoannotate.prompts.yolo import Detector, DetectSettings
    from autoannotate.runtime.allocator import tune_host_allocator
    from autoannotate.segmenters.sam import BoxSegmenter
    from autoannotate.segmenters.sam_transforms import prepare_image

    tune_host_allocator()
    cpu = torch.device("cpu")
    detector = Detector.from_weights(str(weights.yolov8s), cpu).with_settings(
        DetectSettings(conf=settings.conf, iou=IOU_THRESHOLD, imgsz=IMGSZ_PX, max_det=settings.max_det)
    )
    segmenters = [BoxSegmenter.from_weights(weights.mobile_sam, cpu, half=half) for half in (False, True)]
    ious: list[float] = []
    for path in sorted(inputs.images_dir.iterdir()):
        image_bgr = read_image_bgr(path)  # the pixels `autoannotate run` sees (EXIF orientation applied)
        (found,) = detector.detect([image_bgr])
        prepared = prepare_image(np.ascontiguousarray(image_bgr[..., ::-1]))
        full, half = (segmenter.segment([prepared], [found])[0] for segmenter in segmenters)
        ious += [mask_iou(full.mask(i), half.mask(i)) for i in range(len(found))]
    if not ious:
        return float("nan"), float("nan"), 0
    return float(np.mean(ious)), float(np.min(ious)), len(ious)


def run_variant(
    variant: str, repeat: int, inputs: Inputs, weights: StandinWeights, settings: Settings, work: Path
) -> RunResult:
    if variant == ULTRALYTICS:
        return run_ultralytics(variant, repeat, inputs, weights, settings, work, 0)
    if variant == ULTRALYTICS_ALL_CORES:
        return run_ultralytics(variant, repeat, inputs, weights, settings, work, usable_cores())
    return run_autoannotate(variant, repeat, inputs, weights, settings, work)


def run_quietest(
    variant: str,
    repeat: int,
    args: argparse.Namespace,
    inputs: Inputs,
    weights: StandinWeights,
    settings: Settings,
    work: Path,
) -> RunResult:
    """Run one variant once, after waiting for a quiet machine; rerun it (up to ``--retry-busy`` times) while other
    processes took more than ``BUSY_CORES`` during the run, and keep the quietest attempt."""
    best: RunResult | None = None
    for attempt in range(1 + args.retry_busy):
        waited = ""
        if args.quiet_wait_s > 0:
            waited_s, load = wait_for_quiet(args.quiet_wait_s)
            waited = f" (waited {waited_s:.0f}s for a quiet machine, other load now {load:.2f} cores)"
        again = f", attempt {attempt + 1}" if attempt else ""
        print(f"running {variant} #{repeat + 1}{again}{waited} ...", flush=True)
        result = run_variant(variant, repeat, inputs, weights, settings, work)
        if best is None or result.other_cores < best.other_cores:
            best = result
        if result.other_cores <= BUSY_CORES:
            break
        print(f"  other processes used {result.other_cores:.2f} cores during that run", flush=True)
    assert best is not None
    return best


def main() -> None:
    args = parse_args()
    real_detector = args.det_model is not None
    settings = Settings(
        conf=args.conf if args.conf is not None else (0.25 if real_detector else 1e-4),
        max_det=args.max_det if args.max_det is not None else (300 if real_detector else 8),
        runtimes=tuple(v.strip() for v in args.runtime.split(",") if v.strip()) if args.runtime else (),
    )
    work = Path(tempfile.mkdtemp(prefix="bench_vs_ultralytics_"))
    try:
        standins = build_standin_weights(args.weights_dir or work / "weights", args.sam_standin)
        weights = real_models(standins, args.det_model, args.sam_model, work)
        if args.photos is not None:
            inputs = prepare_photos(work / "images", args.photos, args.count)
        else:
            inputs = prepare_inputs(work / "images", args.images, args.seed)
        (work / "logs").mkdir()
        print("\n".join(machine_lines()))
        source_before = package_fingerprint()
        print(f"autoannotate: {source_before}")
        half_ran = not args.skip_half and cli_has_half()
        where = (
            f"the first {len(inputs.resolution_wh_by_stem)} photos of {args.photos}"
            if args.photos is not None
            else f"3 samples + {args.images} generated, seed {args.seed}"
        )
        print(
            f"inputs: {len(inputs.resolution_wh_by_stem)} images in one flat folder ({where}); conf {settings.conf},"
            f" iou {IOU_THRESHOLD}, imgsz {IMGSZ_PX}, max_det {settings.max_det}, device cpu"
            f"{f', autoannotate --runtime {args.runtime}' if settings.runtimes else ''}"
        )
        detector = f"{weights.yolov8s} (real)" if real_detector else f"{weights.yolov8s.name} (random YOLOv8s)"
        print(f"models: {detector}, {weights.mobile_sam} ({weights.standin})")
        if not args.skip_half and not half_ran:
            print("note: `autoannotate run --help` does not list --half: the --half row is skipped")
        variants = [ULTRALYTICS, *([] if args.skip_all_cores else [ULTRALYTICS_ALL_CORES])]
        for runtime in settings.runtimes or ("",):
            name = AUTOANNOTATE + (f" --runtime {runtime}" if runtime else "")
            variants += [name, f"{name} --half"] if half_ran else [name]
        results: list[RunResult] = []
        for repeat in range(args.repeats):
            for variant in variants:
                results.append(run_quietest(variant, repeat, args, inputs, weights, settings, work))
        print_runs(results)
        print_table(results, variants)
        print_labels(inputs, results, variants, half_ran)
        if half_ran:
            mean_iou, min_iou, compared = sam_mask_agreement(inputs, weights, settings)
            print(
                f"  SAM masks before polygons (same boxes, this process): mean IoU {mean_iou:.4f}, min {min_iou:.4f}"
                f" over {compared} masks"
            )
        print(load_average_line("after"))
        warn_if_changed(source_before)
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
