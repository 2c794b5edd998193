"""What text prompts cost: a run with an open-vocabulary detector and `--prompts` next to the same run with a plain
YOLO detector, on the same images, MobileSAM and settings, in separate processes, alternating.

    python benchmarks/bench_prompts.py [--images 10] [--max-det 8] [--repeats 2] [--pair defaults|small]

Pairs (random-weight stand-ins built on the fly, nothing downloaded):

- ``defaults`` (the tool's own defaults): YOLOE-26L-seg with ``--prompts`` (text encoder: a random-weight stand-in
  of MobileCLIP2's TorchScript file, so the prompts really go through ultralytics' text path) against YOLO11x;
- ``small``: YOLOE-26N-seg against YOLO26n, the same backbone family at the smallest size.

Each prompt run embeds its prompts (the encoder loads once) and saves ``prompt_embeddings.npz``; a third row times
the same prompt run loading that file with ``--prompt-embeddings`` (what offline machines and workers do). Both
detectors box exactly ``--max-det`` objects per image (``--conf 1e-4``; a random YOLOE-26 scores about 1.5e-4), so
SAM does the same work in every row. No timing is asserted.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import build_standin_weights, machine_lines, median, write_synthetic_images

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
PROMPTS = "person,forklift,pallet,box,helmet"
PAIRS = {"defaults": ("yoloe-26l-seg", "yolo11x"), "small": ("yoloe-26n-seg", "yolo26n")}


def _build(cfg: str, path: Path) -> None:
    import torch
    from ultralytics import YOLO

    torch.manual_seed(0)
    YOLO(f"{cfg}.yaml").save(str(path))


def _run(args: list[str], cwd: Path) -> tuple[float, dict]:
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "autoannotate.cli", "run", *args, "--json"], cwd=cwd, capture_output=True, text=True
    )
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"run failed ({done.returncode}): {done.stderr.strip()[-400:]}")
    return seconds, json.loads(done.stdout.splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=10)
    parser.add_argument("--max-det", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--pair", choices=sorted(PAIRS), default="defaults")
    args = parser.parse_args()
    from helpers import write_stand_in_text_encoder

    open_cfg, plain_cfg = PAIRS[args.pair]
    with tempfile.TemporaryDirectory(prefix="aa-bench-prompts-") as tmp:
        work = Path(tmp)
        weights = build_standin_weights(work / "weights", "flat")
        open_vocab, plain = work / f"{open_cfg}.pt", work / f"{plain_cfg}_random.pt"
        _build(open_cfg, open_vocab)
        _build(plain_cfg, plain)
        write_stand_in_text_encoder(work / "mobileclip2_b.ts")  # ultralytics looks in the working dir first
        write_synthetic_images(work / "imgs", args.images, sizes_wh=((640, 480), (480, 640), (800, 600)))
        common = ["--data", "imgs", "--sam-model", str(weights.mobile_sam), "--conf", "1e-4"]
        common += ["--max-det", str(args.max_det), "--overwrite"]
        rows: dict[str, list[float]] = {"plain": [], "prompts": [], "embeddings": []}
        for repeat in range(args.repeats):
            for name in ("plain", "prompts", "embeddings") if repeat % 2 == 0 else ("embeddings", "prompts", "plain"):
                out = ["--output-dir", f"out_{name}"]
                if name == "plain":
                    extra = ["--det-model", str(plain)]
                elif name == "prompts":
                    extra = ["--det-model", str(open_vocab), "--prompts", PROMPTS]
                else:
                    saved = work / "saved.npz"
                    if not saved.is_file():
                        seed = ["--det-model", str(open_vocab), "--prompts", PROMPTS, "--output-dir", "seed"]
                        _run([*common, *seed], work)
                        (work / "seed" / "prompt_embeddings.npz").rename(saved)
                    extra = ["--det-model", str(open_vocab), "--prompt-embeddings", str(saved)]
                seconds, summary = _run([*common, *extra, *out], work)
                assert summary["instances"] == args.images * args.max_det, summary
                rows[name].append(seconds)
        for line in machine_lines():
            print(line)
        print(f"{args.images} images (640x480 to 800x600), {args.max_det} boxes each, MobileSAM stand-in, cpu")
        base = median(rows["plain"])
        labels = {
            "plain": f"{plain_cfg} (its own classes)",
            "prompts": f"{open_cfg} --prompts ({len(PROMPTS.split(','))} words, text encoder run)",
            "embeddings": f"{open_cfg} --prompt-embeddings (saved .npz)",
        }
        for name, label in labels.items():
            value = median(rows[name])
            print(f"  {label:<58} {value:7.2f} s wall (median of {len(rows[name])})   x{value / base:.2f} of plain")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
