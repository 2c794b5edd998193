"""``autoannotate merge``: fold the manifests of ``--shard I/N`` runs into one."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Annotated

import typer

from autoannotate.cli.app import emit
from autoannotate.cli.errors import EXIT_FAILED_IMAGES, EXIT_OK, EXIT_USAGE, ExitCode, exit_codes_help, run_guarded

MERGE_EXIT_CODES = (
    ExitCode(EXIT_OK, "every shard merged"),
    ExitCode(EXIT_FAILED_IMAGES, "shards missing or incomplete"),
    ExitCode(
        EXIT_USAGE,
        "nothing to merge, a malformed shard manifest, shards run with different settings or models, an output file"
        " autoannotate did not write, or a run still writing to the dir",
    ),
)


def merge(
    output: Annotated[Path, typer.Argument(help="The output dir that the --shard I/N runs wrote to.")],
    json_lines: Annotated[bool, typer.Option("--json", help="Print the report as one JSON object.")] = False,
) -> None:
    """Fold the manifests and quality sidecars of --shard runs into autoannotate.json and instances.jsonl."""
    from autoannotate.merge import merge_shards

    def body() -> int:
        from autoannotate.lock import acquire_output_lock

        # no shard may still be writing while its files are folded (merge_shards itself refuses a non-directory)
        lock = acquire_output_lock(output, what="merge") if output.is_dir() else contextlib.nullcontext()
        with lock:
            report = merge_shards(output)
        if json_lines:
            emit(
                sys.stdout,
                {
                    "event": "merge",
                    "shards": report.shards,
                    "found": list(report.found),
                    "missing": list(report.missing),
                    "incomplete": list(report.incomplete),
                    "labels": report.labels,
                    "manifest": str(report.manifest),
                },
            )
        else:
            typer.echo(
                f"merged {len(report.found)} of {report.shards} shards, {report.labels} labels -> {report.manifest}"
            )
        if report.missing:
            typer.echo(f"error: missing shards: {', '.join(map(str, report.missing))}", err=True)
        if report.incomplete:
            typer.echo(f"error: shards that did not complete: {', '.join(map(str, report.incomplete))}", err=True)
        return EXIT_OK if report.ok else EXIT_FAILED_IMAGES

    run_guarded(body, debug=False)


def register(app: typer.Typer) -> None:
    """Add ``merge`` to ``app``."""
    app.command(epilog=exit_codes_help(MERGE_EXIT_CODES))(merge)
