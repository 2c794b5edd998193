"""How autoannotate's time per image grows with boxes per image and image size, and whether its memory stays flat.

    python benchmarks/bench_scaling.py [--boxes 1,8,32,128] [--sizes 320,640,1280,2000,4000] [--repeats 2]
    python benchmarks/bench_scaling.py --memory 1000      # peak and sampled RSS of a real `autoannotate run`

Timing mode uses autoannotate's Python API with a stub detector that returns a fixed number of deterministic boxes,
so the box count is exact and only SAM, polygons and writing are timed. For each point it reports:

- stages, timed one after another on one image (median of ``--repeats``): decode+resize for SAM, the SAM image
  encoder alone, ``BoxSegmenter.segment`` minus the encoder (prompt encoder, mask decoder, upscaling to full
  resolution, threshold), ``mask_to_polygons`` on the masks produced, the same on ellipse masks inscribed in the
  boxes (what blob-shaped real masks cost; random-weight masks are a speckle), and formatting + atomic writing;
- end to end: ``Annotator.run`` over ``--images-per-point`` images with the CLI's compute plan (several inference
  workers on a CPU), seconds per image.

Memory mode runs the real CLI in a subprocess on N generated small images, samples its VmRSS every 0.5 s from
/proc, and prints RSS after 10%, 50% and 100% of the images, the peak (VmHWM, and ``wait4`` rusage).
No timing is asserted.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import cv2
import numpy as np
import torch
from common import (
    SAM_STANDINS,
    OtherLoadMeter,
    build_standin_weights,
    load_average_line,
    machine_lines,
    median,
    package_fingerprint,
    wait_for_quiet,
    warn_if_changed,
    write_synthetic_images,
)

from autoannotate.dataset.layout import plan_layout
from autoannotate.dataset.yolo_seg import format_label_file, format_polygon_line
from autoannotate.inputs.decode import read_image_bgr
from autoannotate.inputs.listing import iter_items, resolve_data
from autoannotate.pipeline import Annotator
from autoannotate.polygons import PolygonPolicy, mask_to_polygons
from autoannotate.runtime.allocator import tune_host_allocator
from autoannotate.runtime.device import apply_threads, plan_compute, select_device
from autoannotate.segmenters.sam import BoxSegmenter, default_decoder_batch_size
from autoannotate.segmenters.sam_decoder import ImageSide, shared_image_decoder
from autoannotate.segmenters.sam_transforms import (
    SAM_IMAGE_SIZE,
    SegmentationResult,
    postprocess_logits,
    prepare_image,
)
from autoannotate.types import Detections
from autoannotate.writers.atomic import write_text_atomic

T = TypeVar("T")
MEMORY_SIZES_WH = ((320, 240), (256, 256), (400, 300), (240, 320))
RSS_SAMPLE_INTERVAL_S = 0.5
POSTPROCESS_CHUNK_BOXES = 8


# --------------------------------------------------------------------------------------------------------------------
# Stub detector
# --------------------------------------------------------------------------------------------------------------------


def fixed_boxes_xyxy(resolution_wh: tuple[int, int], count: int, seed: int = 0) -> np.ndarray:
    """``(count, 4)`` float32 pixel boxes, deterministic per size: centres anywhere, sides 5-50% of the image."""
    width, height = resolution_wh
    rng = np.random.default_rng([seed, width, height])
    centres = rng.uniform(0, 1, size=(count, 2)) * [width, height]
    sides = rng.uniform(0.05, 0.5, size=(count, 2)) * [width, height]
    xyxy = np.concatenate([centres - sides / 2, centres + sides / 2], axis=1)
    return np.clip(xyxy, 0, [width - 1, height - 1, width - 1, height - 1]).astype(np.float32)


class FixedBoxDetector:
    """Stands in for ``autoannotate.prompts.yolo.Detector``: ``boxes_per_image`` deterministic boxes on every image.

    A prompt source (``prompts.base.PromptSource``: ``names``, ``class_ids``, ``weights_path``, ``boxes``) that also
    offers the detector's ``detect``.
    """

    class_ids = None
    weights_path = None

    def __init__(self, boxes_per_image: int, seed: int = 0) -> None:
        self.boxes_per_image = boxes_per_image
        self.seed = seed
        self.names = {i: f"class{i}" for i in range(80)}

    def boxes(self, images_bgr: Sequence[np.ndarray], rel_paths: Sequence[Any]) -> list[Detections]:
        return self.detect(images_bgr)

    def detect(self, images_bgr: Sequence[np.ndarray]) -> list[Detections]:
        out = []
        for image in images_bgr:
            xyxy = fixed_boxes_xyxy((image.shape[1], image.shape[0]), self.boxes_per_image, self.seed)
            class_id = np.arange(len(xyxy), dtype=np.int64) % 80
            out.append(Detections(xyxy, class_id, np.full(len(xyxy), 0.5, np.float32)))
        return out


def ellipse_masks(boxes_xyxy: np.ndarray, resolution_wh: tuple[int, int]) -> np.ndarray:
    """``(N, H, W)`` bool: the ellipse inscribed in each box, a stand-in for a blob-shaped real SAM mask."""
    width, height = resolution_wh
    masks = np.zeros((len(boxes_xyxy), height, width), dtype=np.uint8)
    for mask, (x1, y1, x2, y2) in zip(masks, boxes_xyxy, strict=True):
        centre = (round((x1 + x2) / 2), round((y1 + y2) / 2))
        axes = (max(1, round((x2 - x1) / 2)), max(1, round((y2 - y1) / 2)))
        cv2.ellipse(mask, centre, axes, 0, 0, 360, 1, thickness=-1)
    return masks.astype(bool)


# --------------------------------------------------------------------------------------------------------------------
# Timing mode
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PointTimes:
    """Seconds for one image at one (boxes, size) point; ``e2e_s`` is per image through ``Annotator.run``."""

    boxes: int
    resolution_wh: tuple[int, int]
    decode_s: float
    segment_s: float  # one BoxSegmenter.predict() call: encoder + decoder + post (as a cross-check)
    encoder_s: float
    decoder_s: float
    postprocess_s: float
    polygons_s: float
    polygons_ellipse_s: float
    write_s: float
    vertices: int
    e2e_s: float
    other_cores: float  # CPU other processes used while this point was measured, in cores

    @property
    def per_box_part_s(self) -> float:
        """The part that grows with the box count: decoder + postprocess + polygons + writing."""
        return self.decoder_s + self.postprocess_s + self.polygons_s + self.write_s

    @property
    def stage_sum_s(self) -> float:
        return self.decode_s + self.encoder_s + self.per_box_part_s


def timed(function: Callable[[], T], repeats: int) -> tuple[float, T]:
    """Median wall seconds of ``repeats`` calls, and the last call's result."""
    seconds = []
    result: Any = None
    for _ in range(repeats):
        started = time.perf_counter()
        result = function()
        seconds.append(time.perf_counter() - started)
    return median(seconds), result


