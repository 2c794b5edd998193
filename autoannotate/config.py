"""Run settings: per-stage frozen dataclasses, loaded as defaults < YAML config < command-line flags, then validated.

Every field of a stage is a ``run`` option, declared once with ``option(...)``: its default, its help text, its
value type and whether it decides label contents. That metadata drives everything else: coercion of YAML and flag
values, unknown-option detection, the ``run`` command's options and their ``[default: ...]``, ``to_dict()``,
``label_values()`` and ``configs/default.yaml`` (``python -m autoannotate.config --defaults`` writes it; a test keeps
the two in step). Adding an option is a field here and the code that uses it. Validation names the field, the value
received and what is expected.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import json
import math
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum, StrEnum
from pathlib import Path
from typing import Any

import yaml

from autoannotate.errors import ConfigError, excerpt, one_line
from autoannotate.polygons import PolygonMode

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
#: Images per step on a CUDA device when ``--batch`` is 0 (the segmenters' ``default_batch`` there).
CUDA_BATCH = 8
#: Largest config file read: a config is a screenful of options, and reading stops here (``--config /dev/zero``).
MAX_CONFIG_BYTES = 1024 * 1024

#: ``--det-model`` when not given: the closed-set default, and the open-vocabulary one used with prompts (YOLOE-26L:
#: LVIS minival mAP 36.8 with text prompts at 88 GFLOPs, against 39.5 for YOLOE-26X at 197; see README).
DEFAULT_DETECTOR = "yolo11x.pt"
DEFAULT_OPEN_VOCAB_DETECTOR = "yoloe-26l-seg.pt"
#: Highest ``--fps``: far above any camera's frame rate (a 1000 fps slot is 1 ms), so a typo such as 2e9 is refused.
MAX_SAMPLE_FPS = 1000.0
#: Highest ``--every`` and ``--max-frames``: a billion frames is over a year of 30 fps video.
MAX_FRAME_COUNT = 1_000_000_000
#: Most class prompts a run takes (a vocabulary far beyond any dataset's; YOLO-World and YOLOE embed them in
#: chunks of 80), and the longest prompt, in characters.
MAX_PROMPTS, MAX_PROMPT_CHARS = 10_000, 300

_OPTION_KEY = "autoannotate.option"  # where option() keeps its OptionMeta in a field's metadata


class EngineKind(StrEnum):
    """Where a run's images are annotated."""

    LOCAL = "local"  # in this process
    RAY = "ray"  # Ray Data batch inference, on this machine or a cluster


class RuntimeKind(StrEnum):
    """What runs the segmenter's networks on the CPU."""

    AUTO = "auto"  # OpenVINO where it is measured faster and pays for its conversion (runtime.choice), else torch
    TORCH = "torch"
    OPENVINO = "openvino"


# ------------------------------------------------------------------------------------------------ option metadata


@dataclass(frozen=True)
class OptionMeta:
    """How one settings field is typed, documented and used.

    Attributes:
        help: the ``run --help`` text, without its ``[default: ...]`` (added from the default or ``shown_default``).
        kind: the value type that YAML and flag values are coerced to: ``str``, ``int``, ``float``, ``bool`` or a
            ``StrEnum`` (flags of an enum type are typed as strings, so a bad value gets this module's message).
        label: whether the field decides label contents (``label_values()``: the resume fingerprint's settings).
        shown_default: the ``[default: ...]`` text when it is not the plain value; ``""`` shows none.
        required: no usable default: help shows none and ``default.yaml`` writes ``null``.
        order: position among the ``run`` options (help, ``to_dict()``, ``default.yaml``); None = after those that
            have one, in declaration order.
        short: a one-letter alias such as ``-q``.
        yaml_help: the comment in ``default.yaml``; None = ``help``.
        parse: a coercer of its own (YAML/flag value -> field value), used instead of the one for ``kind``.
        label_when_set: a label option added after datasets were made: ``label_values()`` leaves it out at its
            default, so the labels of earlier runs (which never had it) still match the fingerprint and are kept.
    """

    help: str
    kind: type
    label: bool = False
    shown_default: str | None = None
    required: bool = False
    order: int | None = None
    short: str | None = None
    yaml_help: str | None = None
    parse: Callable[[object], Any] | None = None
    label_when_set: bool = False


def option(
    default: Any,
    *,
    help: str,
    kind: type | None = None,
    label: bool = False,
    shown_default: str | None = None,
    required: bool = False,
    order: int | None = None,
    short: str | None = None,
    yaml_help: str | None = None,
    parse: Callable[[object], Any] | None = None,
    label_when_set: bool = False,
) -> Any:
    """A settings field that is a ``run`` option: ``dataclasses.field(default=default)`` with its ``OptionMeta``.

    ``kind`` defaults to the type of ``default`` (it must be given when the default is None).
    """
    if kind is None:
        if default is None:
            raise TypeError("option(None, ...) needs kind=: the value type cannot be told from a None default")
        kind = type(default)
    meta = OptionMeta(help, kind, label, shown_default, required, order, short, yaml_help, parse, label_when_set)
    return field(default=default, metadata={_OPTION_KEY: meta})


