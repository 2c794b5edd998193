"""``autoannotate merge OUTPUT``: fold the manifests (and quality sidecars) of ``--shard I/N`` runs into one.

Pure file logic over the output dir. Raises ``InputError`` when there is nothing to merge, when a shard manifest is
malformed (named, with what is wrong) and when the shards were run with different settings or models;
``OutputError`` when ``autoannotate.json`` or ``instances.jsonl`` there was not written by autoannotate.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autoannotate import __version__
from autoannotate.config import MAX_SHARDS
from autoannotate.errors import InputError, OutputError
from autoannotate.resume import MANIFEST_NAME, SIDECAR_NAME, bytes_sha256, load_previous, read_sidecar_rows
from autoannotate.writers.atomic import write_text_atomic
from autoannotate.writers.manifest import format_manifest
from autoannotate.writers.sidecar import format_rows

# As the runs name them (no leading zeros, ASCII digits): anything else is not a shard manifest of ours.
_SHARD_MANIFEST = re.compile(r"autoannotate\.shard-(0|[1-9][0-9]*)-of-(0|[1-9][0-9]*)\.json")
# The run manifest's counts (job.py), in its order; merged, they are summed, and ``labeled`` = ok + empty.
_COUNTED = ("images", "ok", "empty", "failed", "skipped", "edited", "reviewed", "instances", "empty_masks", "dropped")
_EXCERPT = 60  # characters of a value shown in a message


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
    """Write ``autoannotate.json`` and ``instances.jsonl`` covering every shard found; report missing shards.

    ``counts`` of the merged manifest are the shards' counts summed (the keys of a run manifest's counts, plus
    ``labeled`` = ok + empty: the label files the shards wrote).
    """
    if not output_dir.is_dir():
        raise InputError(f"{str(output_dir)!r} is not a directory: pass the --output-dir the shards wrote to")
    manifests = _read_shard_manifests(output_dir)
    (count,) = {n for n, _ in manifests.values()}
    shards = {index: manifest for index, (_, manifest) in manifests.items()}
    _refuse_mixed_settings(shards)
    labels: dict[str, Any] = {}
    videos: dict[str, Any] = {}  # a video is one shard's: each shard's video scans, side by side
    totals = _sum_counts(shards)
    for index in sorted(shards):
        labels.update(shards[index]["labels"])
        if isinstance(shards[index].get("videos"), dict):
            videos.update(shards[index]["videos"])
    rows: dict[str, list[dict[str, Any]]] = {}
    for index in sorted(shards):  # only the found shards' sidecars: not those of a split into another N
        rows.update(read_sidecar_rows(output_dir / f"instances.shard-{index}-of-{count}.jsonl"))
    sidecar_text = format_rows(row for key in sorted(rows) for row in rows[key])
    first = shards[min(shards)]
    # a person's reviewed labels: every shard carries the marks it found (no shard drops one: --overwrite-reviewed
    # is refused with --shard), and an earlier autoannotate.json's too
    marks = {key: mark.to_dict() for key, mark in sorted(load_previous(output_dir).reviewed.items())}
    merged = {
        "tool": "autoannotate",
        "version": __version__,
        "state": "merged",
        "shards": {"n": count, "found": sorted(shards), "states": {i: m.get("state") for i, m in shards.items()}},
        "settings": {k: v for k, v in (first.get("settings") or {}).items() if k != "shard"},
        "label_settings": first.get("label_settings"),
        "fingerprint": first.get("fingerprint"),
        "models": first.get("models"),
        "data_yaml": first.get("data_yaml"),
        "counts": totals,
        # instances.jsonl is ours while its bytes are these: a later run or merge may replace it
        "files": {SIDECAR_NAME: bytes_sha256(sidecar_text.encode("utf-8"))},
        "labels": dict(sorted(labels.items())),
        **({"reviewed": marks} if marks else {}),
        **({"videos": dict(sorted(videos.items()))} if videos else {}),
    }
    manifest_path = output_dir / MANIFEST_NAME
    _refuse_foreign_outputs(output_dir)
    write_text_atomic(manifest_path, format_manifest(merged))
    write_text_atomic(output_dir / SIDECAR_NAME, sidecar_text)
    missing = tuple(i for i in range(count) if i not in shards)
    incomplete = tuple(i for i, m in sorted(shards.items()) if m.get("state") != "complete")
    return MergeReport(count, tuple(sorted(shards)), missing, incomplete, len(labels), manifest_path)


def _read_shard_manifests(output_dir: Path) -> dict[int, tuple[int, dict[str, Any]]]:
    """Shard index -> (N, manifest) of every ``autoannotate.shard-I-of-N.json``; InputError for a bad one."""
    try:
        names = sorted(entry.name for entry in output_dir.iterdir())
    except OSError as err:
        raise InputError(f"cannot list {str(output_dir)!r}: {err.strerror or err}") from None
    found: dict[int, tuple[int, dict[str, Any]]] = {}
    for name in names:
        match = _SHARD_MANIFEST.fullmatch(name)
        if not match:
            continue
        index, count = int(match.group(1)), int(match.group(2))
        path = output_dir / name
        # Bounded before anything is built from N: shard-0-of-99999999999 must not list 10^11 missing shards.
        if count > MAX_SHARDS:
            raise InputError(f"{str(path)!r} names {count} shards, more than {MAX_SHARDS}: it is not a shard run's")
        if index >= count:
            raise InputError(f"{str(path)!r} names shard {index} of {count}, which cannot exist (0 <= I < N)")
        found[index] = (count, _read_shard_manifest(path, index, count))
    if not found:
        raise InputError(f"no shard manifests (autoannotate.shard-I-of-N.json) in {str(output_dir)!r}")
    counts_n = sorted({n for n, _ in found.values()})
    if len(counts_n) != 1:
        raise InputError(f"shard manifests of different N ({counts_n}) in {str(output_dir)!r}: merge one N")
    return found


def _read_shard_manifest(path: Path, index: int, count: int) -> dict[str, Any]:
    def bad(problem: str) -> InputError:
        return InputError(f"shard manifest {str(path)!r} {problem}: rerun shard {index}/{count} or move the file away")

    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise bad("is not UTF-8 text") from None
    except OSError as err:
        raise bad(f"cannot be read ({err.strerror or err})") from None
    try:
        manifest = json.loads(text)
    except json.JSONDecodeError as err:
        raise bad(f"is not valid JSON ({err.msg} at line {err.lineno} column {err.colno})") from None
    except (ValueError, RecursionError):  # e.g. nested too deep for the parser
        raise bad("is not valid JSON") from None
    if not isinstance(manifest, dict):
        raise bad(f"is a JSON {_json_type(manifest)}, not an object")
    if manifest.get("tool") != "autoannotate":
        raise bad('was not written by autoannotate (no "tool": "autoannotate")')
    if manifest.get("shard") != f"{index}/{count}" and _shard_of(manifest.get("shard")) != (index, count):
        raise bad(f"records shard {_excerpt(manifest.get('shard'))}, not {index}/{count} as its name says")
    for key, kind in (("labels", dict), ("counts", dict), ("label_settings", dict), ("models", dict)):
        if key in manifest and manifest[key] is not None and not isinstance(manifest[key], kind):
            raise bad(f"has {key!r} of type {_json_type(manifest[key])}, expected an object")
    for key, kind in (("labels", dict), ("counts", dict)):
        if not isinstance(manifest.get(key), kind):
            raise bad(f"has no {key!r} object")
    if not isinstance(manifest.get("settings", {}), dict):
        raise bad(f"has 'settings' of type {_json_type(manifest['settings'])}, expected an object")
    if manifest.get("fingerprint") is not None and not isinstance(manifest["fingerprint"], str):
        raise bad(f"has 'fingerprint' of type {_json_type(manifest['fingerprint'])}, expected a string")
    for key, entry in manifest["labels"].items():
        if not isinstance(entry, dict):
            raise bad(f"has labels[{_excerpt(key)}] of type {_json_type(entry)}, expected an object")
    for key, value in manifest["counts"].items():
        if key != "labeled" and not (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
            raise bad(f"has counts[{key!r}] = {_excerpt(value)}, expected a count (an integer >= 0)")
    return manifest


def _shard_of(value: object) -> tuple[int, int] | None:
    """``"I/N"`` as typed on the command line (``" 1/4"``, ``"01/4"``) to ``(I, N)``; None if it is not one."""
    if not isinstance(value, str):
        return None
    index_text, _, count_text = value.partition("/")
    try:
        return int(index_text), int(count_text)
    except ValueError:
        return None


def _sum_counts(shards: Mapping[int, Mapping[str, Any]]) -> dict[str, int]:
    keys = list(_COUNTED)
    for manifest in shards.values():  # counts of newer versions too, after the known ones
        keys += sorted(k for k in manifest["counts"] if k not in keys and k != "labeled")
    totals = {key: sum(manifest["counts"].get(key, 0) for manifest in shards.values()) for key in keys}
    totals["labeled"] = totals["ok"] + totals["empty"]  # label files written, as the run summary counts them
    return totals


def _refuse_mixed_settings(shards: Mapping[int, Mapping[str, Any]]) -> None:
    """InputError naming the first difference between a shard's settings or models and the lowest shard's."""
    first = min(shards)
    for index in sorted(shards)[1:]:
        difference = _differences(shards[first], shards[index])
        if difference is None:
            continue
        key, ref_value, value = difference
        raise InputError(
            f"shard {index} was run with {key} {_excerpt(value, key)}, shard {first} with {key}"
            f" {_excerpt(ref_value, key)}: rerun shard {index} with the same settings and models as shard {first}"
        )


def _differences(a: Mapping[str, Any], b: Mapping[str, Any]) -> tuple[str, object, object] | None:
    """The first of (label setting, model sha256, fingerprint) that differs, as (name, value in a, value in b)."""
    settings_a, settings_b = a.get("label_settings") or {}, b.get("label_settings") or {}
    for key in sorted(set(settings_a) | set(settings_b)):
        if settings_a.get(key) != settings_b.get(key):
            return key, settings_a.get(key), settings_b.get(key)
    models_a, models_b = a.get("models") or {}, b.get("models") or {}
    for role in sorted(set(models_a) | set(models_b)):
        sha_a, sha_b = (_sha256(m.get(role)) for m in (models_a, models_b))
        if sha_a != sha_b:
            return f"{role} model sha256", sha_a, sha_b
    if a.get("fingerprint") != b.get("fingerprint"):
        return "settings fingerprint", a.get("fingerprint"), b.get("fingerprint")
    return None


def _sha256(record: object) -> object:
    return record.get("sha256") if isinstance(record, dict) else None


def _refuse_foreign_outputs(output_dir: Path) -> None:
    """OutputError unless ``autoannotate.json`` and ``instances.jsonl``, where they exist, are autoannotate's."""
    manifest_path, sidecar = output_dir / MANIFEST_NAME, output_dir / SIDECAR_NAME
    existing = _read_json_object(manifest_path) if manifest_path.exists() or manifest_path.is_symlink() else {}
    if existing is None or (existing and existing.get("tool") != "autoannotate"):
        raise OutputError(f"{str(manifest_path)!r} exists and was not written by autoannotate; move it away to merge")
    if sidecar.exists() or sidecar.is_symlink():
        # Merges of earlier versions recorded no file hashes: the instances.jsonl beside their manifest is theirs.
        legacy_merge = existing.get("state") == "merged" and "files" not in existing
        if not legacy_merge and not load_previous(output_dir).owns_file(SIDECAR_NAME, sidecar):
            raise OutputError(
                f"{str(sidecar)!r} exists and was not written by autoannotate or was changed since; move it away to"
                " merge"
            )


def _read_json_object(path: Path) -> dict[str, Any] | None:
    try:
        loaded = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    return loaded if isinstance(loaded, dict) else None


def _json_type(value: object) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", int: "number", float: "number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def _excerpt(value: object, key: str = "") -> str:
    """A value for a one-line message: sha256s shortened to 12 digits, anything else to ``_EXCERPT`` characters."""
    if isinstance(value, str) and "sha256" in key and len(value) > 12:
        return value[:12]
    text = json.dumps(value, ensure_ascii=False, default=str)
    text = " ".join(text.split())
    return text if len(text) <= _EXCERPT else text[: _EXCERPT - 3] + "..."
