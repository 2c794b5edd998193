"""A real client reads what we write: ultralytics' own label verifier and dataset checker accept an end-to-end run."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
from helpers import stand_in_model_args
from typer.testing import CliRunner

from autoannotate.cli import app


def _scene(h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    image = np.full((h, w, 3), 120, np.uint8)
    for _ in range(4):
        center = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        cv2.circle(image, center, int(rng.integers(5, 25)), tuple(int(c) for c in rng.integers(0, 255, 3)), -1)
    return image


def test_ultralytics_accepts_the_dataset(tmp_path: Path, yolo_weights: Path, mobile_sam_weights: Path):
    from ultralytics.data.utils import check_det_dataset, img2label_paths, verify_image_label

    data = tmp_path / "shots"
    for i, (h, w) in enumerate([(60, 100), (100, 60), (80, 80)]):
        (data / f"d{i % 2}").mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(data / f"d{i % 2}" / f"img{i}.jpg"), _scene(h, w, i))
    result = CliRunner().invoke(
        app,
        [
            "run",
            "--data",
            str(data),
            *stand_in_model_args(yolo_weights, mobile_sam_weights, max_det=4),
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.splitlines()[-1])
    assert summary["instances"] > 0

    dataset = check_det_dataset(summary["data_yaml"], autodownload=False)
    assert dataset["nc"] == 80 and dataset["names"][0] == "person"
    train = Path(dataset["train"])
    images = sorted(p for p in train.rglob("*") if p.suffix == ".jpg")
    assert len(images) == 3  # the images link leads ultralytics to every original
    corrupt = 0
    found = 0
    for image, label in zip(images, img2label_paths([str(p) for p in images]), strict=True):
        out = verify_image_label((str(image), label, "", False, 80, 0, 0, False))
        _, lb, _, segments, _, _, nf, _, nc, msg = out
        corrupt += nc
        found += nf
        assert nc == 0, msg
        assert len(segments) == len(lb) == len(Path(label).read_text().splitlines())
    assert corrupt == 0 and found == 3
