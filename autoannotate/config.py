"""Run settings: one frozen dataclass, loaded as defaults < YAML config < command-line flags, then validated.

Every field here is a ``run`` option; ``configs/default.yaml`` lists them all with their defaults (a test keeps the
two in step). Validation names the field, the value received and what is expected.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from autoannotate.errors import ConfigError

POLYGON_MODES = ("merge", "largest", "split")
ENGINES = ("local", "ray")


@dataclass(frozen=True)
class RunSettings:
    """Everything ``autoannotate run`` needs to know. Defaults follow ultralytics' ``auto_annotate``."""

    data: str = ""
    det_model: str = "yolo11x.pt"
    sam_model: str = "mobile_sam.pt"
    conf: float = 0.25
    iou: float = 0.45
    imgsz: int = 640
    max_det: int = 300
    classes: tuple[str, ...] | None = None  # ids or names as typed; resolved against the detector's names
    device: str = ""
    batch: int = 0  # images per step; 0 = the fastest default for the device
    output_dir: str | None = None
    tolerance: float = 1.0  # polygon simplification, pixels; 0 = exact contour
    min_area: float = 0.0  # pixels; smaller mask parts are dropped
    polygon: str = "merge"
    half: bool = False  # bf16 autocast on CPU, fp16 on CUDA
    min_mask_score: float = 0.0  # drop instances whose SAM predicted IoU is below this
    boxes_from: str | None = None  # YOLO detection labels to use as box prompts instead of a detector
    names: str | None = None  # data.yaml with class names (for --boxes-from)
    coco: bool = False  # also write COCO instances JSON
    preview: int = 0  # overlays for this many sampled images, and a contact sheet
    val_fraction: float = 0.0  # share of images listed in val.txt (the rest in train.txt); 0 = no split
    shard: str | None = None  # "I/N": annotate only shard I of N
    engine: str = "local"  # "local" or "ray"
    ray_address: str | None = None  # join a running Ray cluster; None = start a local Ray
    ray_workers: int = 0  # Ray actors (one model pair each); 0 = one per CPU (or per GPU with --ray-gpus-per-worker)
    ray_gpus_per_worker: float = 0.0
    overwrite: bool = False  # replace label files / data.yaml that this tool did not write
    json: bool = False
    quiet: bool = False

    def __post_init__(self) -> None:
        _check(bool(self.data), "data", self.data, "a directory, image, .txt list, glob or '-'")
        _check(0.0 <= self.conf <= 1.0, "conf", self.conf, "a number in [0, 1]")
        _check(0.0 <= self.iou <= 1.0, "iou", self.iou, "a number in [0, 1]")
        _check(self.imgsz >= 32, "imgsz", self.imgsz, "an integer >= 32")
        _check(self.max_det >= 1, "max_det", self.max_det, "an integer >= 1")
        _check(self.batch >= 0, "batch", self.batch, "an integer >= 0 (0 = device default)")
        _check(self.tolerance >= 0.0, "tolerance", self.tolerance, "a number of pixels >= 0")
        _check(self.min_area >= 0.0, "min_area", self.min_area, "a number of pixels >= 0")
        _check(0.0 <= self.min_mask_score <= 1.0, "min_mask_score", self.min_mask_score, "a number in [0, 1]")
        _check(self.preview >= 0, "preview", self.preview, "a number of images >= 0")
        _check(0.0 <= self.val_fraction < 1.0, "val_fraction", self.val_fraction, "a number in [0, 1)")
        if self.shard is not None:
            parse_shard(self.shard)
        _check(self.engine in ENGINES, "engine", self.engine, f"one of {', '.join(ENGINES)}")
        _check(self.ray_workers >= 0, "ray_workers", self.ray_workers, "a number of workers >= 0 (0 = automatic)")
        _check(self.ray_gpus_per_worker >= 0, "ray_gpus_per_worker", self.ray_gpus_per_worker, "a number >= 0")
        _check(self.polygon in POLYGON_MODES, "polygon", self.polygon, f"one of {', '.join(POLYGON_MODES)}")
        _check(bool(self.det_model), "det_model", self.det_model, "a model file path or ultralytics asset name")
        _check(bool(self.sam_model), "sam_model", self.sam_model, "a model file path or ultralytics asset name")
        if self.classes is not None:
            _check(len(self.classes) > 0, "classes", ",".join(self.classes), "class ids or names, comma-separated")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready view (for the run manifest)."""
        out = dataclasses.asdict(self)
        out["classes"] = list(self.classes) if self.classes is not None else None
        return out


def _check(ok: bool, field: str, value: object, expected: str) -> None:
    if not ok:
        raise ConfigError(f"invalid {option_name(field)} {value!r}: expected {expected}")


def option_name(field: str) -> str:
    """``max_det`` -> ``--max-det``: how the user spells a field on the command line."""
    return "--" + field.replace("_", "-")


_FIELD_TYPES: dict[str, type] = {
    "data": str,
    "det_model": str,
    "sam_model": str,
    "conf": float,
    "iou": float,
    "imgsz": int,
    "max_det": int,
    "classes": tuple,
    "device": str,
    "batch": int,
    "output_dir": str,
    "tolerance": float,
    "min_area": float,
    "polygon": str,
    "half": bool,
    "min_mask_score": float,
    "boxes_from": str,
    "names": str,
    "coco": bool,
    "preview": int,
    "val_fraction": float,
    "shard": str,
    "engine": str,
    "ray_address": str,
    "ray_workers": int,
    "ray_gpus_per_worker": float,
    "overwrite": bool,
    "json": bool,
    "quiet": bool,
}


def parse_shard(value: str) -> tuple[int, int]:
    """``"I/N"`` (0-based) to ``(I, N)``; ConfigError unless ``0 <= I < N``."""
    index_text, _, count_text = value.partition("/")
    try:
        index, count = int(index_text), int(count_text)
    except ValueError:
        index, count = -1, 0
    if not 0 <= index < count:
        raise ConfigError(f"invalid --shard {value!r}: expected I/N with 0 <= I < N, e.g. 0/4")
    return index, count


def parse_classes(value: object) -> tuple[str, ...] | None:
    """Class filter from a flag (``"0,person"``), a YAML list (``[0, person]``) or None, as stripped strings."""
    if value is None:
        return None
    items: list[object]
    if isinstance(value, str):
        items = list(value.split(","))
    elif isinstance(value, list | tuple):
        items = list(value)
    elif isinstance(value, int) and not isinstance(value, bool):
        items = [value]
    else:
        raise ConfigError(f"invalid --classes {value!r}: expected class ids or names, comma-separated")
    out = tuple(str(item).strip() for item in items)
    if not out or any(not item for item in out):
        raise ConfigError(f"invalid --classes {value!r}: expected class ids or names, comma-separated")
    return out


def _coerce(field: str, value: Any) -> Any:
    """Coerce a YAML/CLI value to the field's type, or raise ConfigError naming the field."""
    kind = _FIELD_TYPES[field]
    if field == "classes":
        return parse_classes(value)
    if kind is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"invalid {option_name(field)} {value!r}: expected true or false")
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise ConfigError(f"invalid {option_name(field)} {value!r}: expected an integer")
        try:
            number = float(value)
        except ValueError:
            raise ConfigError(f"invalid {option_name(field)} {value!r}: expected an integer") from None
        if not number.is_integer():
            raise ConfigError(f"invalid {option_name(field)} {value!r}: expected an integer")
        return int(number)
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise ConfigError(f"invalid {option_name(field)} {value!r}: expected a number")
        try:
            return float(value)
        except ValueError:
            raise ConfigError(f"invalid {option_name(field)} {value!r}: expected a number") from None
    if isinstance(value, Path):
        return str(value)
    if not isinstance(value, str | int | float) or isinstance(value, bool):
        raise ConfigError(f"invalid {option_name(field)} {value!r}: expected a string")
    return str(value)


