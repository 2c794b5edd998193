"""Where the labels of an output dir came from, by its manifest: which are automatic, which a person reviewed
(``autoannotate import``), which a person edited by hand since autoannotate wrote them, and which were made with other
settings than the last run's (``check`` reports them)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from autoannotate.resume import MANIFEST_NAME, bytes_sha256_of, load_previous

SHOWN = 5  # label paths named per kind in the text report


@dataclass(frozen=True)
class Provenance:
    """Label keys (paths relative to ``output_dir``) by how they differ from what the last run would write."""

    output_dir: Path
    labels: int  # labels the manifests list
    other_settings: tuple[str, ...]  # made by an earlier run with other settings or models
    edited: tuple[str, ...]  # bytes differ from what autoannotate wrote: a person's now
    reviewed: tuple[str, ...] = ()  # a person's corrections, imported (kept by every run, --overwrite included)
    automatic: int = 0  # labels on disk as autoannotate wrote them

    def counts_line(self) -> str:
        """``labels: A automatic, R reviewed by a person, E edited by hand``."""
        return (
            f"labels: {self.automatic} automatic, {len(self.reviewed)} reviewed by a person (autoannotate import),"
            f" {len(self.edited)} edited by hand\n"
        )

    def format(self) -> str:
        lines = [self.counts_line()]
        for keys, what in (
            (self.other_settings, "were made with other settings than the last run"),
            (self.edited, "were edited since autoannotate wrote them (kept by reruns; --overwrite replaces them)"),
        ):
            if keys:
                named = ", ".join(keys[:SHOWN]) + (f" and {len(keys) - SHOWN} more" if len(keys) > SHOWN else "")
                lines.append(f"note: {len(keys)} label(s) {what}: {named}\n")
        return "".join(lines)

    def to_dict(self) -> dict[str, object]:
        return {
            "labels": self.labels,
            "automatic": self.automatic,
            "reviewed": list(self.reviewed),
            "other_settings": list(self.other_settings),
            "edited": list(self.edited),
        }


def find_output_dir(labels_root: Path) -> Path | None:
    """The nearest directory at or above ``labels_root`` that holds an autoannotate manifest."""
    for candidate in (labels_root, *labels_root.resolve().parents):
        if (candidate / MANIFEST_NAME).is_file() or any(candidate.glob("autoannotate.shard-*.json")):
            return candidate
    return None


def label_provenance(labels_root: Path) -> Provenance | None:
    """The provenance of the labels under ``labels_root``, or None when no manifest is found above it."""
    output_dir = find_output_dir(labels_root)
    if output_dir is None:
        return None
    previous = load_previous(output_dir)
    latest = _latest_fingerprint(output_dir) or previous.fingerprint
    other, edited, reviewed = [], [], []
    automatic = 0
    for key in sorted(set(previous.entries) | set(previous.reviewed)):
        path = output_dir / key
        if not path.is_file():
            continue
        entry = previous.entries.get(key)
        if key in previous.reviewed:
            reviewed.append(key)
        elif entry is not None and entry.sha256 is not None and bytes_sha256_of(path) != entry.sha256:
            edited.append(key)
        else:
            automatic += 1
            if entry is not None and latest is not None and entry.fingerprint != latest:
                other.append(key)
    return Provenance(output_dir, len(previous.entries), tuple(other), tuple(edited), tuple(reviewed), automatic)


def _latest_fingerprint(output_dir: Path) -> str | None:
    try:
        manifest = json.loads((output_dir / MANIFEST_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    value = manifest.get("fingerprint") if isinstance(manifest, dict) else None
    return value if isinstance(value, str) else None
