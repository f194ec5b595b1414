"""
New spool entries: a :class:`~txsmtpclient.spool.queue.Submission` checked
and turned into an :class:`~txsmtpclient.spool.envelope.Entry`, and where the
message starts in a file that holds both.

A message enqueued as bytes is stored in one file with its envelope, so that
enqueueing fsyncs one file: the envelope's JSON on the first line (JSON text
never holds a raw newline), then the message.  The file has two names, one in
``msg/`` and one in ``queue/``; the envelope is rewritten later to a file of
its own, and the message file keeps the first envelope as its head.

Sans-IO: nothing here touches files or imports Twisted.
"""

from __future__ import annotations

from txsmtpclient.spool._names import new_id
from txsmtpclient.spool.envelope import (
    Entry,
    check_address,
    check_options,
    make_recipients,
)
from txsmtpclient.spool.queue import Submission
from txsmtpclient.spool.schedule import parse_recurrence, to_epoch

__all__ = ["check_idempotency_key", "message_start", "new_entry"]


def new_entry(submission: Submission, now: float, seq: int = 0) -> Entry:
    """
    The entry a submission makes, checked.  ``seq`` (its place in a batch)
    adds microseconds to the time in its id, so that a batch's entries due
    at once are sent in order.

    :raises EnvelopeError: for a malformed address or option.
    :raises ScheduleError: for a bad recurrence or time zone.
    :raises ValueError: for a malformed idempotency key.
    """
    if submission.idempotency_key is not None:
        check_idempotency_key(submission.idempotency_key)
    check_address(submission.sender, what="sender")
    recipients = submission.recipients
    rcpts = make_recipients([recipients] if isinstance(recipients, str) else recipients)
    recurrence = submission.recurrence
    if isinstance(recurrence, str):
        recurrence = parse_recurrence(recurrence, submission.timezone)
    if submission.at is not None:
        due = to_epoch(submission.at)
    elif recurrence is not None and recurrence.kind.value == "cron":
        due = recurrence.next_after(now)
    else:
        due = now
    return Entry(
        id=new_id(now + seq / 1_000_000),
        sender=submission.sender,
        recipients=rcpts,
        due=due,
        created=now,
        mail_options=check_options(submission.mail_options),
        rcpt_options=check_options(submission.rcpt_options),
        dsn=submission.dsn,
        recurrence=recurrence,
        occurrence_due=due,
    )


def check_idempotency_key(key: object) -> str:
    """
    An idempotency key as every queue takes it: 1 to 255 printable
    characters.

    :raises ValueError: for anything else.
    """
    if not isinstance(key, str) or not 0 < len(key) <= 255 or not key.isprintable():
        raise ValueError(f"an idempotency key must be 1 to 255 printable characters, got {key!r}")
    return key


def message_start(data: bytes, entry_id: str) -> int:
    """
    Where the message starts in a message file: after the envelope's line
    when the entry was enqueued whole (the file begins with that envelope,
    naming this id), else at 0.
    """
    if not data.startswith(b'{"version":'):
        return 0
    end = data.find(b"\n")
    if end < 0 or f'"id":"{entry_id}"'.encode() not in data[:end]:
        return 0
    return end + 1
