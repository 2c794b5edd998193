"""--engine ray: same labels and events as the local engine on a local Ray with 2 CPU workers, a corrupt image
failing as it does there; resumes; leaves a Ray that its caller started running; and a one-line install hint when
Ray is missing. (Real processes, a killed driver and Ray's own files: test_ray_kill.py.)"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from autoannotate.cli import app

runner = CliRunner()


def _images(root: Path) -> None:
    rng = np.random.default_rng(11)
    for i in range(4):
        image = np.full((48 + 8 * i, 72, 3), 90, np.uint8)
        cv2.rectangle(image, (10, 10), (40 + i, 30 + i), tuple(int(c) for c in rng.integers(0, 255, 3)), -1)
        (root / f"set{i % 2}").mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / f"set{i % 2}" / f"im{i}.jpg"), image)


def _run(data: Path, out: Path, yolo: Path, sam: Path, *extra: str):
    args = ["run", "--data", str(data), "--output-dir", str(out), "--det-model", str(yolo), "--sam-model", str(sam)]
    return runner.invoke(app, [*args, "--conf", "1e-4", "--max-det", "2", "--json", *extra])


def _events(stdout: str, out: Path) -> list[dict]:
    events = []
    for line in stdout.splitlines():
        event = json.loads(line)
        if event["event"] == "image" and event["label"]:
            event["label"] = str(Path(event["label"]).relative_to(out))
        if event["event"] == "image" and "video" in event:  # a frame's image is its JPEG inside the output dir
            event["path"] = str(Path(event["path"]).relative_to(out))
        if event["event"] == "summary":
            event = {k: v for k, v in event.items() if k not in ("seconds", "images_per_s", "output_dir", "data_yaml")}
        events.append(event)
    return events


def _tree(root: Path) -> dict[str, bytes]:
    """Labels, video frames, data.yaml and instances.jsonl (where a frame's image is named inside its output dir:
    the dir's path is replaced by ``<OUT>``)."""
    names = ["labels/**/*.txt", "images/**/*.jpg", "data.yaml", "instances.jsonl"]
    return {
        p.relative_to(root).as_posix(): p.read_bytes().replace(str(root).encode(), b"<OUT>")
        for pattern in names
        for p in sorted(root.glob(pattern))
    }


@pytest.fixture
def local_ray():
    """A Ray that the caller (this test) started, with 2 CPUs and its session files in a private dir."""
    ray = pytest.importorskip("ray")
    temp_dir = tempfile.mkdtemp(prefix="aa-t-", dir="/tmp")  # short: Ray's unix socket paths live below it
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR", _temp_dir=temp_dir)
    yield ray
    ray.shutdown()
    shutil.rmtree(temp_dir, ignore_errors=True)


def test_ray_engine_matches_local_engine(tmp_path: Path, yolo_weights: Path, mobile_sam_weights: Path, local_ray):
    from helpers import moving_scene_bgr, write_video

    data = tmp_path / "imgs"
    _images(data)
    (data / "set1" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a JPEG")  # a failed image: exit 1
    write_video(data / "set0" / "clip.avi", [moving_scene_bgr(i) for i in range(6)])  # frames 0, 2, 4 (--every 2)
    on_ray = ("--engine", "ray", "--ray-workers", "2", "--every", "2")
    started = time.perf_counter()
    local = _run(data, tmp_path / "local", yolo_weights, mobile_sam_weights, "--every", "2")
    local_seconds = time.perf_counter() - started
    assert local.exit_code == 1, local.output
    started = time.perf_counter()
    distributed = _run(data, tmp_path / "ray", yolo_weights, mobile_sam_weights, *on_ray)
    ray_seconds = time.perf_counter() - started
    assert distributed.exit_code == 1, distributed.output
    assert local_ray.is_initialized()  # the caller's Ray: used, not shut down
    print(
        f"\nwall time, 4 images and 3 frames: local engine {local_seconds:.1f} s,"
        f" ray engine (2 CPU workers) {ray_seconds:.1f} s"
    )
    assert _tree(tmp_path / "ray") == _tree(tmp_path / "local")  # byte for byte
    frames = {name for name in _tree(tmp_path / "local") if "clip.avi" in name}
    assert frames == {  # each kept frame's JPEG and label
        f"{kind}/set0/clip.avi/clip_{index:06d}.{suffix}"
        for kind, suffix in (("images", "jpg"), ("labels", "txt"))
        for index in (0, 2, 4)
    }
    events = _events(distributed.stdout, tmp_path / "ray")  # every stdout line is JSON
    assert events == _events(local.stdout, tmp_path / "local")
    assert [e["status"] for e in events if e["event"] == "image"].count("failed") == 1
    assert not list((tmp_path / "ray").glob("*.journal*"))  # folded into the manifest once complete
    # a rerun resumes: nothing left to do
    again = _run(data, tmp_path / "ray", yolo_weights, mobile_sam_weights, *on_ray)
    summary = json.loads(again.stdout.splitlines()[-1])
    assert (summary["skipped"], summary["failed"], summary["frames"]) == (7, 1, 3)


def test_ray_missing_gives_install_hint(
    tmp_path: Path, yolo_weights: Path, mobile_sam_weights: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError, as without the extra
    data = tmp_path / "imgs"
    _images(data)
    result = _run(data, tmp_path / "out", yolo_weights, mobile_sam_weights, "--engine", "ray")
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        "error: --engine ray needs Ray: pip install 'autoannotate[ray]' (or pip install 'ray[data]')"
    ]


@pytest.mark.parametrize(
    ("device", "gpus", "error"),
    [
        ("", 0.0, None),  # auto, no GPU per worker: CPU workers
        ("", 1.0, None),  # auto: the GPUs Ray assigns
        ("cpu", 0.0, None),
        ("0", 0.5, None),
        ("0", 0.0, "--device '0' asks for a GPU, but --ray-gpus-per-worker is 0"),  # was: silently the CPU
        ("cuda:1", 0.0, "--device 'cuda:1' asks for a GPU, but --ray-gpus-per-worker is 0"),
        ("cpu", 1.0, "--device cpu with --ray-gpus-per-worker 1: Ray would hold GPUs the workers never use"),
        ("mps", 0.0, "--engine ray runs on CUDA GPUs or the CPU, not --device 'mps'"),
    ],
)
def test_ray_refuses_a_device_its_workers_would_not_honour(device: str, gpus: float, error: str | None) -> None:
    from autoannotate.config import build_settings
    from autoannotate.engines.ray_engine import check_devices
    from autoannotate.errors import ConfigError

    settings = build_settings(None, {"data": ".", "engine": "ray", "device": device, "ray_gpus_per_worker": gpus})
    if error is None:
        check_devices(settings)
        return
    with pytest.raises(ConfigError) as info:
        check_devices(settings)
    assert str(info.value).startswith(error) and "\n" not in str(info.value)


@pytest.mark.parametrize("share", [1.0, 0.5])
def test_ray_actor_loads_on_the_gpu_ray_assigned_and_keeps_to_its_share(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, share: float
) -> None:
    """CUDA and Ray mocked at their boundaries: Ray gave this actor physical GPU 3 and narrowed its
    CUDA_VISIBLE_DEVICES to "3"; ``--device 1`` (one of the driver's GPUs) does not move it. A half share sets the
    memory fraction; the environment is untouched."""
    import types

    import torch

    from autoannotate import models as models_module
    from autoannotate.config import build_settings
    from autoannotate.engines.ray_engine import _AnnotateActor

    settings = build_settings(None, {"data": ".", "engine": "ray", "device": "1", "ray_gpus_per_worker": share})
    monkeypatch.setitem(sys.modules, "ray", types.SimpleNamespace(get_gpu_ids=lambda: ["3"]))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    fractions: list[tuple[float, object]] = []
    monkeypatch.setattr(torch.cuda, "set_per_process_memory_fraction", lambda f, d=None: fractions.append((f, d)))
    plans: list[object] = []
    monkeypatch.setattr(models_module, "load_models", lambda settings, plan: plans.append(plan) or "models")
    monkeypatch.setattr(models_module, "build_annotator", lambda *args: "annotator")
    layout = types.SimpleNamespace(output_dir=tmp_path)
    actor = _AnnotateActor(settings, layout, None, "", "journal.jsonl", 1)  # type: ignore[arg-type]
    assert actor.annotator == "annotator"
    assert [p.device for p in plans] == [torch.device("cuda", 0)]  # type: ignore[attr-defined]
    assert fractions == ([(0.5, torch.device("cuda", 0))] if share < 1 else [])
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "3"
