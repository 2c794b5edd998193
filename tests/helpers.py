"""Helpers shared by the CLI tests (imported as ``helpers``: pytest puts this folder on ``sys.path``)."""

from __future__ import annotations

import json
import signal
import subprocess
import time
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


def moving_scene_bgr(index: int, hw: tuple[int, int] = (48, 80), static_from: int | None = None) -> np.ndarray:
    """Frame ``index`` of a synthetic clip: a grey background with an orange box moving 3 px a frame and a blue disc
    bobbing; from ``static_from`` on the scene stops (every frame equals frame ``static_from``)."""
    if static_from is not None and index > static_from:
        index = static_from
    h, w = hw
    image = np.full((h, w, 3), 60, np.uint8)
    x = 2 + (index * 3) % max(1, w - 24)
    cv2.rectangle(image, (x, h // 5), (x + 18, h // 5 + 16), (0, 160, 255), -1)
    cv2.circle(image, (w // 2, h // 2 + int(h // 6 * np.sin(index / 3))), max(3, h // 8), (255, 90, 20), -1)
    return image


def write_video(path: Path, frames: list[np.ndarray], fps: float = 10.0, fourcc: str | None = None) -> Path:
    """Write ``frames`` (HxWx3 uint8 BGR, one size) with OpenCV: MJPG for .avi and .mkv (intra frames: a static run
    decodes to identical frames), mp4v otherwise."""
    code = fourcc or ("MJPG" if path.suffix.lower() in (".avi", ".mkv") else "mp4v")
    h, w = frames[0].shape[:2]
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*code), fps, (w, h))
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV cannot write {path}")
    for frame in frames:
        writer.write(frame)
    writer.release()
    return path


def decoded_frames(path: Path) -> list[np.ndarray]:
    """Every frame of a video as OpenCV decodes it."""
    capture = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    capture.release()
    return frames


def sigkill_after_labels(command: list[str], labels: Path, count: int, timeout_s: float = 600) -> None:
    """Start ``command``, SIGKILL it as soon as ``labels`` holds ``count`` label files, and wait for it; fails the
    test when the run finishes (or the time runs out) before that."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and process.poll() is None:
        if len(list(labels.rglob("*.txt"))) >= count:
            break
        time.sleep(0.05)
    assert process.poll() is None, "the run finished before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()


def fake_run_dir(
    root: Path,
    labels: dict[str, str],
    names: dict[int, str],
    sizes_wh: dict[str, tuple[int, int]] | None = None,
    figures: dict[str, list[dict]] | None = None,
) -> Path:
    """A run's output dir as ``autoannotate run`` leaves it, without running models: ``root/images/<rel>`` (PNG
    scenes, ``sizes_wh[rel]`` or 160x120), ``root/labels/<rel stem>.txt`` with ``labels[rel]``'s text, data.yaml,
    the manifest (each label an entry with its sha256, so ours and unedited) and ``instances.jsonl`` (``figures``:
    rows per image rel, each ``{"line", "det_conf", "sam_iou", "fill_iou", ...}``). Returns ``root``."""
    import hashlib

    import yaml

    sizes_wh = sizes_wh or {}
    manifest_labels, rows = {}, []
    for index, (rel, text) in enumerate(sorted(labels.items())):
        width, height = sizes_wh.get(rel, (160, 120))
        image = root / "images" / rel
        image.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(image), synthetic_scene_bgr((height, width), seed=index))
        label = (root / "labels" / rel).with_suffix(".txt")
        label.parent.mkdir(parents=True, exist_ok=True)
        label.write_text(text, encoding="utf-8")
        key = label.relative_to(root).as_posix()
        stat = image.stat()
        lines = [line for line in text.splitlines() if line.strip()]
        manifest_labels[key] = {
            "image": str(image),
            "status": "ok" if lines else "empty",
            "instances": len(lines),
            "fingerprint": "f" * 16,
            "image_size": stat.st_size,
            "image_mtime_ns": stat.st_mtime_ns,
            "sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(),
        }
        for number, line in enumerate(lines, start=1):
            row = {"image": str(image), "label": key, "line": number, "lines": 1, "class_id": int(line.split()[0])}
            row.update({"det_conf": 0.5, "sam_iou": 0.9, "fill_iou": 0.95, "stability": 0.9, "dropped": False})
            for extra in (figures or {}).get(rel, []):
                if extra.get("line") == number:
                    row.update(extra)
            row["class_name"] = names.get(row["class_id"], str(row["class_id"]))
            rows.append(row)
    (root / "data.yaml").write_text(
        yaml.safe_dump({"path": str(root), "train": "images", "val": "images", "names": names}), encoding="utf-8"
    )
    manifest = {
        "tool": "autoannotate",
        "version": "test",
        "state": "complete",
        "settings": {"det_model": "yolo11x.pt", "sam_model": "mobile_sam.pt"},
        "fingerprint": "f" * 16,
        "counts": {"images": len(labels)},
        "files": {},
        "labels": manifest_labels,
    }
    (root / "autoannotate.json").write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    (root / "instances.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return root