def decode_for_sam(path: Path) -> tuple[np.ndarray, Any]:
    """What the pipeline's decode workers do: read BGR, convert to RGB, resize for SAM."""
    image_bgr = read_image_bgr(path)
    return image_bgr, prepare_image(cv2.cvtColor(image_bgr, cv2.COLOR_BGR2RGB))


def encoder_only_s(segmenter: BoxSegmenter, repeats: int) -> tuple[float, torch.Tensor]:
    """The SAM image encoder on one ``(1, 3, 1024, 1024)`` input (its cost does not depend on the pixels).

    Returns (median seconds, the ``(1, C, 64, 64)`` embedding) .
    """
    encoder = segmenter.model.image_encoder
    x = torch.randn(1, 3, SAM_IMAGE_SIZE, SAM_IMAGE_SIZE, device=segmenter.device)

    def run() -> torch.Tensor:
        with torch.inference_mode(), autocast_if(segmenter.half):
            return encoder(x).float()

    return timed(run, repeats)


def decoder_only_s(segmenter: BoxSegmenter, embedding: torch.Tensor, boxes_1024: np.ndarray, repeats: int) -> float:
    """Prompt encoder + mask decoder for every box, ``default_decoder_batch_size`` boxes per call, as ``segment()``.

    ``boxes_1024``: ``(N, 4)`` boxes in the 1024 frame (their values do not change the cost).
    """
    model = segmenter.model
    boxes = torch.as_tensor(boxes_1024, dtype=torch.float32, device=segmenter.device)

    shared = shared_image_decoder(model.mask_decoder)  # the forward segment() runs, image side once per image

    def run() -> None:
        with torch.inference_mode():
            image_pe = model.prompt_encoder.get_dense_pe()
            chunk = default_decoder_batch_size(segmenter.device)
            side: ImageSide | None = None
            for start in range(0, len(boxes), chunk):
                sparse, dense = model.prompt_encoder(points=None, boxes=boxes[start : start + chunk], masks=None)
                with autocast_if(segmenter.half):
                    if shared is not None:
                        if side is None:
                            side = shared.image_side(embedding, image_pe, dense[:1])
                        shared(side, sparse)
                    else:
                        model.mask_decoder(
                            image_embeddings=embedding,
                            image_pe=image_pe,
                            sparse_prompt_embeddings=sparse,
                            dense_prompt_embeddings=dense,
                            multimask_output=False,
                        )

    return timed(run, repeats)[0]


