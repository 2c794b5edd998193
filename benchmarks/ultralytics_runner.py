"""Run ``ultralytics.data.annotator.auto_annotate`` once and write its timings as JSON (used by bench_vs_ultralytics).

    python benchmarks/ultralytics_runner.py --data DIR --det-model D.pt --sam-model DIR/mobile_sam.pt \
        --output-dir OUT --conf 1e-4 --max-det 8 --result result.json [--threads N]

``auto_annotate`` loads both models inside itself, so its model-loading time cannot be excluded from the call. This
script times, in one process:

- ``import_s``: importing ultralytics (and torch);
- ``load_cold_s``: ``YOLO(det)`` + ``SAM(sam)`` construction, the first time (lazy imports, cold file cache);
- ``call_s``: the whole ``auto_annotate`` call (its own model loading, then every image);
- ``load_warm_s``: the same construction again after the call, i.e. what the call's own loading costs;
- ``steady_s = call_s - load_warm_s``: the images alone (first-image predictor setup included, as for autoannotate).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True)
    parser.add_argument("--det-model", required=True)
    parser.add_argument("--sam-model", required=True, help="must be named mobile_sam.pt (ultralytics picks by name)")
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--result", required=True, help="JSON file to write the timings to")
    parser.add_argument("--conf", type=float, default=0.25)
    parser.add_argument("--iou", type=float, default=0.45)
    parser.add_argument("--imgsz", type=int, default=640)
    parser.add_argument("--max-det", type=int, default=300)
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="0: ultralytics' own choice (cpu_count - 1); N: patch it to N torch threads",
    )
    return parser.parse_args()


def load_models_s(det_model: str, sam_model: str) -> float:
    """Seconds to construct the two models exactly as ``auto_annotate`` does (the objects are discarded)."""
    from ultralytics import SAM, YOLO

    started = time.perf_counter()
    YOLO(det_model)
    SAM(sam_model)
    return time.perf_counter() - started


def main() -> None:
    args = parse_args()
    # Imported here, not at the top, so that their cost is measured.
    started = time.perf_counter()
    import torch
    import ultralytics.utils.torch_utils as torch_utils
    from ultralytics.data.annotator import auto_annotate

    import_s = time.perf_counter() - started
    if args.threads > 0:
        # select_device() resets torch's thread count to this module global on every predictor setup.
        torch_utils.NUM_THREADS = args.threads
    load_cold_s = load_models_s(args.det_model, args.sam_model)
    started = time.perf_counter()
    auto_annotate(
        data=args.data,
        det_model=args.det_model,
        sam_model=args.sam_model,
        device="cpu",
        conf=args.conf,
        iou=args.iou,
        imgsz=args.imgsz,
        max_det=args.max_det,
        output_dir=args.output_dir,
    )
    call_s = time.perf_counter() - started
    threads_used = torch.get_num_threads()
    load_warm_s = load_models_s(args.det_model, args.sam_model)
    result = {
        "import_s": import_s,
        "load_cold_s": load_cold_s,
        "call_s": call_s,
        "load_warm_s": load_warm_s,
        "steady_s": call_s - load_warm_s,
        "torch_threads": threads_used,
    }
    Path(args.result).write_text(json.dumps(result), encoding="utf-8")


if __name__ == "__main__":
    main()
