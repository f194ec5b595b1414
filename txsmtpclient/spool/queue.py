"""
What the sending daemon needs from a queue (:class:`IQueue`), and the errors
a queue raises.

:class:`~txsmtpclient.spool.store.Spool` implements the interface over a
folder; a shared database backend can implement it for several machines.
Sans-IO: nothing here touches files or imports Twisted.
"""

from __future__ import annotations

import builtins
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import BinaryIO, Protocol, runtime_checkable

from txsmtpclient.spool.envelope import Attempt, Dsn, Entry, Outcome, State
from txsmtpclient.spool.schedule import Recurrence

__all__ = [
    "EntryBusy",
    "EntryNotFound",
    "EntryStateError",
    "IChunkedMessages",
    "IClaimDue",
    "IQueue",
    "SpoolError",
    "SpoolFull",
    "Submission",
]


class SpoolError(Exception):
    """
    A spool operation that could not be done.
    """


class SpoolFull(SpoolError, OSError):
    """
    The spool's disk is full (or over quota): nothing was enqueued or changed,
    and no partial entry was left behind.  ``errno`` is the original one.
    """


class EntryNotFound(SpoolError, KeyError):
    """
    No entry with this id is in the spool (in the states looked at).
    """

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "entry not found"


class EntryBusy(SpoolError):
    """
    The entry is held by another process (being sent, or being changed) and
    cannot be changed now.
    """


class EntryStateError(SpoolError):
    """
    The entry is not in a state that allows the operation (cancelling a
    delivered message, completing one this process has not claimed).
    """


@dataclass(frozen=True, slots=True)
class Submission:
    """
    One message for :meth:`IQueue.enqueue_many`: the arguments of
    :meth:`IQueue.enqueue`, as a value.

    :ivar message: the message as bytes (sent as they are), ``str`` (UTF-8
        encoded), or a binary file object streamed into the queue.
    :ivar sender: the envelope sender, ``""`` for the null sender.
    :ivar recipients: the envelope recipients (a single ``str`` is one
        recipient).
    :ivar mail_options: ESMTP MAIL FROM parameters.
    :ivar rcpt_options: ESMTP RCPT TO parameters for every recipient.
    :ivar dsn: RFC 3461 DSN requests.
    :ivar at: when to send (aware or naive datetime, or epoch seconds);
        ``None`` means now, or a cron recurrence's next time.
    :ivar recurrence: a recurrence, or its text (cron or ``"every 10m"``).
    :ivar timezone: IANA zone for a cron recurrence given as text.
    :ivar idempotency_key: a caller's name for the message: a repeated key
        gives the first id and stores nothing (see :meth:`IQueue.enqueue`).
    """

    message: bytes | str | BinaryIO
    sender: str
    recipients: Sequence[str] | str
    mail_options: Sequence[str] = ()
    rcpt_options: Sequence[str] = ()
    dsn: Dsn | None = None
    at: datetime | float | None = None
    recurrence: Recurrence | str | None = None
    timezone: str | None = None
    idempotency_key: str | None = None