@dataclass(frozen=True)
class SettingOption:
    """One ``run`` option: the stage field of ``RunSettings`` holding it, the dataclass field, its metadata."""

    stage: str
    field: dataclasses.Field[Any]
    meta: OptionMeta

    @property
    def name(self) -> str:
        """The flat key (``max_det``): config files, ``build_settings`` overrides, ``to_dict()``."""
        return self.field.name

    @property
    def default(self) -> Any:
        return self.field.default

    def value(self, settings: RunSettings) -> Any:
        """This option's value in ``settings``."""
        return getattr(getattr(settings, self.stage), self.name)


def stage_classes(settings_cls: type[RunSettings] | None = None) -> dict[str, type]:
    """``{stage field name: stage dataclass}`` of ``settings_cls``, in declaration order; each stage field is
    declared with ``default_factory=`` its dataclass."""
    out: dict[str, type] = {}
    for stage in dataclasses.fields(settings_cls or RunSettings):
        factory = stage.default_factory
        if not (isinstance(factory, type) and dataclasses.is_dataclass(factory)):
            raise TypeError(f"settings field {stage.name!r} must be declared with default_factory=<stage dataclass>")
        out[stage.name] = factory
    return out


def option_fields(settings_cls: type[RunSettings] | None = None) -> tuple[SettingOption, ...]:
    """Every ``run`` option of ``settings_cls`` (default ``RunSettings``), in the order ``run --help`` lists them."""
    found: list[SettingOption] = []
    for stage, cls in stage_classes(settings_cls).items():
        for item in dataclasses.fields(cls):
            meta = item.metadata.get(_OPTION_KEY)
            if not isinstance(meta, OptionMeta):
                raise TypeError(f"{cls.__name__}.{item.name} must be declared with option(...)")
            found.append(SettingOption(stage, item, meta))
    names = [o.name for o in found]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise TypeError(f"option names must be unique across stages; repeated: {', '.join(duplicates)}")
    ranked = sorted(enumerate(found), key=lambda p: (p[1].meta.order is None, p[1].meta.order or 0, p[0]))
    return tuple(o for _, o in ranked)


def option_name(field: str) -> str:
    """``max_det`` -> ``--max-det``: how the user spells a field on the command line."""
    return "--" + field.replace("_", "-")


def shown_default(item: SettingOption) -> str:
    """What ``[default: ...]`` says for ``item`` in ``run --help``; ``""`` when help shows no default."""
    meta, value = item.meta, item.default
    if meta.shown_default is not None:
        return meta.shown_default
    if meta.required or value is None:
        return ""
    if isinstance(value, bool):
        flag = item.name.replace("_", "-")
        return flag if value else f"no-{flag}"
    if isinstance(value, str):  # an enum member too: its value
        return str(value) or "''"
    return str(value)


def help_text(item: SettingOption) -> str:
    """The ``run --help`` text of ``item``: its help and, where there is one, ``[default: ...]``. The options default
    to None (only what the user typed overrides a config file), so the framework cannot know the real default."""
    shown = shown_default(item)
    return f"{item.meta.help}  [default: {shown}]" if shown else item.meta.help


# ------------------------------------------------------------------------------------------------------ validation


def _check(ok: bool, field: str, value: object, expected: str) -> None:
    if not ok:
        raise _invalid(field, value, expected)


def _invalid(field: str, value: object, expected: str) -> ConfigError:
    """``invalid --FIELD VALUE: expected ...``, the value shown as a short excerpt however large it is."""
    return ConfigError(f"invalid {option_name(field)} {excerpt(value)}: expected {expected}")


def _member(kind: type[StrEnum], field: str, value: object) -> Any:
    """``value`` as a member of the enum ``kind``, or ConfigError listing the members."""
    for member in kind:
        if member.value == value:  # a member itself too (a StrEnum member equals its value)
            return member
    raise _invalid(field, value, f"one of {', '.join(m.value for m in kind)}")


def _set_member(settings: object, field: str, kind: type[StrEnum]) -> None:
    """Normalise a plain string to the enum member (frozen dataclasses allow themselves this one write)."""
    object.__setattr__(settings, field, _member(kind, field, getattr(settings, field)))


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


def parse_prompts(value: object) -> tuple[str, ...] | None:
    """Class prompts from a flag (``"person,forklift"``), a YAML list or None: stripped, non-empty, distinct."""
    if value is None:
        return None
    expected = "class prompts, comma-separated (or a YAML list of strings)"
    if isinstance(value, str):
        items: list[object] = list(value.split(","))
    elif isinstance(value, list | tuple):
        items = list(value)
    else:
        raise _invalid("prompts", value, expected)
    if any(isinstance(item, bool) or not isinstance(item, str | int | float) for item in items):
        raise _invalid("prompts", value, expected)
    return check_prompts([str(item) for item in items], "--prompts")


