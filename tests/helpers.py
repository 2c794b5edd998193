"""Helpers shared by the CLI tests (imported as ``helpers``: pytest puts this folder on ``sys.path``)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import cv2
import numpy as np


def stand_in_model_args(yolo_weights: Path, mobile_sam_weights: Path, max_det: int) -> list[str]:
    """``run`` options for the random-weight stand-ins: ``--conf 1e-4`` (a random YOLO scores ~1e-5 to 1e-4, so the
    default 0.25 finds nothing) and a fixed ``--max-det`` so every image gets exactly that many boxes."""
    return [
        "--det-model",
        str(yolo_weights),
        "--sam-model",
        str(mobile_sam_weights),
        "--conf",
        "1e-4",
        "--max-det",
        str(max_det),
    ]


def json_events(stdout: str) -> list[dict]:
    """The ``--json`` lines of a run's stdout, in order."""
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


def synthetic_scene_bgr(hw: tuple[int, int], seed: int = 0) -> np.ndarray:
    """A smooth ``(H, W, 3)`` uint8 BGR scene: gradients and three filled circles (use non-square sizes, so that a
    transposed frame shows)."""
    rng = np.random.default_rng(seed)
    h, w = hw
    yy, xx = np.mgrid[0:h, 0:w]
    image = np.stack([xx * 255 // max(w - 1, 1), yy * 255 // max(h - 1, 1), np.full_like(xx, 90)], -1)
    image = image.astype(np.uint8)
    for _ in range(3):
        x, y = int(rng.integers(0, w)), int(rng.integers(0, h))
        color = tuple(int(c) for c in rng.integers(0, 255, 3))
        cv2.circle(image, (x, y), int(rng.integers(4, max(5, min(h, w) // 3))), color, -1)
    return image


def write_stand_in_text_encoder(path: Path, dim: int = 512, seed: int = 0) -> Path:
    """A TorchScript text encoder with MobileCLIP's interface (CLIP tokens ``(N, 77)`` -> L2-normalised ``(N, dim)``)
    and random weights, saved at ``path`` (``mobileclip2_b.ts`` where YOLOE-26 looks for its encoder): the whole
    text-prompt path of ultralytics runs offline with it."""
    import torch

    class Encoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embedding = torch.nn.Embedding(49408, dim)

        def forward(self, tokens: torch.Tensor) -> torch.Tensor:
            features = self.embedding(tokens).mean(dim=1)
            return torch.nn.functional.normalize(features, dim=-1)

    torch.manual_seed(seed)
    with warnings.catch_warnings():  # torch 2.14 deprecates TorchScript, which is what ultralytics loads here
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.script(Encoder()).save(str(path))
    return path