def autocast_if(enabled: bool) -> torch.autocast:
    """bf16 autocast on CPU, as ``BoxSegmenter(half=True)`` uses."""
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled)


def postprocess_all(result: SegmentationResult) -> None:
    """Full-resolution masks from the decoder's low-resolution logits (``postprocess_logits``), 8 boxes at a time."""
    logits = torch.from_numpy(result.low_res_logits[:, None])
    with torch.inference_mode():
        for start in range(0, len(logits), POSTPROCESS_CHUNK_BOXES):
            chunk = logits[start : start + POSTPROCESS_CHUNK_BOXES]
            postprocess_logits(chunk, result.input_hw, result.original_hw, result.mask_threshold).numpy()


def polygons_of(masks: np.ndarray, policy: PolygonPolicy) -> list[list[np.ndarray]]:
    return [mask_to_polygons(mask, policy) for mask in masks]


def write_labels(polygons: list[list[np.ndarray]], resolution_wh: tuple[int, int], path: Path) -> None:
    lines = [format_polygon_line(i % 80, p, resolution_wh) for i, parts in enumerate(polygons) for p in parts]
    write_text_atomic(path, format_label_file(lines))


def end_to_end_s(folder: Path, out_dir: Path, segmenter: BoxSegmenter, boxes: int, infer_workers: int) -> float:
    """Seconds per image of ``Annotator.run`` over every image in ``folder`` (fresh output dir)."""
    spec = resolve_data(str(folder))
    layout = plan_layout(spec, str(folder), str(out_dir))
    annotator = Annotator(
        FixedBoxDetector(boxes),
        segmenter,
        PolygonPolicy(),
        layout,
        batch=1,
        infer_workers=infer_workers,
    )
    started = time.perf_counter()
    outcomes = list(annotator.run(iter_items(spec)))
    seconds = time.perf_counter() - started
    failed = [o for o in outcomes if o.status == "failed"]
    if failed:
        raise RuntimeError(f"{len(failed)} images failed, e.g. {failed[0].error}")
    return seconds / len(outcomes)