def check_prompts(items: Sequence[str], where: str) -> tuple[str, ...]:
    """Prompts as class names: each stripped, none empty, none twice (in any letter case), at most MAX_PROMPTS.
    Raises ConfigError naming ``where`` they came from."""
    prompts = tuple(" ".join(item.split()) for item in items)  # runs of whitespace (tabs, newlines) as one space
    if not prompts:
        raise ConfigError(f"{where} holds no class prompt; give at least one, e.g. --prompts person,car")
    if len(prompts) > MAX_PROMPTS:
        raise ConfigError(f"{where} holds {len(prompts)} prompts; at most {MAX_PROMPTS} are taken")
    seen: dict[str, int] = {}
    for index, prompt in enumerate(prompts):
        if not prompt:
            raise ConfigError(f"{where} has an empty prompt (number {index + 1}); remove the stray comma or line")
        if len(prompt) > MAX_PROMPT_CHARS:
            raise ConfigError(f"{where} prompt {excerpt(prompt)} is over {MAX_PROMPT_CHARS} characters")
        if prompt.lower() in seen:
            raise ConfigError(
                f"{where} names {prompt!r} twice (numbers {seen[prompt.lower()] + 1} and {index + 1}): two classes"
                " would share a name; give each once (--agnostic-nms merges the boxes of synonyms)"
            )
        seen[prompt.lower()] = index
    return prompts


# ---------------------------------------------------------------------------------------------------------- stages


@dataclass(frozen=True)
class InputSettings:
    """Which images and videos a run reads."""

    data: str = option(
        "",
        help="Images and videos: a directory (recursive), one image or video, a .txt list of paths, a quoted glob, or"
        " '-' for paths on stdin (one per line, or NUL-separated as find -print0 writes them: detected by the NUL"
        " byte).",
        required=True,
        order=10,
        yaml_help='images and videos: a directory (recursive), one file, a .txt list of paths, a glob, or "-" for'
        " stdin (required)",
    )
    shard: str | None = option(
        None,
        kind=str,
        help=f"I/N: annotate only shard I (0-based) of N <= {MAX_SHARDS}, chosen by path; N runs into one output dir"
        " = one full run.",
        order=220,
        yaml_help=f'"I/N": annotate only shard I of N <= {MAX_SHARDS} (by path relative to data; N runs = one full'
        " run)",
    )

    def __post_init__(self) -> None:
        _check(bool(self.data), "data", self.data, "a directory, image, .txt list, glob or '-'")
        if self.shard is not None:
            parse_shard(self.shard)


@dataclass(frozen=True)
class VideoSettings:
    """Which frames of the videos in ``--data`` become dataset images, and how they are written."""

    every: int = option(
        0,
        help="Videos: keep every Nth frame (frame index divisible by N).",
        shown_default="every frame, or --fps",
        order=12,
        yaml_help="videos: keep every Nth frame; 0 = every frame (or fps)",
    )
    fps: float = option(
        0.0,
        help="Videos: keep F frames per second of video, by timestamp (variable frame rates sample evenly); instead"
        " of --every.",
        shown_default="off",
        order=13,
        yaml_help="videos: keep this many frames per second, by timestamp; 0 = off (use every)",
    )
    max_frames: int = option(
        0,
        help="Videos: keep at most M frames per video (the first M the sampling picks).",
        shown_default="no limit",
        order=14,
        yaml_help="videos: at most this many frames per video; 0 = no limit",
    )
    skip_similar: float = option(
        0.0,
        help="Videos: skip a frame whose mean absolute difference from the last kept frame (grey 64-px thumbnails,"
        " 0..1) is below T, e.g. 0.02.",
        shown_default="off",
        order=15,
        yaml_help="videos: skip frames closer than this to the last kept one (mean abs difference, 0..1); 0 = off",
    )
    jpeg_quality: int = option(
        95,
        help="Videos: JPEG quality (1-100) of the frames written to OUT/images; labels are made on the JPEG's pixels.",
        label=True,
        label_when_set=True,
        order=16,
        yaml_help="videos: JPEG quality of the frames written to images/ (1-100)",
    )

    def __post_init__(self) -> None:
        _check(0 <= self.every <= MAX_FRAME_COUNT, "every", self.every, "a number of frames >= 0 (0 = every frame)")
        _check(
            math.isfinite(self.fps) and 0.0 <= self.fps <= MAX_SAMPLE_FPS,
            "fps",
            self.fps,
            f"frames per second, more than 0 and at most {MAX_SAMPLE_FPS:g} (0 = off)",
        )
        _check(0 <= self.max_frames <= MAX_FRAME_COUNT, "max_frames", self.max_frames, "a number of frames >= 0")
        _check(
            math.isfinite(self.skip_similar) and 0.0 <= self.skip_similar <= 1.0,
            "skip_similar",
            self.skip_similar,
            "a number in [0, 1] (0 = off)",
        )
        _check(1 <= self.jpeg_quality <= 100, "jpeg_quality", self.jpeg_quality, "an integer from 1 to 100")
        if self.every > 1 and self.fps > 0:
            raise ConfigError("--every and --fps both choose the frames of a video; give one of them")


