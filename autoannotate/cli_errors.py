"""How every command ends: its exit code, or one ``error:`` line on stderr for a failure (tracebacks only with
``--debug``). Shared by ``cli.py`` and ``cli_review.py``.

Exit codes: 0 done; 1 some items failed or problems found; 2 bad usage, config, input, output or model;
3 internal error (a bug); 130 interrupted.
"""

from __future__ import annotations

from collections.abc import Callable

import typer

from autoannotate.errors import AutoAnnotateError, one_line

EXIT_OK, EXIT_FAILED_IMAGES, EXIT_USAGE, EXIT_INTERNAL, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


def run_guarded(body: Callable[[], int], debug: bool) -> None:
    """Run a command body and exit with its code; errors become one ``error:`` line on stderr."""
    try:
        code = body()
    except AutoAnnotateError as err:
        if debug:
            raise
        typer.echo(f"error: {err}", err=True)
        code = err.exit_code
    except KeyboardInterrupt:
        typer.echo("error: interrupted", err=True)
        code = EXIT_INTERRUPTED
    except Exception as err:
        if debug:
            raise
        typer.echo(f"error: internal error {one_line(err, 300)} (rerun with --debug and report it)", err=True)
        code = EXIT_INTERNAL
    raise typer.Exit(code)
