"""
The spool: a durable folder queue of messages to send, with scheduling.

Any process enqueues with ``Spool(path).enqueue(...)``, ``python -m
txsmtpclient enqueue`` or the sendmail(1) entry point; the ``twist txsmtp``
daemon delivers.  Public names only; see :mod:`.store`, :mod:`.queue`,
:mod:`.envelope` and :mod:`.schedule`.  Nothing here imports Twisted.
"""

from txsmtpclient.spool.envelope import (
    Attempt,
    Dsn,
    Entry,
    EnvelopeError,
    Outcome,
    OutcomeKind,
    Recipient,
    RecipientState,
    ReplyRecord,
    State,
    parse_queue_id,
)
from txsmtpclient.spool.queue import (
    EntryBusy,
    EntryNotFound,
    EntryStateError,
    IQueue,
    SpoolError,
    SpoolFull,
    Submission,
)
from txsmtpclient.spool.schedule import (
    DEFAULT_MAX_LIFETIME,
    Recurrence,
    RetryPolicy,
    ScheduleError,
    parse_duration,
    parse_recurrence,
    parse_time,
)
from txsmtpclient.spool.store import Spool

__all__ = [
    "DEFAULT_MAX_LIFETIME",
    "Attempt",
    "Dsn",
    "Entry",
    "EntryBusy",
    "EntryNotFound",
    "EntryStateError",
    "EnvelopeError",
    "IQueue",
    "Outcome",
    "OutcomeKind",
    "Recipient",
    "RecipientState",
    "Recurrence",
    "ReplyRecord",
    "RetryPolicy",
    "ScheduleError",
    "Spool",
    "SpoolError",
    "SpoolFull",
    "State",
    "Submission",
    "parse_duration",
    "parse_queue_id",
    "parse_recurrence",
    "parse_time",
]
