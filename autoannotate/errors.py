"""The project's error types: one per kind of failure, each carrying a one-line, actionable message.

The CLI maps each type to an exit code (see ``cli.py``); nothing else in the package prints or exits.
"""

from __future__ import annotations

import unicodedata


class AutoAnnotateError(Exception):
    """Base class. ``str(err)`` is a complete one-line message for the user, fix included."""

    exit_code = 2


class ConfigError(AutoAnnotateError):
    """An option or config file value is invalid (names the field, the value and what is expected)."""


class InputError(AutoAnnotateError):
    """The ``--data`` source cannot be read as a whole (nothing there, unreadable list, bad glob)."""


class ModelError(AutoAnnotateError):
    """A model file is missing, cannot be downloaded, is corrupt, or is the wrong kind for its role."""


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
