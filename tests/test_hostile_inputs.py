"""Hostile inputs: a bad image is one one-line warning with its path and reason, counted as failed, and the rest of
the run is done (exit 1); an odd but good image is annotated on exactly the pixels ultralytics trains on.

"The pixels ultralytics trains on" is ``ultralytics.utils.patches.imread`` (what its datasets load), and the images it
drops are those ``ultralytics.data.utils.check_image`` rejects: every image we fail, it drops too. Decoding is checked
pixel for pixel without models; the end-to-end runs put many inputs in one run, since every image costs about a second
of MobileSAM on a small CPU. There the EXIF-rotated JPEG's labels are compared with those of a plain PNG of the pixels
``imread`` returns for it: the models are deterministic, so equal label text means polygons in the rotated frame.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml
from helpers import json_events, stand_in_model_args, synthetic_scene_bgr
from PIL import Image
from typer.testing import CliRunner

import autoannotate.inputs.listing as sources
from autoannotate.cli import app
from autoannotate.dataset.yolo_seg import parse_label_file
from autoannotate.errors import ImageError
from autoannotate.inputs.decode import MAX_IMAGE_PIXELS, peek_image_hw, read_image_bgr
from autoannotate.inputs.listing import iter_items, resolve_data

runner = CliRunner()
REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------------- image makers


def _encode(suffix: str, image: np.ndarray, params: list[int] | None = None) -> bytes:
    ok, buf = cv2.imencode(suffix, image, params or [])
    assert ok
    return buf.tobytes()


def _save(path: Path, content: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


def _jpeg(path: Path, hw: tuple[int, int] = (48, 80), seed: int = 0) -> Path:
    return _save(path, _encode(".jpg", synthetic_scene_bgr(hw, seed)))


def _png(path: Path, hw: tuple[int, int] = (48, 80), seed: int = 0) -> Path:
    return _save(path, _encode(".png", synthetic_scene_bgr(hw, seed)))


def _flat_png(path: Path, hw: tuple[int, int], rgb: tuple[int, int, int] = (40, 160, 90)) -> Path:
    """A real flat-colour RGB PNG of any size, made without holding its pixels: 20000x20000 is ~5 MB, in ~0.4 s.

    Row 0 is filtered Sub (one colour along it), every other row Up (equal to the one above), so all rows after the
    first are zeros. Deflate output after a full flush does not depend on earlier input, so one compressed block of
    such rows is repeated; the zlib checksum is still computed over every byte.
    """
    h, w = hw

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    first = b"\x01" + bytes(rgb) + bytes(3 * (w - 1))
    up = b"\x02" + bytes(3 * w)
    rows_per_block = max(1, min(h - 1, (1 << 22) // len(up)))
    blocks, rest = divmod(h - 1, rows_per_block)
    comp = zlib.compressobj(1, zlib.DEFLATED, -15)  # raw deflate; the zlib header and checksum are added below
    head = comp.compress(first) + comp.flush(zlib.Z_FULL_FLUSH)
    block = comp.compress(up * rows_per_block) + comp.flush(zlib.Z_FULL_FLUSH) if blocks else b""
    tail = comp.compress(up * rest) + comp.flush(zlib.Z_FINISH)
    adler = zlib.adler32(first)
    for _ in range(blocks):
        adler = zlib.adler32(up * rows_per_block, adler)
    adler = zlib.adler32(up * rest, adler)
    idat = b"\x78\x01" + head + block * blocks + tail + struct.pack(">I", adler)
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    signature = b"\x89PNG\r\n\x1a\n"
    return _save(path, signature + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def _zero_bytes(path: Path) -> Path:
    return _save(path, b"")


def _truncated_jpeg(path: Path) -> Path:
    whole = _encode(".jpg", synthetic_scene_bgr((120, 160), 3))
    return _save(path, whole[: len(whole) // 2])


def _text_png(path: Path) -> Path:
    return _save(path, b"I am a text file wearing a .png name\n")


def _deep16_png(path: Path) -> Path:
    image = synthetic_scene_bgr((40, 64), 4).astype(np.uint16) * 257 + np.arange(40 * 64 * 3, dtype=np.uint16).reshape(
        40, 64, 3
    )
    return _save(path, _encode(".png", image))


def _deep16_tiff(path: Path) -> Path:
    """16-bit colour TIFF with alpha: ultralytics keeps the high byte (OpenCV's IMREAD_COLOR would round)."""
    bgr = synthetic_scene_bgr((36, 60), 5).astype(np.uint16) * 257 + 128  # low byte 0x80: rounding and shifting differ
    alpha = np.full((36, 60, 1), 40000, np.uint16)
    return _save(path, _encode(".tiff", np.concatenate([bgr, alpha], axis=2)))


def _gray_png(path: Path) -> Path:
    return _save(path, _encode(".png", cv2.cvtColor(synthetic_scene_bgr((44, 70), 6), cv2.COLOR_BGR2GRAY)))


def _rgba_png(path: Path) -> Path:
    alpha = np.tile(np.linspace(0, 255, 66, dtype=np.uint8), (42, 1))[..., None]  # alpha is dropped, not blended
    return _save(path, _encode(".png", np.concatenate([synthetic_scene_bgr((42, 66), 7), alpha], axis=2)))


def _cmyk_jpeg(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = cv2.cvtColor(synthetic_scene_bgr((46, 74), 8), cv2.COLOR_BGR2RGB)
    Image.fromarray(rgb).convert("CMYK").save(path, "JPEG", quality=95)
    return path


def _exif_rotated_jpeg(path: Path, orientation: int = 6) -> Path:
    """A landscape 48x80 (HxW) JPEG whose EXIF orientation turns it to portrait 80x48 when shown."""
    path.parent.mkdir(parents=True, exist_ok=True)
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(cv2.cvtColor(synthetic_scene_bgr((48, 80), 9), cv2.COLOR_BGR2RGB)).save(
        path, "JPEG", exif=exif, quality=95
    )
    return path


def _one_pixel_png(path: Path) -> Path:
    return _save(path, _encode(".png", np.full((1, 1, 3), 200, np.uint8)))


def _trailing_bytes_jpeg(path: Path) -> Path:
    """A whole JPEG with bytes after its end-of-image marker (some cameras append data): not truncated."""
    return _save(path, _encode(".jpg", synthetic_scene_bgr((50, 76), 10)) + b"\x00" * 64 + b"vendor trailer")


def _ultralytics_imread(path: Path) -> np.ndarray | None:
    from ultralytics.utils.patches import imread

    return imread(str(path))


def _ultralytics_drops(path: Path, scratch: Path, monkeypatch: pytest.MonkeyPatch) -> str | None:
    """Why ultralytics training would ignore ``path`` (its ``check_image`` raises), or None if it would use it.

    ``check_image`` rewrites a JPEG without a final EOI marker in place, so it runs on a copy. When Pillow cannot
    identify a file, ultralytics tries to pip-install a HEIF plugin: that is turned into the error it is offline.
    """
    import ultralytics.utils.checks
    from ultralytics.data.utils import check_image

    def no_install(*args, **kwargs):
        raise ImportError("no package installs in tests")

    monkeypatch.setattr(ultralytics.utils.checks, "check_requirements", no_install)
    copy = scratch / f"copy{path.suffix}"
    if path.exists():
        shutil.copyfile(path, copy)
    try:
        check_image(str(copy))
    except Exception as err:
        return f"{type(err).__name__}: {err}"
    finally:
        copy.unlink(missing_ok=True)
    return None


# Odd but good: each decodes to the pixels ultralytics trains on and is annotated.
ODD_IMAGES: dict[str, Callable[[Path], Path]] = {
    "deep16.png": _deep16_png,
    "GRAY.PNG": _gray_png,  # also an upper-case .PNG
    "rgba.png": _rgba_png,
    "cmyk.jpg": _cmyk_jpeg,
    "exif6.jpg": _exif_rotated_jpeg,
    "trailing.jpg": _trailing_bytes_jpeg,
    "DEEP16.TIFF": _deep16_tiff,  # also an upper-case .TIFF
    "tiny.png": _one_pixel_png,
}
# Bad: (maker, the reason every report must contain).
BAD_IMAGES: dict[str, tuple[Callable[[Path], Path], str]] = {
    "zero.jpg": (_zero_bytes, "file is empty (0 bytes)"),
    "truncated.jpg": (_truncated_jpeg, "truncated JPEG"),
    "text.png": (_text_png, "not a decodable image"),
}


# ------------------------------------------------------------------------------------------- decoding, no models


@pytest.mark.parametrize("name", sorted(ODD_IMAGES))
def test_odd_image_decodes_to_the_pixels_ultralytics_trains_on(tmp_path: Path, name: str):
    path = ODD_IMAGES[name](tmp_path / name)
    ours = read_image_bgr(path)
    theirs = _ultralytics_imread(path)
    assert theirs is not None
    assert ours.dtype == np.uint8 and ours.ndim == 3 and ours.shape[2] == 3
    assert ours.shape == theirs.shape and np.array_equal(ours, theirs)


def test_exif_orientation_is_applied_as_ultralytics_applies_it(tmp_path: Path):
    from ultralytics.data.utils import check_image

    for orientation in (6, 8):  # 90 degrees either way: stored 48x80, shown 80x48
        path = _exif_rotated_jpeg(tmp_path / f"exif{orientation}.jpg", orientation)
        assert Image.open(path).size == (80, 48)  # stored landscape (w, h)
        image = read_image_bgr(path)
        assert image.shape == (80, 48, 3) == _ultralytics_imread(path).shape  # type: ignore[union-attr]
        assert check_image(str(path))[1] == (80, 48)  # the (h, w) its label cache records


@pytest.mark.parametrize("name", sorted(BAD_IMAGES))
def test_bad_image_fails_with_its_reason_as_ultralytics_training_drops_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
):
    maker, reason = BAD_IMAGES[name]
    path = maker(tmp_path / name)
    with pytest.raises(ImageError, match=re.escape(reason)) as caught:
        read_image_bgr(path)
    assert "\n" not in str(caught.value)
    assert _ultralytics_drops(path, tmp_path, monkeypatch) is not None  # labels for it would never be trained on


def test_one_pixel_image_is_decoded_though_ultralytics_training_skips_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    # Decision: a 1x1 image is a valid image and gets a label (ultralytics predict reads it); its training loader
    # skips images under 10 pixels a side with a warning of its own, so the label is harmless.
    path = _one_pixel_png(tmp_path / "tiny.png")
    assert read_image_bgr(path).shape == (1, 1, 3)
    assert "<10 pixels" in (_ultralytics_drops(path, tmp_path, monkeypatch) or "")


def _jpeg_with_thumbnail_segment(image: np.ndarray) -> bytes:
    """A JPEG with an APP1 segment holding a whole tiny JPEG (as an EXIF thumbnail does): its own EOI included."""
    thumb = _encode(".jpg", np.zeros((8, 8, 3), np.uint8))
    assert thumb.endswith(b"\xff\xd9")
    body = b"Exif\x00\x00" + thumb
    main = _encode(".jpg", image)
    return main[:2] + b"\xff\xe1" + struct.pack(">H", len(body) + 2) + body + main[2:]


@pytest.mark.parametrize(
    ("cut", "progressive"),
    [
        (0.99, False),  # just before the end
        (0.5, False),
        (0.5, True),  # progressive: cut between or inside later scans
        (0.1, True),
        (-2, False),  # only the EOI marker missing
    ],
)
def test_truncated_jpeg_is_failed_before_libjpeg_sees_it(tmp_path: Path, capfd, cut: float, progressive: bool):
    image = synthetic_scene_bgr((240, 320), 11)
    if progressive:
        whole = _encode(".jpg", image, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])
    else:  # with a thumbnail-like segment whose own EOI marker must not pass for the image's
        whole = _jpeg_with_thumbnail_segment(image)
    keep = len(whole) + int(cut) if cut < 0 else int(len(whole) * cut)
    path = _save(tmp_path / "cut.jpg", whole[:keep])
    with pytest.raises(ImageError, match="truncated JPEG: no end-of-image marker"):
        read_image_bgr(path)
    # libjpeg never ran on it, so no "Premature end of JPEG file" lands on the process's stderr
    assert capfd.readouterr().err == ""


