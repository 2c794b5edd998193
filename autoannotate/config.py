"""Run settings: one frozen dataclass, loaded as defaults < YAML config < command-line flags, then validated.

Every field here is a ``run`` option; ``configs/default.yaml`` lists them all with their defaults (a test keeps the
two in step). Validation names the field, the value received and what is expected.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from autoannotate.errors import ConfigError, excerpt, one_line

POLYGON_MODES = ("merge", "largest", "split")
ENGINES = ("local", "ray")
RAY_INSTALL_HINT = "--engine ray needs Ray: pip install 'autoannotate[ray]' (or pip install 'ray[data]')"

#: Most shards a ``--shard I/N`` may split a run into. Every shard is a job of its own with its own manifest, and
#: ``merge`` lists each missing one: 10,000 is far beyond any CI matrix (GitHub Actions caps one at 256 jobs) and
#: keeps a mistyped N (``0/20000000``) from asking merge to account for millions of shards.
MAX_SHARDS = 10_000
#: Detector input size bounds, pixels. ultralytics needs at least one stride (32) and rounds any size up to a
#: multiple of its stride itself, so only the range is checked. Above 8192 the letterboxed input alone is over
#: 200 MP of float32 and the detector's activations grow with its square (8192 costs ~164x the default 640); no
#: detector is trained near it, and an image is never larger than the 179 MP that training reads anyway.
MIN_IMGSZ, MAX_IMGSZ = 32, 8192
#: Most images per step: a batch is decoded and held in memory at once, so ``--batch 1000000`` would decode a
#: whole dataset before the first inference; far above what any device gains from (CUDA default 8).
MAX_BATCH = 1024
#: Largest config file read: a config is a screenful of options, and reading stops here (``--config /dev/zero``).
MAX_CONFIG_BYTES = 1024 * 1024


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
        _check(MIN_IMGSZ <= self.imgsz <= MAX_IMGSZ, "imgsz", self.imgsz, f"an integer from {MIN_IMGSZ} to {MAX_IMGSZ}")
        _check(self.max_det >= 1, "max_det", self.max_det, "an integer >= 1")
        _check(
            0 <= self.batch <= MAX_BATCH, "batch", self.batch, f"an integer from 0 to {MAX_BATCH} (0 = device default)"
        )
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
        if self.names is not None and self.boxes_from is None:
            # the detector names its own classes: a names file without label boxes would be silently ignored
            raise ConfigError("--names only applies with --boxes-from; drop --names or add --boxes-from LABELS_DIR")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready view (for the run manifest)."""
        out = dataclasses.asdict(self)
        out["classes"] = list(self.classes) if self.classes is not None else None
        return out


def _check(ok: bool, field: str, value: object, expected: str) -> None:
    if not ok:
        raise _invalid(field, value, expected)


def _invalid(field: str, value: object, expected: str) -> ConfigError:
    """``invalid --FIELD VALUE: expected ...``, the value shown as a short excerpt however large it is."""
    return ConfigError(f"invalid {option_name(field)} {excerpt(value)}: expected {expected}")


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
    """``"I/N"`` (0-based) to ``(I, N)``; ConfigError unless ``0 <= I < N <= MAX_SHARDS``."""
    index_text, _, count_text = value.partition("/")
    try:
        index, count = int(index_text), int(count_text)
    except ValueError:  # also a digit string too long for int() (Python refuses over 4300 digits)
        index, count = -1, 0
    if not 0 <= index < count <= MAX_SHARDS:
        raise _invalid("shard", value, f"I/N with 0 <= I < N <= {MAX_SHARDS}, e.g. 0/4")
    return index, count


def parse_classes(value: object) -> tuple[str, ...] | None:
    """Class filter from a flag (``"0,person"``), a YAML list (``[0, person]``) or None, as stripped strings."""
    if value is None:
        return None
    expected = "class ids or names, comma-separated"
    items: list[object]
    if isinstance(value, str):
        items = list(value.split(","))
    elif isinstance(value, list | tuple):
        items = list(value)
    elif isinstance(value, int) and not isinstance(value, bool):
        items = [value]
    else:
        raise _invalid("classes", value, expected)
    # Only names and ids: str() of a nested list would build its whole text (a YAML alias bomb: gigabytes).
    if any(isinstance(item, bool) or not isinstance(item, str | int) for item in items):
        raise _invalid("classes", value, expected)
    out = tuple(str(item).strip() for item in items)
    if not out or any(not item for item in out):
        raise _invalid("classes", value, expected)
    return out


