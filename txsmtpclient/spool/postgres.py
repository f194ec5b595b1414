"""
:class:`PostgresQueue`: the spool's :class:`~txsmtpclient.spool.queue.IQueue`
on a PostgreSQL database shared by many sending daemons on many machines.

* An entry is a row of ``txsmtp_entry`` (its envelope in the spool's JSON
  entry format), its message the rows of ``txsmtp_chunk`` (1 MiB each), so
  no shared filesystem is needed and a big message is never whole in memory.
* A claim is a lease: the row moves to ``sending`` with this worker's name,
  a fresh token and an expiry on the database's clock (``now()``), taken
  with ``FOR UPDATE SKIP LOCKED`` so workers never wait on each other.  Every
  later change of a claimed entry checks the token.  A worker that dies stops
  renewing its leases; once they expire any worker claims the entries again.
* A recurring entry's finished occurrences are keyed ``(id, occurrence_due)``
  in ``txsmtp_occurrence``, so an occurrence is finished once however many
  workers watch the entry.
* Enqueueing is one transaction, and ``NOTIFY txsmtp_queue`` (payload: the due
  time) wakes the workers' listeners (:mod:`.postgres_service`).

Every method blocks on the database (the daemon calls them from its thread
pool, never the reactor thread), and retries with backoff for up to
``reconnect_for`` seconds while the database is unreachable (a restart, a
failover): each retry is safe because a call's id or claim token is chosen
before its first try.  The schema and its migrations are in
:mod:`.postgres_schema`.  Nothing here imports Twisted.
"""

from __future__ import annotations

import builtins
import uuid
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime
from typing import Any

from txsmtpclient.spool._pgbase import (
    CHANNEL,
    CHUNK_SIZE,
    COLUMNS,
    E_COLUMNS,
    INLINE_SIZE,
    Conn,
    entry_json,
    row_entry,
    to_state,
)
from txsmtpclient.spool._pgenqueue import Enqueueing
from txsmtpclient.spool.envelope import (
    Attempt,
    Entry,
    EnvelopeError,
    Outcome,
    OutcomeKind,
    State,
    apply_attempt,
    is_valid_id,
    start_next_occurrence,
)
from txsmtpclient.spool.queue import EntryNotFound, EntryStateError, SpoolError
from txsmtpclient.spool.schedule import to_epoch

__all__ = ["CHANNEL", "CHUNK_SIZE", "PostgresQueue"]


