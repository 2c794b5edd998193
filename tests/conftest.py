"""Shared fixtures: real model architectures with random weights, built at test time (no download)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# The random stand-in detector scores many boxes alike, and among tied scores ultralytics' own NMS (what a CPU run of
# ours uses, prompts/yolo.py _skip_cpu_warm_up) and torchvision's keep different boxes; which one a process uses
# depends on whether anything imported torchvision. Every test, in this process and in the CLI processes it starts,
# uses torchvision's, as the golden files were recorded; test_detect.py checks the default with the variable unset.
os.environ["AUTOANNOTATE_NMS"] = "torchvision"


@pytest.fixture(scope="session")
def mobile_sam_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ``mobile_sam.pt`` state dict of ultralytics' MobileSAM architecture with seeded random weights."""
    import torch
    from ultralytics.models.sam.build import build_mobile_sam

    torch.manual_seed(0)
    model = build_mobile_sam()
    path = tmp_path_factory.mktemp("weights") / "mobile_sam.pt"
    torch.save(model.state_dict(), path)
    return path


@pytest.fixture(scope="session")
def yolo_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ``yolo11n.pt``-style checkpoint of the YOLO11n architecture with random weights (80 COCO names)."""
    import torch
    from ultralytics import YOLO
    from ultralytics.utils import ROOT, YAML

    torch.manual_seed(0)
    model = YOLO("yolo11n.yaml")
    model.model.names = YAML.load(ROOT / "cfg" / "datasets" / "coco.yaml")["names"]  # as a COCO-trained model has
    path = tmp_path_factory.mktemp("weights") / "yolo11n_random.pt"
    model.save(str(path))
    return path


@pytest.fixture(scope="session")
def yoloe_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ``yoloe-26n-seg.pt`` checkpoint of ultralytics' YOLOE-26n segmentation architecture with random weights.

    The file name matters: ultralytics binds prompt embeddings to a checkpoint's stem (``yoloe-26n``)."""
    import torch
    from ultralytics import YOLOE

    torch.manual_seed(0)
    model = YOLOE("yoloe-26n-seg.yaml")
    path = tmp_path_factory.mktemp("weights") / "yoloe-26n-seg.pt"
    model.save(str(path))
    return path


@pytest.fixture(scope="session", autouse=True)
def _hermetic_runtime(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Every run of the session (in-process and the CLI subprocesses, which inherit the environment) keeps its
    OpenVINO conversions in a session folder, never the user's cache, and runs PyTorch unless a test asks for a
    runtime: ``--runtime auto`` would otherwise convert the segmenter for any run of 50 items or more. Tests of the
    runtimes set ``--runtime`` or delete ``AUTOANNOTATE_RUNTIME`` themselves."""
    import os

    os.environ["AUTOANNOTATE_CACHE_DIR"] = str(tmp_path_factory.mktemp("autoannotate_cache"))
    os.environ["AUTOANNOTATE_RUNTIME"] = "torch"
