"""SAM/MobileSAM on PyTorch against OpenVINO (``--runtime``), side by side in one run: speed, parity, agreement.

    python benchmarks/bench_openvino.py [--sam-model mobile_sam.pt] [--images DIR] [--boxes 8] [--threads 1]

Four ways to run the same weights on the same images and boxes, as a run runs them (``BoxSegmenter``, oneDNN
routing on x86-64): PyTorch fp32, PyTorch bf16 autocast (``--half``), OpenVINO fp32, OpenVINO bf16. Prints, per way:
seconds per image for the image encoder, ms per box for the decoder (the rest of ``predict``: prompt encoder,
decoder, postprocessing), and against PyTorch fp32: the largest embedding and low-res logit differences, and the
mask agreement (mean IoU of the final masks, and the share of masks identical pixel for pixel). Also the one-off
costs: converting the three parts, and loading them back from the cache.

Without ``--sam-model`` the real MobileSAM architecture with random weights is used (speed does not depend on the
weights; the agreement figures then describe random masks, so pass a real checkpoint to quote them). Without
``--images``, synthetic scenes (``common.synthetic_scene_bgr``); boxes are drawn at random inside each image. The
model is set up as ``autoannotate run`` sets it up on a CPU: glibc's allocator tuned, the encoder's BatchNorms
folded and GELUs fused, float32 layers routed to oneDNN.

Then two more tables:

- **The arithmetic ceiling**: the encoder's floating-point operations per image (``torch.utils.flop_counter``), this
  CPU's peak at ``--threads`` as oneDNN's 1x1 convolution reaches it (float32, and bf16 where the CPU has it), and
  each way's GFLOP/s and share of that peak, i.e. how much faster any kernel could make the encoder here.
- **Streams** (``--threads`` 2 or more): OpenVINO's encoder with one stream of ``--threads`` threads against
  ``--threads`` streams of one thread, as many calling threads as streams: seconds per call and images per second
  (``segmenters.sam_openvino.encoder_settings`` picks the first).
"""

from __future__ import annotations

import argparse
import atexit
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import OtherLoadMeter, machine_lines, mask_iou, synthetic_scene_bgr

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def _images(folder: str | None, count: int) -> list[np.ndarray]:
    """RGB uint8 images: the first ``count`` of ``folder`` (sorted), else synthetic scenes."""
    if folder is None:
        rng = np.random.default_rng(0)
        return [cv2.cvtColor(synthetic_scene_bgr(rng, (1280, 720)), cv2.COLOR_BGR2RGB) for _ in range(count)]
    paths = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[:count]
    if not paths:
        raise SystemExit(f"no images in {folder}")
    return [cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB) for p in paths]


def _boxes(rng: np.random.Generator, hw: tuple[int, int], n: int) -> np.ndarray:
    h, w = hw
    x1, y1 = rng.uniform(0, w * 0.7, n), rng.uniform(0, h * 0.7, n)
    return np.stack([x1, y1, x1 + rng.uniform(20, w * 0.3, n), y1 + rng.uniform(20, h * 0.3, n)], axis=1)