def _coerce(field: str, value: Any) -> Any:
    """Coerce a YAML/CLI value to the field's type, or raise ConfigError naming the field."""
    kind = _FIELD_TYPES[field]
    if field == "classes":
        return parse_classes(value)
    if kind is bool:
        if isinstance(value, bool):
            return value
        raise _invalid(field, value, "true or false")
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise _invalid(field, value, "an integer")
        if isinstance(value, int):  # exact, however large (float() of a 400-digit int overflows)
            return value
        try:
            number = float(value)
        except (ValueError, OverflowError):
            raise _invalid(field, value, "an integer") from None
        if not number.is_integer():  # also inf and nan
            raise _invalid(field, value, "an integer")
        return int(number)
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise _invalid(field, value, "a number")
        try:
            return float(value)
        except (ValueError, OverflowError):
            raise _invalid(field, value, "a number") from None
    if isinstance(value, Path):
        return str(value)
    if not isinstance(value, str | int | float) or isinstance(value, bool):
        raise _invalid(field, value, "a string")
    return str(value)


def read_config_file(path: Path) -> dict[str, Any]:
    """Read a YAML config: a mapping of option names (``max-det`` or ``max_det``) to values."""
    try:
        with path.open("rb") as handle:
            raw = handle.read(MAX_CONFIG_BYTES + 1)  # bounded: a device or a huge file is refused, not slurped
        text = raw.decode("utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file {str(path)!r} does not exist: check the --config path") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {str(path)!r} is a directory: pass a YAML file to --config") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"config file {str(path)!r} cannot be read: {one_line(err, 100)}") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(
            f"config file {str(path)!r} is over {MAX_CONFIG_BYTES // 1024} KiB: a config lists options only"
        )
    try:
        loaded = yaml.safe_load(text)
    except yaml.YAMLError as err:
        where = getattr(err, "problem_mark", None)
        at = f" at line {where.line + 1}" if where is not None else ""
        raise ConfigError(f"config file {str(path)!r} is not valid YAML{at}: fix its syntax") from None
    except RecursionError:  # thousands of nested brackets: the YAML parser recurses per level
        raise ConfigError(f"config file {str(path)!r} nests too deeply: a config lists options only") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"config file {str(path)!r} must be a mapping of option names to values")
    out: dict[str, Any] = {}
    for key, value in loaded.items():
        if not isinstance(key, str):  # a list or mapping as a key: no option is named like that
            raise ConfigError(f"unknown option {excerpt(key)} in config file {str(path)!r}: keys are option names")
        out[key.replace("-", "_")] = value
    return out


def _unknown_option(key: str, known: set[str]) -> str:
    """One short line: the key (an excerpt) and the likeliest options meant, not all 29 of them."""
    spelled = key.replace("_", "-")
    options = sorted(k.replace("_", "-") for k in known)
    # a typo (max-dets) or a longer or shorter spelling (confidence for conf)
    related = [o for o in options if len(spelled) >= 3 and (spelled.startswith(o) or o.startswith(spelled))]
    close = list(dict.fromkeys(related + difflib.get_close_matches(spelled[:100], options, n=3, cutoff=0.6)))[:3]
    hint = f"did you mean {' or '.join(map(repr, close))}?" if close else "`autoannotate run --help` lists them all"
    return f"unknown option {excerpt(spelled)} in config: {hint}"


def build_settings(config: Mapping[str, Any] | None, overrides: Mapping[str, Any]) -> RunSettings:
    """Defaults < ``config`` (from YAML) < ``overrides`` (CLI flags; a None value means "not given")."""
    known = {f.name for f in fields(RunSettings)}
    merged: dict[str, Any] = {}
    for source in (config or {}), overrides:
        for key, value in source.items():
            if key not in known:
                raise ConfigError(_unknown_option(key, known))
            if value is None:  # "not given" on the command line, "use the default" in YAML
                continue
            merged[key] = _coerce(key, value)
    settings = RunSettings(**merged)
    # Checked here, before any model loads or any work is announced, rather than when the Ray engine starts.
    if settings.engine == "ray" and importlib.util.find_spec("ray") is None:
        raise ConfigError(RAY_INSTALL_HINT)
    return settings
