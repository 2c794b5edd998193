"""Video in, dataset out: sampling (--every, --fps, --max-frames, --skip-similar), frame names, resume by video and
frame, bad and lying files, shards. Every video is written by the test with OpenCV (moving shapes, a static run)."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from fractions import Fraction
from pathlib import Path, PurePosixPath

import cv2
import numpy as np
import pytest
from helpers import (
    decoded_frames,
    json_events,
    moving_scene_bgr,
    sigkill_after_labels,
    stand_in_model_args,
    write_video,
)
from typer.testing import CliRunner

from autoannotate.cli import app
from autoannotate.dataset.layout import plan_layout
from autoannotate.errors import ConfigError
from autoannotate.inputs import ListingContext
from autoannotate.inputs.decode import read_image_bgr
from autoannotate.inputs.listing import estimate_items, iter_items, resolve_data
from autoannotate.inputs.video import VideoFrame, VideoOptions, frame_rel_path
from autoannotate.inputs.video_probe import container_kind, truncation
from autoannotate.inputs.video_reader import VideoReader
from autoannotate.inputs.video_sampling import FrameSampler, VideoSampling, difference, thumbnail

runner = CliRunner()


def _kept(sampling: VideoSampling, times: list[float], frames: list[np.ndarray] | None = None) -> list[int]:
    sampler = FrameSampler(sampling)
    kept = []
    for index, t_s in enumerate(times):
        if sampler.candidate(index, t_s) and sampler.offer(index, t_s, None if frames is None else frames[index]):
            kept.append(index)
    return kept


# a variable-frame-rate clock: a 100 fps burst for 0.3 s, then a frame every 0.2 s
VFR_TIMES = [i / 100 for i in range(30)] + [0.5 + 0.2 * i for i in range(10)]


@pytest.mark.parametrize(
    ("sampling", "times", "expected"),
    [
        (VideoSampling(), [i / 30 for i in range(4)], [0, 1, 2, 3]),  # default: every frame
        (VideoSampling(every=5), [i / 30 for i in range(13)], [0, 5, 10]),
        # 2 fps of a 30 fps clock: the first frame of each half second (0.5 = 15/30 lands on the slot boundary)
        (VideoSampling(fps=2.0), [i / 30 for i in range(60)], [0, 15, 30, 45]),
        # variable rate: one frame from the burst, then one per half-second slot the slow frames reach
        (VideoSampling(fps=2.0), VFR_TIMES, [0, 30, 33, 35, 38]),
        (VideoSampling(every=1, max_frames=3), [i / 30 for i in range(10)], [0, 1, 2]),
        (VideoSampling(every=4, max_frames=2), [i / 30 for i in range(20)], [0, 4]),
    ],
    ids=["every-frame", "every-5", "fps-cfr", "fps-vfr", "max-frames", "every-and-max"],
)
def test_sampling_table(sampling: VideoSampling, times: list[float], expected: list[int]):
    assert _kept(sampling, times) == expected


def test_skip_similar_keeps_motion_and_drops_the_static_run():
    frames = [moving_scene_bgr(i, static_from=9) for i in range(20)]
    kept = _kept(VideoSampling(skip_similar=0.01), [i / 10 for i in range(20)], frames)
    assert kept == list(range(10))  # frames 10..19 equal frame 9, the last kept one
    assert difference(thumbnail(frames[0]), thumbnail(frames[0])) == 0.0
    assert difference(thumbnail(np.zeros((8, 8, 3), np.uint8)), thumbnail(np.full((8, 8, 3), 255, np.uint8))) == 1.0


def test_sampler_restored_after_any_kept_frame_decides_as_before():
    """What resume relies on: the state right after a kept frame decides the rest exactly as the uninterrupted pass."""
    rng = np.random.default_rng(3)
    frames = [moving_scene_bgr(int(i)) for i in np.cumsum(rng.integers(0, 3, 80))]  # pauses of random length
    times = list(np.cumsum(rng.uniform(0.005, 0.09, 80)))
    for sampling in (VideoSampling(every=3, skip_similar=0.004), VideoSampling(fps=7.0, skip_similar=0.004)):
        full = _kept(sampling, times, frames)
        assert 5 < len(full) < 60
        for ordinal, anchor in enumerate(full):
            state = FrameSampler(sampling).state_after_kept(ordinal + 1, times[anchor], frames[anchor])
            sampler = FrameSampler(sampling, state)
            rest = [
                i
                for i in range(anchor + 1, len(times))
                if sampler.candidate(i, times[i]) and sampler.offer(i, times[i], frames[i])
            ]
            assert full[: ordinal + 1] + rest == full


@pytest.mark.parametrize(("values", "message"), [
    ({"every": 5, "fps": 2.0}, "--every and --fps both choose the frames of a video; give one of them"),
    ({"fps": -1.0}, "invalid --fps -1.0: expected frames per second, more than 0 and at most 1000 (0 = off)"),
    ({"skip_similar": 1.5}, "invalid --skip-similar 1.5: expected a number in [0, 1] (0 = off)"),
    ({"jpeg_quality": 0}, "invalid --jpeg-quality 0: expected an integer from 1 to 100"),
    ({"max_frames": -2}, "invalid --max-frames -2: expected a number of frames >= 0"),
])  # fmt: skip
def test_video_options_are_checked(values: dict, message: str):
    from autoannotate.config import build_settings

    with pytest.raises(ConfigError) as err:
        build_settings(None, {"data": "x", **values})
    assert str(err.value) == message


def _cut(path: Path, fraction: float) -> Path:
    data = path.read_bytes()
    cut = path.with_name(f"cut_{path.name}")
    cut.write_bytes(data[: int(len(data) * fraction)])
    return cut


@pytest.mark.parametrize("suffix", [".mp4", ".avi", ".mkv", ".mov"])
def test_probe_tells_a_cut_file_from_a_whole_one(tmp_path: Path, suffix: str):
    video = write_video(tmp_path / f"v{suffix}", [moving_scene_bgr(i) for i in range(30)])
    with open(video, "rb") as handle:
        kind = container_kind(handle.read(16))
        assert kind is not None
        assert truncation(handle, video.stat().st_size, kind) is None
    cut = _cut(video, 0.6)
    with open(cut, "rb") as handle:
        reason = truncation(handle, cut.stat().st_size, kind)
    assert reason is not None
    assert reason.startswith(f"the file ends at byte {cut.stat().st_size:,}, inside its ")
    assert reason.endswith("(the file was cut short)")
    assert container_kind(b"hello, not a video\n") is None


def _listing(tmp_path: Path, sampling: VideoSampling) -> tuple[list, object]:
    data, out = tmp_path / "footage", tmp_path / "out"
    spec = resolve_data(str(data))
    layout = plan_layout(spec, str(data), str(out))
    return list(iter_items(spec, ListingContext(layout, VideoOptions(sampling), None))), layout


def test_frames_are_named_by_video_path_and_index(tmp_path: Path):
    clip = [moving_scene_bgr(i) for i in range(12)]
    write_video(tmp_path / "footage" / "cam 1" / "Drive.MP4", clip)
    cv2.imwrite(str(tmp_path / "footage" / "a.png"), clip[0])
    items, layout = _listing(tmp_path, VideoSampling(every=5))
    assert [item.rel_path.as_posix() for item in items] == [
        "a.png",
        "cam 1/Drive.MP4/Drive_000000.jpg",
        "cam 1/Drive.MP4/Drive_000005.jpg",
        "cam 1/Drive.MP4/Drive_000010.jpg",
    ]
    frame = items[2]
    assert isinstance(frame, VideoFrame)
    assert frame.path == tmp_path / "out" / "images" / "cam 1" / "Drive.MP4" / "Drive_000005.jpg"
    assert (frame.index, frame.t, frame.group) == (5, 0.5, PurePosixPath("cam 1/Drive.MP4"))
    assert frame_rel_path(PurePosixPath("x/y.mkv"), 1234567) == PurePosixPath("x/y.mkv/y_1234567.jpg")
    # the pixels a label is made on are the written JPEG's, as training reads them
    pixels = frame.read_bgr()
    frame.place(layout)  # type: ignore[arg-type]
    assert np.array_equal(pixels, read_image_bgr(frame.path))
    source = decoded_frames(tmp_path / "footage" / "cam 1" / "Drive.MP4")[5]
    assert np.abs(pixels.astype(int) - source).mean() < 3  # the decoded frame 5, JPEG-compressed at quality 95
    assert frame.frame_record() == {
        "video": str(tmp_path / "footage" / "cam 1" / "Drive.MP4"),
        "index": 5,
        "t": 0.5,
        "image_sha256": frame.image_sha256,
    }


def test_progress_estimate_counts_frames_not_files(tmp_path: Path):
    write_video(tmp_path / "footage" / "v.avi", [moving_scene_bgr(i) for i in range(30)])
    cv2.imwrite(str(tmp_path / "footage" / "a.png"), moving_scene_bgr(0))
    spec = resolve_data(str(tmp_path / "footage"))
    layout = plan_layout(spec, str(tmp_path / "footage"), str(tmp_path / "out"))
    for sampling, frames in ((VideoSampling(), 30), (VideoSampling(every=4), 8), (VideoSampling(fps=2.0), 7)):
        assert estimate_items(spec, ListingContext(layout, VideoOptions(sampling))) == (1 + frames, True)
    assert estimate_items(spec, ListingContext(layout, VideoOptions(VideoSampling(max_frames=5)))) == (6, True)


# ------------------------------------------------------------------------------------------------- whole runs


def _args(data: Path, out: Path, yolo: Path, sam: Path | str, *extra: str) -> list[str]:
    """A fast run: random YOLO at 64 px, one box per image; ``sam`` "none" writes box labels."""
    args = stand_in_model_args(yolo, Path("none"), max_det=1)
    args[args.index("--sam-model") + 1] = str(sam)
    return ["run", "--data", str(data), "--output-dir", str(out), *args, "--imgsz", "64", "--json", *extra]


def _tree(root: Path, pattern: str) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob(pattern)) if p.is_file()}


def _outputs(out: Path) -> dict[str, bytes]:
    """Every frame JPEG and label of an output dir, by path."""
    return {**_tree(out / "images", "*.jpg"), **_tree(out / "labels", "*.txt")}


def _clip(n: int = 40, static_from: int = 24) -> list[np.ndarray]:
    return [moving_scene_bgr(i, (48, 80), static_from=static_from) for i in range(n)]


def test_run_mixed_folder_writes_frames_labels_and_a_trainable_dataset(
    tmp_path: Path, yolo_weights: Path, mobile_sam_weights: Path
):
    from ultralytics.data.utils import check_det_dataset, verify_image_label

    data, out = tmp_path / "footage", tmp_path / "ds"
    write_video(data / "cam" / "drive.avi", _clip(16, static_from=8))
    cv2.imwrite(str(data / "still.png"), moving_scene_bgr(3, (40, 56)))
    result = runner.invoke(app, _args(data, out, yolo_weights, mobile_sam_weights, "--every", "2", "--skip-similar",
                                      "0.01"))  # fmt: skip
    assert result.exit_code == 0, result.output
    events = json_events(result.stdout)
    video = str(data / "cam" / "drive.avi")
    frames = [e for e in events if e.get("video")]
    # every 2nd frame while it moves; the static run after frame 8 is skipped
    assert [(e["frame"], e["t"]) for e in frames] == [(0, 0.0), (2, 0.2), (4, 0.4), (6, 0.6), (8, 0.8)]
    assert frames[1] == {
        "event": "image",
        "path": str(out / "images" / "cam" / "drive.avi" / "drive_000002.jpg"),
        "label": str(out / "labels" / "cam" / "drive.avi" / "drive_000002.txt"),
        "instances": 1,
        "status": "ok",
        "error": None,
        "video": video,
        "frame": 2,
        "t": 0.2,
    }
    summary = events[-1]
    assert (summary["images"], summary["frames"], summary["videos"], summary["failed"]) == (6, 5, 1, 0)
    assert sorted(_tree(out / "images", "*.jpg")) == [f"cam/drive.avi/drive_{i:06d}.jpg" for i in (0, 2, 4, 6, 8)]
    # instances.jsonl says which video, frame and time each instance comes from
    rows = [json.loads(line) for line in (out / "instances.jsonl").read_text().splitlines()]
    frame_rows = [r for r in rows if "video" in r]
    assert [(r["video"], r["frame"], r["t"]) for r in frame_rows][:2] == [(video, 0, 0.0), (video, 2, 0.2)]
    assert "video" not in next(r for r in rows if r["image"].endswith("still.png"))
    # ultralytics reads the dataset as it trains: every image pairs with a label, none is corrupt
    dataset = check_det_dataset(str(out / "data.yaml"))
    images = sorted(p for p in (out / "images").rglob("*") if p.suffix in (".jpg", ".png"))
    assert len(images) == 6
    for image in images:
        label = out / "labels" / image.relative_to(out / "images").with_suffix(".txt")
        found = verify_image_label((str(image), str(label), "", False, len(dataset["names"]), 0, 0, False))
        assert found[-1] == "" and found[1].shape[0] >= 1, found[-1]  # no warning, and at least one instance
        assert len(found[3]) == found[1].shape[0]  # a polygon per line: segmentation labels


def test_fps_samples_a_variable_frame_rate_file_by_time(tmp_path: Path, yolo_weights: Path):
    av = pytest.importorskip("av", reason="PyAV (a dev dependency) writes the variable-frame-rate file")

    data, out = tmp_path / "vfr", tmp_path / "out"
    data.mkdir()
    with av.open(str(data / "burst.mkv"), "w") as container:
        stream = container.add_stream("mjpeg", rate=30)
        stream.width, stream.height, stream.pix_fmt = 80, 48, "yuvj420p"
        stream.time_base = stream.codec_context.time_base = Fraction(1, 1000)
        for index, t_s in enumerate(VFR_TIMES):
            frame = av.VideoFrame.from_ndarray(moving_scene_bgr(index), format="bgr24")
            frame.pts, frame.time_base = round(t_s * 1000), Fraction(1, 1000)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    result = runner.invoke(app, _args(data, out, yolo_weights, "none", "--fps", "2"))
    assert result.exit_code == 0, result.output
    frames = [(e["frame"], e["t"]) for e in json_events(result.stdout) if e.get("video")]
    assert frames == [(0, 0.0), (30, 0.5), (33, 1.1), (35, 1.5), (38, 2.1)]  # one per half second reached


def test_max_frames_and_every(tmp_path: Path, yolo_weights: Path):
    data, out = tmp_path / "clips", tmp_path / "out"
    write_video(data / "a.mp4", _clip(30))
    write_video(data / "b.MOV", _clip(30))
    result = runner.invoke(app, _args(data, out, yolo_weights, "none", "--every", "3", "--max-frames", "4"))
    assert result.exit_code == 0, result.output
    assert sorted(_tree(out / "labels", "*.txt")) == [
        *(f"a.mp4/a_{i:06d}.txt" for i in (0, 3, 6, 9)),
        *(f"b.MOV/b_{i:06d}.txt" for i in (0, 3, 6, 9)),
    ]
    # box labels of a detection model: one line "class cx cy w h" per frame
    assert all(len(text.split()) == 5 for text in map(bytes.decode, _tree(out / "labels", "*.txt").values()))


def test_rerun_resumes_by_seeking_and_skips_done_videos_unopened(
    tmp_path: Path, yolo_weights: Path, monkeypatch: pytest.MonkeyPatch
):
    data, out = tmp_path / "clips", tmp_path / "out"
    write_video(data / "walk.avi", _clip(40, static_from=24))
    args = _args(data, out, yolo_weights, "none", "--every", "2", "--skip-similar", "0.01")
    assert runner.invoke(app, args).exit_code == 0
    expected = _outputs(out)
    assert len(expected) == 2 * 13  # frames 0, 2, ..., 24, then the static run is skipped

    grabs: list[int] = []
    real_grab = VideoReader.grab

    def counting_grab(self: VideoReader) -> tuple[int, float] | None:
        grabbed = real_grab(self)
        grabs.append(-1 if grabbed is None else grabbed[0])
        return grabbed

    monkeypatch.setattr(VideoReader, "grab", counting_grab)
    # two frames whose labels are gone (and one image): the rerun seeks to the kept frame before them
    for name in ("walk_000020.txt", "walk_000024.txt"):
        (out / "labels" / "walk.avi" / name).unlink()
    (out / "images" / "walk.avi" / "walk_000022.jpg").unlink()
    rerun = runner.invoke(app, args)
    assert rerun.exit_code == 0, rerun.output
    statuses = {e["frame"]: e["status"] for e in json_events(rerun.stdout) if e.get("video")}
    assert [f for f, s in statuses.items() if s != "skipped"] == [20, 22, 24]
    assert grabs[0] == 18 and -1 in grabs and 0 not in grabs  # from frame 18 on, never from the start
    assert _outputs(out) == expected

    # nothing left to do: the video is not even opened
    def refuse(self: VideoReader, path: Path) -> None:
        raise AssertionError("a done video was opened")

    monkeypatch.setattr(VideoReader, "__init__", refuse)
    done = runner.invoke(app, args)
    assert done.exit_code == 0, done.output
    assert json_events(done.stdout)[-1]["skipped"] == 13


def test_an_inexact_seek_falls_back_to_decoding_from_the_start(
    tmp_path: Path, yolo_weights: Path, monkeypatch: pytest.MonkeyPatch
):
    data, out = tmp_path / "clips", tmp_path / "out"
    write_video(data / "walk.mp4", _clip(30))
    args = _args(data, out, yolo_weights, "none", "--every", "3")
    assert runner.invoke(app, args).exit_code == 0
    expected = _outputs(out)
    real_seek = VideoReader.seek
    monkeypatch.setattr(VideoReader, "seek", lambda self, index: real_seek(self, index + 1))  # lands one frame late
    (out / "labels" / "walk.mp4" / "walk_000027.txt").unlink()
    rerun = runner.invoke(app, args)
    assert rerun.exit_code == 0, rerun.output
    assert [e["frame"] for e in json_events(rerun.stdout) if e.get("status") == "ok"] == [27]
    assert _outputs(out) == expected


def test_sigkill_mid_video_then_rerun_is_byte_identical(tmp_path: Path, yolo_weights: Path, mobile_sam_weights: Path):
    data = tmp_path / "clips"
    write_video(data / "walk.avi", _clip(48, static_from=30))
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    extra = ("--every", "3", "--skip-similar", "0.01")
    result = runner.invoke(app, _args(data, reference, yolo_weights, mobile_sam_weights, *extra))
    assert result.exit_code == 0, result.output
    expected = _outputs(reference)
    assert len(expected) == 2 * 11  # frames 0, 3, ..., 30

    command = [sys.executable, "-m", "autoannotate.cli", *_args(data, killed, yolo_weights, mobile_sam_weights, *extra)]
    sigkill_after_labels(command, killed / "labels", 3, timeout_s=600)
    assert 3 <= len(_tree(killed / "labels", "*.txt")) < 11

    rerun = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert rerun.returncode == 0, rerun.stderr
    summary = json_events(rerun.stdout)[-1]
    assert summary["skipped"] >= 3 and summary["skipped"] + summary["labeled"] == 11
    assert _outputs(killed) == expected  # frames and labels byte-identical to the uninterrupted run
    assert [p.name for p in killed.rglob("*.tmp")] == []


def _patch_avi_frame_count(path: Path, frames: int) -> None:
    """Make an AVI's headers claim ``frames`` frames (avih dwTotalFrames and the video strh dwLength)."""
    data = bytearray(path.read_bytes())
    avih = data.index(b"avih")
    struct.pack_into("<I", data, avih + 8 + 16, frames)
    strh = data.index(b"strh")
    struct.pack_into("<I", data, strh + 8 + 32, frames)
    path.write_bytes(bytes(data))


