"""
What PostgresQueue writes, and in how many transactions: each entry's row is
written once at enqueue, a claimed entry's changes share one transaction
inside ``group_commit()`` (and nothing of it is visible, so nothing is
acknowledged, before the block ends), and a small message comes with its
claim.  Against the private cluster (``tests/pgcluster.py``).
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

pytest.importorskip("psycopg", reason="psycopg is not installed (pip install -e '.[test]')")

import psycopg

from txsmtpclient.spool.envelope import Attempt, State
from txsmtpclient.spool.postgres import PostgresQueue
from txsmtpclient.spool.postgres_schema import QueueDatabaseError
from txsmtpclient.spool.queue import EntryBusy, EntryStateError, Submission

MESSAGE = b"From: a@example.test\r\nSubject: hello\r\n\r\nbody\r\n"


def _sql(url: str, query: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(query.encode(), params or None)
        return cur.fetchall() if cur.description is not None else []


def _attempt() -> Attempt:
    return Attempt(at=time.time(), duration=0.1, relay="relay", code=250, text="ok")


class _Trickle(io.RawIOBase):
    """A raw stream that returns a few bytes per read, as a pipe may."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = min(7, len(buffer))
        part, self.data = self.data[:n], self.data[n:]
        buffer[: len(part)] = part
        return len(part)


def test_enqueue_writes_each_row_once(
    make_queue: Callable[..., PostgresQueue], pg_url: str
) -> None:
    """
    Bytes, text and a stream that fits in one chunk, alone and in a batch:
    each row is inserted with its size and never updated (no second row
    version: the rows fill the table's first slots in order).
    """
    queue = make_queue(chunk_size=64)
    big = b"x" * 150  # three chunks, given as bytes: its size is known too
    first = queue.enqueue(MESSAGE, "a@example.test", "b@example.test")
    batch = queue.enqueue_many(
        [
            Submission(MESSAGE.decode(), "a@example.test", "b@example.test"),
            Submission(_Trickle(MESSAGE), "a@example.test", "b@example.test"),  # type: ignore[arg-type]
            Submission(big, "a@example.test", "b@example.test"),
            Submission(b"", "a@example.test", "b@example.test"),
        ]
    )
    ids = [first, *batch]
    rows = _sql(pg_url, "SELECT ctid::text, id, size FROM txsmtp_entry ORDER BY ctid")
    # The table was emptied by TRUNCATE (fresh storage): an UPDATE would
    # have left a dead version and moved the row to a later slot.
    assert [r[0] for r in rows] == ["(0,1)", "(0,2)", "(0,3)", "(0,4)", "(0,5)"]
    assert [r[1] for r in rows] == ids
    sizes = [len(MESSAGE)] * 3 + [len(big), 0]
    assert [r[2] for r in rows] == sizes
    assert [queue.get(i).size for i in ids] == sizes
    assert [queue.read_message(i) for i in ids] == [MESSAGE] * 3 + [big, b""]


def test_long_stream_is_whole_with_its_size(
    make_queue: Callable[..., PostgresQueue], pg_url: str
) -> None:
    """A stream longer than a chunk is stored whole, in order, with its size."""
    queue = make_queue(chunk_size=16)
    data = bytes(range(100))
    entry_id = queue.enqueue(_Trickle(data), "a@example.test", "b@example.test")  # type: ignore[arg-type]
    assert queue.read_message(entry_id) == data
    assert queue.get(entry_id).size == 100
    assert _sql(pg_url, "SELECT count(*), min(length(data)) FROM txsmtp_chunk") == [(7, 4)]


def test_idempotency_key_repeated_in_one_batch(make_queue: Callable[..., PostgresQueue]) -> None:
    """A key given twice in one batch stores one message and returns its id twice."""
    queue = make_queue()
    ids = queue.enqueue_many(
        [
            Submission(MESSAGE, "a@example.test", "b@example.test", idempotency_key="k1"),
            Submission(b"other", "a@example.test", "c@example.test"),
            Submission(b"again", "a@example.test", "b@example.test", idempotency_key="k1"),
        ]
    )
    assert ids[0] == ids[2] != ids[1]
    assert queue.read_message(ids[0]) == MESSAGE
    assert sum(queue.counts().values()) == 2


def _claim(queue: PostgresQueue, count: int) -> list[str]:
    queue.enqueue_many(
        [Submission(MESSAGE, "a@example.test", f"r{n}@example.test") for n in range(count)]
    )
    entries = queue.claim_due(time.time() + 1, count)
    assert len(entries) == count
    return sorted(e.id for e in entries)


