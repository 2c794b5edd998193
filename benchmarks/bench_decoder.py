"""MobileSAM's mask decoder per box: the module's own forward against ours (``segmenters/sam_decoder.py``, the image
side shared by all boxes of an image), side by side in one run, same weights, same embedding, same boxes.

    python benchmarks/bench_decoder.py [--boxes 8,33] [--threads 1] [--repeats 3]

For each box count (one image's boxes in one decoder call, as ``BoxSegmenter`` chunks them) and each CPU kernel
choice (PyTorch's default, the oneDNN routing a run uses on x86-64), fp32 and bf16 autocast (``--half``): ms per
box of each forward (best of ``--repeats`` after a warm-up, the image side counted in ours), their ratio, and the
largest logit difference. Random weights (the real architecture); the time does not depend on the weights' values.
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
    args = parser.parse_args()

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


if __name__ == "__main__":
    main()
