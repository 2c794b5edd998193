"""What earlier runs wrote, so that rerunning the same command resumes instead of starting over.

Two files in the output dir record it:

* ``autoannotate.json``, the manifest: rewritten atomically at the start, at checkpoints and at the end of a run, so
  it is valid whatever instant a run is killed at;
* ``autoannotate.journal.jsonl``, an append-only journal: a ``pending`` line before each label file is written and a
  ``done`` line after it. A kill leaves at most a torn last line, which is ignored. The manifest absorbs the journal
  at the end of a run, and the journal is removed.

A label is *ours* when either file names it (so a rerun may replace it); it is *done* when its entry carries the
current settings fingerprint and the image is unchanged (same size and modification time): a rerun skips it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

MANIFEST_NAME = "autoannotate.json"
JOURNAL_NAME = "autoannotate.journal.jsonl"


@dataclass(frozen=True)
class LabelEntry:
    """One label file this tool wrote: its image, outcome, the settings fingerprint and the image's signature."""

    image: str
    status: str
    instances: int
    fingerprint: str
    image_size: int
    image_mtime_ns: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

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
            )
        except (KeyError, TypeError, ValueError):
            return None


@dataclass(frozen=True)
class PreviousRun:
    """``entries``: labels known done (key -> entry); ``owned``: every label key an earlier run may have written."""

    entries: dict[str, LabelEntry]
    owned: frozenset[str]
    fingerprint: str | None  # of the last run that recorded one
    settings: dict[str, Any] | None  # the label settings behind ``fingerprint``


def settings_fingerprint(label_settings: Mapping[str, Any]) -> str:
    """A short hash of everything that decides label contents (settings that matter, model file hashes)."""
    text = json.dumps(label_settings, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def image_signature(path: Path) -> tuple[int, int] | None:
    """(size in bytes, modification time in ns) of the image file, or None if it cannot be read."""
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_size, stat.st_mtime_ns


def load_previous(output_dir: Path) -> PreviousRun:
    """Read the manifest and journal of earlier runs (either may be missing; unreadable lines are skipped)."""
    entries: dict[str, LabelEntry] = {}
    owned: set[str] = set()
    fingerprint: str | None = None
    settings: dict[str, Any] | None = None
    try:
        manifest = json.loads((output_dir / MANIFEST_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        manifest = None
    if isinstance(manifest, dict):
        fingerprint = manifest.get("fingerprint") if isinstance(manifest.get("fingerprint"), str) else None
        label_settings = manifest.get("label_settings")
        settings = label_settings if isinstance(label_settings, dict) else None
        labels = manifest.get("labels")
        if isinstance(labels, dict):
            for key, value in labels.items():
                owned.add(str(key))
                entry = LabelEntry.from_dict(value) if isinstance(value, dict) else None
                if entry is not None:
                    entries[str(key)] = entry
    try:
        with open(output_dir / JOURNAL_NAME, encoding="utf-8") as journal:
            for line in journal:
                try:
                    record = json.loads(line)
                except ValueError:
                    continue  # a line torn by a kill
                if not isinstance(record, dict) or not isinstance(record.get("label"), str):
                    continue
                key = record["label"]
                owned.add(key)
                if record.get("event") == "pending":
                    entries.pop(key, None)  # being rewritten when the run stopped: not known done
                elif record.get("event") == "done":
                    entry = LabelEntry.from_dict(record)
                    if entry is not None:
                        entries[key] = entry
    except OSError:
        pass
    return PreviousRun(entries, frozenset(owned), fingerprint, settings)


class Journal:
    """Append-only, thread-safe journal of label writes. Each record is one line, written with one syscall."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def pending(self, key: str) -> None:
        self._append({"event": "pending", "label": key})

    def done(self, key: str, entry: LabelEntry) -> None:
        self._append({"event": "done", "label": key, **entry.to_dict()})

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
