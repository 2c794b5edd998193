"""MobileSAM's mask decoder per box: the module's own forward against ours (``segmenters/sam_decoder.py``, the image
side shared by all boxes of an image), side by side in one run, same weights, same embedding, same boxes.

    python benchmarks/bench_decoder.py [--boxes 8,33] [--threads 1] [--repeats 3]
    python benchmarks/bench_decoder.py --chunks 1,2,4,8,16,32 [--total 32] [--openvino]

For each box count (one image's boxes in one decoder call, as ``BoxSegmenter`` chunks them) and each CPU kernel
choice (PyTorch's default, the oneDNN routing a run uses on x86-64), fp32 and bf16 autocast (``--half``): ms per
box of each forward (best of ``--repeats`` after a warm-up, the image side counted in ours), their ratio, and the
largest logit difference. Random weights (the real architecture); the time does not depend on the weights' values.

``--chunks``: how many boxes per decoder call is fastest (``sam.default_decoder_batch_size``): ``--total`` boxes of
one image decoded in calls of each chunk size, ms per box, our forward on PyTorch (oneDNN routing, fp32) and, with
``--openvino``, the OpenVINO decoder parts (converted into a temporary cache first, about a minute), chunk sizes
interleaved over ``--repeats`` rounds so that a noisy neighbour hits them all alike.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import OtherLoadMeter, machine_lines


def _best(fn: Callable[[], object], repeats: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def _reference(decoder: Any, embedding: Any, image_pe: Any, sparse: Any, dense: Any, bf16: bool) -> Any:
    import torch

    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        return decoder(embedding, image_pe, sparse, dense, multimask_output=False)[0].float()


def _shared(ours: Any, embedding: Any, image_pe: Any, sparse: Any, dense: Any, bf16: bool) -> Any:
    import torch

    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        return ours(ours.image_side(embedding, image_pe, dense[:1]), sparse)[0].float()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--boxes", default="8,33", help="comma-separated boxes per decoder call")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (a run uses one per core on CPU)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--chunks", help="comma-separated boxes per call: compare chunk sizes instead")
    parser.add_argument("--total", type=int, default=32, help="with --chunks: boxes of the image")
    parser.add_argument("--openvino", action="store_true", help="with --chunks: also the OpenVINO decoder")
    args = parser.parse_args()
    if args.chunks:
        _compare_chunks([int(v) for v in args.chunks.split(",")], args.total, args.threads, args.repeats, args.openvino)
        return

    import torch
    from ultralytics.models.sam.build import build_mobile_sam

    from autoannotate.runtime.cpu_kernels import use_default_kernels, use_onednn
    from autoannotate.segmenters.sam_decoder import shared_image_decoder

    torch.set_num_threads(args.threads)
    for line in machine_lines():
        print(line)
    print(f"torch threads: {args.threads}")
    torch.manual_seed(0)
    model = build_mobile_sam().eval()
    decoder, encoder = model.mask_decoder, model.prompt_encoder
    ours = shared_image_decoder(decoder)
    assert ours is not None
    embedding = torch.randn(1, 256, 64, 64)
    meter = OtherLoadMeter()
    meter.start()
    print("\nms per box   boxes  kernels  dtype   reference   ours   reference/ours   max |logit diff|")
    for n_boxes in (int(v) for v in args.boxes.split(",")):
        corners = torch.rand(n_boxes, 2) * 800
        boxes = torch.cat([corners, corners + 20 + torch.rand(n_boxes, 2) * 200], dim=1)
        with torch.inference_mode():
            sparse, dense = encoder(points=None, boxes=boxes, masks=None)
            image_pe = encoder.get_dense_pe()
        for kernels in ("default", "onednn"):
            (use_onednn if kernels == "onednn" else use_default_kernels)(model)
            for dtype in ("fp32", "bf16"):
                reference = partial(_reference, decoder, embedding, image_pe, sparse, dense, dtype == "bf16")
                shared = partial(_shared, ours, embedding, image_pe, sparse, dense, dtype == "bf16")
                diff = float((reference() - shared()).abs().max())
                t_ref, t_ours = _best(reference, args.repeats), _best(shared, args.repeats)
                print(
                    f"             {n_boxes:5d}  {kernels:7s}  {dtype:5s}  {t_ref / n_boxes * 1e3:9.1f}  "
                    f"{t_ours / n_boxes * 1e3:6.1f}   x{t_ref / t_ours:5.2f}           {diff:.1e}"
                )
    use_default_kernels(model)
    print(f"other processes' load during the timings: {meter.other_cores():.2f} cores")


def _compare_chunks(chunks: list[int], total: int, threads: int, repeats: int, openvino: bool) -> None:
    import tempfile

    import torch
    from ultralytics.models.sam.build import build_mobile_sam

    from autoannotate.runtime.cpu_kernels import use_onednn
    from autoannotate.runtime.openvino_parts import OpenVinoSettings
    from autoannotate.segmenters.sam_decoder import shared_image_decoder
    from autoannotate.segmenters.sam_openvino import openvino_sam

    torch.set_num_threads(threads)
    for line in machine_lines():
        print(line)
    print(f"threads: {threads}; {total} boxes of one image, ms per box by boxes per decoder call")
    torch.manual_seed(0)
    model = build_mobile_sam().eval()
    use_onednn(model)
    ours = shared_image_decoder(model.mask_decoder)
    assert ours is not None
    corners = torch.rand(total, 2) * 800
    boxes = torch.cat([corners, corners + 20 + torch.rand(total, 2) * 200], dim=1)
    with torch.inference_mode():
        sparse, dense = model.prompt_encoder(points=None, boxes=boxes, masks=None)
        image_pe = model.prompt_encoder.get_dense_pe()
        embedding = torch.randn(1, 256, 64, 64)
    runtimes: dict[str, Any] = {"torch": ours}
    if openvino:
        with tempfile.TemporaryDirectory(prefix="bench_decoder_") as cache:
            settings = OpenVinoSettings("f32", 1, threads, Path(cache))
            runtimes["openvino"] = openvino_sam(model, ours, "mobile_sam", None, settings, convert=True)
    meter = OtherLoadMeter()
    meter.start()
    times: dict[tuple[str, int], list[float]] = {}
    with torch.inference_mode():
        sides = {name: r.image_side(embedding, image_pe, dense[:1]) for name, r in runtimes.items()}
        for name, runner in runtimes.items():
            for chunk in chunks:  # warm-up: every shape once
                runner(sides[name], sparse[:chunk])
        for _ in range(repeats):
            for name, runner in runtimes.items():
                for chunk in chunks:
                    start = time.perf_counter()
                    for i in range(0, total, chunk):
                        runner(sides[name], sparse[i : i + chunk])
                    times.setdefault((name, chunk), []).append((time.perf_counter() - start) / total * 1e3)
    print("runtime    " + "".join(f"{c:>12d}" for c in chunks))
    for name in runtimes:
        cells = []
        for chunk in chunks:
            t = sorted(times[(name, chunk)])
            cells.append(f"{t[0]:5.0f}-{t[-1]:<5.0f} ")
        print(f"{name:10s} " + "".join(f"{c:>12s}" for c in cells))
    print("(best-worst over the rounds)")
    print(f"other processes' load during the timings: {meter.other_cores():.2f} cores")


if __name__ == "__main__":
    main()