class PostgresQueue(Enqueueing):
    """
    A queue in a PostgreSQL database (see the module docstring).  Implements
    :class:`~txsmtpclient.spool.queue.IQueue`; every method blocks.  The
    parameters are :class:`~._pgbase.QueueDatabase`'s.
    """

    # --- the daemon's cycle -----------------------------------------------------

    def due(self, now: float, limit: int) -> builtins.list[str]:
        """
        The ids of up to ``limit`` entries to send, earliest first: queued
        ones due at ``now``, and in-flight ones whose lease has expired (a
        worker died).
        """

        def select(conn: Conn, retrying: bool) -> builtins.list[str]:
            rows = conn.execute(
                "SELECT id FROM txsmtp_entry WHERE (state = 'queue' AND due <= %s)"
                " OR (state = 'sending' AND lease_until < now()) ORDER BY due, id LIMIT %s",
                (now, limit),
            ).fetchall()
            return [str(r[0]) for r in rows]

        return self._run(select)

    def next_due(self) -> float | None:
        """
        When the earliest queued entry is due, or ``None`` if none is queued.
        """
        return self._run(
            lambda conn, _: _scalar(conn, "SELECT min(due) FROM txsmtp_entry WHERE state='queue'")
        )

    def _claim_where(self, where: str, params: dict[str, Any]) -> builtins.list[Entry]:
        token = uuid.uuid4()
        bad: dict[str, str] = {}
        firsts: dict[str, bytes] = {}
        # A small message's bytes come with its claim (no second query to
        # read it); a big one's are read chunk by chunk as it is sent.
        first = (
            f"CASE WHEN e.size <= {min(self.chunk_size, INLINE_SIZE)} THEN (SELECT c.data"
            " FROM txsmtp_chunk c WHERE c.entry_id = e.id AND c.seq = 0) END"
        )

        def take(conn: Conn, retrying: bool) -> builtins.list[Entry]:
            rows = []
            if retrying:
                # An earlier try may have committed: those rows carry our token.
                rows = conn.execute(
                    f"SELECT {E_COLUMNS}, {first} FROM txsmtp_entry e"
                    " WHERE e.state = 'sending' AND e.lease_token = %s",
                    (token,),
                ).fetchall()
            if not rows:
                rows = conn.execute(
                    "UPDATE txsmtp_entry e SET state = 'sending', lease_owner = %(worker)s,"
                    " lease_token = %(token)s, updated = now(),"
                    " lease_until = now() + make_interval(secs => %(lease)s)"
                    " WHERE e.id IN (SELECT id FROM txsmtp_entry WHERE "
                    f"{where} FOR UPDATE SKIP LOCKED) RETURNING {E_COLUMNS}, {first}",
                    {**params, "worker": self.worker, "token": token, "lease": self.lease},
                ).fetchall()
            entries = []
            for row in rows:
                try:
                    entries.append(row_entry(row))
                except EnvelopeError as e:
                    # Unreadable (written by a newer version?): set it aside
                    # rather than fail every claim after it.
                    bad[row[0]] = f"envelope unreadable: {e}"
                    conn.execute(
                        "UPDATE txsmtp_entry SET state = 'corrupt', reason = %s,"
                        " lease_until = NULL, updated = now() WHERE id = %s",
                        (bad[row[0]], row[0]),
                    )
                    continue
                if row[3] is not None:
                    firsts[row[0]] = bytes(row[3])
            return entries

        entries = self._run(take)
        self._note_claimed([e.id for e in entries])
        with self._lock:
            for entry in entries:
                self._held[entry.id] = token
                self._claimed[entry.id] = entry
                if entry.id in firsts:
                    self._first[entry.id] = firsts[entry.id]
        if self._on_set_aside is not None:
            for entry_id, reason in bad.items():
                self._on_set_aside(entry_id, reason)
        return entries

    def claim(self, entry_id: str) -> Entry | None:
        """
        Take an entry for sending: a lease on the database's clock, taken
        with ``FOR UPDATE SKIP LOCKED``.  A queued entry, or an in-flight one
        whose lease expired, can be claimed.

        :returns: the entry, or ``None`` if it is not claimable (another
            worker has it, it was cancelled, it is finished).
        """
        if not is_valid_id(entry_id):
            return None
        found = self._claim_where(
            "id = %(id)s AND (state = 'queue' OR (state = 'sending' AND lease_until < now()))",
            {"id": entry_id},
        )
        return found[0] if found else None

    def claim_due(self, now: float, limit: int) -> builtins.list[Entry]:
        """
        :meth:`due` and :meth:`claim` in one statement: up to ``limit``
        entries due at ``now`` (or with an expired lease), earliest first,
        that no other worker is claiming at this moment.
        """
        return self._claim_where(
            "(state = 'queue' AND due <= %(now)s) OR (state = 'sending' AND lease_until < now())"
            " ORDER BY due, id LIMIT %(limit)s",
            {"now": now, "limit": limit},
        )

    def renew_leases(self) -> int:
        """
        Extend the leases of every entry this worker holds by ``lease``
        seconds from now (the daemon's listener calls it every third of a
        lease).  An entry whose row is locked right now (this worker's own
        group of changes is finishing it) is skipped, not waited for: two
        transactions locking rows in different orders would deadlock, and
        its lease has two thirds left for the next renewal.

        :returns: how many were renewed.
        """
        with self._lock:
            held = list(self._held.items())
        if not held:
            return 0

        ids = [i for i, _ in held]

        def renew(conn: Conn, retrying: bool) -> int:
            cur = conn.execute(
                "UPDATE txsmtp_entry e SET lease_until = now() + make_interval(secs => %s)"
                " FROM unnest(%s::text[], %s::uuid[]) AS h(id, token)"
                " WHERE e.id = h.id AND e.lease_token = h.token AND e.state = 'sending'"
                " AND e.id IN (SELECT id FROM txsmtp_entry WHERE id = ANY(%s)"
                " FOR UPDATE SKIP LOCKED)",
                (self.lease, ids, [t for _, t in held], ids),
            )
            return cur.rowcount

        return self._run(renew)

    def read_message(self, entry_id: str) -> bytes:
        """
        The message's bytes (whole: for small messages and notices; the
        daemon streams with :meth:`read_chunk`).

        :raises EntryNotFound: if there is no such entry.
        """
        parts = []
        seq = 0
        while (chunk := self.read_chunk(entry_id, seq)) is not None:
            parts.append(chunk)
            seq += 1
        return b"".join(parts)

    def read_chunk(self, entry_id: str, seq: int) -> bytes | None:
        """
        The message's chunk number ``seq`` (from 0), or ``None`` past the end.

        :raises EntryNotFound: if there is no such entry.
        """
        if seq == 0:
            with self._lock:
                first = self._first.get(entry_id)
            if first is not None:
                return first

        def read(conn: Conn, retrying: bool) -> bytes | None:
            row = conn.execute(
                "SELECT c.data FROM txsmtp_entry e LEFT JOIN txsmtp_chunk c"
                " ON c.entry_id = e.id AND c.seq = %s WHERE e.id = %s",
                (seq, entry_id),
            ).fetchone()
            if row is None:
                raise EntryNotFound(f"no message for entry {entry_id}")
            return None if row[0] is None else bytes(row[0])

        return self._run(read, shared=True)

    def message_path(self, entry_id: str) -> str:
        """
        Not available: the message is in the database, not a file (read it
        with :meth:`read_chunk`).

        :raises SpoolError: always.
        """
        raise SpoolError(f"entry {entry_id}'s message is in the database, not in a file")

    # --- changing a claimed entry --------------------------------------------------

    def _change_held(
        self, entry_id: str, change: Callable[[Entry], tuple[Entry, str, str | None]]
    ) -> Entry:
        """
        Apply ``change(entry) -> (entry, new state, occurrence outcome)`` to
        an entry this worker holds, in one transaction, checking the lease
        token; leaves the lease when the state is no longer ``sending``.
        Inside :meth:`group_commit` it shares the block's transaction.
        """
        with self._lock:
            token = self._held.get(entry_id)
            current = self._claimed.get(entry_id)
        if token is None:
            raise EntryStateError(f"entry {entry_id} is not claimed by this worker")
        try:
            if current is None:
                result = self._run(self._read_and_change(entry_id, token, change), shared=True)
            else:
                # The entry as this worker last wrote it: one UPDATE, which
                # the lease token guards (an operator cannot change a claimed
                # entry).
                entry, state, occurrence = change(current)
                result = self._run(
                    self._write_change(entry_id, token, current, entry, state, occurrence),
                    shared=True,
                )
        except (EntryStateError, EntryNotFound):
            # Lost (another worker took it after the lease expired): what
            # this worker kept of it is of no more use.
            with self._lock:
                self._claimed.pop(entry_id, None)
                self._first.pop(entry_id, None)
            raise
        if result.state is State.SENDING:
            with self._lock:
                self._claimed[entry_id] = result
        else:
            with self._lock:
                self._claimed.pop(entry_id, None)
                self._first.pop(entry_id, None)
            self._after_commit(entry_id, lambda: self._release_token(entry_id, token))
        return result

    def _release_token(self, entry_id: str, token: uuid.UUID) -> None:
        with self._lock:
            if self._held.get(entry_id) == token:
                del self._held[entry_id]

    def _write_change(
        self,
        entry_id: str,
        token: uuid.UUID,
        current: Entry,
        entry: Entry,
        state: str,
        occurrence: str | None,
    ) -> Callable[[Conn, bool], Entry]:
        changed = replace(entry, state=to_state(state))
        envelope = entry_json(entry)

        def write(conn: Conn, retrying: bool) -> Entry:
            row = conn.execute(
                "UPDATE txsmtp_entry SET state = %s, due = %s, envelope = %s::json,"
                " updated = now(), lease_until = CASE WHEN %s = 'sending'"
                " THEN lease_until END"
                " WHERE id = %s AND lease_token = %s AND state = 'sending' RETURNING id",
                (state, entry.due, envelope, state, entry_id, token),
            ).fetchone()
            if row is None:
                if retrying and _scalar_token(conn, entry_id) == token:
                    return changed  # an earlier try committed
                raise EntryStateError(
                    f"entry {entry_id} is no longer claimed by this worker (lease lost)"
                )
            if occurrence is not None:
                conn.execute(
                    "INSERT INTO txsmtp_occurrence (entry_id, occurrence_due, outcome, worker)"
                    " VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING",
                    (entry_id, current.occurrence_due, occurrence, self.worker),
                )
            if state == "queue":
                self._notify(conn, entry.due)
            return changed

        return write

    def _read_and_change(
        self,
        entry_id: str,
        token: uuid.UUID,
        change: Callable[[Entry], tuple[Entry, str, str | None]],
    ) -> Callable[[Conn, bool], Entry]:
        """The change of an entry not remembered: read (and lock) it first."""

        def apply(conn: Conn, retrying: bool) -> Entry:
            row = conn.execute(
                f"SELECT {COLUMNS}, lease_token FROM txsmtp_entry WHERE id = %s FOR UPDATE",
                (entry_id,),
            ).fetchone()
            if row is None:
                raise EntryNotFound(f"no entry {entry_id!r}")
            if row[3] != token or row[1] != "sending":
                if retrying and row[3] == token:
                    return row_entry(row)  # an earlier try committed
                raise EntryStateError(
                    f"entry {entry_id} is no longer claimed by this worker (lease lost)"
                )
            current = row_entry(row)
            entry, state, occurrence = change(current)
            return self._write_change(entry_id, token, current, entry, state, occurrence)(
                conn, False
            )

        return apply

    def record_attempt(self, entry_id: str, attempt: Attempt) -> Entry:
        """
        Record an attempt on a claimed entry (see
        :func:`~txsmtpclient.spool.envelope.apply_attempt`); it stays claimed.

        :raises EntryStateError: if this worker does not hold the entry.
        """
        return self._change_held(entry_id, lambda e: (apply_attempt(e, attempt), "sending", None))

    def _finish(
        self, entry_id: str, outcome: Outcome | None, attempt: Attempt | None, state: State
    ) -> Entry:
        def change(entry: Entry) -> tuple[Entry, str, str | None]:
            if attempt is not None:
                entry = apply_attempt(entry, attempt)
            done = outcome
            if done is None:
                last = entry.attempts[-1] if entry.attempts else None
                done = (
                    Outcome.from_attempt(last, OutcomeKind.DELIVERED)
                    if last is not None
                    else Outcome(self._clock(), OutcomeKind.DELIVERED)
                )
            if entry.recurrence is not None:
                following = start_next_occurrence(entry, done, self._clock())
                return following, "queue", done.kind.value
            return replace(entry, outcome=done), state.value, None

        return self._change_held(entry_id, change)

    def complete(
        self, entry_id: str, outcome: Outcome | None = None, *, attempt: Attempt | None = None
    ) -> Entry:
        """
        Finish a claimed entry as delivered, recording ``attempt`` in the
        same transaction; a recurring entry is queued for its next
        occurrence, its finished occurrence keyed once in
        ``txsmtp_occurrence``.

        :raises EntryStateError: if this worker does not hold the entry.
        """
        return self._finish(entry_id, outcome, attempt, State.DONE)

    def fail(self, entry_id: str, outcome: Outcome, *, attempt: Attempt | None = None) -> Entry:
        """
        Finish a claimed entry as failed (recurring: queue the next
        occurrence), recording ``attempt`` in the same transaction.

        :raises EntryStateError: if this worker does not hold the entry.
        """
        return self._finish(entry_id, outcome, attempt, State.FAILED)

    def reschedule(
        self, entry_id: str, when: datetime | float, attempt: Attempt | None = None
    ) -> Entry:
        """
        Return a claimed entry to the queue due at ``when``, recording
        ``attempt`` first.

        :raises EntryStateError: if this worker does not hold the entry.
        :raises ValueError: if no recipient is pending.
        """
        due = to_epoch(when)

        def change(entry: Entry) -> tuple[Entry, str, str | None]:
            if attempt is not None:
                entry = apply_attempt(entry, attempt)
            if not entry.pending:
                raise ValueError(f"entry {entry_id} has no pending recipients to retry")
            return replace(entry, due=due), "queue", None

        return self._change_held(entry_id, change)

    def release(self, entry_id: str) -> Entry:
        """
        Return a claimed entry to the queue unchanged.

        :raises EntryStateError: if this worker does not hold the entry.
        """
        return self._change_held(entry_id, lambda e: (e, "queue", None))

    def set_aside(self, entry_id_or_path: str, reason: str) -> None:
        """
        Mark an entry ``corrupt`` with the reason (in the ``reason`` column),
        so the rest of the queue keeps being served.

        :raises EntryNotFound: if there is no such entry.
        """
        entry_id = entry_id_or_path

        def mark(conn: Conn, retrying: bool) -> int:
            return conn.execute(
                "UPDATE txsmtp_entry SET state = 'corrupt', reason = %s, updated = now(),"
                " lease_until = NULL WHERE id = %s",
                (reason, entry_id),
            ).rowcount

        if not self._run(mark, shared=True):
            raise EntryNotFound(f"no entry {entry_id!r}")
        with self._lock:
            self._claimed.pop(entry_id, None)
            self._first.pop(entry_id, None)
            token = self._held.get(entry_id)
        if token is not None:
            self._after_commit(entry_id, lambda: self._release_token(entry_id, token))
        if self._on_set_aside is not None:
            self._on_set_aside(entry_id, reason)

    def recover(self) -> dict[str, int]:
        """
        At daemon start: return entries whose lease expired (their worker
        died) to the queue.  Any worker would also claim them directly.

        :returns: counts as the file spool's: ``requeued`` and zeros.
        """

        def requeue(conn: Conn, retrying: bool) -> int:
            return conn.execute(
                "UPDATE txsmtp_entry SET state = 'queue', lease_until = NULL, updated = now()"
                " WHERE state = 'sending' AND lease_until < now()"
            ).rowcount

        report = dict.fromkeys(("finished", "set_aside", "tmp_removed", "orphans_removed"), 0)
        report["requeued"] = self._run(requeue)
        return report


def _scalar_token(conn: Conn, entry_id: str) -> uuid.UUID | None:
    row = conn.execute(
        "SELECT lease_token FROM txsmtp_entry WHERE id = %s", (entry_id,)
    ).fetchone()
    return None if row is None else row[0]


def _scalar(conn: Conn, query: Any) -> float | None:
    row = conn.execute(query).fetchone()
    return None if row is None or row[0] is None else float(row[0])
