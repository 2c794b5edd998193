"""The project's error types: one per kind of failure, each carrying a one-line, actionable message.

The CLI maps each type to an exit code (see ``cli.py``); nothing else in the package prints or exits.
"""

from __future__ import annotations

import logging
import reprlib
import unicodedata
from collections.abc import Iterator
from contextlib import contextmanager


class Terminated(KeyboardInterrupt):
    """SIGTERM (CI cancel, ``docker stop``, ``timeout``), raised in the main thread by the CLI's signal handler.

    A KeyboardInterrupt, so that everything which cleans up after Ctrl-C (the job's ``finally`` blocks: manifest
    marked ``interrupted``, journal kept, temporary files removed) does the same for it; the CLI reports it as
    ``error: terminated (SIGTERM)`` with exit code 143 (128 + 15, what the shell reports for a SIGTERM death).
    """


class AutoAnnotateError(Exception):
    """Base class. ``str(err)`` is a complete one-line message for the user, fix included."""

    exit_code = 2


class ConfigError(AutoAnnotateError):
    """An option or config file value is invalid (names the field, the value and what is expected)."""


class InputError(AutoAnnotateError):
    """The ``--data`` source cannot be read as a whole (nothing there, unreadable list, bad glob)."""


class ModelError(AutoAnnotateError):
    """A model file is missing, cannot be downloaded, is corrupt, or is the wrong kind for its role."""


class DeviceError(AutoAnnotateError):
    """The compute device failed with an error other than running out of memory (a CUDA illegal address, a
    device-side assert): its state is unknown, so the run stops. The labels written so far are kept."""

    exit_code = 3


class ImageError(AutoAnnotateError):
    """One image cannot be used (undecodable, empty, unsupported). Recorded per image; never stops a run."""

    exit_code = 1


class OutputError(AutoAnnotateError):
    """The output directory cannot be written, or writing would overwrite a file this tool did not write.

    ``errno`` is the OS error number when an OS call failed (ENOSPC, EROFS, ...), else None.
    """

    def __init__(self, message: str, errno: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno


def one_line(err: BaseException, limit: int = 160) -> str:
    """``TypeName: first line of the message``, shortened, for embedding a library error in a one-line message."""
    # Drop pictographs (ultralytics prefixes errors with emoji) and fold whitespace, newlines included.
    text = "".join(ch for ch in str(err) if unicodedata.category(ch) != "So")
    text = " ".join(text.split()) or "no details"
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return f"{type(err).__name__}: {text}"


def _excerpt_repr() -> reprlib.Repr:
    # reprlib stops at these depths and lengths while it walks, so a value of millions of elements (a YAML alias
    # bomb) costs microseconds and a few bytes, where repr() would build the whole text first.
    short = reprlib.Repr()
    short.maxlevel = 2
    short.maxlist = short.maxtuple = short.maxdict = short.maxset = short.maxfrozenset = short.maxdeque = 4
    short.maxarray = 4
    short.maxstring = short.maxother = short.maxlong = 40
    return short


_EXCERPT_REPR = _excerpt_repr()


def excerpt(value: object, limit: int = 60) -> str:
    """``repr(value)`` cut to at most ``limit`` characters ("..." marks a cut), for embedding a user's value in an
    error message; never builds the full repr of a large or deeply nested value."""
    text = _EXCERPT_REPR.repr(value)
    text = "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)  # a newline stays on the line
    return text if len(text) <= limit else text[: max(0, limit - 3)] + "..."


@contextmanager
def logs_held(logger_name: str = "ultralytics") -> Iterator[None]:
    """Hold what a library logs during the block: replayed when the block succeeds, dropped when it raises.

    A library prints its banner or warnings before it raises (ultralytics logs "Ultralytics 8.x ... torch-2.x"
    before refusing a ``--device``, and a task-guess warning before failing on a non-model file); the error that
    follows is then the one line the user sees, while a successful call keeps every message it logged.
    """
    logger = logging.getLogger(logger_name)
    held: list[logging.LogRecord] = []

    def hold(record: logging.LogRecord) -> bool:
        held.append(record)
        return False  # not emitted now

    logger.addFilter(hold)
    try:
        yield
    finally:
        logger.removeFilter(hold)
    for record in held:  # only reached when the block succeeded
        logger.handle(record)
