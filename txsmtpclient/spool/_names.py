"""
The spool folder's names and small file helpers: entry ids, queue and held
file names, the sorted listing of ``queue/``, and writes and removals that
tolerate what a crash or a full disk leaves.  Used by :mod:`._files`.
"""

from __future__ import annotations

import bisect
import builtins
import contextlib
import errno
import math
import os

from txsmtpclient.spool.envelope import is_valid_id
from txsmtpclient.spool.queue import SpoolFull

__all__ = [
    "HELD_TAG",
    "QueueIndex",
    "new_id",
    "parse_held_name",
    "parse_queue_name",
    "queue_name",
    "raise_if_full",
    "unlink_if_present",
    "write_all",
]


#: Marks a file in ``sending/`` that came from ``held/`` and returns there,
#: even after a crash: ``{id}.{pid}.held.json``.
HELD_TAG = "held"


def new_id(now: float) -> str:
    """
    A spool id unique across processes and hosts sharing a spool: the time in
    microseconds (hex), the pid, and 32 random bits.

    :param now: the current time, epoch seconds.
    """
    return f"{int(now * 1_000_000):x}-{os.getpid()}-{os.urandom(4).hex()}"


def queue_name(due: float, entry_id: str) -> str:
    """
    A queued entry's file name: ``{due_ms:015d}.{id}.json``, so that name
    order is due order.
    """
    return f"{max(0, math.floor(due * 1000)):015d}.{entry_id}.json"


def parse_queue_name(name: str) -> tuple[int, str] | None:
    """
    ``(due_ms, id)`` from a queued entry's file name, or ``None`` if it is
    not one.
    """
    parts = name.split(".")
    if len(parts) != 3 or parts[2] != "json" or not parts[0].isdigit():
        return None
    if not is_valid_id(parts[1]):
        return None
    return int(parts[0]), parts[1]


def parse_held_name(name: str) -> tuple[str, int] | None:
    """
    ``(id, holder pid)`` from a file name in ``sending/``, or ``None`` if it
    is not one: ``{id}.{pid}.json``, or ``{id}.{pid}.held.json`` for an
    operator-held entry being changed (it goes back to ``held/``).
    """
    parts = name.split(".")
    if len(parts) == 4 and parts[2] == HELD_TAG:
        del parts[2]
    if len(parts) != 3 or parts[2] != "json" or not parts[1].isdigit():
        return None
    if not is_valid_id(parts[0]):
        return None
    return parts[0], int(parts[1])


class QueueIndex:
    """
    A listing of ``queue/``: names sorted, which is due order, and an id to
    name map built only when first asked for.
    """

    __slots__ = ("_by_id", "mtime_ns", "names")

    def __init__(self, mtime_ns: int, names: builtins.list[str]) -> None:
        self.mtime_ns = mtime_ns
        self.names = names
        self._by_id: dict[str, str] | None = None

    def due_count(self, now: float) -> int:
        """
        How many names, from the start, are due at ``now``.
        """
        # "/" sorts just after ".", so every "{now_ms}.{id}.json" is below.
        bound = f"{max(0, math.floor(now * 1000)):015d}/"
        return bisect.bisect_right(self.names, bound)

    def name_of(self, entry_id: str) -> str | None:
        """
        The file name of a queued id, if listed.
        """
        if self._by_id is None:
            by_id = {}
            for name in self.names:
                parts = name.split(".")
                if len(parts) == 3:
                    by_id[parts[1]] = name
            self._by_id = by_id
        return self._by_id.get(entry_id)


def write_all(fd: int, data: bytes) -> None:
    """
    Write all of ``data`` to a file descriptor (``os.write`` may write less).
    """
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def unlink_if_present(path: str) -> None:
    """
    Remove a file; one already gone is fine.
    """
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def raise_if_full(error: OSError, what: str) -> None:
    """
    Raise :class:`SpoolFull` for a full disk or quota; return otherwise.
    """
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        raise SpoolFull(
            error.errno, f"{what}: the spool's disk is full ({error.strerror})"
        ) from error
