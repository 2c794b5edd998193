"""README's commands stay true: CI runs exactly README's test command, and the options table lists every option."""

from __future__ import annotations

from pathlib import Path

from autoannotate.cli.errors import EXIT_CODES
from autoannotate.config import option_fields, option_name

REPO = Path(__file__).resolve().parents[1]


def test_ci_runs_exactly_the_readme_test_command():
    readme = (REPO / "README.md").read_text()
    ci_lines = [line for line in (REPO / ".ci" / "run").read_text().splitlines() if line.startswith("pip install")]
    assert len(ci_lines) == 1
    test_command = readme.split("**Run the tests**")[1].split("```bash\n")[1].split("\n```")[0]
    assert test_command.endswith(ci_lines[0])
    assert test_command.startswith("python3 -m venv .venv && . .venv/bin/activate && ")


def test_readme_documents_every_option():
    readme = (REPO / "README.md").read_text()
    for item in option_fields():
        assert f"`{option_name(item.name)}" in readme, item.name


def test_readme_exit_codes_are_the_cli_table():
    readme = (REPO / "README.md").read_text()
    text = " ".join(readme.split("**Exit codes**:")[1].split("\n\n")[0].split())
    listed = [int(part.strip().split(" ", 1)[0]) for part in text.rstrip(".").split(";")]
    assert listed == [item.code for item in EXIT_CODES]
    for item in EXIT_CODES:  # README words each the same, its parenthesis at more length
        assert f"{item.code} {item.meaning.split(' (')[0]}" in text, item


def _documented_keys(readme: str, table_header: str) -> set[str]:
    """The backticked keys in the first column of the README table that starts with ``table_header``."""
    rows = readme.split(table_header)[1].split("\n\n")[0].splitlines()[2:]
    keys: set[str] = set()
    for row in rows:
        first = row.split("|")[1]
        keys.update(part.strip("` ") for part in first.split("` `"))
    return keys


def test_readme_json_schema_is_what_a_run_prints(tmp_path: Path, yolo_weights: Path, mobile_sam_weights: Path):
    import json

    import cv2
    from helpers import stand_in_model_args, synthetic_scene_bgr
    from typer.testing import CliRunner

    from autoannotate.cli import app

    readme = (REPO / "README.md").read_text()
    image_keys = _documented_keys(readme, "| image key | type | meaning |")
    summary_keys = _documented_keys(readme, "| summary key | type | meaning |")
    example = readme.split("**`--json`** prints")[1].split("```json\n")[1].split("\n```")[0].splitlines()
    data = tmp_path / "imgs"
    data.mkdir()
    cv2.imwrite(str(data / "a.jpg"), synthetic_scene_bgr((48, 80)))
    (data / "broken.png").write_bytes(b"not a png")
    args = ["run", "--data", str(data), *stand_in_model_args(yolo_weights, mobile_sam_weights, 2), "--json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1, result.output
    events = [json.loads(line) for line in result.stdout.splitlines()]
    assert [e["event"] for e in events] == ["image", "image", "summary"]
    for event in events:
        documented = image_keys if event["event"] == "image" else summary_keys
        assert set(event) - {"event"} == documented
        assert Path(event["output_dir"] if event["event"] == "summary" else event["path"]).is_absolute()
    for line, event in zip(example, (events[0], events[-1]), strict=True):  # README's example has the real keys
        assert list(json.loads(line)) == list(event)