def test_group_commit_is_one_transaction(
    make_queue: Callable[..., PostgresQueue], pg_url: str
) -> None:
    """
    Finishing three entries inside group_commit() is one transaction: none
    is visible to others before the block ends, all are after, with one xmin.
    """
    queue = make_queue()
    ids = _claim(queue, 3)
    with queue.group_commit():
        queue.complete(ids[0], attempt=_attempt())
        queue.fail(ids[1], _outcome())
        queue.reschedule(ids[2], time.time() + 3600, _attempt())
        seen = _sql(pg_url, "SELECT state FROM txsmtp_entry ORDER BY id")
        assert seen == [("sending",)] * 3
    rows = _sql(pg_url, "SELECT id, state, xmin::text FROM txsmtp_entry ORDER BY id")
    assert [r[1] for r in rows] == ["done", "failed", "queue"]
    assert len({r[2] for r in rows}) == 1
    assert queue.renew_leases() == 0  # nothing held any more


def _outcome() -> Any:
    from txsmtpclient.spool.envelope import Outcome, OutcomeKind

    return Outcome(time.time(), OutcomeKind.FAILED, 550, "no")


def test_group_commit_error_in_block_changes_nothing(
    make_queue: Callable[..., PostgresQueue], pg_url: str
) -> None:
    """A block that raises rolls its changes back; the entries stay claimed and can finish."""
    queue = make_queue()
    ids = _claim(queue, 2)
    with pytest.raises(RuntimeError), queue.group_commit():
        queue.complete(ids[0], attempt=_attempt())
        raise RuntimeError("stop")
    assert _sql(pg_url, "SELECT DISTINCT state FROM txsmtp_entry") == [("sending",)]
    assert queue.complete(ids[0], attempt=_attempt()).state is State.DONE
    assert queue.complete(ids[1]).state is State.DONE


def test_group_commit_lost_lease_fails_only_that_entry(
    make_queue: Callable[..., PostgresQueue], pg_url: str
) -> None:
    """An entry whose lease another worker took fails alone; the rest of the group commits."""
    queue = make_queue()
    ids = _claim(queue, 3)
    _sql(pg_url, "UPDATE txsmtp_entry SET lease_token = gen_random_uuid() WHERE id = %s", ids[1])
    with queue.group_commit():
        queue.complete(ids[0])
        with pytest.raises(EntryStateError, match="lease lost"):
            queue.complete(ids[1])
        queue.complete(ids[2])
    rows = _sql(pg_url, "SELECT state FROM txsmtp_entry ORDER BY id")
    assert rows == [("done",), ("sending",), ("done",)]
    assert ids[1] not in queue._claimed  # nothing kept of a lost entry


def test_group_commit_survives_a_dropped_connection(
    make_queue: Callable[..., PostgresQueue], pg_url: str
) -> None:
    """
    The database drops the group's connection mid-block: the calls made so
    far run again on their own, the rest too, and everything is committed.
    """
    queue = make_queue()
    ids = _claim(queue, 3)
    with queue.group_commit():
        queue.record_attempt(ids[0], _attempt())
        queue.complete(ids[0])
        _sql(
            pg_url,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()",
        )
        queue.complete(ids[1])
        queue.complete(ids[2])
    assert _sql(pg_url, "SELECT DISTINCT state FROM txsmtp_entry") == [("done",)]
    assert len(queue.get(ids[0]).attempts) == 1


def test_group_commit_that_cannot_commit_raises(
    make_queue: Callable[..., PostgresQueue], pg_url: str
) -> None:
    """
    When the database goes away before the commit and stays away, the block
    raises (nothing acknowledged) and the entry is still this worker's.
    """
    queue = make_queue(reconnect_for=0.0)
    ids = _claim(queue, 1)
    real = queue._pool
    with pytest.raises(QueueDatabaseError), queue.group_commit():
        queue.complete(ids[0])
        queue._pool = _Unreachable(real)  # type: ignore[assignment]
        _sql(
            pg_url,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()",
        )
    assert _sql(pg_url, "SELECT state FROM txsmtp_entry") == [("sending",)]
    queue._pool, queue.reconnect_for = real, 5.0
    assert queue.complete(ids[0]).state is State.DONE


def test_claim_in_a_failed_group_is_let_go(
    make_queue: Callable[..., PostgresQueue], pg_url: str
) -> None:
    """
    An entry claimed inside a block that then fails is reported failed with
    it, so never sent: its lease is no longer renewed, and it expires.
    """
    queue = make_queue(reconnect_for=0.0)
    first = _claim(queue, 1)[0]
    later = queue.enqueue(MESSAGE, "a@example.test", "c@example.test")
    real = queue._pool
    with pytest.raises(QueueDatabaseError), queue.group_commit():
        queue.complete(first)
        assert [e.id for e in queue.claim_due(time.time() + 1, 5)] == [later]
        queue.record_attempt(later, _attempt())
        queue._pool = _Unreachable(real)  # type: ignore[assignment]
        _sql(
            pg_url,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()",
        )
    queue._pool, queue.reconnect_for = real, 5.0
    assert _sql(pg_url, "SELECT state FROM txsmtp_entry WHERE id = %s", later) == [("sending",)]
    assert queue.renew_leases() == 0


