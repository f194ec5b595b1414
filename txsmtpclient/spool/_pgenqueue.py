"""
Enqueueing into :class:`~txsmtpclient.spool.postgres.PostgresQueue`: every
message checked first, then inserted with its chunks in one transaction (all
or nothing, a batch too), idempotency keys honoured, and the workers told
with ``NOTIFY``.  A retry after a lost connection reuses the ids chosen
before the first try, so a committed enqueue is never stored twice.

Every method blocks on the database.  Nothing here imports Twisted.
"""

from __future__ import annotations

import builtins
from collections.abc import Iterable, Sequence
from dataclasses import replace
from datetime import datetime
from typing import BinaryIO, NamedTuple, TypeGuard

from txsmtpclient.spool._pgbase import CHANNEL, Conn, entry_json
from txsmtpclient.spool._pgops import OperatorCommands
from txsmtpclient.spool._submit import new_entry
from txsmtpclient.spool.envelope import (
    Dsn,
    Entry,
)
from txsmtpclient.spool.postgres_schema import QueueUnavailable
from txsmtpclient.spool.queue import SpoolError, Submission
from txsmtpclient.spool.schedule import Recurrence

__all__ = ["Enqueueing"]

# Every entry of a batch and the first chunk of each inserted one, in one
# statement (the chunks' foreign key is checked at the statement's end).
_INSERT = (
    "WITH e AS (INSERT INTO txsmtp_entry"
    " (id, state, due, created, envelope, size, idempotency_key)"
    " SELECT i, 'queue', d, c, v::json, s, k FROM unnest("
    "%s::text[], %s::float8[], %s::float8[], %s::text[], %s::int8[], %s::text[])"
    " AS u(i, d, c, v, s, k) ON CONFLICT DO NOTHING RETURNING id),"
    " c AS (INSERT INTO txsmtp_chunk (entry_id, seq, data)"
    " SELECT f.i, 0, f.b FROM unnest(%s::text[], %s::bytea[]) AS f(i, b) JOIN e ON e.id = f.i)"
    " SELECT id FROM e"
)
_COPY_CHUNKS = "COPY txsmtp_chunk (entry_id, seq, data) FROM STDIN (FORMAT BINARY)"


class _Body(NamedTuple):
    """A message to insert: its entry, key, first chunk and what follows it."""

    entry: Entry
    key: str | None
    first: bytes | None
    #: The whole bytes when they span several chunks, or the stream to read
    #: on from; ``None`` when the first chunk is all.
    rest: bytes | BinaryIO | None


