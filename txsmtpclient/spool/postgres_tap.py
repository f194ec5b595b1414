"""
``twist txsmtp --queue postgresql://...``: the daemon's options for the
PostgreSQL queue and the services it adds (see :mod:`.postgres` and
:mod:`.postgres_service`).  psycopg is imported only when ``--queue`` is
given, so the folder spool's daemon does not need it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from twisted.application.service import MultiService
from twisted.python import usage

__all__ = ["check_queue", "queue_service", "queue_settings"]


def queue_settings(given: Mapping[str, Any]) -> dict[str, Any]:
    """
    The ``--queue`` settings: the database URL, the lease, ``--migrate``;
    with a database the poll is the slow safety net (10s unless given),
    since LISTEN/NOTIFY wakes the daemon.
    """
    from txsmtpclient._tapconfig import _flag, _seconds

    queue = given.get("queue")
    settings: dict[str, Any] = {"queue": None, "migrate": False, "lease": 60.0}
    if queue is None or not str(queue).strip():
        if given.get("lease") is not None or _flag("migrate", given.get("migrate", False)):
            raise usage.UsageError("--lease and --migrate need --queue")
        return settings
    from txsmtpclient.spool.postgres_schema import is_queue_url

    url = str(queue).strip()
    if not is_queue_url(url):
        raise usage.UsageError(
            "--queue: expected a PostgreSQL URL such as postgresql://user@host/db, "
            "got something else (the spool folder is --spool)"
        )
    settings["queue"] = url
    settings["migrate"] = _flag("migrate", given.get("migrate", False))
    lease = _seconds("lease", str(given.get("lease", "60s")))
    if lease < 1:
        raise usage.UsageError("--lease must be at least 1s")
    settings["lease"] = lease
    if given.get("poll-interval") is None:
        settings["poll_interval"] = 10.0
    return settings


def check_queue(settings: Mapping[str, Any]) -> None:
    """
    Before start-up: reach the ``--queue`` database, apply the migrations
    with ``--migrate``, and check its schema.

    :raises StartupError: one line saying what is wrong and what to do, with
        the sysexits code ``twist txsmtp`` exits with: 75 when the server
        cannot be reached (try again later), 78 for a wrong URL, password or
        schema, or psycopg missing.
    """
    from txsmtpclient._tapconfig import StartupError
    from txsmtpclient.spool.sendmail import EX_CONFIG, EX_TEMPFAIL

    try:
        from txsmtpclient.spool.postgres_schema import (
            QueueDatabaseError,
            QueueUnavailable,
            open_checked,
        )
    except ImportError as e:  # psycopg missing
        raise StartupError(
            f"--queue needs psycopg: pip install 'txsmtpclient[postgres]' ({e})", EX_CONFIG
        ) from None
    try:
        open_checked(settings["queue"], apply_migrations=settings["migrate"])
    except QueueUnavailable as e:
        raise StartupError(f"--queue: {e}", EX_TEMPFAIL) from None
    except QueueDatabaseError as e:
        raise StartupError(f"--queue: {e}", EX_CONFIG) from None


def queue_service(
    settings: Mapping[str, Any],
    top: MultiService,
    make_spool: Callable[[], Any],
    on_set_aside: Callable[[str, str], None] | None = None,
) -> tuple[Any, Callable[[Any], None]]:
    """
    The queue the daemon sends from: the spool folder, or with ``--queue``
    a :class:`~txsmtpclient.spool.postgres.PostgresQueue` and its listener.

    :param make_spool: builds the spool folder's queue.
    :param on_set_aside: reports entries set aside (default: logged).
    :returns: ``(queue, attach)``; ``attach(service)`` adds what the queue
        needs beside the spool service (the listener) to ``top``.
    """
    if not settings.get("queue"):
        return make_spool(), lambda service: None
    from twisted.internet import reactor
    from twisted.logger import Logger

    from txsmtpclient._tapconfig import in_flight  # (imports this module)
    from txsmtpclient.spool.postgres import PostgresQueue
    from txsmtpclient.spool.postgres_service import QueueListener, wake_from_thread

    log = Logger(namespace="txsmtpclient.spool.postgres")
    if on_set_aside is None:
        from txsmtpclient.spool.service import SetAsideReporter

        on_set_aside = SetAsideReporter()
    queue = PostgresQueue(
        settings["queue"],
        lease=settings["lease"],
        # One per message in flight's spool call at most, and a few spare.
        max_connections=in_flight(settings) + 3,
        reconnect_for=300.0,
        on_outage=lambda message: log.warn("{message}", message=message),
        on_set_aside=on_set_aside,
    )

    def attach(service: Any) -> None:
        listener = QueueListener(
            queue,
            wake_from_thread(reactor, service.wake),
            poll_interval=settings["poll_interval"],
        )
        listener.setName("queue-listener")  # type: ignore[no-untyped-call]
        listener.setServiceParent(top)  # type: ignore[no-untyped-call]
        reactor.addSystemEventTrigger("after", "shutdown", queue.close)

    return queue, attach
