"""What earlier runs wrote, so that rerunning the same command resumes instead of starting over.

Two files in the output dir record it:

* ``autoannotate.json``, the manifest: rewritten atomically at the start, at checkpoints and at the end of a run, so
  it is valid whatever instant a run is killed at;
* ``autoannotate.journal.jsonl``, an append-only journal: a ``pending`` line before each label file is written and a
  ``done`` line after it. A kill leaves at most a torn last line, which is ignored. The manifest absorbs the journal
  at the end of a run, and the journal is removed.

A label is *ours* when either file names it (so a rerun may replace it); it is *done* when its entry carries the
current settings fingerprint and the image is unchanged (same size and modification time): a rerun skips it. A label
the manifest's ``reviewed`` section names (written by ``autoannotate import``: a person's corrections) is never
replaced by a run, ``--overwrite`` included, unless the run is given ``--overwrite-reviewed``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

MANIFEST_NAME = "autoannotate.json"
JOURNAL_NAME = "autoannotate.journal.jsonl"
SIDECAR_NAME = "instances.jsonl"


@dataclass(frozen=True)
class LabelEntry:
    """One label file this tool wrote: its image, outcome, the settings fingerprint and the image's signature (for a
    video frame: its video's), and for a frame where it comes from (``frame``: ``video``, ``index``, ``t``,
    ``image_sha256`` of the frame's JPEG)."""

    image: str
    status: str
    instances: int
    fingerprint: str
    image_size: int
    image_mtime_ns: int
    sha256: str | None = None  # of the label file's bytes as written; None in manifests of older versions
    frame: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        if self.frame is None:  # an image's entry reads as it always has
            del out["frame"]
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LabelEntry | None:
        try:
            return cls(
                image=str(data["image"]),
                status=str(data["status"]),
                instances=int(data["instances"]),
                fingerprint=str(data["fingerprint"]),
                image_size=int(data["image_size"]),
                image_mtime_ns=int(data["image_mtime_ns"]),
                sha256=str(data["sha256"]) if isinstance(data.get("sha256"), str) else None,
                frame=dict(data["frame"]) if isinstance(data.get("frame"), dict) else None,
            )
        except (KeyError, TypeError, ValueError):
            return None


@dataclass(frozen=True)
class ReviewMark:
    """A label a person reviewed: the manifest's ``reviewed[<label key>]``. ``sha256``: of the label's bytes as the
    import wrote them; ``source``: the tool the corrections came from (``labelstudio``, ``cvat``); ``file``: the
    export file they were read from; ``at``: when (UTC, ISO 8601)."""

    sha256: str
    source: str
    file: str
    at: str

    def to_dict(self) -> dict[str, str]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> ReviewMark | None:
        if not isinstance(data, Mapping):
            return None
        values = [data.get(name) for name in ("sha256", "source", "file", "at")]
        strings = [v for v in values if isinstance(v, str)]
        return cls(*strings) if len(strings) == len(values) else None


class LabelState(StrEnum):
    """What a run does with an item's label path, judged from what earlier runs wrote (``label_state``)."""

    TODO = "todo"  # (re)annotate it
    DONE = "done"  # done by an earlier run with the same settings, item unchanged: skipped
    EDITED = "edited"  # ours, but a person changed it since: kept
    REVIEWED = "reviewed"  # a person's corrections, imported (the manifest's ``reviewed``): kept, --overwrite too
    THEIRS = "theirs"  # a label file autoannotate did not write: refused without --overwrite


def label_state(
    previous: PreviousRun,
    key: str,
    label_path: Path,
    fingerprint: str,
    signature: tuple[int, int] | None,
    *,
    overwrite: bool,
) -> LabelState:
    """The one rule for an existing label: reviewed by a person -> REVIEWED (whatever ``overwrite`` says: a run given
    ``--overwrite-reviewed`` passes a ``previous`` without review marks), not ours -> THEIRS, ours but changed ->
    EDITED, ours and made with ``fingerprint`` for an item of the same ``signature`` -> DONE; otherwise (or with
    ``overwrite``) TODO."""
    if key in previous.reviewed and (label_path.exists() or label_path.is_symlink()):
        return LabelState.REVIEWED
    if overwrite or not (label_path.exists() or label_path.is_symlink()):
        return LabelState.TODO
    done = previous.entries.get(key)
    if key not in previous.owned:
        return LabelState.THEIRS
    if done is not None and done.sha256 is not None and bytes_sha256_of(label_path) != done.sha256:
        return LabelState.EDITED
    if (
        done is not None
        and done.fingerprint == fingerprint
        and (done.image_size, done.image_mtime_ns) == signature
        and label_path.is_file()
    ):
        return LabelState.DONE
    return LabelState.TODO


