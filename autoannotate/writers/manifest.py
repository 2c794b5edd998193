"""The run manifest ``autoannotate.json``: formatting and model file hashes (``resume.py`` reads it back)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any


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