def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sam-model", help="a SAM/MobileSAM checkpoint (default: MobileSAM with random weights)")
    parser.add_argument("--images", help="a folder of photos (default: synthetic scenes)")
    parser.add_argument("--count", type=int, default=3, help="images")
    parser.add_argument("--boxes", type=int, default=8, help="boxes per image")
    parser.add_argument("--threads", type=int, default=1, help="threads (a run uses one per inference worker)")
    parser.add_argument("--repeats", type=int, default=2, help="timed passes over the images (best kept)")
    args = parser.parse_args()

    import torch

    from autoannotate.runtime.allocator import tune_host_allocator
    from autoannotate.runtime.cpu_kernels import fuse_for_cpu, use_onednn
    from autoannotate.runtime.openvino_parts import OpenVinoSettings, openvino_version
    from autoannotate.segmenters.sam import BoxSegmenter, load_sam

    torch.set_num_threads(args.threads)
    for line in machine_lines():
        print(line)
    print(f"openvino {openvino_version()}, threads {args.threads}")
    torch.manual_seed(0)
    if args.sam_model:
        model, variant = load_sam(args.sam_model)
        weights = args.sam_model
    else:
        from ultralytics.models.sam.build import build_mobile_sam

        model, variant, weights = build_mobile_sam().eval(), "mobile_sam", "random weights"
    gflop = _encoder_gflop(model.image_encoder)  # PyTorch's own layers: the counter does not see oneDNN's ops
    tune_host_allocator()  # as `autoannotate run` does
    fuse_for_cpu(model.image_encoder)
    use_onednn(model)
    print(f"model: {variant} ({weights})")
    rng = np.random.default_rng(1)
    images = _images(args.images, args.count)
    cache = Path(tempfile.mkdtemp(prefix="bench_openvino_"))
    atexit.register(shutil.rmtree, cache, ignore_errors=True)  # ~200 MB of converted parts and compiled blobs

    ways: dict[str, BoxSegmenter] = {}
    for name, half in (("torch fp32", False), ("torch bf16", True)):
        ways[name] = BoxSegmenter(model, half=half, variant=variant)
    for name, precision in (("openvino fp32", "f32"), ("openvino bf16", "bf16")):
        segmenter = BoxSegmenter(model, variant=variant)
        settings = OpenVinoSettings(precision, 1, args.threads, cache)
        _, seconds = _timed(lambda s=segmenter, o=settings: s.use_openvino(o, None))
        print(f"{name}: ready in {seconds:.1f} s ({'converted' if precision == 'f32' else 'read from the cache'})")
        ways[name] = segmenter

    prepared = [ways["torch fp32"].prepare(image) for image in images]
    boxes = [_boxes(rng, image.shape[:2], args.boxes) for image in images]
    meter = OtherLoadMeter()
    meter.start()
    results: dict[str, list[Any]] = {}
    embeddings: dict[str, list[Any]] = {}
    timings: dict[str, tuple[float, float]] = {}
    cpu = torch.device("cpu")
    for name, segmenter in ways.items():
        ov = segmenter._openvino  # the compiled parts (benchmark-only access)
        mean, std = segmenter._pixel_stats(cpu)

        def encode(p: Any, s: BoxSegmenter = segmenter, o: Any = ov, m: Any = mean, d: Any = std) -> Any:
            with torch.inference_mode():
                x = s._encoder_input(p, cpu, m, d)[None].contiguous(memory_format=torch.channels_last)
                if o is not None:
                    return o.encode(x)
                with s._autocast(cpu):
                    return s._image_encoder(x).float()

        encode(prepared[0])  # warm-up
        segmenter.predict(prepared[:1], boxes[:1])
        best_enc, best_all = float("inf"), float("inf")
        for _ in range(args.repeats):
            embs, t_enc = _timed(lambda e=encode: [e(p) for p in prepared])  # type: ignore[misc]
            out, t_all = _timed(lambda s=segmenter: s.predict(prepared, boxes))  # type: ignore[misc]
            best_enc, best_all = min(best_enc, t_enc), min(best_all, t_all)
        embeddings[name], results[name], timings[name] = embs, out, (best_enc, best_all)

    n_img, n_box = len(prepared), len(prepared) * args.boxes
    print(f"\n{n_img} images x {args.boxes} boxes; against torch fp32:")
    print(
        "way             encoder s/img  decoder ms/box  encoder speed-up  max|emb diff|  max|logit diff|  mask IoU"
        "  identical masks"
    )
    base_enc, base_all = timings["torch fp32"]
    base_dec = base_all - base_enc
    for name in ways:
        t_enc, t_all = timings[name]
        t_dec = max(t_all - t_enc, 1e-9)
        pairs = zip(embeddings[name], embeddings["torch fp32"], strict=True)
        emb_diff = max(float((a - b).abs().max()) for a, b in pairs)
        logit_diff = max(
            float(np.abs(a.low_res_logits - b.low_res_logits).max())
            for a, b in zip(results[name], results["torch fp32"], strict=True)
        )
        ious, same = [], 0
        for a, b in zip(results[name], results["torch fp32"], strict=True):
            for i in range(len(a.iou_pred)):
                ma, mb = a.mask(i), b.mask(i)
                ious.append(mask_iou(ma, mb))
                same += int(np.array_equal(ma, mb))
        print(
            f"{name:15s} {t_enc / n_img:13.3f}  {t_dec / n_box * 1e3:14.1f}  x{base_enc / t_enc:15.2f}  "
            f"{emb_diff:13.1e}  {logit_diff:15.1e}  {np.mean(ious):8.4f}  {same}/{len(ious)}"
            f"   (decoder x{base_dec / t_dec:.2f})"
        )
    print(f"other processes' load during the timings: {meter.other_cores():.2f} cores")
    _print_ceiling(gflop, {name: t_enc / n_img for name, (t_enc, _) in timings.items()}, args.threads)
    if args.threads >= 2:
        _print_streams(model, variant, cache, args.threads)


