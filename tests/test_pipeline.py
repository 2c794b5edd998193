"""The pipeline with stand-in models: order, alignment of classes with masks, batch halving on out-of-memory,
failure isolation, and a full disk stopping the run instead of failing every image."""

from __future__ import annotations

import errno
import weakref
from pathlib import Path
from typing import ClassVar

import cv2
import numpy as np
import pytest
import torch

from autoannotate.dataset.layout import plan_layout, prepare_output
from autoannotate.dataset.yolo_seg import parse_label_file
from autoannotate.errors import DeviceError, OutputError
from autoannotate.inputs.listing import iter_items, resolve_data
from autoannotate.pipeline import Annotator
from autoannotate.polygons import PolygonPolicy
from autoannotate.types import Detections, Masks


class OutOfMemoryError(RuntimeError):
    """Named like torch.cuda.OutOfMemoryError, which the pipeline recognises by name."""


class BoxDetector:
    """Boxes from the image itself: one box per distinct non-zero grey level, class = level // 50."""

    names: ClassVar[dict[int, str]] = {0: "a", 1: "b", 2: "c", 3: "d"}
    class_ids = None
    weights_path = None

    def __init__(self) -> None:
        self.calls: list[int] = []

    def boxes(self, images_bgr, rel_paths):
        self.calls.append(len(images_bgr))
        out = []
        for image in images_bgr:
            gray = image[..., 0]
            xyxy, cls = [], []
            for level in sorted(set(np.unique(gray).tolist()) - {0}):
                ys, xs = np.nonzero(gray == level)
                xyxy.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
                cls.append(level // 50)
            n = len(xyxy)
            out.append(
                Detections(np.array(xyxy, np.float32).reshape(n, 4), np.array(cls, np.int64), np.ones(n, np.float32))
            )
        return out


class BoxSegmenter:
    """Mask = the box itself, except taller-than-wide boxes (class 3 in ``_dataset``) get an empty mask.

    Records the batch size of every call."""

    def __init__(self, oom_above: int | None = None, always_oom: set[tuple[int, int]] | None = None):
        self.calls: list[int] = []
        self.oom_above = oom_above
        self.always_oom = always_oom or set()

    variant = "box"
    weights_path = None

    def prepare(self, image_rgb):
        return image_rgb.shape[:2]

    def default_batch(self):
        return 1

    def segment(self, images, prompts):
        boxes_xyxy = [p.xyxy for p in prompts]
        self.calls.append(len(images))
        if self.oom_above is not None and len(images) > self.oom_above:
            raise OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        results = []
        for prepared, boxes in zip(images, boxes_xyxy, strict=True):
            h, w = prepared
            if (h, w) in self.always_oom:
                raise OutOfMemoryError("CUDA out of memory")
            masks = np.zeros((len(boxes), h, w), bool)
            for i, (x1, y1, x2, y2) in enumerate(boxes.astype(int)):
                if y2 - y1 <= x2 - x1:
                    masks[i, y1:y2, x1:x2] = True
            n = len(boxes)
            results.append(Masks(np.ones(n, np.float32), np.ones(n, np.float32), (h, w), masks))
        return results

    def release_cached_memory(self):
        pass


def _dataset(root: Path, shapes: list[tuple[int, int]]) -> Path:
    for i, (h, w) in enumerate(shapes):
        image = np.zeros((h, w, 3), np.uint8)
        image[2:10, 3:12] = 50  # class 1
        image[12:20, 5:9] = 150  # class 3: empty mask
        image[h - 8 : h - 2, w - 9 : w - 3] = 100  # class 2
        cv2.imwrite(str(root / f"im{i:02d}.png"), image)
    return root


def _annotator(
    tmp_path: Path, segmenter, batch: int, workers: int = 1, detector: BoxDetector | None = None
) -> tuple[Annotator, list]:
    data = tmp_path / "imgs"
    data.mkdir(exist_ok=True)
    spec = resolve_data(str(data))
    layout = plan_layout(spec, str(data), str(tmp_path / "out"))
    prepare_output(layout)
    annotator = Annotator(
        detector or BoxDetector(),  # type: ignore[arg-type]
        segmenter,
        PolygonPolicy(tolerance_px=0),
        layout,
        batch=batch,
        infer_workers=workers,
    )
    return annotator, list(iter_items(spec))


def test_order_alignment_and_empty_masks(tmp_path: Path):
    (tmp_path / "imgs").mkdir()
    _dataset(tmp_path / "imgs", [(30, 40), (40, 30)] * 3)
    annotator, images = _annotator(tmp_path, BoxSegmenter(), batch=2, workers=2)
    outcomes = list(annotator.run(images))
    assert [o.rel_path.name for o in outcomes] == [f"im{i:02d}.png" for i in range(6)]
    for outcome in outcomes:
        assert (outcome.status, outcome.detections, outcome.instances, outcome.empty_masks) == ("ok", 3, 2, 1)
        rows = parse_label_file(outcome.label_path.read_text())
        # the empty class-3 mask wrote no line, and did not shift class 2 onto another mask
        assert [cid for cid, _ in rows] == [1, 2]
        w = 40 if outcome.rel_path.name in ("im00.png", "im02.png", "im04.png") else 30
        x_px = np.round(rows[1][1][:, 0] * w - 0.5)  # back to pixel columns (6-decimal rounding undone)
        assert (x_px.min(), x_px.max()) == (w - 9, w - 4)  # class 2 is the bottom-right box


def test_out_of_memory_halves_the_batch_down_to_one(tmp_path: Path):
    (tmp_path / "imgs").mkdir()
    _dataset(tmp_path / "imgs", [(30, 40)] * 7 + [(33, 33)])
    segmenter = BoxSegmenter(oom_above=2, always_oom={(33, 33)})
    annotator, images = _annotator(tmp_path, segmenter, batch=4)
    outcomes = list(annotator.run(images))
    assert [o.status for o in outcomes] == ["ok"] * 7 + ["failed"]
    assert "out of device memory even one image at a time" in (outcomes[-1].error or "")
    # 4 fails -> 2 + 2; the cap then stays at 2 for the next batch (2 + 2), whose second half holds the
    # always-failing image: 2 fails -> 1 + 1
    assert segmenter.calls[:3] == [4, 2, 2]
    assert max(segmenter.calls[3:]) <= 2


class HoldingSegmenter(BoxSegmenter):
    """Runs out of memory on any call of more than one image after allocating a tensor there (as a failed CUDA
    attempt holds its activations); records, at each later call, whether any such tensor is still alive."""

    def __init__(self) -> None:
        super().__init__()
        self.held: list[weakref.ref[torch.Tensor]] = []
        self.alive_at_retry: list[bool] = []
        self.released = 0

    def segment(self, images, prompts):
        if self.held:
            self.alive_at_retry.append(any(ref() is not None for ref in self.held))
        if len(images) > 1:
            self.calls.append(len(images))
            activations = torch.empty(1 << 20)
            self.held.append(weakref.ref(activations))
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return super().segment(images, prompts)

    def release_cached_memory(self):
        self.released += 1


def test_out_of_memory_retry_frees_the_attempt_and_keeps_the_detections(tmp_path: Path):
    """The retry runs after the ``except`` block, so the failed attempt's tensors (held by its traceback's frames)
    are released before it; the device cache is emptied; the detector is not run again on each half."""
    (tmp_path / "imgs").mkdir()
    _dataset(tmp_path / "imgs", [(30, 40)] * 4)
    segmenter, detector = HoldingSegmenter(), BoxDetector()
    annotator, images = _annotator(tmp_path, segmenter, batch=4, detector=detector)
    outcomes = list(annotator.run(images))
    assert [o.status for o in outcomes] == ["ok"] * 4
    assert segmenter.calls == [4, 2, 1, 1, 2, 1, 1]
    assert segmenter.alive_at_retry == [False] * 6
    assert segmenter.released == 3
    assert detector.calls == [4]


class FaultingSegmenter(BoxSegmenter):
    def segment(self, images, prompts):
        self.calls.append(len(images))
        raise RuntimeError("CUDA error: an illegal memory access was encountered")


def test_a_device_fault_stops_the_run_instead_of_failing_image_by_image(tmp_path: Path):
    (tmp_path / "imgs").mkdir()
    _dataset(tmp_path / "imgs", [(30, 40)] * 4)
    segmenter = FaultingSegmenter()
    annotator, images = _annotator(tmp_path, segmenter, batch=2)
    with pytest.raises(DeviceError, match=r"^the device failed \(RuntimeError: CUDA error: an illegal memory") as info:
        list(annotator.run(images))
    assert segmenter.calls == [2]  # not retried on halves
    assert info.value.exit_code == 3 and "\n" not in str(info.value)


def test_full_disk_stops_the_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    (tmp_path / "imgs").mkdir()
    _dataset(tmp_path / "imgs", [(30, 40)] * 3)
    annotator, images = _annotator(tmp_path, BoxSegmenter(), batch=1)

    def full_disk(path, text, **kwargs):
        raise OutputError(f"cannot write {str(path)!r}: No space left on device", errno=errno.ENOSPC)

    monkeypatch.setattr("autoannotate.pipeline.write_text_atomic", full_disk)
    with pytest.raises(OutputError, match="No space left"):
        list(annotator.run(images))


class CropSegmenter(BoxSegmenter):
    """The same masks as ``BoxSegmenter``, handed over as crops of their foreground (as a GPU segmenter does)."""

    def segment(self, images, prompts):
        from autoannotate.types import MaskCrop

        return [
            Masks(m.scores, m.stability, m.original_hw, crops=tuple(MaskCrop.of(m.mask(i)) for i in range(len(m))))
            for m in super().segment(images, prompts)
        ]


def test_masks_as_crops_write_the_same_labels_and_figures(tmp_path: Path):
    """A segmenter that returns crops (a GPU's) and one that returns full masks give byte-identical labels and the
    same per-instance figures, masks touching the image's edges included."""
    results = {}
    for name, segmenter in (("full", BoxSegmenter()), ("crops", CropSegmenter())):
        root = tmp_path / name
        (root / "imgs").mkdir(parents=True)
        _dataset(root / "imgs", [(30, 40), (41, 23), (12, 50)])
        annotator, images = _annotator(root, segmenter, batch=2)
        outcomes = list(annotator.run(images))
        results[name] = [(o.status, o.label_path.read_bytes(), o.quality) for o in outcomes]  # type: ignore[union-attr]
    assert results["crops"] == results["full"]
    assert all(status == "ok" for status, _, _ in results["full"])


def test_polygons_made_in_processes_are_those_made_in_threads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A GPU run on many cores makes its polygons in spawned processes: every image's shapes come back from the
    process pool, the labels and figures are byte for byte those of the write threads, and no process outlives the
    run."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from autoannotate import pipeline

    submitted: list[int] = []
    real_submit = ProcessPoolExecutor.submit

    def submit(self, fn, *args, **kwargs):  # type: ignore[no-untyped-def]
        assert fn is pipeline.instance_shapes
        submitted.append(len(args[0]))  # the image's crops
        return real_submit(self, fn, *args, **kwargs)

    monkeypatch.setattr(ProcessPoolExecutor, "submit", submit)
    results = {}
    for name, processes in (("threads", 0), ("processes", 2)):
        root = tmp_path / name
        (root / "imgs").mkdir(parents=True)
        _dataset(root / "imgs", [(30, 40), (41, 23), (12, 50), (30, 40)])
        annotator, images = _annotator(root, CropSegmenter(), batch=2)
        annotator.polygon_processes = processes
        outcomes = list(annotator.run(images))
        results[name] = [(o.status, o.label_path.read_bytes(), o.quality) for o in outcomes]  # type: ignore[union-attr]
        with_boxes = [o.detections for o in outcomes if o.detections]
        assert len(with_boxes) == 4
        assert sorted(submitted) == (sorted(with_boxes) if processes else []), name  # every image, through the pool
        submitted.clear()
    assert results["processes"] == results["threads"]
    assert all(status == "ok" for status, _, _ in results["threads"])
    assert multiprocessing.active_children() == []


class PreparingDetector(BoxDetector):
    """A prompt source with the optional ``prepare``: it records the thread it ran in and wraps the image, and its
    ``boxes`` refuses anything it did not prepare."""

    def __init__(self) -> None:
        super().__init__()
        self.prepared_in: list[str] = []

    def prepare(self, image_bgr):
        import threading

        self.prepared_in.append(threading.current_thread().name)
        return ("prepared", image_bgr)

    def boxes(self, images_bgr, rel_paths):
        assert all(isinstance(image, tuple) and image[0] == "prepared" for image in images_bgr)
        return super().boxes([image for _, image in images_bgr], rel_paths)


def test_the_prompt_sources_prepare_runs_in_the_decode_threads_and_feeds_its_boxes(tmp_path: Path):
    """A prompt source's ``prepare`` (the detector's letterbox) runs beside decoding, off the inference thread, and
    ``boxes`` gets what it made; the labels are those of a source without it."""
    labels = {}
    for name, detector in (("plain", BoxDetector()), ("preparing", PreparingDetector())):
        root = tmp_path / name
        (root / "imgs").mkdir(parents=True)
        _dataset(root / "imgs", [(30, 40), (41, 23), (12, 50)])
        annotator, images = _annotator(root, BoxSegmenter(), batch=2, detector=detector)
        labels[name] = [o.label_path.read_bytes() for o in annotator.run(images)]  # type: ignore[union-attr]
        if isinstance(detector, PreparingDetector):
            assert len(detector.prepared_in) == 3
            assert all(thread.startswith("autoannotate-decode") for thread in detector.prepared_in)
    assert labels["preparing"] == labels["plain"]