@dataclass(frozen=True)
class PromptSettings:
    """Where the box prompts come from: a YOLO detector and its thresholds, an open-vocabulary detector (YOLOE,
    YOLO-World) given class prompts, or YOLO detection labels."""

    det_model: str = option(
        "",
        kind=str,
        help="YOLO detector: path or ultralytics asset name (YOLOE or YOLO-World with --prompts/--exemplars).",
        shown_default=f"{DEFAULT_DETECTOR}; {DEFAULT_OPEN_VOCAB_DETECTOR} with --prompts, --prompts-file,"
        " --exemplars or --prompt-embeddings",
        order=20,
        yaml_help=f"YOLO detector: a local path or an ultralytics asset name (downloaded when online); empty ="
        f" {DEFAULT_DETECTOR}, or {DEFAULT_OPEN_VOCAB_DETECTOR} with prompts or exemplars",
    )
    prompts: tuple[str, ...] | None = option(
        None,
        kind=str,
        parse=parse_prompts,
        help='Class prompts for an open-vocabulary detector, comma-separated ("person,forklift,pallet"): class ids'
        " follow their order, data.yaml names are the prompts.",
        order=22,
        yaml_help="class prompts for an open-vocabulary detector, a list: [person, forklift, pallet]",
    )
    prompts_file: str | None = option(
        None,
        kind=str,
        help="Text file with one class prompt per line (instead of --prompts).",
        order=24,
        yaml_help="text file with one class prompt per line (instead of prompts)",
    )
    exemplars: str | None = option(
        None,
        kind=str,
        help="Visual prompts: a folder of a few images with YOLO box labels (images/ + labels/, or .txt beside each"
        " image) whose classes --names names; YOLOE turns them into the run's classes.",
        order=26,
        yaml_help="visual prompts: a folder of images with YOLO box labels, classes named by names (YOLOE)",
    )
    prompt_embeddings: str | None = option(
        None,
        kind=str,
        help="Class embeddings .npz (ultralytics' save_prompt_embeddings format; every prompt run writes one in its"
        " output dir) to load instead of running the text encoder or the exemplars.",
        order=28,
        yaml_help="class embeddings .npz to load instead of running the text encoder (offline machines, workers)",
    )
    conf: float = option(
        0.25, help="Detector confidence threshold.", label=True, order=40, yaml_help="detector confidence threshold"
    )
    iou: float = option(
        0.45, help="Detector NMS IoU threshold.", label=True, order=50, yaml_help="detector NMS IoU threshold"
    )
    imgsz: int = option(
        640,
        help=f"Detector input size, pixels ({MIN_IMGSZ} to {MAX_IMGSZ}).",
        label=True,
        order=60,
        yaml_help=f"detector input size, pixels ({MIN_IMGSZ} to {MAX_IMGSZ})",
    )
    max_det: int = option(
        300, help="Most detections per image.", label=True, order=70, yaml_help="most detections per image"
    )
    # ids or names as typed; resolved against the prompt source's names
    classes: tuple[str, ...] | None = option(
        None,
        kind=str,
        parse=parse_classes,
        help="Keep only these classes: ids or names, comma-separated.",
        label=True,
        shown_default="all",
        order=80,
        yaml_help="keep only these classes: a list of ids or names, e.g. [person, 2]",
    )
    agnostic_nms: bool = option(
        False,
        help="One box per object across classes: of two boxes of different classes overlapping by more than --iou,"
        " keep the more confident (synonyms and overlapping prompts otherwise give two masks for one object).",
        label=True,
        label_when_set=True,
        order=85,
        yaml_help="one box per object across classes (boxes overlapping by more than iou: the more confident kept)",
    )
    boxes_from: str | None = option(
        None,
        kind=str,
        help="YOLO detection labels (class cx cy w h, paths mirroring the images) to use as box prompts "
        "instead of a detector; class ids are kept.",
        label=True,
        order=170,
        yaml_help="YOLO detection labels (class cx cy w h) to use as box prompts instead of a detector",
    )
    points_from: str | None = option(
        None,
        kind=str,
        help="Point label files (paths mirroring the images) to use as point prompts instead of a detector, one"
        " instance per line: 'class x y [x y ...] [neg x y ...] [box x1 y1 x2 y2]', normalised positive points,"
        " then optional negative points and box; class ids are kept. Needs a SAM or MobileSAM segmenter.",
        label=True,
        label_when_set=True,
        order=175,
        yaml_help="point labels (class x y [x y ...] [neg x y ...] [box x1 y1 x2 y2], normalised) to use as point"
        " prompts instead of a detector",
    )
    names: str | None = option(
        None,
        kind=str,
        help="data.yaml with class names (with --boxes-from, --points-from or --exemplars).",
        order=180,
        yaml_help="data.yaml with class names; with boxes-from, points-from or exemplars",
    )

    @property
    def open_vocabulary(self) -> bool:
        """Whether the classes come from prompts (text, exemplars or saved embeddings), not from the detector."""
        return any(getattr(self, name) is not None for name in _CLASS_SOURCES)

    def __post_init__(self) -> None:
        _check(0.0 <= self.conf <= 1.0, "conf", self.conf, "a number in [0, 1]")
        _check(0.0 <= self.iou <= 1.0, "iou", self.iou, "a number in [0, 1]")
        _check(MIN_IMGSZ <= self.imgsz <= MAX_IMGSZ, "imgsz", self.imgsz, f"an integer from {MIN_IMGSZ} to {MAX_IMGSZ}")
        _check(self.max_det >= 1, "max_det", self.max_det, "an integer >= 1")
        if not self.det_model:  # the default depends on whether the classes come from prompts
            default = DEFAULT_OPEN_VOCAB_DETECTOR if self.open_vocabulary else DEFAULT_DETECTOR
            object.__setattr__(self, "det_model", default)
        if self.classes is not None:
            _check(len(self.classes) > 0, "classes", ",".join(self.classes), "class ids or names, comma-separated")
        for name in ("prompts_file", "exemplars", "prompt_embeddings"):
            value = getattr(self, name)
            _check(value is None or bool(value), name, value, "a path")
        given = [f"--{n.replace('_', '-')}" for n in _CLASS_SOURCES if getattr(self, n) is not None]
        if len(given) > 1 and given != ["--prompts", "--prompt-embeddings"]:
            # --prompts with --prompt-embeddings is a check (the file must hold those prompts); others conflict
            raise ConfigError(f"{given[0]} and {given[1]} both set the classes; give one of them")
        _check(self.points_from is None or bool(self.points_from), "points_from", self.points_from, "a directory")
        if self.boxes_from is not None and self.points_from is not None:
            raise ConfigError("--boxes-from and --points-from both give the prompts; give one of them")
        for name, what in (("boxes_from", "boxes"), ("points_from", "points")):
            if getattr(self, name) is not None and given:
                raise ConfigError(
                    f"--{name.replace('_', '-')} takes its {what} and classes from labels, so {given[0]} has no"
                    " detector to prompt; drop one of them"
                )
        if self.names is not None and self.boxes_from is None and self.points_from is None and self.exemplars is None:
            # the detector names its own classes: a names file without label prompts would be silently ignored
            raise ConfigError(
                "--names only applies with --boxes-from, --points-from or --exemplars; drop --names or add"
                " --boxes-from LABELS_DIR"
            )
        if self.exemplars is not None and self.names is None:
            raise ConfigError("--exemplars needs --names: a data.yaml naming the classes its box labels use")


