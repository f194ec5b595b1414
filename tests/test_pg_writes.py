"""
What PostgresQueue writes: each entry's row is written once at enqueue.
Against the private cluster (``tests/pgcluster.py``).
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from typing import Any

import pytest

pytest.importorskip("psycopg", reason="psycopg is not installed (pip install -e '.[test]')")

import psycopg

from txsmtpclient.spool.envelope import Attempt
from txsmtpclient.spool.postgres import PostgresQueue
from txsmtpclient.spool.queue import Submission

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