def measure_point(
    segmenter: BoxSegmenter, folder: Path, work: Path, boxes: int, repeats: int, infer_workers: int
) -> PointTimes:
    path = sorted(folder.iterdir())[0]
    meter = OtherLoadMeter()
    meter.start()
    decode_s, (image_bgr, prepared) = timed(lambda: decode_for_sam(path), repeats)
    resolution_wh = (int(image_bgr.shape[1]), int(image_bgr.shape[0]))
    boxes_xyxy = fixed_boxes_xyxy(resolution_wh, boxes)
    segment_s, results = timed(lambda: segmenter.predict([prepared], [boxes_xyxy]), repeats)
    result = results[0]
    encoder_s, embedding = encoder_only_s(segmenter, repeats)
    scale = SAM_IMAGE_SIZE / max(resolution_wh)
    decoder_s = decoder_only_s(segmenter, embedding, boxes_xyxy * scale, repeats)
    postprocess_s, _ = timed(lambda: postprocess_all(result), repeats)
    masks = result.masks
    policy = PolygonPolicy()
    polygons_s, polygons = timed(lambda: polygons_of(masks, policy), repeats)
    ellipses = ellipse_masks(boxes_xyxy, resolution_wh)
    polygons_ellipse_s, _ = timed(lambda: polygons_of(ellipses, policy), repeats)
    label_path = work / "label_write_test" / "label.txt"
    write_s, _ = timed(lambda: write_labels(polygons, resolution_wh, label_path), repeats)
    vertices = sum(len(p) for parts in polygons for p in parts)
    out_dir = work / "out" / f"{boxes}_{resolution_wh[0]}x{resolution_wh[1]}"
    e2e_s = end_to_end_s(folder, out_dir, segmenter, boxes, infer_workers)
    return PointTimes(
        boxes,
        resolution_wh,
        decode_s,
        segment_s,
        encoder_s,
        decoder_s,
        postprocess_s,
        polygons_s,
        polygons_ellipse_s,
        write_s,
        vertices,
        e2e_s,
        meter.other_cores(),
    )


TABLE_HEADER = (
    f"{'boxes':>5} {'W x H':>10} {'e2e s/img':>9} | {'decode':>6} {'segment':>7} {'encoder':>7} {'decoder':>7}"
    f" {'post':>6} {'polygons':>8} {'(ellipse)':>9} {'write':>6} {'sum':>6} |"
    f" {'vertices':>8} {'per box ms':>10} {'other':>5}"
)


def table_row(t: PointTimes) -> str:
    size = f"{t.resolution_wh[0]}x{t.resolution_wh[1]}"
    return (
        f"{t.boxes:>5} {size:>10} {t.e2e_s:>9.2f} | {t.decode_s:>6.3f} {t.segment_s:>7.3f} {t.encoder_s:>7.3f}"
        f" {t.decoder_s:>7.3f} {t.postprocess_s:>6.3f} {t.polygons_s:>8.3f} {t.polygons_ellipse_s:>9.4f}"
        f" {t.write_s:>6.3f} {t.stage_sum_s:>6.2f} |"
        f" {t.vertices:>8} {1000 * t.per_box_part_s / t.boxes:>10.1f} {t.other_cores:>5.2f}"
    )


def ratio(value: float, base: float) -> str:
    return f"{value / base:.2f}" if base > 0 else "n/a"


def print_box_linearity(points: list[PointTimes]) -> None:
    by_boxes = {t.boxes: t for t in points}
    if 8 not in by_boxes:
        return
    base = by_boxes[8]
    for t in points:
        if t.boxes == 8:
            continue
        expected = t.boxes / 8
        print(
            f"  {t.boxes:>3} vs 8 boxes (linear would be x{expected:g}):"
            f" per-box part x{t.per_box_part_s / base.per_box_part_s:.2f}"
            f" (decoder x{ratio(t.decoder_s, base.decoder_s)}, post x{ratio(t.postprocess_s, base.postprocess_s)},"
            f" polygons x{ratio(t.polygons_s, base.polygons_s)},"
            f" write x{ratio(t.write_s, base.write_s)}), whole image end to end x{ratio(t.e2e_s, base.e2e_s)}"
        )
        # Label text grows with the vertices written, which the stand-in's masks need not give in proportion to the
        # boxes: per vertex, writing must stay flat.
        vertices = t.vertices / max(base.vertices, 1)
        print(
            f"        vertices x{vertices:.2f}; write per vertex x{ratio(t.write_s / vertices, base.write_s)},"
            f" polygons per vertex x{ratio(t.polygons_s / vertices, base.polygons_s)} (flat would be x1)"
        )