#: The options that set an open-vocabulary run's classes (``--prompts`` may be checked against the embeddings).
_CLASS_SOURCES = ("prompts", "prompts_file", "exemplars", "prompt_embeddings")


#: ``--sam-model none``: no segmenter; a segmentation detector's own masks become the polygons, a detection-only
#: prompt source writes box labels (``class cx cy w h``).
NO_SEGMENTER = "none"


@dataclass(frozen=True)
class SegmenterSettings:
    """The box-prompted segmenter and which of its masks to keep."""

    sam_model: str = option(
        "mobile_sam.pt",
        help="Segmenter checkpoint (MobileSAM, SAM, SAM 2/2.1, SAM 3, FastSAM; recognised by its contents): path or "
        "ultralytics asset name; 'none': the detector's own masks (a -seg model), else box labels.",
        order=30,
        yaml_help="segmenter checkpoint (MobileSAM, SAM, SAM 2/2.1, SAM 3, FastSAM): local path or ultralytics asset"
        " name; none: the detector's own masks, or box labels",
    )
    min_mask_score: float = option(
        0.0,
        help="Drop instances whose SAM predicted IoU is below this.",
        label=True,
        order=160,
        yaml_help="drop instances whose SAM predicted IoU is below this (listed in instances.jsonl as dropped)",
    )

    def __post_init__(self) -> None:
        _check(0.0 <= self.min_mask_score <= 1.0, "min_mask_score", self.min_mask_score, "a number in [0, 1]")
        _check(bool(self.sam_model), "sam_model", self.sam_model, "a model file path or ultralytics asset name")


@dataclass(frozen=True)
class PolygonSettings:
    """How masks become polygon labels."""

    polygon: PolygonMode = option(
        PolygonMode.MERGE,
        help="merge: one polygon per mask, parts and holes joined by zero-width cuts; largest: the largest part; "
        "split: one line per part.",
        label=True,
        order=140,
        yaml_help="merge (parts and holes in one polygon) | largest (largest part) | split (one line per part)",
    )
    tolerance: float = option(
        1.0,
        help="Polygon simplification in pixels; 0 = exact contour.",
        label=True,
        order=120,
        yaml_help="polygon simplification, pixels; 0 = exact contour",
    )
    min_area: float = option(
        0.0,
        help="Drop mask parts smaller than this many pixels.",
        label=True,
        order=130,
        yaml_help="drop mask parts (and fill holes) smaller than this many pixels",
    )

    def __post_init__(self) -> None:
        _check(self.tolerance >= 0.0, "tolerance", self.tolerance, "a number of pixels >= 0")
        _check(self.min_area >= 0.0, "min_area", self.min_area, "a number of pixels >= 0")
        _set_member(self, "polygon", PolygonMode)


