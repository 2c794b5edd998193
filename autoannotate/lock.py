"""One run at a time per output dir (per shard where shards run together), with kernel locks that die with their
holder.

Two lock files in the output dir:

* ``.autoannotate.lock``: a whole run (and ``merge``) holds it exclusively; a ``--shard`` run holds it shared, so
  that shards run side by side while no whole run or merge can start (and the other way round);
* ``.autoannotate.shard-I-of-N.lock``: a ``--shard I/N`` run holds it exclusively, so one shard never runs twice.

The locks are ``flock(2)`` locks: the kernel drops them when their process ends, however it ends (``kill -9``
included), so a lock left by a killed run is taken over by the next run with no stale-lock heuristics. The lock
files stay (an empty lock file is harmless); each holds its holder's pid, host and start time so that a refused run
can name it. On network filesystems, flock works across hosts where the filesystem supports it (NFSv4, Lustre,
CephFS); where it does not, a second host is not kept out.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from autoannotate.errors import OutputError

RUN_LOCK = ".autoannotate.lock"


def shard_lock_name(shard: tuple[int, int]) -> str:
    return f".autoannotate.shard-{shard[0]}-of-{shard[1]}.lock"


@dataclass
class OutputLock:
    """The locks one run holds; ``exclusive`` is True for a whole run or a merge (no other run can be in the dir)."""

    output_dir: Path
    exclusive: bool
    _fds: list[int] = field(default_factory=list)

    def release(self) -> None:
        """Drop every lock (idempotent). Closing the descriptors releases the flock locks."""
        while self._fds:
            with contextlib.suppress(OSError):
                os.close(self._fds.pop())

    def __enter__(self) -> OutputLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def acquire_output_lock(output_dir: Path, shard: tuple[int, int] | None = None, *, what: str = "run") -> OutputLock:
    """Lock ``output_dir`` for a whole run (``shard=None``) or for one shard. Raises OutputError naming the holder.

    ``what`` names the taker in the lock file (``run``, ``merge``).
    """
    lock = OutputLock(output_dir, exclusive=shard is None)
    try:
        if shard is None:
            lock._fds.append(_take(output_dir / RUN_LOCK, fcntl.LOCK_EX, what, output_dir))
        else:
            lock._fds.append(_take(output_dir / RUN_LOCK, fcntl.LOCK_SH, None, output_dir))
            lock._fds.append(_take(output_dir / shard_lock_name(shard), fcntl.LOCK_EX, what, output_dir))
    except BaseException:
        lock.release()
        raise
    return lock


def _take(path: Path, mode: int, what: str | None, output_dir: Path) -> int:
    """Open ``path`` and flock it without waiting; write our holder record when we take it exclusively."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as err:
        raise OutputError(f"cannot create lock file {str(path)!r}: {err.strerror or err}", errno=err.errno) from None
    try:
        fcntl.flock(fd, mode | fcntl.LOCK_NB)
    except OSError as err:
        os.close(fd)
        if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise OutputError(_busy_message(output_dir)) from None
        if err.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
            # the filesystem has no locks at all: run unlocked rather than not at all
            return os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        raise OutputError(f"cannot lock {str(path)!r}: {err.strerror or err}", errno=err.errno) from None
    if what is not None:
        record = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "what": what,
        }
        with contextlib.suppress(OSError):  # the record only serves the message of a refused run
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
    return fd


def _busy_message(output_dir: Path) -> str:
    """One line naming the runs that hold locks in ``output_dir`` (pid, host, start time), from their records."""
    holders = []
    for path in sorted(output_dir.glob(".autoannotate*.lock")):
        record = _held_record(path)
        if record is not None:
            holders.append(record)
    if holders:
        named = "; ".join(
            f"{h.get('what', 'run')}{_shard_of(h)} pid {h.get('pid')} on {h.get('host')} since {h.get('started_at')}"
            for h in holders[:3]
        )
        more = f" and {len(holders) - 3} more" if len(holders) > 3 else ""
    else:
        named, more = "another autoannotate process", ""
    return (
        f"output dir {str(output_dir)!r} is in use by {named}{more}; wait for it to finish, or use another"
        " --output-dir (shards of one run may share it: --shard I/N)"
    )


def _shard_of(record: dict[str, object]) -> str:
    shard = record.get("shard")
    return f" (shard {shard})" if shard else ""


def _held_record(path: Path) -> dict[str, object] | None:
    """The holder record of ``path`` when some process holds it exclusively now, else None."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            pass  # held exclusively: its record is current
        else:
            return None  # nobody holds it exclusively (a stale record, or shared holders that write none)
        try:
            record = json.loads(os.pread(fd, 4096, 0).decode("utf-8", "replace") or "{}")
        except ValueError:
            record = {}
        if not isinstance(record, dict):
            record = {}
        name = path.name
        if name.startswith(".autoannotate.shard-"):
            record["shard"] = name[len(".autoannotate.shard-") : -len(".lock")].replace("-of-", "/")
        return record
    finally:
        os.close(fd)
