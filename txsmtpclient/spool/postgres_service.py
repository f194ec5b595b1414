"""
The daemon's side of the PostgreSQL queue: :class:`QueueListener`, a
Twisted service whose thread waits on ``LISTEN txsmtp_queue`` on a dedicated
connection (never the reactor thread) and wakes the spool service when mail
is enqueued or falls due, renews this worker's leases, and reconnects with
backoff after a restart or failover, logging the outage once.

The spool service's own poll (``--poll-interval``) is the slow safety net;
the listener makes it unnecessary to poll fast.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread
from twisted.logger import Logger

from txsmtpclient.spool._pgbase import CHANNEL
from txsmtpclient.spool.postgres import PostgresQueue
from txsmtpclient.spool.postgres_schema import describe_error, redact_url

__all__ = ["QueueListener"]

# How often the thread looks at its stop flag while no notification comes.
_TICK = 0.5


class QueueListener(Service):
    """
    Wakes a worker on ``NOTIFY`` and at the next known due time, and keeps
    its leases alive.

    :param queue: the worker's queue (its URL, lease and held entries).
    :param wake: called (from the listener's thread) when there may be work:
        ``lambda: reactor.callFromThread(spool_service.wake)``.
    :param poll_interval: seconds between looks at the earliest due time,
        the safety net for a lost notification.
    :param connect_timeout: seconds to wait for each (re)connection.
    """

    log = Logger()

    def __init__(
        self,
        queue: PostgresQueue,
        wake: Callable[[], None],
        *,
        poll_interval: float = 10.0,
        connect_timeout: float = 10.0,
    ) -> None:
        self.queue = queue
        self.wake = wake
        self.poll_interval = poll_interval
        self.connect_timeout = connect_timeout
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        #: Notifications received since start (for tests and the status).
        self.notifications = 0
        #: Times the listener reconnected after losing the database.
        self.reconnects = 0

    def startService(self) -> None:
        """Start the listener's thread."""
        super().startService()  # type: ignore[no-untyped-call]
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="txsmtp-queue-listen", daemon=True)
        self._thread.start()

    def stopService(self) -> Deferred[None]:
        """
        Stop the thread (within about half a second) without blocking the
        reactor.
        """
        super().stopService()  # type: ignore[no-untyped-call]
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is None:
            return Deferred.fromCoroutine(_nothing())
        return deferToThread(thread.join, 30)

    # --- the thread ---------------------------------------------------------------

    def _run(self) -> None:
        delay = 1.0
        lost = False
        while not self._stop.is_set():
            try:
                self._listen(reconnected=lost)
            except Exception as e:
                if self._stop.is_set():
                    return
                if not lost:
                    self.log.warn(
                        "Queue listener lost the database, reconnecting with backoff: {error}",
                        error=describe_error(e, self.queue.url),
                    )
                lost = True
                self._stop.wait(delay)
                delay = min(delay * 2, 30.0)
            else:
                return

    def _listen(self, *, reconnected: bool) -> None:
        import psycopg

        with psycopg.connect(
            self.queue.url, autocommit=True, connect_timeout=max(1, round(self.connect_timeout))
        ) as conn:
            conn.execute(f"LISTEN {CHANNEL}".encode())
            if reconnected:
                self.reconnects += 1
                self.log.info(
                    "Queue listener reconnected to {url}", url=redact_url(self.queue.url)
                )
            # Something may have been enqueued while nobody listened.
            self.wake()
            next_due = math.inf
            next_poll = 0.0
            next_renew = time.monotonic() + self.queue.lease / 3
            while not self._stop.is_set():
                now = time.monotonic()
                if now >= next_poll:
                    # The earliest due entry, or the earliest lease of another
                    # worker to expire (it may have died).
                    row = conn.execute(
                        "SELECT least((SELECT min(due) FROM txsmtp_entry WHERE state = 'queue'),"
                        " (SELECT extract(epoch FROM min(lease_until))::float8 FROM txsmtp_entry"
                        " WHERE state = 'sending' AND lease_owner <> %s))",
                        (self.queue.worker,),
                    ).fetchone()
                    next_due = float(row[0]) if row and row[0] is not None else math.inf
                    next_poll = now + self.poll_interval
                if now >= next_renew:
                    self.queue.renew_leases()
                    next_renew = now + self.queue.lease / 3
                if next_due <= time.time():
                    next_due = math.inf
                    self.wake()
                woke = False
                for notify in conn.notifies(timeout=self._timeout(next_due), stop_after=100):
                    self.notifications += 1
                    due = _due(notify.payload)
                    if due <= time.time():
                        woke = True
                    else:
                        next_due = min(next_due, due)
                if woke:
                    self.wake()

    def _timeout(self, next_due: float) -> float:
        return max(0.01, min(_TICK, next_due - time.time()))


def _due(payload: str) -> float:
    try:
        return float(payload)
    except ValueError:
        return 0.0


async def _nothing() -> None:
    return None


def wake_from_thread(reactor: Any, wake: Callable[[], None]) -> Callable[[], None]:
    """
    A ``wake`` for :class:`QueueListener` that runs ``wake`` in the reactor
    thread.
    """
    return lambda: reactor.callFromThread(wake)