def print_size_scaling(points: list[PointTimes]) -> None:
    base = points[0]
    base_px = base.resolution_wh[0] * base.resolution_wh[1]
    for t in points[1:]:
        pixels = t.resolution_wh[0] * t.resolution_wh[1] / base_px
        print(
            f"  {t.resolution_wh[0]}x{t.resolution_wh[1]} vs {base.resolution_wh[0]}x{base.resolution_wh[1]}"
            f" (x{pixels:.1f} pixels): post x{ratio(t.postprocess_s, base.postprocess_s)},"
            f" polygons x{ratio(t.polygons_s, base.polygons_s)}, decode x{ratio(t.decode_s, base.decode_s)},"
            f" decoder x{ratio(t.decoder_s, base.decoder_s)}, encoder x{ratio(t.encoder_s, base.encoder_s)},"
            f" end to end x{ratio(t.e2e_s, base.e2e_s)}"
        )


def settle(max_wait_s: float) -> None:
    """Wait for other processes to quieten down before a measurement (see ``common.wait_for_quiet``)."""
    if max_wait_s <= 0:
        return
    waited_s, load = wait_for_quiet(max_wait_s)
    if load >= 0.3:
        print(f"  (other processes still use {load:.2f} cores after waiting {waited_s:.0f}s)", flush=True)


def run_timing(args: argparse.Namespace, work: Path) -> None:
    weights = build_standin_weights(args.weights_dir or work / "weights", args.sam_standin)
    device = select_device("cpu")
    plan = plan_compute(device)
    apply_threads(plan)  # as `autoannotate run` does
    segmenter = BoxSegmenter.from_weights(weights.mobile_sam, device, half=args.half)
    print(
        f"compute plan (as the CLI): {plan.infer_workers} inference workers x {plan.torch_threads} torch threads;"
        f" stages below are timed serially with {torch.get_num_threads()} torch threads, end to end with the plan"
    )
    print(f"SAM stand-in '{weights.standin}' ({weights.mobile_sam}), half={args.half}, polygon policy merge/tol 1 px")
    box_sweep_wh = parse_wh(args.box_sweep_wh)
    # Warm-up: the first SAM call pays one-off costs (allocator, oneDNN primitive creation).
    warm = write_synthetic_images(work / "warmup", 1, sizes_wh=(box_sweep_wh,))[0]
    segmenter.predict([decode_for_sam(warm)[1]], [fixed_boxes_xyxy(box_sweep_wh, 1)])

    print(f"\nboxes per image ({box_sweep_wh[0]}x{box_sweep_wh[1]} images; seconds unless marked):")
    print(TABLE_HEADER)
    folder = work / f"images_{box_sweep_wh[0]}x{box_sweep_wh[1]}"
    write_synthetic_images(folder, args.images_per_point, seed=1, sizes_wh=(box_sweep_wh,))
    box_points = []
    for boxes in args.boxes:
        settle(args.quiet_wait_s)
        box_points.append(measure_point(segmenter, folder, work, boxes, args.repeats, plan.infer_workers))
        print(table_row(box_points[-1]), flush=True)
    print_box_linearity(box_points)

    print(f"\nimage size ({args.size_sweep_boxes} boxes per image, 4:3 landscape):")
    print(TABLE_HEADER)
    size_points = []
    for long_side in args.sizes:
        size_wh = (long_side, round(long_side * 3 / 4))
        folder = work / f"images_{size_wh[0]}x{size_wh[1]}"
        if not folder.is_dir():
            write_synthetic_images(folder, args.images_per_point, seed=2, sizes_wh=(size_wh,))
        settle(args.quiet_wait_s)
        point = measure_point(segmenter, folder, work, args.size_sweep_boxes, args.repeats, plan.infer_workers)
        size_points.append(point)
        print(table_row(point), flush=True)
    print_size_scaling(size_points)
    print(
        "\ncolumns: e2e = Annotator.run per image with the CLI's plan (decode, SAM, polygons, writing overlapped);"
        " segment = one BoxSegmenter.predict() call; encoder = TinyViT at 1024x1024 alone; decoder = prompt encoder +"
        " mask decoder for all boxes, as many per call as segment() uses (8 on CPU); post = postprocess_logits"
        " (upscale to full size, threshold);"
        " polygons = mask_to_polygons on the stand-in's masks; (ellipse) = the same on ellipses inscribed in the"
        " boxes; sum = decode + encoder + decoder + post + polygons + write, serial; per box = (decoder + post +"
        " polygons + write) / boxes; other = CPU used by other processes meanwhile, in cores (above ~0.2 the row is"
        " inflated by someone else's work)"
    )


