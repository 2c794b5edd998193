"""Atomic file writing: a temporary file in the same directory, fsync, then rename over the target.

An interrupted run therefore leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
import tempfile
from pathlib import Path

from autoannotate.errors import OutputError

# Temporary names are short and of one fixed shape whatever the target's name (a 255-byte label name still gets
# one), and recognisable, so that the temporary files a killed run left can be found and removed.
TEMP_PREFIX, TEMP_SUFFIX = ".autoannotate-", ".tmp"
TEMP_PATTERN = re.compile(r"\.autoannotate-[A-Za-z0-9_]{8}\.tmp")


def remove_stale_temps(root: Path) -> int:
    """Delete the temporary files of ours below ``root``: regular files whose whole name matches ``TEMP_PATTERN``.

    Walks ``root`` recursively without following symlinks below it (``images/`` is full of links to the user's
    images), never removes anything else, and ignores what cannot be read or removed. Returns how many it removed.
    Only safe while no other run writes there (the caller holds the output dir's exclusive lock).
    """
    removed = 0
    for directory, _subdirs, names in os.walk(root, followlinks=False):
        for name in names:
            if not TEMP_PATTERN.fullmatch(name):
                continue
            path = os.path.join(directory, name)
            with contextlib.suppress(OSError):
                if stat.S_ISREG(os.lstat(path).st_mode):  # mkstemp makes plain files; a link so named is not ours
                    os.unlink(path)
                    removed += 1
    return removed


def write_text_atomic(path: Path, text: str, *, fsync: bool = True) -> None:
    """Write ``text`` (UTF-8, ``\\n`` line ends) to ``path`` atomically, creating parent directories.

    Raises OutputError with a one-line reason (read-only directory, full disk, ...); the old file is untouched.
    """
    write_bytes_atomic(path, text.encode("utf-8"), fsync=fsync)


def write_bytes_atomic(path: Path, data: bytes, *, fsync: bool = True) -> None:
    """Write ``data`` to ``path`` atomically (see ``write_text_atomic``)."""
    tmp_name = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=TEMP_SUFFIX, dir=path.parent)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            if fsync:
                handle.flush()
                os.fsync(handle.fileno())
        os.chmod(tmp_name, 0o644)
        os.replace(tmp_name, path)
        tmp_name = None
    except OSError as err:
        raise OutputError(f"cannot write {str(path)!r}: {err.strerror or err}", errno=err.errno) from None
    finally:
        if tmp_name is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp_name)