def test_jpeg_cut_inside_its_headers(tmp_path: Path):
    whole = _jpeg_with_thumbnail_segment(synthetic_scene_bgr((40, 60), 12))
    path = _save(tmp_path / "headers.jpg", whole[:40])  # inside the APP1 segment
    with pytest.raises(ImageError, match="truncated JPEG: the file ends inside its headers"):
        read_image_bgr(path)
    # a JPEG signature followed by nonsense (a segment length far past the end) reads as cut short too
    path = _save(tmp_path / "stub.jpg", b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(ImageError, match="truncated JPEG"):
        read_image_bgr(path)


def test_whole_jpeg_with_a_thumbnail_decodes(tmp_path: Path):
    image = synthetic_scene_bgr((40, 60), 13)
    path = _save(tmp_path / "thumb.jpg", _jpeg_with_thumbnail_segment(image) + b"\x00\x00")  # trailing bytes too
    decoded = read_image_bgr(path)
    assert decoded.shape == (40, 60, 3) and np.array_equal(decoded, _ultralytics_imread(path))


def _pil(image: np.ndarray, fmt: str, **kwargs) -> bytes:
    out = io.BytesIO()
    Image.fromarray(image).save(out, fmt, **kwargs)
    return out.getvalue()


_RGB = np.random.default_rng(0).integers(0, 255, (37, 53, 3)).astype(np.uint8)  # non-square: (h, w) = (37, 53)


@pytest.mark.parametrize(
    "encoded",
    [
        pytest.param(_encode(".jpg", _RGB), id="jpeg"),
        pytest.param(_encode(".jpg", _RGB, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1]), id="jpeg-progressive"),
        pytest.param(_encode(".png", _RGB), id="png"),
        pytest.param(_encode(".png", _RGB[..., 0]), id="png-gray"),
        pytest.param(_encode(".bmp", _RGB), id="bmp"),
        pytest.param(_pil(_RGB, "BMP"), id="bmp-pillow"),
        pytest.param(_encode(".tiff", _RGB), id="tiff-le"),
        pytest.param(_pil(_RGB[..., 0].astype(np.uint16) * 200, "TIFF"), id="tiff-16-gray"),
        pytest.param(_encode(".webp", _RGB, [cv2.IMWRITE_WEBP_QUALITY, 60]), id="webp-lossy"),
        pytest.param(_encode(".webp", _RGB, [cv2.IMWRITE_WEBP_QUALITY, 101]), id="webp-lossless"),
        pytest.param(_pil(np.dstack([_RGB, _RGB[..., :1]]), "WEBP"), id="webp-extended-alpha"),
    ],
)
def test_peek_image_hw_reads_the_size_from_the_header(encoded: bytes):
    data = np.frombuffer(encoded, np.uint8)
    decoded = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    assert decoded is not None and decoded.shape[:2] == (37, 53)
    assert peek_image_hw(data) == (37, 53)