@dataclass(frozen=True)
class RuntimeSettings:
    """Where and how fast inference runs: device, batch size, precision."""

    device: str = option(
        "",
        help="'' auto (first GPU, else CPU), 'cpu', 'cuda:0' or '0'.",
        order=90,
        yaml_help='"" auto (first GPU, else CPU), cpu, cuda:0 or 0',
    )
    batch: int = option(  # images per step; 0 = the fastest default for the device
        0,
        help=f"Images per step, at most {MAX_BATCH}; 0 = the fastest default for the device.",
        order=100,
        yaml_help=f"images per step (at most {MAX_BATCH}); 0 = the fastest default for the device (CPU 1, CUDA 8)",
    )
    half: bool = option(
        False,
        help="Reduced precision: bf16 on CPU and on GPUs that have it, else fp16; non-finite results redone in fp32.",
        label=True,
        order=150,
        yaml_help="reduced precision: bf16 on CPUs and GPUs that have it, else fp16; non-finite results redone in fp32",
    )
    deterministic: bool = option(
        False,
        help="Byte-identical labels when a run is killed and rerun on the same GPU: one image per step, TF32 off,"
        " deterministic CUDA kernels (slower on GPUs; CPU runs hold it already).",
        order=152,
        yaml_help="byte-identical reruns on the same GPU: one image per step, TF32 off, deterministic CUDA kernels",
    )
    runtime: RuntimeKind = option(
        RuntimeKind.AUTO,
        help="auto, torch or openvino: what runs SAM/MobileSAM's encoder and decoder on the CPU (see README).",
        order=155,
        yaml_help="auto | torch | openvino: what runs SAM/MobileSAM on the CPU (auto: OpenVINO when cached or "
        "the run has >= 50 items, on x86-64)",
    )

    def __post_init__(self) -> None:
        _check(
            0 <= self.batch <= MAX_BATCH, "batch", self.batch, f"an integer from 0 to {MAX_BATCH} (0 = device default)"
        )
        _check(
            not (self.deterministic and self.batch > 1),
            "batch",
            self.batch,
            "0 or 1 with deterministic (it infers one image per step, so that a rerun batches no image differently)",
        )
        _set_member(self, "runtime", RuntimeKind)


@dataclass(frozen=True)
class OutputSettings:
    """What a run writes besides the labels, and where."""

    output_dir: str | None = option(
        None,
        kind=str,
        help="Dataset root to write.",
        shown_default="the parent of an 'images' dir holding --data, else <data>_auto_annotate beside it",
        order=110,
        yaml_help='dataset root; null = parent of an "images" dir holding data, else <data>_auto_annotate',
    )
    coco: bool = option(
        False,
        help="Also write annotations.coco.json (COCO instances).",
        order=190,
        yaml_help="also write annotations.coco.json (COCO instances, polygons)",
    )
    preview: int = option(
        0,
        help="Write overlays for N sampled images and a contact sheet.",
        order=200,
        yaml_help="overlays for this many sampled images, plus previews/contact_sheet.png",
    )
    report: bool = option(
        False,
        help="Also write report.html: counts, score plots and a worst-first gallery (see `autoannotate report`).",
        order=205,
        yaml_help="also write report.html (counts, score plots, worst-first gallery), as `autoannotate report` does",
    )
    val_fraction: float = option(
        0.0,
        help="Share of images (chosen by path, deterministic) listed in val.txt, the rest in train.txt.",
        order=210,
        yaml_help="share of images listed in val.txt (the rest in train.txt); 0 = train and val are all images",
    )
    overwrite: bool = option(
        False,
        help="Replace label files and data.yaml that autoannotate did not write.",
        order=270,
        yaml_help="replace label files and data.yaml that autoannotate did not write",
    )
    overwrite_reviewed: bool = option(
        False,
        help="Redo labels a person reviewed (written by `autoannotate import`); --overwrite alone keeps them.",
        order=275,
        yaml_help="redo labels a person reviewed (written by autoannotate import); overwrite alone keeps them",
    )

    def __post_init__(self) -> None:
        _check(self.preview >= 0, "preview", self.preview, "a number of images >= 0")
        _check(0.0 <= self.val_fraction < 1.0, "val_fraction", self.val_fraction, "a number in [0, 1)")