# --------------------------------------------------------------------------------------------------------------------
# Memory mode
# --------------------------------------------------------------------------------------------------------------------


def proc_status_kb(pid: int, key: str) -> int | None:
    """A ``kB`` field (``VmRSS``, ``VmHWM``) of /proc/<pid>/status, or None once the process is gone."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


@dataclass
class RssSampler:
    """Samples a process's VmRSS and VmHWM every ``interval_s`` in a background thread."""

    pid: int
    interval_s: float = RSS_SAMPLE_INTERVAL_S
    samples: list[tuple[float, int]] = field(default_factory=list)  # (seconds since start, VmRSS kB)
    hwm_kb: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="rss-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _loop(self) -> None:
        started = time.perf_counter()
        while not self._stop.is_set():
            rss = proc_status_kb(self.pid, "VmRSS")
            hwm = proc_status_kb(self.pid, "VmHWM")
            if rss is not None:
                self.samples.append((time.perf_counter() - started, rss))
            if hwm is not None:
                self.hwm_kb = max(self.hwm_kb, hwm)
            self._stop.wait(self.interval_s)


def mib(kb: float) -> str:
    return f"{kb / 1024:7.1f} MiB"


def run_memory(args: argparse.Namespace, work: Path) -> None:
    count = args.memory
    weights = build_standin_weights(args.weights_dir or work / "weights", args.sam_standin)
    folder = work / "memory_images"
    print(f"writing {count} small images ({', '.join(f'{w}x{h}' for w, h in MEMORY_SIZES_WH)}) ...", flush=True)
    write_synthetic_images(folder, count, seed=3, sizes_wh=MEMORY_SIZES_WH)
    script = Path(sys.executable).with_name("autoannotate")
    command = [str(script)] if script.is_file() else [sys.executable, "-m", "autoannotate.cli"]
    command += ["run", "--data", str(folder), "--output-dir", str(work / "memory_out"), "--json"]
    command += ["--det-model", str(weights.yolo11n), "--sam-model", str(weights.mobile_sam)]
    command += ["--conf", "1e-4", "--max-det", str(args.memory_max_det), "--device", "cpu"]
    print("$ " + " ".join(command), flush=True)
    marks = sorted({max(1, round(count * p)) for p in (0.1, 0.5, 1.0)})
    rss_at_mark: dict[int, tuple[float, int | None]] = {}
    stderr_path = work / "memory_stderr.txt"
    with stderr_path.open("w", encoding="utf-8") as stderr:
        started = time.perf_counter()
        child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr, text=True)
        sampler = RssSampler(child.pid)
        sampler.start()
        done = 0
        assert child.stdout is not None
        for line in child.stdout:
            if not line.startswith('{"event": "image"'):
                continue
            done += 1
            if done in marks:
                rss_at_mark[done] = (time.perf_counter() - started, proc_status_kb(child.pid, "VmRSS"))
                print(f"  {done}/{count} images, {rss_at_mark[done][0]:.0f}s", flush=True)
        _, status, usage = os.wait4(child.pid, 0)  # this child's own rusage, not every child's maximum
        child.returncode = os.waitstatus_to_exitcode(status)
        sampler.stop()
    if child.returncode not in (0, 1):
        tail = "\n".join(stderr_path.read_text(encoding="utf-8").splitlines()[-5:])
        raise RuntimeError(f"autoannotate exited with {child.returncode}:\n{tail}")
    print_memory_report(count, done, marks, rss_at_mark, sampler, usage.ru_maxrss)


