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
from typing import BinaryIO, TypeGuard

from txsmtpclient.spool._pgbase import Conn, entry_json
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
            ids = []
            for (entry, submission), start in zip(planned, starts, strict=True):
                body = submission.message
                if retrying and _is_stream(body):
                    if start is None:
                        raise QueueUnavailable("the database went away while a stream was read")
                    body.seek(start)
                ids.append(self._insert(conn, entry, body, submission.idempotency_key))
            return ids

        return self._run(insert)

    def _insert(
        self, conn: Conn, entry: Entry, body: bytes | str | BinaryIO, key: str | None
    ) -> str:
        row = conn.execute(
            "INSERT INTO txsmtp_entry (id, state, due, created, envelope, idempotency_key)"
            " VALUES (%s, 'queue', %s, %s, %s::json, %s) ON CONFLICT DO NOTHING RETURNING id",
            (entry.id, entry.due, entry.created, entry_json(entry), key),
        ).fetchone()
        if row is None:
            # An earlier try of this call (or an enqueue with this key) is
            # committed: store nothing more.
            found = conn.execute(
                "SELECT id FROM txsmtp_entry WHERE id = %s OR idempotency_key = %s",
                (entry.id, key),
            ).fetchone()
            if found is None:
                raise SpoolError(f"entry {entry.id} neither inserted nor found")
            return str(found[0])
        size = 0
        with conn.cursor() as cur:
            for seq, chunk in enumerate(self._chunks(body)):
                cur.execute(
                    "INSERT INTO txsmtp_chunk (entry_id, seq, data) VALUES (%s, %s, %s)",
                    (entry.id, seq, chunk),
                )
                size += len(chunk)
        conn.execute(
            "UPDATE txsmtp_entry SET size = %s, envelope = %s::json WHERE id = %s",
            (size, entry_json(replace(entry, size=size)), entry.id),
        )
        self._notify(conn, entry.due)
        return entry.id

    def _chunks(self, body: bytes | str | BinaryIO) -> Iterable[bytes]:
        if isinstance(body, str):
            body = body.encode("utf-8")
        if isinstance(body, bytes):
            view = memoryview(body)
            for start in range(0, len(view), self.chunk_size):
                yield bytes(view[start : start + self.chunk_size])
            return
        while chunk := body.read(self.chunk_size):
            yield chunk


def _is_stream(body: bytes | str | BinaryIO) -> TypeGuard[BinaryIO]:
    return not isinstance(body, (bytes, str))


def _start(body: bytes | str | BinaryIO) -> int | None:
    """A seekable stream's position, ``None`` for other streams, 0 for bytes."""
    if not _is_stream(body):
        return 0
    return body.tell() if body.seekable() else None
