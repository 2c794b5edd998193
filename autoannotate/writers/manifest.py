"""The run manifest ``autoannotate.json``: tool version, settings, models with sha256, counts, timings, and the
label files this tool wrote (so that a rerun knows which files it may replace)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

MANIFEST_NAME = "autoannotate.json"


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file (read in 1 MiB chunks); for an export directory, of its files in sorted order."""
    digest = hashlib.sha256()
    target = Path(path)
    files = sorted(p for p in target.rglob("*") if p.is_file()) if target.is_dir() else [target]
    for file in files:
        with open(file, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def format_manifest(manifest: dict[str, Any]) -> str:
    """Stable, human-readable JSON text."""
    return json.dumps(manifest, indent=2, ensure_ascii=False) + "\n"


def read_written_labels(path: Path) -> set[str]:
    """Label paths (relative to the output dir, POSIX) that an earlier run's manifest says it wrote.

    A missing or unreadable manifest yields an empty set: then no existing label counts as ours.
    """
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return set()
    labels = manifest.get("labels") if isinstance(manifest, dict) else None
    return {str(k) for k in labels} if isinstance(labels, dict) else set()