class _Unreachable:
    """A connection pool whose database is gone."""

    def __init__(self, real: Any) -> None:
        self.real = real

    def __getattr__(self, name: str) -> Any:
        if name in ("connection", "getconn", "check"):

            def gone(*args: Any, **kwargs: Any) -> Any:
                raise psycopg.OperationalError("connection refused")

            return gone
        return getattr(self.real, name)


def test_small_message_comes_with_its_claim(
    make_queue: Callable[..., PostgresQueue], pg_url: str
) -> None:
    """
    A small message is read with its claim (its chunks may even be gone
    afterwards); a big one is read from the database as it is sent.
    """
    queue = make_queue(chunk_size=1024)
    small = queue.enqueue(MESSAGE, "a@example.test", "b@example.test")
    big = queue.enqueue(b"y" * 3000, "a@example.test", "b@example.test")
    claimed = {e.id for e in queue.claim_due(time.time() + 1, 10)}
    assert claimed == {small, big}
    _sql(pg_url, "DELETE FROM txsmtp_chunk")
    assert queue.read_chunk(small, 0) == MESSAGE
    assert queue.read_chunk(big, 0) is None


def test_group_commit_holds_one_connection(
    make_queue: Callable[..., PostgresQueue], pg_url: str
) -> None:
    """
    A call that cannot share the group's transaction (a claim, an enqueue)
    commits the group so far first, so one pooled connection is enough.
    """
    queue = PostgresQueue(pg_url, max_connections=1, reconnect_for=0.0)
    try:
        ids = _claim(queue, 2)
        with queue.group_commit():
            queue.complete(ids[0])
            late = queue.enqueue(MESSAGE, "a@example.test", "c@example.test")
            assert _sql(pg_url, "SELECT state FROM txsmtp_entry WHERE id = %s", ids[0]) == [
                ("done",)
            ]
            assert [e.id for e in queue.claim_due(time.time() + 1, 5)] == [late]
            queue.complete(ids[1])
            queue.complete(late)
        assert _sql(pg_url, "SELECT DISTINCT state FROM txsmtp_entry") == [("done",)]
    finally:
        queue.close()


def test_claim_in_group_commits_with_the_group(
    make_queue: Callable[..., PostgresQueue], pg_url: str
) -> None:
    """
    A claim inside group_commit() is committed when it returns, in the same
    transaction as the group's changes before it (one commit for both).
    """
    queue = make_queue()
    done = _claim(queue, 1)[0]
    fresh = queue.enqueue(MESSAGE, "a@example.test", "c@example.test")
    with queue.group_commit():
        queue.complete(done)
        assert [e.id for e in queue.claim_due(time.time() + 1, 5)] == [fresh]
        rows = _sql(pg_url, "SELECT id, state, xmin::text FROM txsmtp_entry")
        states = {r[0]: r[1] for r in rows}
        assert states == {done: "done", fresh: "sending"}
        assert len({r[2] for r in rows}) == 1
        queue.complete(fresh)
    assert _sql(pg_url, "SELECT DISTINCT state FROM txsmtp_entry") == [("done",)]


def test_failed_operator_command_in_group_keeps_the_rest(
    make_queue: Callable[..., PostgresQueue], pg_url: str
) -> None:
    """A command refused inside a group (the entry is busy) undoes nothing of the group's."""
    queue = make_queue()
    ids = _claim(queue, 2)
    with queue.group_commit():
        queue.complete(ids[0])
        with pytest.raises(EntryBusy):
            queue.cancel(ids[1])
        queue.complete(ids[1])
    assert _sql(pg_url, "SELECT DISTINCT state FROM txsmtp_entry") == [("done",)]


def test_renew_skips_a_locked_row_without_waiting(
    make_queue: Callable[..., PostgresQueue], pg_url: str
) -> None:
    """
    Renewing leases never waits for a row another transaction has locked
    (a group finishing it): waiting could deadlock against that group.
    """
    queue = make_queue()
    ids = _claim(queue, 3)
    renewed: list[int] = []
    with psycopg.connect(pg_url) as locker:
        locker.execute(b"SELECT 1 FROM txsmtp_entry WHERE id = %s FOR UPDATE", (ids[1],))
        worker = threading.Thread(target=lambda: renewed.append(queue.renew_leases()))
        worker.start()
        worker.join(20)
        finished = not worker.is_alive()
        locker.rollback()
    worker.join(20)
    assert finished, "renew_leases waited for a locked row"
    assert renewed == [2]
