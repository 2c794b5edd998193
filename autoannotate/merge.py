"""``autoannotate merge OUTPUT``: fold the manifests (and quality sidecars) of ``--shard I/N`` runs into one.

Pure file logic over the output dir; raises ``InputError`` when there is nothing to merge.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autoannotate import __version__
from autoannotate.errors import InputError
from autoannotate.resume import MANIFEST_NAME, SIDECAR_NAME, read_sidecar_rows
from autoannotate.writers.atomic import write_text_atomic
from autoannotate.writers.manifest import format_manifest
from autoannotate.writers.sidecar import format_rows

_SHARD_MANIFEST = re.compile(r"autoannotate\.shard-(\d+)-of-(\d+)\.json")
_COUNTED = ("images", "labeled", "instances", "failed", "skipped", "empty_masks", "dropped")


@dataclass(frozen=True)
class MergeReport:
    shards: int  # N
    found: tuple[int, ...]  # shard indices with a manifest
    missing: tuple[int, ...]
    incomplete: tuple[int, ...]  # found, but their run did not complete
    labels: int
    manifest: Path

    @property
    def ok(self) -> bool:
        return not self.missing and not self.incomplete


def merge_shards(output_dir: Path) -> MergeReport:
    """Write ``autoannotate.json`` and ``instances.jsonl`` covering every shard found; report missing shards."""
    if not output_dir.is_dir():
        raise InputError(f"{str(output_dir)!r} is not a directory: pass the --output-dir the shards wrote to")
    manifests: dict[int, dict[str, Any]] = {}
    counts_n = set()
    for path in sorted(output_dir.iterdir()):
        match = _SHARD_MANIFEST.fullmatch(path.name)
        if not match:
            continue
        try:
            manifest = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(manifest, dict):
            manifests[int(match.group(1))] = manifest
            counts_n.add(int(match.group(2)))
    if not manifests:
        raise InputError(f"no shard manifests (autoannotate.shard-I-of-N.json) in {str(output_dir)!r}")
    if len(counts_n) != 1:
        raise InputError(f"shard manifests of different N ({sorted(counts_n)}) in {str(output_dir)!r}: merge one N")
    (count,) = counts_n
    labels: dict[str, Any] = {}
    totals = dict.fromkeys(_COUNTED, 0)
    for index in sorted(manifests):
        manifest = manifests[index]
        labels.update(manifest.get("labels") or {})
        for key in _COUNTED:
            value = (manifest.get("counts") or {}).get(key)
            if isinstance(value, int):
                totals[key] += value
    first = manifests[min(manifests)]
    merged = {
        "tool": "autoannotate",
        "version": __version__,
        "state": "merged",
        "shards": {"n": count, "found": sorted(manifests), "states": {i: m.get("state") for i, m in manifests.items()}},
        "settings": {k: v for k, v in (first.get("settings") or {}).items() if k != "shard"},
        "label_settings": first.get("label_settings"),
        "fingerprint": first.get("fingerprint"),
        "models": first.get("models"),
        "data_yaml": first.get("data_yaml"),
        "counts": totals,
        "labels": dict(sorted(labels.items())),
    }
    manifest_path = output_dir / MANIFEST_NAME
    write_text_atomic(manifest_path, format_manifest(merged))
    rows: dict[str, list[dict[str, Any]]] = {}
    for sidecar in sorted(output_dir.glob("instances.shard-*.jsonl")):
        rows.update(read_sidecar_rows(sidecar))
    write_text_atomic(output_dir / SIDECAR_NAME, format_rows(row for key in sorted(rows) for row in rows[key]))
    missing = tuple(i for i in range(count) if i not in manifests)
    incomplete = tuple(i for i, m in sorted(manifests.items()) if m.get("state") != "complete")
    return MergeReport(count, tuple(sorted(manifests)), missing, incomplete, len(labels), manifest_path)
