"""Video input: decoder choice, frames sampled and annotated per second, and memory over a long video.

    python benchmarks/bench_video.py                  # decoders side by side; frames/s sampled and annotated
    python benchmarks/bench_video.py --memory 3000    # RSS of a real `autoannotate run` over a 3000-frame video

Decoders: the same synthetic 1080p clip (written by OpenCV, mp4v) read by OpenCV's ``VideoCapture`` (what
autoannotate uses) and by PyAV when it is installed, one after the other: every frame converted to BGR, and every
15th (OpenCV ``grab`` for the others; PyAV decodes every frame and converts the kept ones). The pixels are compared.

Sampled: frames per second that the video input kind yields (decode, sampling, the CRC that resume checks), with
``--every 15`` and with ``--skip-similar``, and what encoding a kept frame as JPEG costs. Annotated: a whole
``autoannotate run`` over a 640x360 clip with random-weight YOLOv8s and MobileSAM (``flat`` stand-in), and the same
run over those frames written as images first: the ratio is what taking a video directly costs or saves.

Memory mode runs the real CLI in a subprocess over one long, small video (MJPG, 160x96) with ``--sam-model none``
(box labels: the detector alone, so thousands of frames take minutes) and samples its VmRSS from /proc at 10%, 50%
and 100% of the frames.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
from bench_scaling import RSS_SAMPLE_INTERVAL_S, RssSampler, mib, proc_status_kb
from common import build_standin_weights, machine_lines

from autoannotate.dataset.layout import plan_layout
from autoannotate.inputs import ListingContext
from autoannotate.inputs.listing import iter_items, resolve_data
from autoannotate.inputs.video import VideoOptions, encode_jpeg
from autoannotate.inputs.video_sampling import VideoSampling


def scene(index: int, wh: tuple[int, int]) -> np.ndarray:
    """A moving box and a bobbing disc over a gradient, with a frame number: a clip codecs cannot cheat on."""
    w, h = wh
    yy, xx = np.mgrid[0:h, 0:w]
    image = np.stack([(xx * 255 // w), (yy * 255 // h), np.full_like(xx, 90)], -1).astype(np.uint8)
    x = (index * 7) % max(1, w - w // 5)
    cv2.rectangle(image, (x, h // 5), (x + w // 6, h // 5 + h // 4), (0, 160, 255), -1)
    cv2.circle(image, (w // 2, h // 2 + int(h / 6 * np.sin(index / 5))), h // 10, (255, 90, 20), -1)
    cv2.putText(image, str(index), (w // 20, h - h // 10), cv2.FONT_HERSHEY_SIMPLEX, h / 300, (255, 255, 255), 2)
    return image


def write_clip(path: Path, frames: int, wh: tuple[int, int], fourcc: str = "mp4v", fps: float = 30.0) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, wh)
    for index in range(frames):
        writer.write(scene(index, wh))
    writer.release()
    return path


def opencv_fps(path: Path, every: int) -> tuple[float, list[np.ndarray]]:
    capture = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    kept, index, started = [], 0, time.perf_counter()
    while capture.grab():
        if index % every == 0:
            kept.append(capture.retrieve()[1])
        index += 1
    return index / (time.perf_counter() - started), kept


def pyav_fps(path: Path, every: int) -> tuple[float, list[np.ndarray]] | None:
    try:
        import av
    except ImportError:
        return None
    kept, index, started = [], 0, time.perf_counter()
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for frame in container.decode(stream):
            if index % every == 0:
                kept.append(frame.to_ndarray(format="bgr24"))
            index += 1
    return index / (time.perf_counter() - started), kept


def run_decoders(work: Path, frames: int) -> None:
    clip = write_clip(work / "hd.mp4", frames, (1920, 1080))
    print(f"\ndecoding a {frames}-frame 1920x1080 mp4v clip, frames per second (decoded frames / wall time):")
    print(f"  {'reader':<22} {'every frame':>12} {'every 15th':>12}")
    rows = {}
    for name, reader in (("OpenCV VideoCapture", opencv_fps), ("PyAV (threads AUTO)", pyav_fps)):
        results = [reader(clip, every) for every in (1, 15)]
        if any(r is None for r in results):
            print(f"  {name:<22} {'(not installed)':>25}")
            continue
        rows[name] = results
        print(f"  {name:<22} {results[0][0]:12.1f} {results[1][0]:12.1f}")  # type: ignore[index]
    if len(rows) == 2:
        (a, b) = (rows[name][0][1] for name in rows)
        same = len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
        names = list(rows)
        print(
            f"  {names[0]} / {names[1]}: x{rows[names[0]][0][0] / rows[names[1]][0][0]:.2f} every frame,"
            f" x{rows[names[0]][1][0] / rows[names[1]][1][0]:.2f} every 15th; pixels identical: {same}"
        )


def run_sampling(work: Path, frames: int) -> None:
    clip_dir = work / "sampling"
    clip_dir.mkdir()
    write_clip(clip_dir / "clip.mp4", frames, (1280, 720))
    spec = resolve_data(str(clip_dir))
    layout = plan_layout(spec, str(clip_dir), str(work / "sampling_out"))
    print(f"\nthe video input kind over a {frames}-frame 1280x720 clip (decode, sampling, CRC; no model):")
    for label, sampling in (
        ("--every 15", VideoSampling(every=15)),
        ("--every 1", VideoSampling()),
        ("--every 3 --skip-similar 0.02", VideoSampling(every=3, skip_similar=0.02)),
    ):
        started = time.perf_counter()
        items = list(iter_items(spec, ListingContext(layout, VideoOptions(sampling), None)))
        seconds = time.perf_counter() - started
        print(
            f"  {label:<32} {len(items):5d} kept, {frames / seconds:7.1f} decoded frames/s,"
            f" {len(items) / seconds:7.1f} kept frames/s"
        )
    image = scene(3, (1280, 720))
    started = time.perf_counter()
    for _ in range(20):
        encode_jpeg(image, 95)
    print(f"  JPEG quality 95 of a 1280x720 frame: {(time.perf_counter() - started) / 20 * 1000:.1f} ms")


def cli_command() -> list[str]:
    script = Path(sys.executable).with_name("autoannotate")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "autoannotate.cli"]


def timed_run(args: list[str]) -> tuple[float, int]:
    started = time.perf_counter()
    result = subprocess.run(cli_command() + args, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"autoannotate exited with {result.returncode}: {result.stderr[-800:]}")
    images = sum(1 for line in result.stdout.splitlines() if line.startswith('{"event": "image"'))
    return seconds, images


def run_annotated(work: Path, frames: int, every: int, weights_dir: Path | None) -> None:
    weights = build_standin_weights(weights_dir or work / "weights", "flat")
    clip_dir = work / "annotate_video"
    clip_dir.mkdir()
    write_clip(clip_dir / "clip.mp4", frames, (640, 360))
    models = ["--det-model", str(weights.yolov8s), "--sam-model", str(weights.mobile_sam)]
    models += ["--conf", "1e-4", "--max-det", "4", "--device", "cpu", "--json"]
    video_s, video_frames = timed_run(
        ["run", "--data", str(clip_dir), "--output-dir", str(work / "video_out"), "--every", str(every), *models]
    )
    extracted = work / "extracted"  # the same frames, as a user extracting them first would have them
    extracted.mkdir()
    for jpeg in sorted((work / "video_out" / "images").rglob("*.jpg")):
        (extracted / jpeg.name).write_bytes(jpeg.read_bytes())
    image_s, images = timed_run(["run", "--data", str(extracted), "--output-dir", str(work / "image_out"), *models])
    print(f"\n`autoannotate run` over a {frames}-frame 640x360 clip, --every {every}, YOLOv8s + MobileSAM stand-ins:")
    print(
        f"  video in:               {video_frames} frames in {video_s:6.1f} s ({video_frames / video_s:.3f} frames/s)"
    )
    print(f"  the same frames as JPEG: {images} images in {image_s:6.1f} s ({images / image_s:.3f} images/s)")
    print(f"  video / images wall time: x{video_s / image_s:.3f} (whole processes, model loading included)")


def run_memory(work: Path, frames: int, imgsz: int) -> None:
    weights = build_standin_weights(work / "weights", "flat")
    clip_dir = work / "long"
    clip_dir.mkdir()
    print(f"writing a {frames}-frame 160x96 MJPG video ...", flush=True)
    write_clip(clip_dir / "long.avi", frames, (160, 96), fourcc="MJPG")
    command = cli_command() + ["run", "--data", str(clip_dir), "--output-dir", str(work / "long_out"), "--json"]
    command += ["--det-model", str(weights.yolo11n), "--sam-model", "none", "--conf", "1e-4", "--max-det", "2"]
    command += ["--imgsz", str(imgsz), "--device", "cpu"]
    print("$ " + " ".join(command), flush=True)
    marks = sorted({max(1, round(frames * p)) for p in (0.1, 0.5, 1.0)})
    at_mark: dict[int, tuple[float, int | None]] = {}
    started = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    sampler = RssSampler(child.pid)
    sampler.start()
    done = 0
    assert child.stdout is not None
    for line in child.stdout:
        if line.startswith('{"event": "image"'):
            done += 1
            if done in marks:
                at_mark[done] = (time.perf_counter() - started, proc_status_kb(child.pid, "VmRSS"))
                print(f"  {done}/{frames} frames, {at_mark[done][0]:.0f}s", flush=True)
    _, status, usage = os.wait4(child.pid, 0)
    sampler.stop()
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"autoannotate exited with {os.waitstatus_to_exitcode(status)}")
    print(f"\nmemory of `autoannotate run` over one {frames}-frame video (VmRSS when the k-th frame event arrived):")
    for mark in marks:
        seconds, rss = at_mark.get(mark, (float("nan"), None))
        print(f"  after {mark:>6} frames ({100 * mark / frames:5.1f}%): RSS {mib(rss or 0)} at {seconds:7.1f}s")
    first_t = at_mark[marks[0]][0]
    later = [rss for t, rss in sampler.samples if t >= first_t]
    print(
        f"  sampled every {RSS_SAMPLE_INTERVAL_S}s from the 10% mark on: min {mib(min(later))}, max {mib(max(later))}"
    )
    first, last = at_mark[marks[0]][1], at_mark[marks[-1]][1]
    if first is not None and last is not None:
        slope = (last - first) / (marks[-1] - marks[0])
        print(f"  growth from 10% to 100%: {(last - first) / 1024:+.1f} MiB ({slope:+.2f} kB per frame)")
    print(f"  peak RSS: VmHWM {mib(sampler.hwm_kb)}, wait4 ru_maxrss {mib(usage.ru_maxrss)}")
    total = time.perf_counter() - started
    print(f"  whole process {total:.0f}s: {done / total:.1f} frames/s sampled and annotated (detector only)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=300, help="frames of the decoder and sampling clips")
    parser.add_argument("--annotate-frames", type=int, default=150, help="frames of the annotated clip")
    parser.add_argument("--every", type=int, default=15, help="--every of the annotated run")
    parser.add_argument("--memory", type=int, default=0, help="memory mode: frames of the long video")
    parser.add_argument("--imgsz", type=int, default=160, help="memory mode: detector input size")
    parser.add_argument("--weights-dir", type=Path, default=None, help="reuse stand-in weights from here")
    parser.add_argument("--skip-annotate", action="store_true", help="decoders and sampling only")
    args = parser.parse_args()
    print("\n".join(machine_lines()), f"opencv {cv2.__version__}", sep="\n")
    with tempfile.TemporaryDirectory(prefix="bench-video-") as tmp:
        work = Path(tmp)
        if args.memory:
            run_memory(work, args.memory, args.imgsz)
            return
        run_decoders(work, args.frames)
        run_sampling(work, args.frames)
        if not args.skip_annotate:
            run_annotated(work, args.annotate_frames, args.every, args.weights_dir)


if __name__ == "__main__":
    main()
