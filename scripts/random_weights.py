"""Build random-weight stand-ins for the real models, for offline smoke runs and benchmarks.

    python scripts/random_weights.py weights/

writes ``weights/yolo11n_random.pt`` (YOLO11n architecture, COCO class names) and ``weights/mobile_sam_random.pt``
(MobileSAM state dict). They produce meaningless boxes and masks: use ``--conf 1e-4 --max-det N`` to get boxes.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from ultralytics import YOLO
from ultralytics.models.sam.build import build_mobile_sam
from ultralytics.utils import ROOT, YAML


def main(out_dir: str) -> None:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    torch.save(build_mobile_sam().state_dict(), out / "mobile_sam_random.pt")
    detector = YOLO("yolo11n.yaml")
    detector.model.names = YAML.load(ROOT / "cfg" / "datasets" / "coco.yaml")["names"]
    detector.save(str(out / "yolo11n_random.pt"))
    print(f"wrote {out / 'yolo11n_random.pt'} and {out / 'mobile_sam_random.pt'}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "weights")
