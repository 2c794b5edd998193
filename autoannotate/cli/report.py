"""``report``: one self-contained HTML page about a run's output dir (``autoannotate.review.report``).

``register(app)`` adds it to the main Typer app. Exit codes: 0 written; 2 bad usage, input or output (one line
``error: ...``, e.g. an existing file at --output that is not a report of ours); 3 internal error.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from autoannotate.cli.app import DebugOpt
from autoannotate.cli.errors import EXIT_OK, run_guarded
from autoannotate.review.report import DEFAULT_GALLERY_LIMIT, REPORT_NAME, write_report
from autoannotate.review.run_view import open_run


def report(
    out: Annotated[
        Path,
        typer.Argument(
            metavar="OUT",
            help="The run's output dir (the dataset root with data.yaml, images/, labels/).",
            show_default=False,
        ),
    ],
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            help="The HTML file to write; an existing file is replaced only if it is an autoannotate report. "
            f"(default: OUT/{REPORT_NAME})",
            show_default=False,
        ),
    ] = None,
    gallery: Annotated[
        int,
        typer.Option(
            "--gallery",
            min=0,
            help="How many images the gallery shows, the worst first (0: no gallery). Counts and plots use all.",
        ),
    ] = DEFAULT_GALLERY_LIMIT,
    debug: DebugOpt = False,
) -> None:
    """Write one self-contained HTML report of a run: settings, models, counts, plots of the quality figures and a
    gallery of the worst images with their masks, filterable by class and score. Opens offline, in any browser."""

    def body() -> int:
        view = open_run(out)
        path = output if output is not None else out / REPORT_NAME
        stats = write_report(view, path, gallery_limit=gallery)
        typer.echo(
            f"wrote {path}: {stats.images:,} images, {stats.instances:,} instances, "
            f"{stats.gallery_images:,} in the gallery ({_size_text(stats.bytes_written)})"
        )
        return EXIT_OK

    run_guarded(body, debug)


def register(app: typer.Typer) -> None:
    """Add ``report`` to ``app``."""
    app.command("report")(report)


def _size_text(size_bytes: int) -> str:
    """``812 B``, ``35.2 KB``, ``18.4 MB`` (decimal units, as file managers show them)."""
    if size_bytes < 1000:
        return f"{size_bytes} B"
    if size_bytes < 1_000_000:
        return f"{size_bytes / 1e3:.1f} KB"
    return f"{size_bytes / 1e6:.1f} MB"