class Enqueueing(OperatorCommands):
    """
    The enqueueing side of the queue (a base of ``PostgresQueue``).
    """

    def enqueue(
        self,
        message: bytes | str | BinaryIO,
        sender: str,
        recipients: Sequence[str] | str,
        *,
        mail_options: Sequence[str] = (),
        rcpt_options: Sequence[str] = (),
        dsn: Dsn | None = None,
        at: datetime | float | None = None,
        recurrence: Recurrence | str | None = None,
        timezone: str | None = None,
        idempotency_key: str | None = None,
    ) -> str:
        """
        Queue a message in one transaction: it is wholly there or absent.
        The arguments are :meth:`.store.Spool.enqueue`'s; a binary file is
        streamed into the database chunk by chunk.

        :param idempotency_key: a caller's key for this message: enqueueing
            again with the same key stores nothing and returns the first id.
        :returns: the entry's id.
        :raises EnvelopeError: for a malformed address or option.
        :raises ScheduleError: for a bad recurrence or time zone.
        :raises ValueError: for a malformed ``idempotency_key``.
        :raises QueueUnavailable: if the database stays unreachable.
        """
        submission = Submission(
            message=message,
            sender=sender,
            recipients=recipients,
            mail_options=mail_options,
            rcpt_options=rcpt_options,
            dsn=dsn,
            at=at,
            recurrence=recurrence,
            timezone=timezone,
            idempotency_key=idempotency_key,
        )
        return self.enqueue_many([submission])[0]

    def enqueue_many(self, messages: Sequence[Submission]) -> builtins.list[str]:
        """
        Queue several messages in one transaction (all or none).

        Each row is written once: a message's size is known before its row
        is inserted (bytes, or a stream that fits in one chunk), and one
        statement inserts every row with its first chunk; further chunks
        follow by ``COPY``.  Only a stream longer than one chunk has its
        size set afterwards (a second write of its row, beside a megabyte
        or more of chunks).

        :returns: their ids, in order (a repeated idempotency key gives the
            first id again).
        :raises EnvelopeError: for a malformed address or option (nothing is
            stored).
        """
        now = self._clock()
        planned = [(new_entry(m, now, i), m) for i, m in enumerate(messages)]
        # Where each stream starts, to read it again if a retry is needed.
        starts = [_start(m.message) for _, m in planned]

        def insert(conn: Conn, retrying: bool) -> builtins.list[str]:
            bodies = []
            for (entry, submission), start in zip(planned, starts, strict=True):
                body = submission.message
                if retrying and _is_stream(body):
                    if start is None:
                        raise QueueUnavailable("the database went away while a stream was read")
                    body.seek(start)
                bodies.append(self._first_chunk(entry, submission.idempotency_key, body))
            return self._insert(conn, bodies, now)

        return self._run(insert)

    def _first_chunk(self, entry: Entry, key: str | None, body: bytes | str | BinaryIO) -> _Body:
        """
        The entry with its size when known, its first chunk, and what is
        left to store.
        """
        if isinstance(body, str):
            body = body.encode("utf-8")
        if isinstance(body, bytes):
            entry = replace(entry, size=len(body))
            first = body[: self.chunk_size]
            return _Body(entry, key, first or None, body if len(body) > self.chunk_size else None)
        first = _read_full(body, self.chunk_size)
        if len(first) < self.chunk_size:
            # The whole stream: its size is known before its row is written.
            return _Body(replace(entry, size=len(first)), key, first or None, None)
        return _Body(entry, key, first, body)

    def _insert(self, conn: Conn, bodies: builtins.list[_Body], now: float) -> builtins.list[str]:
        """
        Insert the entries and their first chunks in one statement, then
        the rest of their chunks; an entry whose id (an earlier try of this
        call) or idempotency key is stored already stores nothing.
        """
        entries = [b.entry for b in bodies]
        firsts = [b for b in bodies if b.first is not None]
        rows = conn.execute(
            _INSERT,
            (
                [e.id for e in entries],
                [e.due for e in entries],
                [e.created for e in entries],
                [entry_json(e) for e in entries],
                [e.size for e in entries],
                [b.key for b in bodies],
                [b.entry.id for b in firsts],
                [b.first for b in firsts],
            ),
        ).fetchall()
        inserted = {str(r[0]) for r in rows}
        sized: builtins.list[Entry] = []
        rest = [b for b in bodies if b.rest is not None and b.entry.id in inserted]
        if rest:
            with conn.cursor() as cur, cur.copy(_COPY_CHUNKS) as copy:
                copy.set_types(["text", "int4", "bytea"])
                for b in rest:
                    size = len(b.first or b"")
                    for seq, chunk in enumerate(self._later_chunks(b), start=1):
                        copy.write_row((b.entry.id, seq, chunk))
                        size += len(chunk)
                    if not isinstance(b.rest, bytes):
                        sized.append(replace(b.entry, size=size))
        for entry in sized:
            conn.execute(
                "UPDATE txsmtp_entry SET size = %s, envelope = %s::json WHERE id = %s",
                (entry.size, entry_json(entry), entry.id),
            )
        ids = self._ids(conn, bodies, inserted)
        dues = {e.due for e in entries if e.id in inserted}
        if dues:
            # One wake-up for everything due now, one per later due time.
            later = sorted(d for d in dues if d > now)
            wake = ([min(dues)] if len(later) < len(dues) else []) + later
            conn.execute(
                "SELECT pg_notify(%s, d) FROM unnest(%s::text[]) AS d",
                (CHANNEL, [repr(d) for d in wake]),
            )
        return ids

    def _ids(
        self, conn: Conn, bodies: builtins.list[_Body], inserted: set[str]
    ) -> builtins.list[str]:
        """
        Each entry's id: its own if inserted now or by an earlier try of
        this call, else the id stored with its idempotency key.
        """
        missing = [b for b in bodies if b.entry.id not in inserted]
        if not missing:
            return [b.entry.id for b in bodies]
        found = conn.execute(
            "SELECT id, idempotency_key FROM txsmtp_entry"
            " WHERE id = ANY(%s) OR idempotency_key = ANY(%s)",
            (
                [b.entry.id for b in missing],
                [b.key for b in missing if b.key is not None],
            ),
        ).fetchall()
        by_id = {str(r[0]) for r in found}
        by_key = {str(r[1]): str(r[0]) for r in found if r[1] is not None}
        ids = []
        for b in bodies:
            if b.entry.id in inserted or b.entry.id in by_id:
                ids.append(b.entry.id)
            elif b.key is not None and b.key in by_key:
                ids.append(by_key[b.key])
            else:
                raise SpoolError(f"entry {b.entry.id} neither inserted nor found")
        return ids

    def _later_chunks(self, body: _Body) -> Iterable[bytes]:
        rest = body.rest
        if isinstance(rest, bytes):
            view = memoryview(rest)
            for start in range(self.chunk_size, len(view), self.chunk_size):
                yield bytes(view[start : start + self.chunk_size])
            return
        assert rest is not None
        while chunk := _read_full(rest, self.chunk_size):
            yield chunk


def _read_full(stream: BinaryIO, size: int) -> bytes:
    """
    Up to ``size`` bytes, fewer only at the end of the stream (a raw
    stream or a pipe may return less on one read).
    """
    first = stream.read(size)
    if not first or len(first) == size:
        return first
    parts = [first]
    got = len(first)
    while got < size and (more := stream.read(size - got)):
        parts.append(more)
        got += len(more)
    return b"".join(parts)


def _is_stream(body: bytes | str | BinaryIO) -> TypeGuard[BinaryIO]:
    return not isinstance(body, (bytes, str))


def _start(body: bytes | str | BinaryIO) -> int | None:
    """A seekable stream's position, ``None`` for other streams, 0 for bytes."""
    if not _is_stream(body):
        return 0
    return body.tell() if body.seekable() else None