def test_bad_videos_fail_with_their_reason_and_the_rest_is_done(tmp_path: Path, yolo_weights: Path):
    data, out = tmp_path / "mixed", tmp_path / "out"
    good = write_video(data / "good.avi", _clip(10))
    whole_mp4 = write_video(tmp_path / "whole.mp4", _clip(20))
    (data / "cut.mp4").write_bytes(whole_mp4.read_bytes()[: whole_mp4.stat().st_size // 2])  # its index is lost
    whole_avi = write_video(tmp_path / "whole.avi", _clip(20))
    (data / "cut.avi").write_bytes(whole_avi.read_bytes()[: int(whole_avi.stat().st_size * 0.55)])
    (data / "notes.mp4").write_text("this is a text file, not a video\n")
    (data / "empty.mkv").write_bytes(b"")
    lying = write_video(data / "lying.avi", _clip(12))
    _patch_avi_frame_count(lying, 5000)  # claims far more frames than it holds
    cv2.imwrite(str(data / "still.jpg"), moving_scene_bgr(1))
    result = runner.invoke(app, _args(data, out, yolo_weights, "none", "--every", "4"))
    assert result.exit_code == 1, result.output
    events = json_events(result.stdout)
    failed = {Path(e["path"]).name: e["error"] for e in events if e.get("status") == "failed"}
    assert sorted(failed) == ["cut.avi", "cut.mp4", "empty.mkv", "notes.mp4"]
    assert failed["empty.mkv"] == "file is empty (0 bytes)"
    assert failed["notes.mp4"] == "not a video: no MP4/MOV, AVI or Matroska/WebM header at its start"
    # a cut MP4 whose index was at its end cannot be opened; a cut AVI is read up to the cut, then fails
    size_mp4, size_avi = (data / "cut.mp4").stat().st_size, (data / "cut.avi").stat().st_size
    assert failed["cut.mp4"].startswith(f"truncated video: the file ends at byte {size_mp4:,}, inside its 'mdat' box")
    assert failed["cut.avi"] == (
        f"truncated video: the file ends at byte {size_avi:,}, inside its RIFF 'AVI ' chunk that runs to byte"
        f" {whole_avi.stat().st_size:,} (the file was cut short)"
    )
    assert all(reason.endswith("(the file was cut short)") for name, reason in failed.items() if "cut" in name)
    # the frames before the cut are written and stay valid; the lying and the good file end cleanly
    labels = sorted(_tree(out / "labels", "*.txt"))
    readable = len(decoded_frames(data / "cut.avi"))  # the frames before the cut
    assert 4 < readable < 20
    assert [name for name in labels if name.startswith("cut.avi/")] == [
        f"cut.avi/cut_{i:06d}.txt" for i in range(0, readable, 4)
    ]
    assert [name for name in labels if name.startswith("lying.avi/")] == [f"lying.avi/lying_{i:06d}.txt" for i in
                                                                           (0, 4, 8)]  # fmt: skip
    assert [name for name in labels if name.startswith("good.avi/")] == [f"good.avi/good_{i:06d}.txt" for i in
                                                                          (0, 4, 8)]  # fmt: skip
    assert "still.txt" in labels
    summary = events[-1]
    assert (summary["failed"], summary["videos"]) == (4, 6)
    assert f"warning: {data / 'notes.mp4'}: not a video" in result.stderr
    assert good.exists()


def test_videos_need_an_output_dir_outside_an_images_folder(tmp_path: Path, yolo_weights: Path):
    images = tmp_path / "ds" / "images"
    write_video(images / "clip.avi", _clip(6))
    cv2.imwrite(str(images / "a.png"), moving_scene_bgr(0))
    args = _args(images, tmp_path / "ds", yolo_weights, "none")
    del args[3:5]  # no --output-dir: the dataset is written in place, beside ds/images
    result = runner.invoke(app, args)
    assert result.exit_code == 1, result.output
    events = json_events(result.stdout)
    assert [(Path(e["path"]).name, e["status"]) for e in events[:-1]] == [("a.png", "ok"), ("clip.avi", "failed")]
    assert events[1]["error"] == (
        "video frames are written to OUT/images, and here that is your own image folder (--data lies in a folder"
        " named 'images'); pass an --output-dir outside it"
    )
    assert sorted(p.name for p in images.iterdir()) == ["a.png", "clip.avi"]  # nothing written among the user's files


def test_changed_sampling_resamples_the_video_and_removes_frames_it_no_longer_keeps(tmp_path: Path, yolo_weights: Path):
    data, out, fresh = tmp_path / "clips", tmp_path / "out", tmp_path / "fresh"
    write_video(data / "walk.avi", _clip(31, static_from=None))
    cv2.imwrite(str(data / "still.png"), moving_scene_bgr(2))
    assert runner.invoke(app, _args(data, out, yolo_weights, "none", "--every", "5")).exit_code == 0
    still = (out / "labels" / "still.txt").stat().st_mtime_ns
    result = runner.invoke(app, _args(data, out, yolo_weights, "none", "--every", "10"))
    assert result.exit_code == 0, result.output
    statuses = {e.get("frame"): e["status"] for e in json_events(result.stdout)[:-1]}
    # the frames both samplings keep are the same frames: done; only frame 30... is new; the image is untouched
    assert statuses == {None: "skipped", 0: "skipped", 10: "skipped", 20: "skipped", 30: "skipped"}
    assert json_events(result.stdout)[-1]["removed"] == 3  # frames 5, 15, 25: label and JPEG
    assert (out / "labels" / "still.txt").stat().st_mtime_ns == still
    assert runner.invoke(app, _args(data, fresh, yolo_weights, "none", "--every", "10")).exit_code == 0
    assert _outputs(out) == _outputs(fresh)


def test_a_deleted_video_takes_its_frames_with_it_but_not_a_persons_label(tmp_path: Path, yolo_weights: Path):
    data, out = tmp_path / "clips", tmp_path / "out"
    write_video(data / "gone.avi", _clip(9))
    write_video(data / "kept.avi", _clip(9))
    assert runner.invoke(app, _args(data, out, yolo_weights, "none", "--every", "4")).exit_code == 0
    edited = out / "labels" / "gone.avi" / "gone_000004.txt"
    edited.write_text("0 0.5 0.5 0.2 0.2\n")  # a person corrected this one
    (data / "gone.avi").unlink()
    result = runner.invoke(app, _args(data, out, yolo_weights, "none", "--every", "4"))
    assert result.exit_code == 0, result.output
    assert json_events(result.stdout)[-1]["removed"] == 2
    assert sorted(_tree(out / "labels", "*.txt")) == [
        "gone.avi/gone_000004.txt",
        *(f"kept.avi/kept_{i:06d}.txt" for i in (0, 4, 8)),
    ]
    assert sorted(_tree(out / "images", "*.jpg")) == ["gone.avi/gone_000004.jpg", *(
        f"kept.avi/kept_{i:06d}.jpg" for i in (0, 4, 8))]  # fmt: skip


def test_shards_take_whole_videos_and_match_one_run(tmp_path: Path, yolo_weights: Path):
    data, whole, sharded = tmp_path / "clips", tmp_path / "whole", tmp_path / "sharded"
    for name in ("a", "b", "c", "d"):
        write_video(data / f"{name}.avi", _clip(8))
    assert runner.invoke(app, _args(data, whole, yolo_weights, "none", "--every", "3")).exit_code == 0
    videos_of = []
    for shard in ("0/2", "1/2"):
        result = runner.invoke(app, _args(data, sharded, yolo_weights, "none", "--every", "3", "--shard", shard))
        assert result.exit_code == 0, result.output
        videos_of.append({e["video"] for e in json_events(result.stdout) if e.get("video")})
    assert videos_of[0] and videos_of[1] and not videos_of[0] & videos_of[1]  # each video in one shard, whole
    assert runner.invoke(app, ["merge", str(sharded)]).exit_code == 0
    assert _outputs(sharded) == _outputs(whole)
    merged = json.loads((sharded / "autoannotate.json").read_text())
    assert sorted(Path(v).name for v in merged["videos"]) == ["a.avi", "b.avi", "c.avi", "d.avi"]


def test_val_split_keeps_each_video_on_one_side(tmp_path: Path, yolo_weights: Path):
    data, out = tmp_path / "clips", tmp_path / "out"
    for name in ("a", "b", "c", "d", "e", "f"):
        write_video(data / f"{name}.avi", _clip(6))
    result = runner.invoke(app, _args(data, out, yolo_weights, "none", "--every", "2", "--val-fraction", "0.5"))
    assert result.exit_code == 0, result.output
    train, val = ((out / name).read_text().splitlines() for name in ("train.txt", "val.txt"))
    assert len(train) + len(val) == 18 and train and val
    videos = [{line.split("/")[2] for line in lines} for lines in (train, val)]
    assert not videos[0] & videos[1]  # no video on both sides
    assert all(len([x for x in train + val if f"/{v}/" in x]) == 3 for v in videos[0] | videos[1])


def test_a_frame_path_holding_someone_elses_file_fails_alone(tmp_path: Path, yolo_weights: Path):
    data, out = tmp_path / "clips", tmp_path / "out"
    write_video(data / "v.avi", _clip(6))
    theirs = out / "images" / "v.avi" / "v_000002.jpg"
    theirs.parent.mkdir(parents=True)
    theirs.write_bytes(b"not ours")
    result = runner.invoke(app, _args(data, out, yolo_weights, "none", "--every", "2"))
    assert result.exit_code == 1, result.output
    failed = [e for e in json_events(result.stdout) if e.get("status") == "failed"]
    assert [(e["frame"], e["error"]) for e in failed] == [
        (2, f"{str(theirs)!r} exists and was not written by autoannotate; move it, or choose another --output-dir")
    ]
    assert theirs.read_bytes() == b"not ours"
    assert f"warning: {data / 'v.avi'} frame 2: " in result.stderr
    assert os.path.exists(out / "images" / "v.avi" / "v_000004.jpg")
