"""Settings: defaults < YAML < flags, validation messages, and configs/default.yaml kept in step."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from autoannotate.config import RunSettings, build_settings, parse_classes, read_config_file
from autoannotate.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def test_defaults_follow_ultralytics_auto_annotate():
    s = build_settings(None, {"data": "imgs"})
    assert (s.conf, s.iou, s.imgsz, s.max_det, s.device) == (0.25, 0.45, 640, 300, "")
    assert (s.det_model, s.sam_model, s.polygon, s.tolerance, s.batch) == (
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
    assert s.data == "from_yaml"  # yaml over default; None flag does not override
    assert s.max_det == 7
    assert s.conf == 0.1  # flag over yaml
    assert s.classes == ("person", "2")
    assert s.iou == 0.45  # default


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


def test_default_yaml_lists_every_option_with_its_default():
    loaded = read_config_file(REPO / "configs" / "default.yaml")
    fields = {f.name: f.default for f in dataclasses.fields(RunSettings)}
    assert set(loaded) == set(fields)
    for name, default in fields.items():
        if name == "data":
            assert loaded[name] is None
        else:
            assert loaded[name] == default, name
    # and it loads as a config once data is given
    assert build_settings(loaded | {"data": "imgs"}, {}).polygon == "merge"
    assert all("#" in line for line in (REPO / "configs" / "default.yaml").read_text().splitlines()[2:])
    yaml.safe_load((REPO / "configs" / "default.yaml").read_text())


def test_null_in_yaml_means_default_and_flags_still_apply(tmp_path: Path):
    s = build_settings(read_config_file(REPO / "configs" / "default.yaml"), {"data": "imgs", "max_det": 5})
    assert (s.data, s.max_det, s.output_dir, s.classes) == ("imgs", 5, None, None)


def test_data_required():
    with pytest.raises(ConfigError, match="--data"):
        build_settings(None, {})