def read_config_file(path: Path) -> dict[str, Any]:
    """Read a YAML config: a mapping of option names (``max-det`` or ``max_det``) to values."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file {str(path)!r} does not exist: check the --config path") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"config file {str(path)!r} cannot be read: {err}") from None
    try:
        loaded = yaml.safe_load(text)
    except yaml.YAMLError as err:
        where = getattr(err, "problem_mark", None)
        at = f" at line {where.line + 1}" if where is not None else ""
        raise ConfigError(f"config file {str(path)!r} is not valid YAML{at}: fix its syntax") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"config file {str(path)!r} must be a mapping of option names to values")
    return {str(key).replace("-", "_"): value for key, value in loaded.items()}


def build_settings(config: Mapping[str, Any] | None, overrides: Mapping[str, Any]) -> RunSettings:
    """Defaults < ``config`` (from YAML) < ``overrides`` (CLI flags; a None value means "not given")."""
    known = {f.name for f in fields(RunSettings)}
    merged: dict[str, Any] = {}
    for source in (config or {}), overrides:
        for key, value in source.items():
            if key not in known:
                raise ConfigError(
                    f"unknown option {key.replace('_', '-')!r} in config: valid options are "
                    + ", ".join(sorted(k.replace("_", "-") for k in known))
                )
            if value is None:  # "not given" on the command line, "use the default" in YAML
                continue
            merged[key] = _coerce(key, value)
    return RunSettings(**merged)