@dataclass(frozen=True)
class RunFiles:
    """The manifest, journal, sidecar and embeddings names of one run: plain, or per shard (``*.shard-I-of-N.*``)."""

    manifest: str
    journal: str
    sidecar: str
    embeddings: str  # the class embeddings a prompt run computed (``prompts.embeddings_file``)


def run_file_names(shard: tuple[int, int] | None) -> RunFiles:
    if shard is None:
        return RunFiles(MANIFEST_NAME, JOURNAL_NAME, SIDECAR_NAME, "prompt_embeddings.npz")
    tag = f"shard-{shard[0]}-of-{shard[1]}"
    return RunFiles(
        f"autoannotate.{tag}.json",
        f"autoannotate.{tag}.journal.jsonl",
        f"instances.{tag}.jsonl",
        f"prompt_embeddings.{tag}.npz",
    )


@dataclass(frozen=True)
class PreviousRun:
    """``entries``: labels known done (key -> entry); ``owned``: every label key an earlier run may have written."""

    entries: dict[str, LabelEntry]
    owned: frozenset[str]
    rows: dict[str, list[dict[str, Any]]]  # instances.jsonl rows of each done label, for skipped images
    fingerprint: str | None  # of the last run that recorded one
    settings: dict[str, Any] | None  # the label settings behind ``fingerprint``
    # whole-dataset files (train.txt, COCO, previews/...) by path relative to the output dir: the sha256 of each
    # version an earlier run wrote. A file is ours while its bytes hash to one of them.
    files: dict[str, frozenset[str]] = field(default_factory=dict)
    legacy: bool = False  # a manifest of a version that recorded no file hashes: its whole-dataset files are ours
    # video scans by video path (``VideoBook.record`` format): which frames were kept, and how the scan ended
    videos: dict[str, dict[str, Any]] = field(default_factory=dict)
    # labels a person reviewed (``autoannotate import``), by label key: never replaced without --overwrite-reviewed
    reviewed: dict[str, ReviewMark] = field(default_factory=dict)

    def owns_file(self, rel: str, path: Path) -> bool:
        """Whether the file at ``path`` (``rel`` to the output dir) is one an earlier run wrote, unchanged since."""
        if self.legacy and rel not in self.files:
            return True
        hashes = self.files.get(rel)
        return hashes is not None and bytes_sha256_of(path) in hashes


def bytes_sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def bytes_sha256_of(path: Path) -> str | None:
    """sha256 of a (small) file's bytes, or None when it cannot be read."""
    try:
        return bytes_sha256(path.read_bytes())
    except OSError:
        return None