def _peak_gflops(dtype: Any, threads: int) -> float:
    """GFLOP/s of oneDNN's 1x1 convolution (channels-last, 256 -> 1024 channels over 64x64) at ``threads``."""
    import torch

    x = torch.randn(1, 256, 64, 64).to(dtype).contiguous(memory_format=torch.channels_last)
    w = torch.randn(1024, 256, 1, 1).to(dtype)
    flops = 2 * 256 * 1024 * 64 * 64
    with torch.inference_mode():
        for _ in range(3):
            torch.mkldnn_convolution(x, w, None, [0, 0], [1, 1], [1, 1], 1)
        best = float("inf")
        for _ in range(5):
            start = time.perf_counter()
            for _ in range(10):
                torch.mkldnn_convolution(x, w, None, [0, 0], [1, 1], [1, 1], 1)
            best = min(best, (time.perf_counter() - start) / 10)
    return flops / best / 1e9


def _encoder_gflop(encoder: Any) -> float:
    """Floating-point operations of one ``(1, 3, 1024, 1024)`` pass, in GFLOP (an FMA counts two)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        encoder(torch.zeros(1, 3, 1024, 1024))
    return counter.get_total_flops() / 1e9


def _print_ceiling(gflop: float, seconds_per_image: dict[str, float], threads: int) -> None:
    """The encoder's GFLOP per image, this CPU's peak, each way's share of it."""
    import torch

    peaks = {"fp32": _peak_gflops(torch.float32, threads)}
    if torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported():
        peaks["bf16"] = _peak_gflops(torch.bfloat16, threads)
    at_peak = ", ".join(f"{k} {v:.0f} GFLOP/s ({gflop / v:.3f} s/img)" for k, v in peaks.items())
    print(f"\nthe arithmetic ceiling: the encoder does {gflop:.1f} GFLOP per image; this CPU's peak at {threads}")
    print(f"thread(s), as oneDNN's 1x1 convolution reaches it: {at_peak}")
    print("way             encoder s/img  GFLOP/s  share of its precision's peak")
    for name, seconds in seconds_per_image.items():
        peak = peaks.get("bf16" if "bf16" in name else "fp32")
        share = f"{gflop / seconds / peak:6.0%}" if peak else "     -"
        print(f"{name:15s} {seconds:13.3f}  {gflop / seconds:7.1f}  {share}")


def _print_streams(model: Any, variant: str, cache: Path, threads: int) -> None:
    """OpenVINO's encoder: one stream of ``threads`` threads against ``threads`` streams of one, ``threads``
    callers each way."""
    import threading
    from unittest import mock

    import torch

    from autoannotate.runtime.openvino_parts import OpenVinoSettings
    from autoannotate.segmenters import sam_openvino
    from autoannotate.segmenters.sam import BoxSegmenter

    x = torch.randn(1, 3, 1024, 1024)
    print(f"\nstreams: OpenVINO's encoder, {threads} calling threads, 3 calls each")
    print("precision  streams x threads  s/call  images/s")
    for precision in ("f32", "bf16"):
        for streams in (1, threads):
            segmenter = BoxSegmenter(model, variant=variant)
            # the streams as given, not as the run's rule (``encoder_settings``) would change them
            with mock.patch.object(sam_openvino, "encoder_settings", lambda settings: settings):
                segmenter.use_openvino(OpenVinoSettings(precision, streams, threads, cache), None)
            ov = segmenter._openvino  # benchmark-only access
            ov.encode(x)  # warm-up
            calls: list[float] = []

            def work(o: Any = ov, out: list[float] = calls) -> None:
                for _ in range(3):
                    start = time.perf_counter()
                    o.encode(x)
                    out.append(time.perf_counter() - start)

            workers = [threading.Thread(target=work) for _ in range(threads)]
            start = time.perf_counter()
            for worker in workers:
                worker.start()
            for worker in workers:
                worker.join()
            wall = time.perf_counter() - start
            per_stream = threads // streams
            print(f"{precision:9s}  {streams:7d} x {per_stream:<7d}  {np.mean(calls):6.3f}  {len(calls) / wall:8.2f}")


if __name__ == "__main__":
    main()
