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
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

MANIFEST_NAME = "autoannotate.json"
JOURNAL_NAME = "autoannotate.journal.jsonl"
SIDECAR_NAME = "instances.jsonl"


@dataclass(frozen=True)
class LabelEntry:
    """One label file this tool wrote: its image, outcome, the settings fingerprint and the image's signature."""

    image: str
    status: str
    instances: int
    fingerprint: str
    image_size: int
    image_mtime_ns: int
    sha256: str | None = None  # of the label file's bytes as written; None in manifests of older versions

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
                sha256=str(data["sha256"]) if isinstance(data.get("sha256"), str) else None,
            )
        except (KeyError, TypeError, ValueError):
            return None


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


def image_signature(path: Path) -> tuple[int, int] | None:
    """(size in bytes, modification time in ns) of the image file, or None if it cannot be read."""
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_size, stat.st_mtime_ns


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
        labels = manifest.get("labels")
        if isinstance(labels, dict):
            for key, value in labels.items():
                owned.add(str(key))
                entry = LabelEntry.from_dict(value) if isinstance(value, dict) else None
                if entry is not None:
                    entries[str(key)] = entry
    for path in sorted(output_dir.glob("autoannotate*.journal*.jsonl")):  # ours and the Ray workers'
        _read_journal(path, entries, owned, rows)
    return PreviousRun(
        entries, frozenset(owned), rows, fingerprint, settings, {k: frozenset(v) for k, v in files.items()}, legacy
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


def read_sidecar_rows(path: Path) -> dict[str, list[dict[str, Any]]]:
    """``instances.jsonl`` rows grouped by their ``label`` key (missing file or torn lines: skipped)."""
    rows: dict[str, list[dict[str, Any]]] = {}
    for row in _labelled_json_lines(path):
        rows.setdefault(row["label"], []).append(row)
    return rows


def _labelled_json_lines(path: Path) -> Iterator[dict[str, Any]]:
    """The JSON objects with a string ``label`` in a JSON-lines file; a missing file or torn lines are skipped."""
    try:
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                try:
                    record = json.loads(line)
                except ValueError:
                    continue  # a line torn by a kill
                if isinstance(record, dict) and isinstance(record.get("label"), str):
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