@dataclass(frozen=True)
class EngineSettings:
    """Which engine annotates the images, and the Ray cluster's shape when it is Ray."""

    engine: EngineKind = option(
        EngineKind.LOCAL,
        help="local, or ray: Ray Data batch inference (pip install 'autoannotate[ray]').",
        order=230,
        yaml_help='local | ray (pip install "autoannotate[ray]"): Ray Data batch inference on a cluster',
    )
    ray_address: str | None = option(
        None,
        kind=str,
        help="Join a running Ray cluster (e.g. 'auto').",
        shown_default="start Ray locally",
        order=240,
        yaml_help="join a running Ray cluster (e.g. auto); null = start Ray on this machine",
    )
    ray_workers: int = option(
        0,
        help="Ray actors, one model pair each; 0 = one per CPU or GPU.",
        order=250,
        yaml_help="Ray actors, one model pair each; 0 = one per CPU, or per GPU with ray-gpus-per-worker",
    )
    ray_gpus_per_worker: float = option(
        0.0,
        help="GPUs per Ray actor (1, or 0.5 to share one).",
        order=260,
        yaml_help="GPUs per Ray actor (e.g. 1, or 0.5 to share a GPU between two actors)",
    )

    def __post_init__(self) -> None:
        _set_member(self, "engine", EngineKind)
        _check(self.ray_workers >= 0, "ray_workers", self.ray_workers, "a number of workers >= 0 (0 = automatic)")
        _check(self.ray_gpus_per_worker >= 0, "ray_gpus_per_worker", self.ray_gpus_per_worker, "a number >= 0")


@dataclass(frozen=True)
class ConsoleSettings:
    """What a run prints."""

    json: bool = option(
        False,
        help="JSON lines on stdout: one per image, then a summary.",
        order=280,
        yaml_help="JSON lines on stdout instead of the progress bar and summary table",
    )
    quiet: bool = option(False, help="Print errors only.", short="-q", order=290, yaml_help="print errors only")


@dataclass(frozen=True)
class RunSettings:
    """Everything ``autoannotate run`` needs to know, one frozen dataclass per stage. Defaults follow ultralytics'
    ``auto_annotate``. Each stage field is declared with ``default_factory=`` its dataclass (``stage_classes``)."""

    inputs: InputSettings = field(default_factory=InputSettings)
    video: VideoSettings = field(default_factory=VideoSettings)
    prompts: PromptSettings = field(default_factory=PromptSettings)
    segmenter: SegmenterSettings = field(default_factory=SegmenterSettings)
    polygons: PolygonSettings = field(default_factory=PolygonSettings)
    runtime: RuntimeSettings = field(default_factory=RuntimeSettings)
    output: OutputSettings = field(default_factory=OutputSettings)
    engine: EngineSettings = field(default_factory=EngineSettings)
    console: ConsoleSettings = field(default_factory=ConsoleSettings)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready flat view (for the run manifest): ``{option name: value}`` in ``run --help`` order, enum
        members as their strings, ``classes`` as a list or None."""
        return {item.name: _plain(item.value(self)) for item in option_fields(type(self))}

    def label_values(self) -> dict[str, Any]:
        """``{option name: plain JSON value}`` of the options that decide label contents (``label=True``)."""
        return {
            item.name: _plain(item.value(self))
            for item in option_fields(type(self))
            if item.meta.label and not (item.meta.label_when_set and item.value(self) == item.default)
        }


def _plain(value: Any) -> Any:
    """A settings value as plain JSON: an enum member as its value, a tuple as a list."""
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, tuple):
        return list(value)
    return value


# ------------------------------------------------------------------------------------------ loading and coercion


def _coerce(item: SettingOption, value: Any) -> Any:
    """Coerce a YAML/CLI value to the option's type, or raise ConfigError naming the option."""
    name, meta = item.name, item.meta
    kind = meta.kind
    if meta.parse is not None:
        return meta.parse(value)
    if kind is bool:
        if isinstance(value, bool):
            return value
        raise _invalid(name, value, "true or false")
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise _invalid(name, value, "an integer")
        if isinstance(value, int):  # exact, however large (float() of a 400-digit int overflows)
            return value
        try:
            number = float(value)
        except (ValueError, OverflowError):
            raise _invalid(name, value, "an integer") from None
        if not number.is_integer():  # also inf and nan
            raise _invalid(name, value, "an integer")
        return int(number)
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise _invalid(name, value, "a number")
        try:
            return float(value)
        except (ValueError, OverflowError):
            raise _invalid(name, value, "a number") from None
    if isinstance(value, Path):
        return str(value)
    if not isinstance(value, str | int | float) or isinstance(value, bool):
        raise _invalid(name, value, "a string")
    if issubclass(kind, StrEnum):
        return _member(kind, name, str(value))
    return str(value)


