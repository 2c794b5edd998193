"""How every command ends: its exit code, or one ``error:`` line on stderr for a failure (with ``--debug``, the
traceback is printed before that line; the exit code stays the same). Shared by every command of ``autoannotate.cli``.

``EXIT_CODES`` is the one table of exit codes and their meanings: ``run``'s epilog and the app's help are made from it.
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Callable, Iterable
from typing import NamedTuple

import typer

from autoannotate.errors import AutoAnnotateError, Terminated, one_line

EXIT_OK, EXIT_FAILED_IMAGES, EXIT_USAGE, EXIT_INTERNAL, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
EXIT_TERMINATED = 143  # 128 + SIGTERM, what a shell reports for a process that SIGTERM ended


class ExitCode(NamedTuple):
    """One exit code and what it means (for ``run``; other commands word 0 and 1 for what they do)."""

    code: int
    meaning: str


#: Every exit code of ``autoannotate run``, in the order help and README list them.
EXIT_CODES: tuple[ExitCode, ...] = (
    ExitCode(EXIT_OK, "every image done"),
    ExitCode(EXIT_FAILED_IMAGES, "some images failed (each reported, the rest done)"),
    ExitCode(EXIT_USAGE, "bad usage, config, input, output or model"),
    ExitCode(EXIT_INTERNAL, "internal error, or the device failed (a CUDA error other than out of memory)"),
    ExitCode(EXIT_INTERRUPTED, "interrupted (Ctrl-C)"),
    ExitCode(EXIT_TERMINATED, "terminated (SIGTERM)"),
)


def exit_codes_help(table: Iterable[ExitCode] = EXIT_CODES) -> str:
    """``Exit codes: 0 ...; 1 ...; ...`` for a help text or an epilog."""
    return "Exit codes: " + "; ".join(f"{item.code} {item.meaning}" for item in table) + "."


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
