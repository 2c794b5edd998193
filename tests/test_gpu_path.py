"""The GPU path's decisions, on the CPU with CUDA mocked at torch's boundary: what ``--half`` computes in, what a
GPU run adds to the resume fingerprint, and a non-finite half-precision result computed again in float32."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from autoannotate.runtime.device import compute_record, half_dtype


@pytest.fixture
def gpu(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """A mocked CUDA device whose name and bfloat16 support the test sets."""
    state: dict[str, Any] = {"name": "NVIDIA H200", "bf16": True}
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: state["bf16"])
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: state["name"])
    return state


def test_half_is_bfloat16_where_the_gpu_has_it_else_float16(gpu: dict[str, Any]) -> None:
    cuda = torch.device("cuda", 0)
    assert half_dtype(torch.device("cpu")) == torch.bfloat16
    assert half_dtype(cuda) == torch.bfloat16  # Ampere and later: float32's range, no fp16 overflow
    gpu["bf16"] = False  # e.g. a T4 or V100
    assert half_dtype(cuda) == torch.float16


def test_a_gpu_run_records_device_kind_dtypes_and_tf32(gpu: dict[str, Any]) -> None:
    cuda = torch.device("cuda", 0)
    assert compute_record(torch.device("cpu"), True) is None  # CPU fingerprints stay as they were
    tf32 = bool(torch.backends.cuda.matmul.allow_tf32 or torch.backends.cudnn.allow_tf32)
    assert compute_record(cuda, False) == {
        "device": "cuda",
        "dtype": "float32",
        "detector_dtype": "float32",
        "name": "NVIDIA H200",
        "tf32": tf32,
        "deterministic": torch.are_deterministic_algorithms_enabled(),
    }
    bf16 = compute_record(cuda, True)
    assert bf16 is not None and (bf16["dtype"], bf16["detector_dtype"]) == ("bfloat16", "float16")
    gpu["bf16"] = False
    fp16 = compute_record(cuda, True)
    assert fp16 is not None and fp16["dtype"] == "float16"
    gpu["name"] = "Tesla T4"
    assert compute_record(cuda, True) != fp16  # another device kind


def test_the_fingerprint_differs_by_dtype_and_device_kind(
    tmp_path: Path, yolo_weights: Path, gpu: dict[str, Any]
) -> None:
    """The job's label settings carry a GPU run's compute record: labels made in another dtype or on another kind of
    device are redone on resume, not mixed. A CPU run's have none (its earlier fingerprints still match)."""
    from autoannotate.config import build_settings
    from autoannotate.job import AnnotationJob
    from autoannotate.resume import settings_fingerprint

    (tmp_path / "imgs").mkdir()
    options = {"data": str(tmp_path / "imgs"), "det_model": str(yolo_weights), "sam_model": "none", "device": "cpu"}
    with AnnotationJob(build_settings(None, {**options, "output_dir": str(tmp_path / "out")})) as job:
        models = job.load()
        assert "compute" not in job.label_settings() and models.compute is None
        fingerprints = set()
        for name, bf16, half in [("NVIDIA H200", True, False), ("NVIDIA H200", True, True), ("Tesla T4", False, True)]:
            gpu.update(name=name, bf16=bf16)
            models.records["compute"] = compute_record(torch.device("cuda", 0), half)
            assert job.label_settings()["compute"] == models.compute
            fingerprints.add(settings_fingerprint(job.label_settings()))
        assert len(fingerprints) == 3


def test_a_ray_runs_fingerprint_records_what_its_gpu_workers_compute_in(tmp_path: Path, yolo_weights: Path) -> None:
    """With ``--engine ray`` the driver loads its models on the CPU, yet its workers run on GPUs: the fingerprint
    carries the workers' device kind, precision and TF32 setting, so labels of a GPU Ray run, a half-precision one
    and a CPU one are never taken for one another on resume."""
    from autoannotate.config import build_settings
    from autoannotate.job import AnnotationJob
    from autoannotate.resume import settings_fingerprint

    (tmp_path / "imgs").mkdir()
    base = {"data": str(tmp_path / "imgs"), "det_model": str(yolo_weights), "sam_model": "none", "engine": "ray"}
    fingerprints = {}
    for name, extra in [
        ("cpu workers", {"device": "cpu"}),
        ("gpu workers", {"device": "cuda", "ray_gpus_per_worker": 1}),
        ("gpu workers, half", {"device": "cuda", "ray_gpus_per_worker": 0.5, "half": True}),
        ("gpu workers, deterministic", {"device": "cuda", "ray_gpus_per_worker": 1, "deterministic": True}),
    ]:
        settings = build_settings(None, {**base, **extra, "output_dir": str(tmp_path / name)})
        with AnnotationJob(settings) as job:
            models = job.load()
            assert models.plan.device.type == "cpu"  # the driver never takes a GPU a worker needs
            fingerprints[name] = settings_fingerprint(job.label_settings())
            compute = job.label_settings().get("compute")
        if name == "cpu workers":
            assert compute is None  # as a local CPU run: earlier CPU fingerprints still match
        else:
            assert compute is not None and compute["device"] == "cuda" and compute["workers"] == "ray"
            assert compute["dtype"] == ("half" if "half" in name else "float32")
            assert compute["tf32"] is ("deterministic" not in name)
    assert len(set(fingerprints.values())) == 4


