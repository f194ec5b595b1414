"""
The operator's commands of :class:`~txsmtpclient.spool.postgres.PostgresQueue`:
list, show, counts, cancel, retry, hold, unhold, set a due time, purge.  Each
change is one transaction that locks the row, so it is ordered against a
worker's claim: a claimed entry is busy, a cancelled one is never claimed.

Every method blocks on the database.  Nothing here imports Twisted.
"""

from __future__ import annotations

import builtins
import contextlib
from collections.abc import Callable, Iterable
from dataclasses import replace
from datetime import datetime

from txsmtpclient.spool._files import FINISHED
from txsmtpclient.spool._pgbase import (
    COLUMNS,
    HELD,
    Conn,
    QueueDatabase,
    entry_json,
    row_entry,
    to_state,
)
from txsmtpclient.spool.envelope import (
    Entry,
    EnvelopeError,
    Recipient,
    RecipientState,
    State,
    is_valid_id,
)
from txsmtpclient.spool.queue import EntryBusy, EntryNotFound, EntryStateError
from txsmtpclient.spool.schedule import to_epoch

__all__ = ["OperatorCommands"]


class OperatorCommands(QueueDatabase):
    """
    The operator's side of the queue (a base of ``PostgresQueue``).
    """

    def _operate(
        self, entry_id: str, allowed: tuple[str, ...], change: Callable[[Entry], tuple[Entry, str]]
    ) -> Entry:
        """
        Change an entry that is in one of the ``allowed`` states, in one
        transaction (the row lock orders it against a claim).

        :raises EntryNotFound: no such entry.
        :raises EntryBusy: it is being sent.
        :raises EntryStateError: it is in another state.
        """
        if not is_valid_id(entry_id):
            raise EntryNotFound(f"not a spool id: {entry_id!r}")

        def apply(conn: Conn, retrying: bool) -> Entry:
            row = conn.execute(
                f"SELECT {COLUMNS} FROM txsmtp_entry WHERE id = %s FOR UPDATE", (entry_id,)
            ).fetchone()
            if row is None:
                raise EntryNotFound(f"no entry {entry_id!r}")
            if row[1] not in allowed:
                if row[1] == "sending":
                    raise EntryBusy(f"entry {entry_id} is being sent; try again when it is back")
                raise EntryStateError(f"entry {entry_id} is {row[1]}, not {' or '.join(allowed)}")
            entry, state = change(row_entry(row))
            conn.execute(
                "UPDATE txsmtp_entry SET state = %s, due = %s, envelope = %s::json,"
                " updated = now(), lease_until = NULL WHERE id = %s",
                (state, entry.due, entry_json(entry), entry_id),
            )
            if state == "queue":
                self._notify(conn, entry.due)
            return replace(entry, state=to_state(state))

        return self._run(apply)

    def cancel(self, entry_id: str) -> Entry:
        """
        Cancel a queued (or held) entry; a recurring one stops recurring.

        :raises EntryNotFound: if there is none with this id.
        :raises EntryBusy: if it is being sent right now.
        :raises EntryStateError: if it is already done, failed or cancelled.
        """
        return self._operate(entry_id, ("queue", HELD), lambda e: (e, "cancelled"))

    def retry(self, entry_id: str) -> Entry:
        """
        Make an entry due now: a queued or held one keeps its history; a
        failed or cancelled one is queued again with its failed recipients
        pending and a fresh queue lifetime.

        :raises EntryNotFound: if there is none with this id.
        :raises EntryBusy: if it is being sent right now.
        :raises EntryStateError: if it was delivered.
        """
        now = self._clock()

        def change(entry: Entry) -> tuple[Entry, str]:
            if entry.state.value in ("queue", HELD):
                return replace(entry, due=now), "queue"
            recipients = tuple(
                Recipient(r.address, RecipientState.PENDING, r.reply)
                if r.state is RecipientState.FAILED
                else r
                for r in entry.recipients
            )
            if not any(r.state is RecipientState.PENDING for r in recipients):
                recipients = tuple(Recipient(r.address) for r in recipients)
            return replace(entry, recipients=recipients, due=now, occurrence_due=now), "queue"

        return self._operate(entry_id, ("queue", HELD, "failed", "cancelled"), change)

    def hold(self, entry_id: str) -> Entry:
        """
        Hold a queued entry: it is never sent until :meth:`unhold`.

        :raises EntryBusy: if it is being sent; EntryStateError if not queued.
        """
        return self._operate(entry_id, ("queue",), lambda e: (e, HELD))

    def unhold(self, entry_id: str) -> Entry:
        """
        Return a held entry to the queue, due when it was.

        :raises EntryStateError: if it is not held.
        """
        return self._operate(entry_id, (HELD,), lambda e: (e, "queue"))

    def set_due(self, entry_id: str, when: datetime | float) -> Entry:
        """
        Reschedule a queued or held entry to ``when``.

        :raises EntryBusy: if it is being sent; EntryStateError if finished.
        """
        due = to_epoch(when)

        def change(entry: Entry) -> tuple[Entry, str]:
            moved = replace(entry, due=due)
            if entry.failures == 0:
                # Not tried yet: the queue lifetime counts from the new time.
                moved = replace(moved, occurrence_due=due)
            return moved, entry.state.value

        return self._operate(entry_id, ("queue", HELD), change)

    def get(self, entry_id: str) -> Entry:
        """
        An entry in any state.

        :raises EntryNotFound: if there is none with this id.
        """
        if not is_valid_id(entry_id):
            raise EntryNotFound(f"not a spool id: {entry_id!r}")
        rows = self._run(
            lambda conn, _: conn.execute(
                f"SELECT {COLUMNS} FROM txsmtp_entry WHERE id = %s", (entry_id,)
            ).fetchall()
        )
        if not rows:
            raise EntryNotFound(f"no entry {entry_id!r}")
        return row_entry(rows[0])

    def list(self, state: State | None = None) -> builtins.list[Entry]:
        """
        Every entry in a state, or in every state but corrupt; queued ones by
        due time, the rest by creation.  Unreadable ones are skipped.
        """
        if state is None:
            where, params = "state <> 'corrupt'", ()
        else:
            where, params = "state = %s", (state.value,)  # type: ignore[assignment]
        rows = self._run(
            lambda conn, _: conn.execute(
                f"SELECT {COLUMNS} FROM txsmtp_entry WHERE {where}"
                " ORDER BY CASE WHEN state = 'queue' THEN due ELSE created END, id",
                params,
            ).fetchall()
        )
        entries = []
        for row in rows:
            # Unreadable ones are skipped, as in the folder spool (a claim
            # sets them aside).
            with contextlib.suppress(EnvelopeError):
                entries.append(row_entry(row))
        return entries

    def counts(self) -> dict[str, int]:
        """
        Entries per state, by state name (every state, zeros included).
        """
        rows = self._run(
            lambda conn, _: conn.execute(
                "SELECT state, count(*) FROM txsmtp_entry GROUP BY state"
            ).fetchall()
        )
        counts = {s.value: 0 for s in State}
        counts.update({str(s): int(n) for s, n in rows})
        return counts

    def purge(self, before: float, states: Iterable[State] = FINISHED) -> int:
        """
        Delete finished entries (and their messages) last changed before
        ``before`` (epoch seconds).

        :returns: how many were deleted.
        :raises ValueError: if asked to purge queued or in-flight entries.
        """
        names = []
        for st in states:
            if st not in FINISHED:
                raise ValueError(f"only finished entries can be purged, not {st.value}")
            names.append(st.value)
        return self._run(
            lambda conn, _: (
                conn.execute(
                    "DELETE FROM txsmtp_entry"
                    " WHERE state = ANY(%s) AND updated < to_timestamp(%s)",
                    (names, before),
                ).rowcount
            )
        )