def print_memory_report(
    count: int,
    done: int,
    marks: list[int],
    rss_at_mark: dict[int, tuple[float, int | None]],
    sampler: RssSampler,
    ru_maxrss_kb: int,
) -> None:
    print(f"\nmemory of `autoannotate run` over {done}/{count} images (VmRSS read when the k-th image event arrived):")
    for mark in marks:
        seconds, rss = rss_at_mark.get(mark, (float("nan"), None))
        shown = mib(rss) if rss is not None else "   (gone)"
        print(f"  after {mark:>5} images ({100 * mark / count:5.1f}%): RSS {shown}  at {seconds:7.1f}s")
    first_t = rss_at_mark.get(marks[0], (0.0, None))[0]
    later = [rss for t, rss in sampler.samples if t >= first_t]
    if later:
        print(
            f"  sampled every {RSS_SAMPLE_INTERVAL_S}s from the 10% mark on:"
            f" min {mib(min(later))}, max {mib(max(later))}"
            f" ({len(later)} samples)"
        )
    first_rss, last_rss = rss_at_mark.get(marks[0], (0, None))[1], rss_at_mark.get(marks[-1], (0, None))[1]
    if first_rss is not None and last_rss is not None and marks[-1] > marks[0]:
        slope = (last_rss - first_rss) / (marks[-1] - marks[0])
        print(f"  growth from 10% to 100%: {(last_rss - first_rss) / 1024:+.1f} MiB ({slope:+.2f} kB per image)")
    print(f"  peak RSS: VmHWM {mib(sampler.hwm_kb)} (last sample), wait4 ru_maxrss {mib(ru_maxrss_kb)}")
    if sampler.samples:
        total_s = sampler.samples[-1][0]
        print(f"  whole process {total_s:.0f}s, {total_s / max(done, 1):.2f}s per image including model loading")


# --------------------------------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------------------------------


def parse_int_list(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def parse_wh(text: str) -> tuple[int, int]:
    width, height = text.lower().split("x")
    return int(width), int(height)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--boxes", type=parse_int_list, default=[1, 8, 32, 128], help="box counts to sweep")
    parser.add_argument("--box-sweep-wh", default="1280x720", help="image size of the box sweep")
    parser.add_argument("--sizes", type=parse_int_list, default=[320, 640, 1280, 2000, 4000], help="long sides, px")
    parser.add_argument("--size-sweep-boxes", type=int, default=8, help="boxes per image in the size sweep")
    parser.add_argument("--images-per-point", type=int, default=4, help="images per end-to-end measurement")
    parser.add_argument("--repeats", type=int, default=2, help="repeats of each stage timing (median)")
    parser.add_argument("--half", action="store_true", help="BoxSegmenter(half=True): bf16 autocast on CPU")
    parser.add_argument("--sam-standin", choices=SAM_STANDINS, default="random", help="see common.py")
    parser.add_argument(
        "--memory",
        type=int,
        nargs="?",
        const=1000,
        default=0,
        metavar="N",
        help="memory mode instead of timing: run the CLI on N small images (N defaults to 1000: ~25 min here)",
    )
    parser.add_argument("--memory-max-det", type=int, default=8, help="detections per image in memory mode")
    parser.add_argument("--weights-dir", type=Path, help="reuse/build the stand-in weights here (default: temp)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory and print its path")
    parser.add_argument(
        "--quiet-wait-s",
        type=float,
        default=120,
        help="before each point, wait up to this long for other processes to use < 0.3 cores (0: do not wait)",
    )
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    tune_host_allocator()  # as `autoannotate run` does, so that stage times match the CLI's
    work = Path(tempfile.mkdtemp(prefix="bench_scaling_"))
    try:
        print("\n".join(machine_lines()))
        source_before = package_fingerprint()
        print(f"autoannotate: {source_before}")
        if args.memory:
            run_memory(args, work)
        else:
            run_timing(args, work)
        print(load_average_line("after"))
        warn_if_changed(source_before)
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
