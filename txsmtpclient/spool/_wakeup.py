"""
Wake-up on enqueue: tell the daemon at once when an entry lands in a spool
folder's ``queue/``, through Linux inotify (:mod:`twisted.internet.inotify`).

Where inotify is missing (another system, a reactor without file
descriptors, the kernel's watch limit reached), :func:`watch_queue` returns
``None`` and the daemon finds new entries at its next poll, as before.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from twisted.logger import Logger

__all__ = ["watch_queue"]

_log = Logger()


def watch_queue(
    queue: object, reactor: Any, on_change: Callable[[], None]
) -> Callable[[], None] | None:
    """
    Call ``on_change`` (in the reactor thread) each time an entry is renamed
    into the spool's queue folder.

    :param queue: the queue; only a spool folder (an object with a ``path``
        holding a ``queue/`` folder) can be watched.
    :param reactor: the reactor that reads the notifications.
    :param on_change: called once per notification; it should coalesce.
    :returns: a function that stops watching, or ``None`` when the queue
        cannot be watched (the caller keeps polling).
    """
    path = getattr(queue, "path", None)
    if not isinstance(path, str) or not os.path.isdir(os.path.join(path, "queue")):
        return None
    try:
        from twisted.internet import inotify
        from twisted.python.filepath import FilePath

        notifier = inotify.INotify(reactor)
        notifier.startReading()
    except Exception as e:  # ImportError, or the reactor or kernel cannot
        _log.info("Not watching the spool for new mail ({error}): polling", error=str(e))
        return None

    def changed(_ignored: object, _path: object, _mask: int) -> None:
        on_change()

    try:
        # IN_MOVED_TO: every entry arrives in queue/ by a rename.
        notifier.watch(
            FilePath(os.path.join(path, "queue")),
            mask=inotify.IN_MOVED_TO,
            callbacks=[changed],
        )
    except Exception as e:  # INotifyError: out of watches, or no permission
        notifier.loseConnection()
        _log.info("Not watching the spool for new mail ({error}): polling", error=str(e))
        return None
    return notifier.loseConnection
