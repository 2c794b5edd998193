"""Settings: defaults < YAML < flags, validation messages, and configs/default.yaml kept in step."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import typer
import yaml
from typer.testing import CliRunner

from autoannotate.cli import app as main_app
from autoannotate.cli.run import register as register_run
from autoannotate.config import (
    EngineKind,
    RunSettings,
    build_settings,
    default_config_yaml,
    option,
    option_fields,
    option_name,
    parse_classes,
    read_config_file,
)
from autoannotate.errors import ConfigError
from autoannotate.polygons import PolygonMode

REPO = Path(__file__).resolve().parents[1]


def test_defaults_follow_ultralytics_auto_annotate():
    s = build_settings(None, {"data": "imgs"})
    assert (s.prompts.conf, s.prompts.iou, s.prompts.imgsz, s.prompts.max_det, s.runtime.device) == (
        0.25,
        0.45,
        640,
        300,
        "",
    )
    assert (s.prompts.det_model, s.segmenter.sam_model, s.polygons.polygon, s.polygons.tolerance, s.runtime.batch) == (
        "yolo11x.pt",
        "mobile_sam.pt",
        "merge",
        1.0,
        0,
    )


def test_precedence_defaults_yaml_flags(tmp_path: Path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("data: from_yaml\nmax-det: 7\nconf: 0.5\nclasses: [person, 2]\n")
    s = build_settings(read_config_file(cfg), {"conf": 0.1, "max_det": None, "data": None})
    assert s.inputs.data == "from_yaml"  # yaml over default; None flag does not override
    assert s.prompts.max_det == 7
    assert s.prompts.conf == 0.1  # flag over yaml
    assert s.prompts.classes == ("person", "2")
    assert s.prompts.iou == 0.45  # default


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"conf": 1.5}, "--conf 1.5"),  # out of range
        ({"iou": -0.1}, "--iou -0.1"),
        ({"imgsz": 8}, "--imgsz 8"),
        ({"max_det": 0}, "--max-det 0"),
        ({"batch": -1}, "--batch -1"),
        ({"tolerance": -1.0}, "--tolerance -1.0"),
        ({"min_area": -5}, "--min-area -5"),
        ({"polygon": "hull"}, "--polygon 'hull'"),
        ({"data": ""}, "--data ''"),
        ({"classes": " , "}, "--classes"),
    ],
    ids=["conf", "iou", "imgsz", "max-det", "batch", "tolerance", "min-area", "polygon", "data", "classes"],
)
def test_validation_names_field_and_value(overrides, message):
    with pytest.raises(ConfigError) as info:
        build_settings(None, {"data": "imgs", **overrides})
    assert message in str(info.value)
    assert "expected" in str(info.value) or "classes" in message


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("conf: [1, 2]\n", "--conf"),  # wrong type
        ("max-det: 2.5\n", "--max-det 2.5"),  # not an integer
        ("json: yes please\n", "--json"),  # not a bool
        ("confidence: 0.3\n", "unknown option 'confidence'"),
        ("- a\n- b\n", "must be a mapping"),
        ("conf: [\n", "not valid YAML at line"),
    ],
    ids=["type", "int", "bool", "unknown-key", "not-mapping", "syntax"],
)
def test_bad_config_files(tmp_path: Path, text, message):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(text)
    with pytest.raises(ConfigError, match=message):
        build_settings(read_config_file(cfg), {"data": "x"})


def test_missing_config_file(tmp_path: Path):
    with pytest.raises(ConfigError, match="does not exist"):
        read_config_file(tmp_path / "nope.yaml")


def test_parse_classes():
    assert parse_classes("0, person ,2") == ("0", "person", "2")
    assert parse_classes([1, "car"]) == ("1", "car")
    assert parse_classes(3) == ("3",)
    assert parse_classes(None) is None
    with pytest.raises(ConfigError):
        parse_classes("a,,b")


def test_default_yaml_is_generated_from_the_settings():
    text = (REPO / "configs" / "default.yaml").read_text()
    # to refresh it: python -m autoannotate.config --defaults > configs/default.yaml
    assert text == default_config_yaml()


def test_default_yaml_lists_every_option_with_its_default():
    loaded = read_config_file(REPO / "configs" / "default.yaml")
    defaults = {o.name: o.default for o in option_fields()}
    assert list(loaded) == list(defaults)  # and in run --help order
    for name, default in defaults.items():
        if name == "data":
            assert loaded[name] is None
        else:
            assert loaded[name] == default, name
    # and it loads as a config once data is given, giving the defaults
    assert build_settings(loaded | {"data": "imgs"}, {}) == build_settings(None, {"data": "imgs"})
    assert all("#" in line for line in (REPO / "configs" / "default.yaml").read_text().splitlines()[2:])
    yaml.safe_load((REPO / "configs" / "default.yaml").read_text())


def test_null_in_yaml_means_default_and_flags_still_apply(tmp_path: Path):
    s = build_settings(read_config_file(REPO / "configs" / "default.yaml"), {"data": "imgs", "max_det": 5})
    assert (s.inputs.data, s.prompts.max_det, s.output.output_dir, s.prompts.classes) == ("imgs", 5, None, None)


def test_data_required():
    with pytest.raises(ConfigError, match="--data"):
        build_settings(None, {})


# The flat view: the manifest's "settings" keys, in this order, since before the settings had stages.
FLAT_KEYS = [
    "data", "every", "fps", "max_frames", "skip_similar", "jpeg_quality",
    "det_model", "prompts", "prompts_file", "exemplars", "prompt_embeddings", "sam_model", "conf", "iou",
    "imgsz", "max_det", "classes", "agnostic_nms", "device", "batch",
    "output_dir", "tolerance", "min_area", "polygon", "half", "deterministic", "runtime", "min_mask_score",
    "boxes_from", "points_from", "names", "coco",
    "preview", "report", "val_fraction", "shard", "engine", "ray_address", "ray_workers", "ray_gpus_per_worker",
    "overwrite", "overwrite_reviewed", "json", "quiet",
]  # fmt: skip


def test_to_dict_is_flat_plain_and_in_the_old_order():
    s = build_settings(None, {"data": "imgs", "classes": "person,2", "polygon": "split", "quiet": True})
    out = s.to_dict()
    assert list(out) == FLAT_KEYS
    assert out["polygon"] == "split" and type(out["polygon"]) is str
    assert out["engine"] == "local" and type(out["engine"]) is str
    assert out["classes"] == ["person", "2"] and out["quiet"] is True
    json.dumps(out)
    assert s.polygons.polygon is PolygonMode.SPLIT and s.engine.engine is EngineKind.LOCAL


def test_label_values_are_the_options_that_decide_labels():
    s = build_settings(None, {"data": "imgs", "classes": [0], "boxes_from": "boxes"})
    values = s.label_values()
    assert list(values) == [
        "conf", "iou", "imgsz", "max_det", "classes", "tolerance", "min_area", "polygon", "half", "min_mask_score",
        "boxes_from",
    ]  # fmt: skip
    assert values["polygon"] == "merge" and type(values["polygon"]) is str
    assert values["classes"] == ["0"] and values["boxes_from"] == "boxes"
    assert json.loads(json.dumps(values)) == values


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("polygon", "x", "invalid --polygon 'x': expected one of merge, largest, split"),
        ("engine", "spark", "invalid --engine 'spark': expected one of local, ray"),
        ("runtime", "tensorrt", "invalid --runtime 'tensorrt': expected one of auto, torch, openvino"),
        ("polygon", 3, "invalid --polygon '3': expected one of merge, largest, split"),  # YAML scalars as text
        ("engine", [1], "invalid --engine [1]: expected a string"),
    ],
)
def test_enum_options_keep_their_messages(key, value, message):
    with pytest.raises(ConfigError) as info:
        build_settings(None, {"data": "imgs", key: value})
    assert str(info.value) == message


def test_names_needs_boxes_from():
    with pytest.raises(ConfigError, match="--names only applies with --boxes-from"):
        build_settings(None, {"data": "imgs", "names": "data.yaml"})


# A settings class with one more stage: its option must reach build_settings, to_dict, default.yaml and run --help
# with no other edit.
@dataclass(frozen=True)
class ExtraSettings:
    widgets: int = option(3, help="Widgets per image.", label=True)

    def __post_init__(self) -> None:
        if self.widgets < 1:
            raise ConfigError(f"invalid --widgets {self.widgets}: expected an integer >= 1")


@dataclass(frozen=True)
class ExtendedSettings(RunSettings):
    extra: ExtraSettings = field(default_factory=ExtraSettings)


def test_a_new_field_is_coerced_and_listed():
    s = build_settings({"widgets": "7"}, {"data": "imgs"}, ExtendedSettings)
    assert isinstance(s, ExtendedSettings) and s.extra.widgets == 7
    assert list(s.to_dict())[-1] == "widgets" and s.label_values()["widgets"] == 7
    with pytest.raises(ConfigError, match="invalid --widgets 'many': expected an integer"):
        build_settings(None, {"data": "imgs", "widgets": "many"}, ExtendedSettings)
    assert "widgets: 3" in default_config_yaml(ExtendedSettings).splitlines()[-1]


def _group() -> None:
    """A test app."""


def test_a_new_field_is_a_run_option():
    app = typer.Typer(rich_markup_mode=None, context_settings={"max_content_width": 200})
    app.callback()(_group)  # a group, so that "run" is a command name as in autoannotate
    register_run(app, ExtendedSettings)
    runner = CliRunner()
    help_text = " ".join(runner.invoke(app, ["run", "--help"], terminal_width=200).output.split())
    assert "--widgets <int> Widgets per image. [default: 3]" in help_text
    bad = runner.invoke(app, ["run", "--data", "imgs", "--widgets", "0"])
    assert bad.exit_code == 2 and bad.stderr.strip() == "error: invalid --widgets 0: expected an integer >= 1"


def test_every_settings_field_is_a_run_option_in_order():
    result = CliRunner().invoke(main_app, ["run", "--help"], terminal_width=200, env={"COLUMNS": "200"})
    shown = [line.split()[0].rstrip(",") for line in result.output.splitlines() if line.startswith("  -")]
    shown = [name if name != "-q" else "--quiet" for name in shown]
    expected = [option_name(o.name) for o in option_fields()]
    expected.insert(expected.index("--overwrite"), "--config")
    assert shown == [*expected, "--debug", "-h"]
