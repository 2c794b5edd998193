"""What a video file's container says about the file, from its headers alone: which container it is, and whether
the file is shorter than the container says (cut short by a copy, an upload or a full disk).

A decoder reading a cut file simply meets its end early, exactly as it meets the end of a file whose header claims
more frames than it holds; only the container's own structure tells the two apart. MP4/MOV (ISO boxes), AVI
(RIFF chunks) and Matroska/WebM (EBML elements) each record how long their top-level parts are: a part that runs past
the end of the file means the file was cut. Nothing here decodes a frame.
"""

from __future__ import annotations

import struct
from typing import BinaryIO

#: The top-level box types an MP4 or QuickTime file may start with.
_ISO_FIRST_BOXES = frozenset({b"ftyp", b"moov", b"mdat", b"free", b"skip", b"wide", b"pnot", b"uuid", b"styp"})
_EBML_ID = b"\x1a\x45\xdf\xa3"
_SEGMENT_ID = 0x18538067


def container_kind(head: bytes) -> str | None:
    """``"iso"`` (MP4, MOV), ``"riff"`` (AVI), ``"ebml"`` (MKV, WebM) from the first 16 bytes, else None."""
    if len(head) >= 8 and head[4:8] in _ISO_FIRST_BOXES:
        return "iso"
    if len(head) >= 12 and head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return "riff"
    if head[:4] == _EBML_ID:
        return "ebml"
    return None


def truncation(handle: BinaryIO, size: int, kind: str) -> str | None:
    """Why a file of ``size`` bytes of container ``kind`` was cut short, or None when its top-level parts all fit
    (or the container does not say how long they are)."""
    try:
        if kind == "iso":
            return _iso_truncation(handle, size)
        if kind == "riff":
            return _riff_truncation(handle, size)
        if kind == "ebml":
            return _ebml_truncation(handle, size)
    except (OSError, struct.error):
        return None
    return None


def _cut(size: int, what: str, end: int) -> str:
    return f"the file ends at byte {size:,}, inside its {what} that runs to byte {end:,} (the file was cut short)"


def _iso_truncation(handle: BinaryIO, size: int) -> str | None:
    offset = 0
    while offset + 8 <= size:
        handle.seek(offset)
        header = handle.read(16)
        box_size, box_type = struct.unpack(">I4s", header[:8])
        if box_size == 1:  # a 64-bit size follows
            if len(header) < 16:
                return _cut(size, f"{_name(box_type)} box header", offset + 16)
            box_size = struct.unpack(">Q", header[8:16])[0]
        elif box_size == 0:  # runs to the end of the file
            return None
        if box_size < 8:  # not a box: leave it to the decoder
            return None
        if offset + box_size > size:
            return _cut(size, f"{_name(box_type)} box", offset + box_size)
        offset += box_size
    return None


def _riff_truncation(handle: BinaryIO, size: int) -> str | None:
    offset = 0
    while offset + 12 <= size:  # RIFF 'AVI ' and OpenDML's RIFF 'AVIX' extensions, one after another
        handle.seek(offset)
        tag, chunk_size, form = struct.unpack("<4sI4s", handle.read(12))
        if tag != b"RIFF":
            return None
        end = offset + 8 + chunk_size + (chunk_size & 1)
        if offset + 8 + chunk_size > size:
            return _cut(size, f"RIFF {_name(form)} chunk", offset + 8 + chunk_size)
        offset = end
    return None


def _ebml_truncation(handle: BinaryIO, size: int) -> str | None:
    offset = 0
    while offset < size:
        handle.seek(offset)
        head = handle.read(12)
        element_id, id_length = _vint(head, 0, keep_marker=True)
        length, size_length = _vint(head, id_length, keep_marker=False)
        if id_length == 0 or size_length == 0:
            return None
        data_start = offset + id_length + size_length
        if length is None:  # "unknown size" (a live stream): runs to the end of the file
            return None
        if data_start + length > size:
            what = "Segment element" if element_id == _SEGMENT_ID else "EBML header"
            return _cut(size, what, data_start + length)
        offset = data_start + length
    return None


def _vint(data: bytes, at: int, *, keep_marker: bool) -> tuple[int | None, int]:
    """An EBML variable-length integer at ``data[at:]``: (value, length in bytes); (None, 0) when unreadable. A size
    of all ones is "unknown": value None."""
    if at >= len(data) or data[at] == 0:
        return None, 0
    first = data[at]
    length = 8 - first.bit_length() + 1
    if at + length > len(data):
        return None, 0
    raw = int.from_bytes(data[at : at + length], "big")
    if keep_marker:
        return raw, length
    value = raw & ((1 << (7 * length)) - 1)
    if value == (1 << (7 * length)) - 1:
        return None, length
    return value, length


def _name(tag: bytes) -> str:
    text = tag.decode("latin-1")
    return repr(text) if text.isprintable() else repr(tag)