def read_small_text(path: Path, limit: int, what: str, expected: str, encoding: str = "utf-8") -> str:
    """A small text file (a config, a prompts list) read at most ``limit`` bytes far, so that a device or a huge
    file is refused rather than slurped. ``what`` names it in errors (``"config file 'x.yaml'"``), ``expected``
    says what to pass instead (``"a YAML file to --config"``). Raises ConfigError, one line."""
    try:
        with path.open("rb") as handle:
            raw = handle.read(limit + 1)
        text = raw.decode(encoding)
    except FileNotFoundError:
        raise ConfigError(f"{what} does not exist: pass {expected}") from None
    except IsADirectoryError:
        raise ConfigError(f"{what} is a directory: pass {expected}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{what} cannot be read: {one_line(err, 100)}") from None
    if len(raw) > limit:
        raise ConfigError(f"{what} is over {limit // 1024} KiB: pass {expected}")
    return text


def read_config_file(path: Path) -> dict[str, Any]:
    """Read a YAML config: a mapping of option names (``max-det`` or ``max_det``) to values."""
    text = read_small_text(
        path,
        MAX_CONFIG_BYTES,
        f"config file {str(path)!r}",
        "a YAML file of options to --config (a config lists options only)",
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
    """One short line: the key (an excerpt) and the likeliest options meant, not all of them."""
    spelled = key.replace("_", "-")
    options = sorted(k.replace("_", "-") for k in known)
    # a typo (max-dets) or a longer or shorter spelling (confidence for conf)
    related = [o for o in options if len(spelled) >= 3 and (spelled.startswith(o) or o.startswith(spelled))]
    close = list(dict.fromkeys(related + difflib.get_close_matches(spelled[:100], options, n=3, cutoff=0.6)))[:3]
    hint = f"did you mean {' or '.join(map(repr, close))}?" if close else "`autoannotate run --help` lists them all"
    return f"unknown option {excerpt(spelled)} in config: {hint}"


def build_settings(
    config: Mapping[str, Any] | None,
    overrides: Mapping[str, Any],
    settings_cls: type[RunSettings] = RunSettings,
) -> RunSettings:
    """Defaults < ``config`` (from YAML) < ``overrides`` (CLI flags; a None value means "not given").

    Both map flat option names (``max_det``, ``json``) to values; ``settings_cls`` is ``RunSettings`` or a subclass
    with more stages.
    """
    options = {item.name: item for item in option_fields(settings_cls)}
    merged: dict[str, Any] = {}
    for source in (config or {}), overrides:
        for key, value in source.items():
            if key not in options:
                raise ConfigError(_unknown_option(key, set(options)))
            if value is None:  # "not given" on the command line, "use the default" in YAML
                continue
            merged[key] = _coerce(options[key], value)
    stages: dict[str, Any] = {}
    for stage, cls in stage_classes(settings_cls).items():  # in declaration order: --data is checked first
        stages[stage] = cls(**{f.name: merged[f.name] for f in dataclasses.fields(cls) if f.name in merged})
    settings = settings_cls(**stages)
    # Checked here, before any model loads or any work is announced, rather than when the Ray engine starts.
    if settings.engine.engine is EngineKind.RAY and importlib.util.find_spec("ray") is None:
        raise ConfigError(RAY_INSTALL_HINT)
    return settings


# ---------------------------------------------------------------------------------------------- configs/default.yaml

_YAML_HEADER = (
    "# autoannotate run: every option with its default. Use with --config FILE; command-line flags override it.\n"
    "# Keys may be written with dashes (max-det) or underscores (max_det).\n"
    "# Generated from autoannotate/config.py: python -m autoannotate.config --defaults > configs/default.yaml\n"
)
_YAML_COMMENT_COLUMN = 22  # where the comments line up (a longer "key: value" is followed by two spaces)


def _yaml_scalar(value: Any) -> str:
    """One default as YAML flow text that loads back as the same value (``""`` for the empty string)."""
    value = _plain(value)
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"a default must be finite to be written to YAML; got {value!r}")
    if isinstance(value, str):
        plain = value and yaml.safe_load(value) == value and value.strip() == value and "#" not in value
        return value if plain else json.dumps(value)  # a JSON string is a YAML double-quoted string
    if isinstance(value, int | float):
        return repr(value)
    raise ValueError(f"a default must be None, a bool, a number or a string to be written to YAML; got {value!r}")


def default_config_yaml(settings_cls: type[RunSettings] = RunSettings) -> str:
    """The text of ``configs/default.yaml``: every option of ``settings_cls`` with its default and a comment."""
    lines = [_YAML_HEADER]
    for item in option_fields(settings_cls):
        entry = f"{item.name.replace('_', '-')}: {_yaml_scalar(None if item.meta.required else item.default)}"
        entry = entry.ljust(_YAML_COMMENT_COLUMN - 1) + " " if len(entry) < _YAML_COMMENT_COLUMN else entry + "  "
        comment = item.meta.yaml_help if item.meta.yaml_help is not None else item.meta.help
        lines.append(f"{entry}# {comment}\n")
    return "".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m autoannotate.config --defaults``: print ``configs/default.yaml``."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args != ["--defaults"]:
        sys.stderr.write("usage: python -m autoannotate.config --defaults > configs/default.yaml\n")
        return 2
    sys.stdout.write(default_config_yaml())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