@runtime_checkable
class IQueue(Protocol):
    """
    What the sending daemon needs from a queue.  :class:`~.store.Spool`
    implements it over a folder; a shared database backend can implement it
    for several machines.  Every method may block.

    The daemon's cycle: :meth:`recover` once at start; then each tick
    :meth:`due` (ids only), and for each id :meth:`claim` (``None``: someone
    else took it), :meth:`read_message`, send to ``entry.pending``, then one
    of :meth:`complete`, :meth:`fail` or :meth:`reschedule` with the attempt
    (recorded and the entry moved on in one durable change), or
    :meth:`release` if nothing was attempted.

    Durability: every method that changes an entry returns only once the
    change would survive a crash of the process or of the machine (a
    :class:`Spool` made with ``fsync=False`` promises the first only).
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
        Queue a message durably; returns its id.  A repeated
        ``idempotency_key`` returns the first id and stores nothing.  See
        :meth:`.store.Spool.enqueue`.
        """

    def enqueue_many(self, messages: Sequence[Submission]) -> builtins.list[str]:
        """
        Queue several messages durably with one group commit; returns their
        ids in order.  Every message is checked before anything is stored:
        a bad one raises and stores none.  When it returns, all are stored;
        a crash before that may leave any subset stored (each one whole).

        :raises EnvelopeError: for a malformed address or option (nothing
            stored).
        :raises ScheduleError: for a bad recurrence or time zone (nothing
            stored).
        :raises SpoolFull: if the disk is full (nothing left behind).
        """

    def due(self, now: float, limit: int) -> builtins.list[str]:
        """
        The ids of up to ``limit`` queued entries due at ``now``, earliest
        first, without reading the entries.  An id may be claimed or
        cancelled by someone else before the caller claims it
        (:meth:`claim` then returns ``None``).
        """

    def claim(self, entry_id: str) -> Entry | None:
        """
        Take a queued entry for sending; ``None`` if it is no longer queued.
        """

    def read_message(self, entry_id: str) -> bytes:
        """
        The message bytes.
        """

    def message_path(self, entry_id: str) -> str:
        """
        A path to the message file, for streaming a big message.
        """

    def record_attempt(self, entry_id: str, attempt: Attempt) -> Entry:
        """
        Record an attempt on a claimed entry and its recipients' results; the
        entry stays claimed.
        """

    def complete(
        self, entry_id: str, outcome: Outcome | None = None, *, attempt: Attempt | None = None
    ) -> Entry:
        """
        Finish a claimed entry as delivered (recurring: queue the next one),
        recording ``attempt`` first if given, in one durable change.

        :param outcome: what to record; by default built from the attempt
            (or the last one recorded).
        :raises EntryStateError: if this process has not claimed the entry.
        """

    def reschedule(
        self, entry_id: str, when: datetime | float, attempt: Attempt | None = None
    ) -> Entry:
        """
        Return a claimed entry to the queue, due at ``when``, recording
        ``attempt`` first if given, in one durable change.
        """

    def fail(self, entry_id: str, outcome: Outcome, *, attempt: Attempt | None = None) -> Entry:
        """
        Finish a claimed entry as failed (recurring: queue the next one),
        recording ``attempt`` first if given, in one durable change.

        :raises EntryStateError: if this process has not claimed the entry.
        """

    def release(self, entry_id: str) -> Entry:
        """
        Return a claimed entry to the queue unchanged (not attempted).
        """

    def set_aside(self, entry_id_or_path: str, reason: str) -> None:
        """
        Move an unreadable or bad entry out of the way, with the reason.
        """

    def cancel(self, entry_id: str) -> Entry:
        """
        Cancel a queued or held entry.
        """

    def hold(self, entry_id: str) -> Entry:
        """
        Hold a queued entry (state ``held``): it is never sent until
        :meth:`unhold`.
        """

    def unhold(self, entry_id: str) -> Entry:
        """
        Return a held entry to the queue.
        """

    def set_due(self, entry_id: str, when: datetime | float) -> Entry:
        """
        Reschedule a queued or held entry.
        """

    def retry(self, entry_id: str) -> Entry:
        """
        Make a queued, failed or cancelled entry due now.
        """

    def get(self, entry_id: str) -> Entry:
        """
        An entry in any state but corrupt.
        """

    def list(self, state: State | None = None) -> builtins.list[Entry]:
        """
        Every entry in a state (or in all states but corrupt).
        """

    def counts(self) -> dict[str, int]:
        """
        How many entries are in each state, by state name.
        """

    def recover(self) -> dict[str, int]:
        """
        At daemon start: return abandoned in-flight entries to the queue and
        remove orphan files.
        """


@runtime_checkable
class IClaimDue(Protocol):
    """
    A queue that finds and claims due entries in one step (a database's
    ``FOR UPDATE SKIP LOCKED``), so workers sharing it do not race for the
    same ids.  The daemon uses it instead of :meth:`IQueue.due` then
    :meth:`IQueue.claim` when the queue has it.
    """

    def claim_due(self, now: float, limit: int) -> builtins.list[Entry]:
        """
        Claim up to ``limit`` entries due at ``now``, earliest first.
        """


@runtime_checkable
class IChunkedMessages(Protocol):
    """
    A queue whose messages are read chunk by chunk (kept in a database), so
    the daemon streams a big message in bounded memory.
    """

    def read_chunk(self, entry_id: str, seq: int) -> bytes | None:
        """
        Chunk number ``seq`` (from 0) of the message, ``None`` past the end.

        :raises EntryNotFound: if there is no such entry.
        """
