"""
The daemon's PostgreSQL side in this process: ``--queue`` options, the
services ``makeService`` builds, and the LISTEN/NOTIFY listener waking the
spool service and renewing leases, against the private cluster.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
import pytest_twisted
from helpers import wait_for as _wait_for
from twisted.python import usage

pytest.importorskip("psycopg", reason="psycopg is not installed (pip install -e '.[test]')")

from txsmtpclient import tap
from txsmtpclient.spool.postgres import PostgresQueue
from txsmtpclient.spool.postgres_service import QueueListener

MESSAGE = b"Subject: hi\r\n\r\nhi\r\n"


def test_queue_options_are_checked() -> None:
    """--queue takes only a PostgreSQL URL; --lease and --migrate need it; the poll slows."""
    with pytest.raises(usage.UsageError, match="PostgreSQL URL"):
        tap._settings({"queue": "/var/spool/txsmtp"})
    with pytest.raises(usage.UsageError, match="need --queue"):
        tap._settings({"lease": "10s"})
    settings = tap._settings({"queue": "postgresql://u@h/db", "lease": "30s"})
    assert settings["queue"] == "postgresql://u@h/db" and settings["lease"] == 30.0
    assert settings["poll_interval"] == 10.0
    assert (
        tap._settings({"queue": "postgres://u@h/db", "poll-interval": "2s"})["poll_interval"]
        == 2.0
    )
    assert tap._settings({})["queue"] is None


def test_options_migrate_a_new_database(pg_cluster: Any) -> None:
    """twist txsmtp --queue URL --migrate brings a new database's schema up before start."""
    url = pg_cluster.create_database()
    options = tap.Options()
    with pytest.raises(usage.UsageError, match="migrate"):
        options.parseOptions(["--queue", url])
    options.parseOptions(["--queue", url, "--migrate"])
    assert options.settings["migrate"] is True
    tap.Options().parseOptions(["--queue", url])  # now up to date


def test_make_service_selects_the_database(pg_url: str) -> None:
    """makeService with --queue sends from a PostgresQueue and adds its listener."""
    options = tap.Options()
    options.parseOptions(["--queue", pg_url, "--lease", "20s"])
    top = tap.makeService(options)
    spool_service: Any = top.getServiceNamed("spool")
    listener: Any = top.getServiceNamed("queue-listener")
    try:
        assert isinstance(spool_service.queue, PostgresQueue)
        assert spool_service.queue.lease == 20.0
        assert isinstance(listener, QueueListener) and listener.queue is spool_service.queue
    finally:
        spool_service.queue.close()


@pytest_twisted.ensureDeferred
async def test_listener_wakes_on_notify_and_at_due_time(pg_url: str) -> None:
    """The listener wakes the worker on enqueue and again when a later entry falls due."""
    queue = PostgresQueue(pg_url, max_connections=2, lease=3.0)
    wakes: list[float] = []
    woke = threading.Event()

    def wake() -> None:
        wakes.append(time.time())
        woke.set()

    listener = QueueListener(queue, wake, poll_interval=60.0)
    listener.startService()
    try:
        _wait_for(woke.is_set, 15, "the first wake at start")
        woke.clear()
        queue.enqueue(MESSAGE, "a@example.test", "b@x.test")
        _wait_for(woke.is_set, 15, "a wake on NOTIFY")
        assert listener.notifications == 1
        woke.clear()
        due = time.time() + 1.0
        queue.enqueue(MESSAGE, "a@example.test", "b@x.test", at=due)
        _wait_for(lambda: bool(wakes) and wakes[-1] >= due, 15, "a wake at the due time")
        assert listener.notifications == 2
    finally:
        await listener.stopService()
        queue.close()


@pytest_twisted.ensureDeferred
async def test_listener_renews_the_workers_leases(pg_url: str) -> None:
    """A live worker's leases are renewed by its listener, so they never expire under it."""
    import psycopg

    queue = PostgresQueue(pg_url, max_connections=2, lease=1.5)
    entry_id = queue.enqueue(MESSAGE, "a@example.test", "b@x.test")
    assert queue.claim(entry_id) is not None
    other = PostgresQueue(pg_url, max_connections=2)
    listener = QueueListener(queue, lambda: None, poll_interval=60.0)
    listener.startService()

    def lease_until() -> Any:
        with psycopg.connect(pg_url) as conn:
            row = conn.execute(b"SELECT lease_until FROM txsmtp_entry").fetchone()
            assert row is not None
            return row[0]

    try:
        first = lease_until()
        _wait_for(lambda: lease_until() > first, 15, "a renewal")
        second = lease_until()
        _wait_for(lambda: lease_until() > second, 15, "another renewal")
        assert other.claim(entry_id) is None
    finally:
        await listener.stopService()
        queue.close()
        other.close()


@pytest_twisted.ensureDeferred
async def test_daemon_streams_a_chunked_message_byte_for_byte(
    pg_url: str, smtp_server: Any
) -> None:
    """A 3 MB message stored in 1 MiB chunks reaches the relay byte for byte, in order."""
    from test_daemon_e2e import _until

    body = b"".join(b"line %07d " % n + b"x" * 80 + b"\r\n" for n in range(32000))
    message = b"Subject: big\r\n\r\n" + body
    options = tap.Options()
    options.parseOptions(
        ["--queue", pg_url, "--relay", smtp_server.address, "--tls", "never", "--grace", "5"]
    )
    top = tap.makeService(options)
    spool_service: Any = top.getServiceNamed("spool")
    queue: PostgresQueue = spool_service.queue
    top.startService()
    try:
        await spool_service.when_ready()
        entry_id = queue.enqueue(message, "a@example.test", "b@example.test")
        assert queue.read_chunk(entry_id, 2) is not None  # really several chunks
        await _until(lambda: len(smtp_server.messages) == 1, 60, "the message")
        await _until(lambda: queue.get(entry_id).state.value == "done", 30, "done")
    finally:
        await top.stopService()
        queue.close()
    assert smtp_server.messages[0].content == message