def test_peek_image_hw_big_endian_tiff():
    encoded = _pil(np.zeros((37, 53), np.uint16), "TIFF")  # Pillow writes I;16 little-endian
    swapped = Image.fromarray(np.zeros((37, 53), np.uint16)).convert("I;16B")
    out = io.BytesIO()
    swapped.save(out, "TIFF")
    assert out.getvalue()[:4] == b"MM\x00*"
    for blob in (encoded, out.getvalue()):
        assert peek_image_hw(np.frombuffer(blob, np.uint8)) == (37, 53)


@pytest.mark.parametrize(
    "blob",
    [
        b"\xff\xd8\xff",
        b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR\x00",
        b"BM\x00",
        b"RIFF\x00\x00\x00\x00WEBPVP8L",
        b"RIFF\x00\x00\x00\x00WEBPVP8X\x00",
        b"II*\x00\xff\xff\xff\x00",
        b"MM\x00*\x00\x00\x00\x08\x00\x01",
        b"GIF89a",
        b"\x00",
    ],
)
def test_peek_image_hw_gives_none_for_short_or_unknown_headers(blob: bytes):
    assert peek_image_hw(np.frombuffer(blob, np.uint8)) is None


@pytest.mark.parametrize("hw", [(1, 1), (2, 3), (131, 70), (4000, 600)])
def test_flat_png_maker_writes_a_valid_png(tmp_path: Path, hw: tuple[int, int]):
    path = _flat_png(tmp_path / "flat.png", hw)
    image = cv2.imread(str(path))
    assert image is not None and image.shape == (*hw, 3) and (image == (90, 160, 40)).all()
    with Image.open(path) as pil:
        pil.load()  # Pillow checks the zlib stream and the chunk CRCs


