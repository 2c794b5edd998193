"""README's commands stay true: CI runs exactly README's test command, and the options table lists every option."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from autoannotate.config import RunSettings, option_name

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
    for field in dataclasses.fields(RunSettings):
        assert f"`{option_name(field.name)}" in readme, field.name
