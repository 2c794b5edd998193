"""Decode an image file as ultralytics does when it trains (HxWx3 uint8 BGR, EXIF orientation applied), refusing
what training would refuse (over Pillow's pixel limit, truncated JPEGs) from the header, before any pixel."""

from __future__ import annotations

import os
import stat
import struct
from pathlib import Path

import cv2
import numpy as np

from autoannotate.errors import ImageError

# Ultralytics opens every training image with Pillow first (``data.utils.check_image``), and Pillow refuses images
# over twice its ``MAX_IMAGE_PIXELS`` (DecompressionBombError), so training drops them as corrupt. Annotating one
# would cost gigabytes (decoding, full-size SAM masks) for a label no training run reads: they fail up front, from
# the header, before any pixel is decoded.
MAX_IMAGE_PIXELS = 2 * (1024 * 1024 * 1024 // 4 // 3)  # 178,956,970, Pillow's limit
MAX_FILE_BYTES = 2 * 1024**3  # read whole into memory before decoding: larger files fail without being read
_TIFF_SUFFIXES = (".tif", ".tiff")


def read_image_bgr(path: Path) -> np.ndarray:
    """Decode an image as ultralytics does when it trains: HxWx3 uint8 BGR, EXIF orientation applied.

    The pixels equal ``ultralytics.utils.patches.imread(path)`` (what its datasets load), so labels sit on the pixels
    training sees: grayscale is expanded to 3 channels, alpha is dropped, CMYK is converted, 16-bit images keep their
    high byte, a colour TIFF is read as that function reads it. Raises ImageError with a one-line reason: missing,
    not a regular file, empty, truncated JPEG, more than ``MAX_IMAGE_PIXELS`` (from the header, before decoding),
    not decodable.
    """
    info = regular_file_stat(path)
    if info.st_size > MAX_FILE_BYTES:
        raise ImageError(f"file is {info.st_size / 1e9:.1f} GB, over the {MAX_FILE_BYTES / 1e9:.1f} GB an image may be")
    try:
        raw = np.fromfile(str(path), dtype=np.uint8)
    except FileNotFoundError:  # removed since the stat
        raise ImageError("file does not exist") from None
    except OSError as err:
        raise ImageError(f"cannot read file: {err.strerror or err}") from None
    if raw.size == 0:
        raise ImageError("file is empty (0 bytes)")
    hw = peek_image_hw(raw)
    if hw is not None and hw[0] * hw[1] > MAX_IMAGE_PIXELS:
        raise ImageError(
            f"image is {hw[1]}x{hw[0]} pixels ({hw[0] * hw[1] / 1e6:.0f} MP), over the {MAX_IMAGE_PIXELS / 1e6:.0f} MP"
            " that ultralytics training reads (Pillow's decompression-bomb limit); downscale it"
        )
    truncated = _jpeg_truncation(raw)
    if truncated is not None:
        raise ImageError(f"truncated JPEG: {truncated}")
    image = _decode(raw, tiff=str(path).lower().endswith(_TIFF_SUFFIXES))
    if image is None:
        raise ImageError("not a decodable image")
    if image.ndim != 3 or image.shape[2] != 3 or image.shape[0] < 1 or image.shape[1] < 1:
        raise ImageError(f"unsupported image layout {image.shape}")
    return image


def regular_file_stat(path: Path) -> os.stat_result:
    """``os.stat`` of an input file that must be a regular file; ImageError (one line) when it is missing, cannot be
    read, or is a folder, device or FIFO."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise ImageError("file does not exist") from None
    except OSError as err:
        raise ImageError(f"cannot read file: {err.strerror or err}") from None
    if not stat.S_ISREG(info.st_mode):
        raise ImageError("not a regular file")
    return info


def _decode(raw: np.ndarray, *, tiff: bool) -> np.ndarray | None:
    if tiff:
        # ultralytics' imread decodes a colour TIFF unchanged, drops alpha and shifts 16-bit samples right by 8, where
        # IMREAD_COLOR rounds (off by one on half the values): follow it. Grayscale and odd layouts fall through to
        # IMREAD_COLOR, as there.
        image = cv2.imdecode(raw, cv2.IMREAD_UNCHANGED)
        if image is not None and image.ndim == 3 and image.shape[2] >= 3 and image.dtype in (np.uint8, np.uint16):
            image = image[..., :3]
            if image.dtype == np.uint16:
                image = np.right_shift(image, 8).astype(np.uint8)
            return np.ascontiguousarray(image)
    return cv2.imdecode(raw, cv2.IMREAD_COLOR)


def peek_image_hw(data: np.ndarray) -> tuple[int, int] | None:
    """``(H, W)`` of an encoded JPEG, PNG, BMP, WebP or TIFF (first page) as stored, from its header alone.

    ``data`` is the file as a 1-D uint8 array. Returns None for another format or a header it cannot follow (the
    decoder then decides). The size is before any EXIF rotation, which does not change the pixel count.
    """
    buf = data.data
    n = len(buf)
    head = bytes(buf[:32])
    try:
        if head.startswith(b"\xff\xd8\xff"):
            return _scan_jpeg(buf)[0]
        if head.startswith(b"\x89PNG\r\n\x1a\n") and head[12:16] == b"IHDR":
            width, height = struct.unpack_from(">II", head, 16)
            return height, width
        if head.startswith(b"BM") and n >= 26:
            if struct.unpack_from("<I", head, 14)[0] == 12:  # OS/2 BITMAPCOREHEADER: 16-bit sizes
                width, height = struct.unpack_from("<HH", head, 18)
            else:
                width, height = struct.unpack_from("<ii", head, 18)
            return abs(height), abs(width)  # negative height: rows stored top-down
        if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
            return _webp_hw(head)
        if head[:4] in (b"II*\x00", b"MM\x00*"):
            return _tiff_hw(buf)
    except (struct.error, IndexError):  # header shorter than it says
        return None
    return None


def _webp_hw(head: bytes) -> tuple[int, int] | None:
    chunk = head[12:16]
    if len(head) < 30:  # shorter than any of the three headers below
        return None
    if chunk == b"VP8X":  # extended: 24-bit canvas size minus one
        width = 1 + int.from_bytes(head[24:27], "little")
        height = 1 + int.from_bytes(head[27:30], "little")
        return height, width
    if chunk == b"VP8L" and head[20] == 0x2F:  # lossless: 14-bit sizes minus one
        bits = struct.unpack_from("<I", head, 21)[0]
        return 1 + ((bits >> 14) & 0x3FFF), 1 + (bits & 0x3FFF)
    if chunk == b"VP8 " and head[23:26] == b"\x9d\x01\x2a":  # lossy key frame: 14-bit sizes
        width, height = struct.unpack_from("<HH", head, 26)
        return height & 0x3FFF, width & 0x3FFF
    return None


def _tiff_hw(buf: memoryview) -> tuple[int, int] | None:
    """ImageLength and ImageWidth of the first IFD (classic TIFF; BigTIFF gives None)."""
    order = "<" if bytes(buf[:2]) == b"II" else ">"
    (ifd,) = struct.unpack_from(order + "I", buf, 4)
    (count,) = struct.unpack_from(order + "H", buf, ifd)
    sizes: dict[int, int] = {}
    for k in range(count):
        tag, kind = struct.unpack_from(order + "HH", buf, ifd + 2 + 12 * k)
        if tag in (256, 257) and kind in (3, 4):  # ImageWidth, ImageLength as SHORT or LONG
            sizes[tag] = struct.unpack_from(order + ("H" if kind == 3 else "I"), buf, ifd + 2 + 12 * k + 8)[0]
    if 256 in sizes and 257 in sizes:
        return sizes[257], sizes[256]
    return None


# Start-of-frame markers (they carry the image size): C0-CF but DHT (C4), JPG (C8) and DAC (CC).
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_JPEG_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})  # TEM, RST0-7: no length field
_JPEG_EOI = b"\xff\xd9"


def _scan_jpeg(buf: memoryview) -> tuple[tuple[int, int] | None, int | None, bool]:
    """Follow a JPEG's marker segments from SOI to the first scan.

    Returns ``((H, W) from the first SOF or None, offset of the first SOS or None, ran past the end of the file)``.
    Stops early, without a verdict, at anything that is not a marker (libjpeg skips such bytes; we leave it to it).
    """
    hw: tuple[int, int] | None = None
    i, n = 2, len(buf)
    while i + 1 < n:
        if buf[i] != 0xFF:
            return hw, None, False
        marker = buf[i + 1]
        if marker == 0xFF:  # fill byte before a marker
            i += 1
            continue
        if marker in _JPEG_STANDALONE:
            i += 2
            continue
        if marker == 0xD9:  # EOI before any scan
            return hw, None, False
        if i + 4 > n:
            break
        if marker in _JPEG_SOF and i + 9 <= n:
            hw = (buf[i + 5] << 8 | buf[i + 6], buf[i + 7] << 8 | buf[i + 8])
        if marker == 0xDA:
            return hw, i, False
        i += 2 + (buf[i + 2] << 8 | buf[i + 3])
    return hw, None, True


def _jpeg_truncation(raw: np.ndarray) -> str | None:
    """Why a JPEG file is cut short, or None when it is whole (or not a JPEG).

    A cut-off JPEG has no EOI marker after its scan data (ultralytics' ``check_image`` tests the last two bytes;
    here bytes after the EOI, which some cameras append, are fine). Depending on the OpenCV version, decoding one
    gives None or rows of grey below the cut, with "Premature end of JPEG file" on stderr; failing it first gives
    one clear reason and keeps libjpeg quiet. Ultralytics training drops such a file too (Pillow cannot load it).
    """
    if raw.size < 3 or bytes(raw[:3]) != b"\xff\xd8\xff":
        return None
    if bytes(raw[-2:]) == _JPEG_EOI:  # the usual whole file: no need to follow its segments
        return None
    _, sos, ran_out = _scan_jpeg(raw.data)
    if ran_out:
        return "the file ends inside its headers, before the image data"
    if sos is not None and raw[sos:].tobytes().rfind(_JPEG_EOI) < 0:
        return "no end-of-image marker after the image data (the file was cut short)"
    return None