@pytest.fixture(scope="module")
def huge_png(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real 20000x20000 flat-colour PNG (400 MP: 1.2 GB decoded, 5 MB on disk)."""
    return _flat_png(tmp_path_factory.mktemp("huge") / "huge.png", (20000, 20000))


def test_huge_image_fails_from_its_header_without_decoding(huge_png: Path, monkeypatch: pytest.MonkeyPatch):
    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded an image that is over the pixel limit")

    assert peek_image_hw(np.fromfile(str(huge_png), np.uint8)) == (20000, 20000)
    assert MAX_IMAGE_PIXELS < 20000 * 20000
    monkeypatch.setattr(cv2, "imdecode", no_decoding)
    with pytest.raises(ImageError, match=r"image is 20000x20000 pixels \(400 MP\), over the 179 MP") as caught:
        read_image_bgr(huge_png)
    assert "\n" not in str(caught.value)


def test_huge_image_is_dropped_by_ultralytics_training_too(
    huge_png: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    assert "DecompressionBomb" in (_ultralytics_drops(huge_png, tmp_path, monkeypatch) or "")


def test_not_a_regular_file_and_dangling_link_are_reported(tmp_path: Path):
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)  # reading it would block forever
    with pytest.raises(ImageError, match="not a regular file"):
        read_image_bgr(fifo)
    dangling = tmp_path / "dangling.jpg"
    os.symlink(tmp_path / "nowhere.jpg", dangling)
    with pytest.raises(ImageError, match="file does not exist"):
        read_image_bgr(dangling)
    with pytest.raises(ImageError, match="not a regular file"):
        read_image_bgr(_save(tmp_path / "dir.jpg" / "x.txt", b"").parent)
    # the walk yields every image-named entry that is not a folder, so none of them vanishes without a report
    rels = [str(s.rel_path) for s in iter_items(resolve_data(str(tmp_path)))]
    assert rels == ["dangling.jpg", "pipe.jpg"]


# ------------------------------------------------------------------------------------------------------ listing


def _record_scandir(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Make ``os.scandir`` record each folder it lists; returns that (live) list."""
    listed: list[str] = []
    real_scandir = os.scandir

    def scandir(path):
        listed.append(str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    return listed


def test_walk_streams_folder_by_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    for folder in range(30):
        for i in range(3):
            _save(tmp_path / f"d{folder:02d}" / f"{i}.jpg", b"")
    listed = _record_scandir(monkeypatch)
    images = iter_items(resolve_data(str(tmp_path)))
    assert str(next(images).rel_path) == "d00/0.jpg"
    assert len(listed) == 2  # the root and the first folder, not the whole tree
    assert sum(1 for _ in images) == 89 and len(listed) == 31


def test_one_folder_of_100k_files_lists_once_and_fast(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    folder = tmp_path / "many"
    folder.mkdir()
    order = np.random.default_rng(0).permutation(100_000).tolist()  # created out of order: the walk sorts
    folder_fd = os.open(folder, os.O_RDONLY)
    try:
        for i in order:
            os.close(os.open(f"{i:06d}.jpg", os.O_CREAT | os.O_WRONLY, 0o644, dir_fd=folder_fd))
    finally:
        os.close(folder_fd)
    listed = _record_scandir(monkeypatch)
    started = time.perf_counter()
    images = iter_items(resolve_data(str(folder)))
    first = next(images)
    first_s = time.perf_counter() - started
    rest = [str(source.rel_path) for source in images]
    total_s = time.perf_counter() - started
    print(f"100k files: first image after {first_s:.3f} s, all after {total_s:.3f} s")
    assert str(first.rel_path) == "000000.jpg" and len(rest) == 99_999
    assert rest == sorted(rest) and rest[-1] == "099999.jpg"
    assert listed == [str(folder)]  # one listing of the folder: no per-file re-listing or stat storm
    # Generous bounds that only catch pathological (quadratic) behaviour; about 0.2 s and 2 s here.
    assert first_s < 20 and total_s < 60


# --------------------------------------------------------------------------------------------- end-to-end runs


@pytest.fixture
def models(yolo_weights: Path, mobile_sam_weights: Path) -> list[str]:
    return stand_in_model_args(yolo_weights, mobile_sam_weights, max_det=2)


def _tree_state(root: Path) -> dict[str, tuple[str, str]]:
    """Every entry below ``root`` (links not followed): kind and content hash + mtime, link target, or dir."""
    state: dict[str, tuple[str, str]] = {}
    for top, dirs, files in os.walk(root, followlinks=False):
        for name in dirs + files:
            path = Path(top) / name
            rel = path.relative_to(root).as_posix()
            if path.is_symlink():
                state[rel] = ("link", os.readlink(path))
            elif path.is_dir():
                state[rel] = ("dir", "")
            else:
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
                state[rel] = ("file", f"{digest} {path.stat().st_mtime_ns}")
    return state


def _output_files(out: Path) -> set[str]:
    return {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file() or p.is_symlink()}


def test_hostile_tree_in_one_run(tmp_path: Path, models: list[str], huge_png: Path, monkeypatch: pytest.MonkeyPatch):
    data = tmp_path / "hostile"
    bad: dict[str, str] = {}  # rel path -> reason its report must contain
    for name, (maker, reason) in BAD_IMAGES.items():
        maker(data / "bad" / name)
        bad[f"bad/{name}"] = reason
    shutil.copyfile(huge_png, data / "bad" / "huge.png")
    bad["bad/huge.png"] = "image is 20000x20000 pixels (400 MP), over the 179 MP"
    _jpeg(data / "bad" / "vanishes.jpg", seed=20)  # deleted after the walk yields it, before it is decoded
    bad["bad/vanishes.jpg"] = "file does not exist"
    os.symlink("../gone/nowhere.jpg", data / "bad" / "dangling.jpg")
    bad["bad/dangling.jpg"] = "file does not exist"

    odd = {f"odd/{name}": maker(data / "odd" / name) for name, maker in ODD_IMAGES.items()}
    # The EXIF-rotated JPEG's twin: a plain PNG of the pixels ultralytics trains on (portrait 80x48). Equal labels
    # mean polygons normalised by the rotated width and height. Same stem in another folder: its own label.
    refs = {"odd/exif6.jpg": "refs/exif6.png"}
    _save(data / "refs" / "exif6.png", _encode(".png", _ultralytics_imread(odd["odd/exif6.jpg"])))  # type: ignore[arg-type]
    names = {
        "names/straße bild 1.jpg": _jpeg(data / "names" / "straße bild 1.jpg", seed=21),
        "names/日本.JPG": _jpeg(data / "names" / "日本.JPG", seed=22),  # also an upper-case .JPG
    }
    os.symlink("..", data / "names" / "loop")  # names/loop -> hostile/: a cycle
    good = sorted([*odd, *refs.values(), *names])

    before = _tree_state(data)
    real_walk = sources._walk_files

    def walk_then_delete(root: Path) -> Iterator[Path]:
        for path in real_walk(root):
            if path.name == "vanishes.jpg":
                path.unlink()
            yield path

    monkeypatch.setattr(sources, "_walk_files", walk_then_delete)
    result = runner.invoke(app, ["run", "--data", str(data), "--json", *models])

    assert result.exit_code == 1, result.output
    events = json_events(result.stdout)
    summary = events[-1]
    images = events[:-1]
    assert summary["event"] == "summary" and all(e["event"] == "image" for e in images)
    by_rel = {Path(e["path"]).relative_to(data).as_posix(): e for e in images}
    assert len(by_rel) == len(images)  # each image once: the symlink loop is not followed twice
    assert sorted(by_rel) == sorted([*bad, *good])

    out = tmp_path / "hostile_auto_annotate"
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    for rel, reason in bad.items():
        event = by_rel[rel]
        assert event["status"] == "failed" and event["label"] is None and event["instances"] == 0, event
        assert reason in event["error"] and "\n" not in event["error"], event
        assert not (out / "labels" / rel).with_suffix(".txt").exists()
        assert [w for w in warnings if str(data / rel) in w] == [f"warning: {data / rel}: {event['error']}"]
    assert len(warnings) == len(bad)

    labels = {}
    for rel in good:
        event = by_rel[rel]
        assert event["status"] in ("ok", "empty") and event["error"] is None, event
        label = out / "labels" / Path(rel).with_suffix(".txt")
        assert event["label"] == str(label) and label.is_file()
        labels[rel] = label.read_text(encoding="utf-8")
        rows = parse_label_file(labels[rel])
        assert len(rows) == event["instances"] <= 2
        for _, polygon in rows:
            assert polygon.min() >= 0 and polygon.max() <= 1
    for rel, ref in refs.items():
        assert labels[rel] == labels[ref], rel
    if not summary.get("dropped"):  # random weights: SAM scores may drop every instance, and the labels be empty
        assert any(labels[rel] for rel in refs), "the twin comparison is between empty label files"

    assert summary["images"] == len(bad) + len(good)
    assert summary["failed"] == len(bad) and summary["labeled"] == len(good) and summary["skipped"] == 0
    assert summary["instances"] == sum(e["instances"] for e in images)

    # labels/ and images/ hold exactly one label and one image link per annotated image; every other file (data.yaml,
    # the manifest, any sidecar) parses, and nothing is left half-written.
    files = _output_files(out)
    assert {f for f in files if f.startswith("labels/")} == {f"labels/{Path(rel).with_suffix('.txt')}" for rel in good}
    assert {f for f in files if f.startswith("images/")} == {f"images/{rel}" for rel in good}
    assert {"data.yaml", "autoannotate.json", ".autoannotate.lock"} <= files  # the lock file stays (see lock.py)
    json.loads((out / ".autoannotate.lock").read_text(encoding="utf-8"))  # its holder record: pid, host, start
    for name in files - {".autoannotate.lock"}:
        assert not any(part.startswith(".") or part.endswith((".tmp", ".part")) for part in Path(name).parts), name
        text = (out / name).read_text(encoding="utf-8") if not name.startswith("images/") else ""
        if name.endswith(".json"):
            json.loads(text)
        elif name.endswith(".jsonl"):
            [json.loads(line) for line in text.splitlines() if line.strip()]
        elif name.endswith(".yaml"):
            yaml.safe_load(text)
    for rel in good:
        assert (out / "images" / rel).resolve() == (data / rel).resolve()
    manifest = json.loads((out / "autoannotate.json").read_text(encoding="utf-8"))
    assert manifest["state"] == "complete" and manifest["counts"]["failed"] == len(bad)
    assert set(manifest["labels"]) == {(Path("labels") / rel).with_suffix(".txt").as_posix() for rel in good}
    assert "names:" in (out / "data.yaml").read_text(encoding="utf-8")

    # The input tree is untouched but for the file deleted on purpose.
    after = _tree_state(data)
    assert after == {rel: state for rel, state in before.items() if rel != "bad/vanishes.jpg"}


def test_list_naming_a_missing_file(tmp_path: Path, models: list[str]):
    _jpeg(tmp_path / "pics" / "here.jpg", seed=30)
    listing = _save(tmp_path / "pics" / "list.txt", b"here.jpg\ngone.jpg\n")
    result = runner.invoke(app, ["run", "--data", str(listing), "--json", *models])
    assert result.exit_code == 1, result.output
    events = {Path(e["path"]).name: e for e in json_events(result.stdout) if e["event"] == "image"}
    assert events["gone.jpg"]["status"] == "failed" and events["gone.jpg"]["error"] == "file does not exist"
    assert events["here.jpg"]["status"] in ("ok", "empty")
    assert f"warning: {tmp_path / 'pics' / 'gone.jpg'}: file does not exist" in result.stderr.splitlines()
    summary = json_events(result.stdout)[-1]
    assert summary["images"] == 2 and summary["failed"] == 1 and summary["labeled"] == 1


_PEAK_RSS_SCRIPT = """
import json, resource, sys
from autoannotate.cli import app
try:
    app(sys.argv[1:], prog_name="autoannotate")
except SystemExit as exit_:
    code = exit_.code
rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
print(json.dumps({"exit_code": code, "peak_rss_mb": round(rss_mb)}), file=sys.stderr)
"""


@pytest.mark.skipif(sys.platform != "linux", reason="ru_maxrss units are platform-specific")
def test_big_images_memory_bounded(tmp_path: Path, models: list[str], huge_png: Path):
    """A 24 MP photo-sized image is annotated and a 400 MP one fails cleanly, in one process of bounded peak RSS."""
    data = tmp_path / "big"
    shutil.copyfile(huge_png, _save(data / "huge.png", b""))
    _flat_png(data / "large.png", (4000, 6000))
    run = subprocess.run(
        [sys.executable, "-c", _PEAK_RSS_SCRIPT, "run", "--data", str(data), "--json", *models],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )
    stats = json.loads(run.stderr.strip().splitlines()[-1])
    print(f"big images: peak RSS {stats['peak_rss_mb']} MB")
    assert stats["exit_code"] == 1, run.stderr
    events = {Path(e["path"]).name: e for e in json_events(run.stdout) if e["event"] == "image"}
    assert events["huge.png"]["status"] == "failed" and "over the 179 MP" in events["huge.png"]["error"]
    assert events["large.png"]["status"] in ("ok", "empty"), events["large.png"]
    # Decoding the 400 MP image alone would take 1.2 GB, twice that with the RGB copy for SAM.
    assert stats["peak_rss_mb"] < 4000
