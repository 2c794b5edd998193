"""How every command ends: its exit code, or one ``error:`` line on stderr for a failure (with ``--debug``, the
traceback is printed before that line; the exit code stays the same). Shared by ``cli.py`` and ``cli_review.py``.

Exit codes: 0 done; 1 some items failed or problems found; 2 bad usage, config, input, output or model;
3 internal error (a bug); 130 interrupted (Ctrl-C); 143 terminated (SIGTERM).
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Callable

import typer

from autoannotate.errors import AutoAnnotateError, Terminated, one_line

EXIT_OK, EXIT_FAILED_IMAGES, EXIT_USAGE, EXIT_INTERNAL, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
EXIT_TERMINATED = 143  # 128 + SIGTERM, what a shell reports for a process that SIGTERM ended


def run_guarded(body: Callable[[], int], debug: bool) -> None:
    """Run a command body and exit with its code; errors become one ``error:`` line on stderr."""
    try:
        code = body()
    except AutoAnnotateError as err:
        _traceback(debug)
        typer.echo(f"error: {err}", err=True)
        code = err.exit_code
    except Terminated:  # before KeyboardInterrupt, which it subclasses
        _traceback(debug)
        typer.echo("error: terminated (SIGTERM)", err=True)
        code = EXIT_TERMINATED
    except KeyboardInterrupt:
        _traceback(debug)
        typer.echo("error: interrupted", err=True)
        code = EXIT_INTERRUPTED
    except Exception as err:
        _traceback(debug)
        typer.echo(f"error: internal error {one_line(err, 300)} (rerun with --debug and report it)", err=True)
        code = EXIT_INTERNAL
    raise typer.Exit(code)


def _traceback(debug: bool) -> None:
    """With ``--debug``, the traceback of the exception being handled, on stderr (the error line follows it)."""
    if debug:
        traceback.print_exc(file=sys.stderr)
        sys.stderr.flush()