def settings_fingerprint(label_settings: Mapping[str, Any]) -> str:
    """A short hash of everything that decides label contents (settings that matter, model file hashes)."""
    text = json.dumps(label_settings, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def load_previous(output_dir: Path) -> PreviousRun:
    """Read the manifests, journals and sidecars of earlier runs and shards (any may be missing or torn).

    Every shard's files count: a full run after sharded ones owns, and may skip, what the shards wrote.
    """
    entries: dict[str, LabelEntry] = {}
    owned: set[str] = set()
    rows: dict[str, list[dict[str, Any]]] = {}
    fingerprint: str | None = None
    settings: dict[str, Any] | None = None
    files: dict[str, set[str]] = {}
    legacy = False
    videos: dict[str, dict[str, Any]] = {}
    reviewed: dict[str, ReviewMark] = {}
    for sidecar in sorted(output_dir.glob("instances*.jsonl")):
        rows.update(read_sidecar_rows(sidecar))
    for path in sorted(output_dir.glob("autoannotate*.json")):
        try:
            manifest = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if not isinstance(manifest, dict):
            continue
        if isinstance(manifest.get("fingerprint"), str) and (fingerprint is None or path.name == MANIFEST_NAME):
            fingerprint = manifest["fingerprint"]
            label_settings = manifest.get("label_settings")
            settings = label_settings if isinstance(label_settings, dict) else None
        if manifest.get("tool") != "autoannotate":
            continue
        recorded = manifest.get("files")
        if isinstance(recorded, dict):
            for rel, digest in recorded.items():
                if isinstance(digest, str):
                    files.setdefault(str(rel), set()).add(digest)
        elif manifest.get("state") != "merged":
            legacy = True
        marks = manifest.get("reviewed")
        if isinstance(marks, dict):
            for key, value in marks.items():
                mark = ReviewMark.from_dict(value)
                if mark is not None:
                    reviewed[str(key)] = mark
        recorded_videos = manifest.get("videos")
        if isinstance(recorded_videos, dict):
            videos.update({str(k): v for k, v in recorded_videos.items() if _is_video_record(v)})
        labels = manifest.get("labels")
        if isinstance(labels, dict):
            for key, value in labels.items():
                owned.add(str(key))
                entry = LabelEntry.from_dict(value) if isinstance(value, dict) else None
                if entry is not None:
                    entries[str(key)] = entry
    for path in sorted(output_dir.glob("autoannotate*.journal*.jsonl")):  # ours and the Ray workers'
        _read_journal(path, entries, owned, rows)
        _read_video_events(path, videos)
    return PreviousRun(
        entries,
        frozenset(owned),
        rows,
        fingerprint,
        settings,
        {k: frozenset(v) for k, v in files.items()},
        legacy,
        videos,
        reviewed,
    )


def _read_journal(
    path: Path, entries: dict[str, LabelEntry], owned: set[str], rows: dict[str, list[dict[str, Any]]]
) -> None:
    for record in _labelled_json_lines(path):
        key = record["label"]
        owned.add(key)
        if record.get("event") == "pending":
            entries.pop(key, None)  # being rewritten when the run stopped: not known done
        elif record.get("event") == "done":
            entry = LabelEntry.from_dict(record)
            if entry is not None:
                entries[key] = entry
                rows[key] = [r for r in record.get("rows") or [] if isinstance(r, dict)]


def _is_video_record(value: Any) -> bool:
    return (
        isinstance(value, dict)
        and isinstance(value.get("frames"), list)
        and isinstance(value.get("size"), int)
        and isinstance(value.get("mtime_ns"), int)
    )


def _read_video_events(path: Path, videos: dict[str, dict[str, Any]]) -> None:
    """Replay a journal's video scan events (``video_begin``, ``video_frame``, ``video_end``) over ``videos``."""
    for record in _json_lines(path):
        event, video = record.get("event"), record.get("video")
        if not isinstance(video, str):
            continue
        try:
            if event == "video_begin":
                kept = videos.get(video, {}).get("frames", [])[: int(record["keep"])]
                videos[video] = VideoBook.record(record["size"], record["mtime_ns"], record["sampling"], kept)
            elif event == "video_frame" and video in videos:
                videos[video]["frames"].append([int(record["index"]), float(record["t"]), int(record["crc"])])
            elif event == "video_end" and video in videos:
                videos[video].update(end=str(record["end"]), error=record.get("error"))
        except (KeyError, TypeError, ValueError):
            continue


def read_sidecar_rows(path: Path) -> dict[str, list[dict[str, Any]]]:
    """``instances.jsonl`` rows grouped by their ``label`` key (missing file or torn lines: skipped)."""
    rows: dict[str, list[dict[str, Any]]] = {}
    for row in _labelled_json_lines(path):
        rows.setdefault(row["label"], []).append(row)
    return rows


def _labelled_json_lines(path: Path) -> Iterator[dict[str, Any]]:
    """The JSON objects with a string ``label`` in a JSON-lines file; a missing file or torn lines are skipped."""
    for record in _json_lines(path):
        if isinstance(record.get("label"), str):
            yield record


def _json_lines(path: Path) -> Iterator[dict[str, Any]]:
    """The JSON objects of a JSON-lines file; a missing file or torn lines are skipped."""
    try:
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                try:
                    record = json.loads(line)
                except ValueError:
                    continue  # a line torn by a kill
                if isinstance(record, dict):
                    yield record
    except OSError:
        return


class Journal:
    """Append-only, thread-safe journal of label writes. Each record is one line, written with one syscall."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def pending(self, key: str) -> None:
        self._append({"event": "pending", "label": key})

    def done(self, key: str, entry: LabelEntry, rows: list[dict[str, Any]] | None = None) -> None:
        self._append({"event": "done", "label": key, **entry.to_dict(), "rows": rows or []})

    def event(self, record: dict[str, Any]) -> None:
        """Any other record (the video scan events of ``VideoBook``)."""
        self._append(record)

    def _append(self, record: dict[str, Any]) -> None:
        data = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
        with self._lock:
            os.write(self._fd, data)

    def close(self, *, remove: bool) -> None:
        with self._lock:
            if self._fd >= 0:
                with contextlib.suppress(OSError):  # a full disk must not hide the error that stopped the run
                    os.fsync(self._fd)
                os.close(self._fd)
                self._fd = -1
        if remove:
            self.path.unlink(missing_ok=True)


class VideoBook:
    """The run's ``inputs.video.VideoLog``: what earlier runs recorded of each video's scan, this run's scans
    (journalled as they happen, so that a killed run's are known), and the label rule for its frames.

    A video's record (the manifest's ``videos`` entry): ``{"size", "mtime_ns", "sampling", "frames": [[index, t,
    crc], ...], "end", "error"}``.
    """

    def __init__(
        self, previous: PreviousRun, journal: Journal | None, layout: Any, fingerprint: str, *, overwrite: bool
    ) -> None:
        self.previous = previous
        self.journal = journal
        self.layout = layout  # a DatasetLayout
        self.fingerprint = fingerprint
        self.overwrite = overwrite
        self._lock = threading.Lock()
        self.videos: dict[str, dict[str, Any]] = {}  # this run's scans
        self.ended: set[str] = set()  # videos this run scanned to their end (eof or max_frames)

    @staticmethod
    def record(size: int, mtime_ns: int, sampling: Any, frames: list[Any]) -> dict[str, Any]:
        return {
            "size": int(size),
            "mtime_ns": int(mtime_ns),
            "sampling": sampling,
            "frames": [list(frame) for frame in frames],
            "end": None,
            "error": None,
        }

    def history(self, video: str) -> Any:
        from autoannotate.inputs.video import KeptFrame, VideoHistory

        data = self.previous.videos.get(video)
        if data is None:
            return None
        try:
            kept = tuple(KeptFrame(int(i), float(t), int(crc)) for i, t, crc in data["frames"])
            return VideoHistory(
                (int(data["size"]), int(data["mtime_ns"])),
                data.get("sampling") or {},
                kept,
                data.get("end"),
                data.get("error"),
            )
        except (KeyError, TypeError, ValueError):
            return None

    def begin(self, video: str, signature: tuple[int, int], sampling: Mapping[str, Any], keep: int) -> None:
        before = self.previous.videos.get(video, {}).get("frames", []) if keep else []
        with self._lock:
            self.videos[video] = self.record(*signature, dict(sampling), before[:keep])
            self.ended.discard(video)
        self._journal(
            {
                "event": "video_begin",
                "video": video,
                "size": signature[0],
                "mtime_ns": signature[1],
                "sampling": dict(sampling),
                "keep": keep,
            }
        )

    def kept(self, video: str, frame: Any) -> None:
        with self._lock:
            self.videos[video]["frames"].append([frame.index, frame.t, frame.crc])
        self._journal({"event": "video_frame", "video": video, "index": frame.index, "t": frame.t, "crc": frame.crc})

    def end(self, video: str, end: str, error: str | None) -> None:
        with self._lock:
            if video in self.videos:
                self.videos[video].update(end=end, error=error)
            if end in ("eof", "max_frames"):
                self.ended.add(video)
        self._journal({"event": "video_end", "video": video, "end": end, "error": error})

    def needs_pixels(self, rel_path: Any, signature: tuple[int, int], image: Path) -> bool:
        key = self.layout.label_key(rel_path)
        label = self.layout.label_path(rel_path)
        state = label_state(self.previous, key, label, self.fingerprint, signature, overwrite=self.overwrite)
        if state is LabelState.TODO:
            return True
        return state is LabelState.DONE and not image.is_file()

    def image_sha256(self, rel_path: Any) -> str | None:
        entry = self.previous.entries.get(self.layout.label_key(rel_path))
        digest = entry.frame.get("image_sha256") if entry is not None and entry.frame is not None else None
        return digest if isinstance(digest, str) else None

    def kept_indices(self, video: str) -> set[int]:
        """The frame indices this run's scan of ``video`` kept (empty when it did not scan it)."""
        with self._lock:
            return {int(frame[0]) for frame in self.videos.get(video, {}).get("frames", [])}

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """Every video record to write in the manifest: earlier runs', with this run's scans over them."""
        with self._lock:
            merged = {**self.previous.videos, **{k: {**v, "frames": list(v["frames"])} for k, v in self.videos.items()}}
        return dict(sorted(merged.items()))

    def _journal(self, record: dict[str, Any]) -> None:
        if self.journal is not None:
            self.journal.event(record)