class _NanWhenHalf:
    """Wraps a callable: its output is NaN while CPU autocast is on (a float16 overflow, as SAM's ViT encoders can
    have), itself otherwise."""

    def __init__(self, wrapped: Any) -> None:
        self.wrapped = wrapped
        self.half_calls = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.wrapped, name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        out = self.wrapped(*args, **kwargs)
        if not torch.is_autocast_enabled("cpu"):
            return out
        self.half_calls += 1
        if isinstance(out, tuple):
            return tuple(torch.full_like(t, float("nan")) for t in out)
        return torch.full_like(out, float("nan"))


def test_a_non_finite_half_result_is_computed_again_in_float32(mobile_sam_weights: Path) -> None:
    """Encoder batch and decoder chunk each checked: with both NaN in half precision, each is redone in float32 and
    the masks, scores and logits are exactly the float32 segmenter's (no empty mask, no NaN score)."""
    from autoannotate.segmenters.sam import BoxSegmenter

    half = BoxSegmenter.from_weights(str(mobile_sam_weights), "cpu", half=True)
    full = BoxSegmenter.from_weights(str(mobile_sam_weights), "cpu")
    encoder, decoder = _NanWhenHalf(half._image_encoder), _NanWhenHalf(half._shared_decoder)
    half._image_encoder, half._shared_decoder = encoder, decoder  # type: ignore[assignment]
    image = np.random.default_rng(5).integers(0, 255, (120, 160, 3), dtype=np.uint8)
    boxes = np.array([[10, 10, 80, 90], [40, 20, 150, 110], [0, 0, 60, 60]], np.float32)
    (got,) = half.predict([half.prepare(image)], [boxes])
    (expected,) = full.predict([full.prepare(image)], [boxes])
    assert encoder.half_calls == 1 and decoder.half_calls == 2  # one batch; 3 boxes in chunks of 2 on CPU
    assert half.redone_in_f32 == 3
    np.testing.assert_array_equal(got.iou_pred, expected.iou_pred)
    np.testing.assert_array_equal(got.low_res_logits, expected.low_res_logits)
    assert np.isfinite(got.iou_pred).all()


def test_the_sam_input_is_page_locked_by_prepare_in_the_decode_threads_on_cuda(
    mobile_sam_weights: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a CUDA device the segmenter's ``prepare`` (run by the decode threads) leaves its encoder input in
    page-locked memory, and the inference thread's copy then pins nothing again; on the CPU nothing is pinned.
    Page-locking is mocked at torch's boundary (no CUDA here)."""
    from autoannotate.runtime.device import host_to_device, page_locked
    from autoannotate.segmenters.sam import BoxSegmenter

    pinned: set[int] = set()

    def pin_memory(self: torch.Tensor) -> torch.Tensor:
        out = self.clone()
        pinned.add(out.data_ptr())
        return out

    monkeypatch.setattr(torch.Tensor, "pin_memory", pin_memory)
    monkeypatch.setattr(torch.Tensor, "is_pinned", lambda self: self.data_ptr() in pinned)
    segmenter = BoxSegmenter.from_weights(str(mobile_sam_weights), torch.device("cpu"))
    image = np.zeros((300, 400, 3), np.uint8)
    on_cpu = segmenter.prepare(image)
    assert not pinned and not on_cpu.image_1024_chw.is_pinned()
    monkeypatch.setattr(BoxSegmenter, "device", property(lambda self: torch.device("cuda", 0)))
    on_cuda = segmenter.prepare(image)
    assert on_cuda.image_1024_chw.is_pinned() and len(pinned) == 1
    assert torch.equal(on_cuda.image_1024_chw, on_cpu.image_1024_chw)
    assert page_locked(on_cuda.image_1024_chw, torch.device("cuda", 0)) is on_cuda.image_1024_chw  # not pinned twice
    copies: list[bool] = []
    monkeypatch.setattr(torch.Tensor, "to", lambda self, *a, **k: copies.append(k.get("non_blocking", False)) or self)
    host_to_device(on_cuda.image_1024_chw, torch.device("cuda", 0))
    assert copies == [True] and len(pinned) == 1  # asynchronous, from the memory prepare pinned
