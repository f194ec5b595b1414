"""
Spool entries: the envelope of a queued message, its recipients' progress,
its delivery attempts and outcome, and the checks and transitions on them.

Sans-IO: values in, values or :class:`EnvelopeError` out; nothing here touches
files or imports Twisted.  Every value is a frozen dataclass; the functions
that move an entry along (:func:`apply_attempt`, :func:`start_next_occurrence`,
...) return a new :class:`Entry`.  Their JSON form on disk is in
:mod:`.codec`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import TypeVar

from txsmtpclient._checks import ArgumentError, check_argument, check_dsn
from txsmtpclient._checks import check_options as check_options_
from txsmtpclient.reply import parse_queue_id
from txsmtpclient.spool.schedule import Recurrence, next_occurrence

__all__ = [
    "MAX_ATTEMPTS_KEPT",
    "Attempt",
    "Dsn",
    "Entry",
    "EnvelopeError",
    "Outcome",
    "OutcomeKind",
    "Recipient",
    "RecipientState",
    "ReplyRecord",
    "State",
    "apply_attempt",
    "check_address",
    "check_option",
    "check_options",
    "is_valid_id",
    "make_recipients",
    "parse_queue_id",
    "start_next_occurrence",
]

#: Attempts kept per entry; older ones are dropped so a recurring message's
#: envelope does not grow without bound.
MAX_ATTEMPTS_KEPT = 100

T = TypeVar("T")
U = TypeVar("U")

_ID = re.compile(r"[0-9a-f]{1,16}-[0-9]{1,10}-[0-9a-f]{8}")


class EnvelopeError(ValueError):
    """
    An envelope that is not well formed: bad JSON, a missing or mistyped field,
    an unknown format version, or an address or option with forbidden
    characters.
    """


class State(str, Enum):
    """
    Where an entry is in its life; each state is a folder of the spool.
    """

    #: Waiting for its due time (or due now).
    QUEUED = "queue"
    #: Claimed by a sender (the daemon) and in flight.
    SENDING = "sending"
    #: Every recipient accepted (or, with some permanently refused, the rest
    #: accepted).
    DONE = "done"
    #: Permanently refused, or expired after its maximum queue lifetime.
    FAILED = "failed"
    #: Cancelled by an operator before it was sent.
    CANCELLED = "cancelled"
    #: Unreadable or not well formed; set aside for a human.
    CORRUPT = "corrupt"
    #: Held by an operator: never sent until released (``Spool.unhold``).
    HELD = "held"


class RecipientState(str, Enum):
    """
    One recipient's progress in the current occurrence.
    """

    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"


class OutcomeKind(str, Enum):
    """
    How an occurrence of a message ended.
    """

    DELIVERED = "delivered"
    FAILED = "failed"
    EXPIRED = "expired"


@dataclass(frozen=True, slots=True)
class ReplyRecord:
    """
    A server reply as recorded: the code and its text (lines joined by
    ``"\\n"``), decoded for humans.
    """

    code: int
    text: str

    def __str__(self) -> str:
        return f"{self.code} {self.text}"


@dataclass(frozen=True, slots=True)
class Recipient:
    """
    One envelope recipient.

    :ivar address: the forward-path, without angle brackets.
    :ivar state: pending, delivered or permanently failed.
    :ivar reply: the last reply about this recipient (to RCPT, or to the final
        dot once it was accepted), if any.
    """

    address: str
    state: RecipientState = RecipientState.PENDING
    reply: ReplyRecord | None = None


@dataclass(frozen=True, slots=True)
class Dsn:
    """
    Delivery status notification requests (RFC 3461), sent only to a server
    that advertises DSN.

    :ivar ret: ``"FULL"`` or ``"HDRS"`` (section 4.3), or ``None``.
    :ivar envid: envelope identifier (section 4.4), plain text; the client
        sends it as xtext (``sendmail(dsn_envid=...)``).
    :ivar notify: ``("NEVER",)`` or some of ``SUCCESS``, ``FAILURE``,
        ``DELAY`` (section 4.1).
    """

    ret: str | None = None
    envid: str | None = None
    notify: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        # The client's own DSN check, so that what the spool accepts the
        # client will send.
        try:
            ret, _envid, notify = check_dsn(self.ret, self.envid, self.notify)
        except (TypeError, ArgumentError) as e:
            raise EnvelopeError(str(e)) from None
        object.__setattr__(self, "ret", ret)
        object.__setattr__(self, "notify", notify)


@dataclass(frozen=True, slots=True)
class Attempt:
    """
    One delivery attempt.

    :ivar at: when it started, epoch seconds.
    :ivar duration: how long it took, seconds.
    :ivar relay: the relay it went to (endpoint description or host:port).
    :ivar code: the reply code that decided it (to the final dot, or the
        refusal), or ``None`` if no reply came (refused connection, timeout,
        disconnect).
    :ivar text: that reply's text, or a description of the error.
    :ivar queue_id: the relay's queue id, from a 250 reply such as
        ``250 2.0.0 Ok: queued as ABC123`` (see :func:`parse_queue_id`).
    :ivar temporary: whether the failure (if any) was temporary.
    :ivar delivered: recipients accepted in this attempt.
    :ivar refused: recipients refused in this attempt, with the reply; those
        with a 4xx reply stay pending, those with a 5xx reply fail.
    :ivar ambiguous: the end of the message was written but the connection
        failed before the reply to it came
        (:class:`~txsmtpclient.errors.SMTPAmbiguousDelivery`): the relay may
        have taken the message, so sending it again may deliver it twice.
    :ivar accepted: for delivered recipients whose reply was not this
        attempt's (direct delivery: each domain's mail host answers for its
        own), that reply; recorded on the recipients, not stored with the
        attempt.
    """

    at: float
    duration: float
    relay: str
    code: int | None
    text: str
    queue_id: str | None = None
    temporary: bool = False
    delivered: tuple[str, ...] = ()
    refused: Mapping[str, ReplyRecord] = field(default_factory=dict)
    ambiguous: bool = False
    accepted: Mapping[str, ReplyRecord] = field(default_factory=dict)

    @property
    def succeeded(self) -> bool:
        """
        Whether the server accepted the message for at least one recipient.
        """
        return bool(self.delivered)


@dataclass(frozen=True, slots=True)
class Outcome:
    """
    How an occurrence of a message ended.

    :ivar at: when, epoch seconds.
    :ivar kind: delivered, failed or expired.
    :ivar code: the deciding reply code, if there was a reply.
    :ivar text: the reply text or the reason.
    :ivar queue_id: the relay's queue id, if it gave one.
    """

    at: float
    kind: OutcomeKind
    code: int | None = None
    text: str = ""
    queue_id: str | None = None

    @classmethod
    def from_attempt(cls, attempt: Attempt, kind: OutcomeKind) -> Outcome:
        """
        The outcome an attempt decided.
        """
        return cls(
            attempt.at + attempt.duration, kind, attempt.code, attempt.text, attempt.queue_id
        )


@dataclass(frozen=True, slots=True)
class Entry:
    """
    A queued message's envelope and history (the message bytes are stored
    apart, see the store's ``read_message``).

    :ivar id: the spool id, unique across processes (see :func:`is_valid_id`).
    :ivar sender: the reverse-path, ``""`` for the null sender.
    :ivar recipients: every recipient with its progress in this occurrence.
    :ivar due: when it is due next, epoch seconds.
    :ivar created: when it was enqueued, epoch seconds.
    :ivar state: the folder it was read from.
    :ivar mail_options: ESMTP MAIL FROM parameters (``"SMTPUTF8"``,
        ``"BODY=8BITMIME"``), as for smtplib's ``sendmail(mail_options=)``.
    :ivar rcpt_options: ESMTP RCPT TO parameters for every recipient.
    :ivar dsn: DSN requests, added to the options only where the server
        supports DSN.
    :ivar recurrence: how it recurs, or ``None`` for a one-off.
    :ivar occurrence_due: when the current occurrence first fell due; the
        maximum queue lifetime counts from here.
    :ivar occurrences: occurrences finished so far (recurring messages).
    :ivar attempts: the last :data:`MAX_ATTEMPTS_KEPT` attempts, oldest first.
    :ivar outcome: how the last occurrence ended, if one has.
    :ivar size: the message's size in bytes.
    """

    id: str
    sender: str
    recipients: tuple[Recipient, ...]
    due: float
    created: float
    state: State = State.QUEUED
    mail_options: tuple[str, ...] = ()
    rcpt_options: tuple[str, ...] = ()
    dsn: Dsn | None = None
    recurrence: Recurrence | None = None
    occurrence_due: float = 0.0
    occurrences: int = 0
    attempts: tuple[Attempt, ...] = ()
    outcome: Outcome | None = None
    size: int = 0

    @property
    def pending(self) -> tuple[str, ...]:
        """
        Recipients still to be sent to in this occurrence.
        """
        return tuple(r.address for r in self.recipients if r.state is RecipientState.PENDING)

    @property
    def delivered(self) -> tuple[str, ...]:
        """
        Recipients the server accepted in this occurrence.
        """
        return tuple(r.address for r in self.recipients if r.state is RecipientState.DELIVERED)

    @property
    def failed(self) -> tuple[str, ...]:
        """
        Recipients permanently refused in this occurrence.
        """
        return tuple(r.address for r in self.recipients if r.state is RecipientState.FAILED)

    @property
    def failures(self) -> int:
        """
        Attempts made in the current occurrence.  After
        :func:`apply_attempt` has recorded a failed one, this is the count to
        give :meth:`~txsmtpclient.spool.schedule.RetryPolicy.next_attempt`.
        """
        return sum(1 for a in self.attempts if a.at >= self.occurrence_due)


def is_valid_id(text: str) -> bool:
    """
    Whether ``text`` has the shape of a spool id (hex time, pid, hex random),
    which also makes it safe as part of a file name.
    """
    return _ID.fullmatch(text) is not None


def check_address(address: str, *, what: str = "address") -> str:
    """
    Check an envelope address before it is queued.

    :param address: a mailbox without angle brackets (``""`` only makes sense
        as the null sender, which the caller allows).
    :returns: the address.
    :raises EnvelopeError: if it contains controls, spaces or angle brackets.
    """
    _checked(check_argument, address, what)
    if any(c in address for c in " <>"):
        raise EnvelopeError(f"{what} must be a bare mailbox without spaces or <>, got {address!r}")
    return address


def check_option(option: str) -> str:
    """
    Check one ESMTP parameter (``KEYWORD`` or ``KEYWORD=value``, RFC 5321
    section 4.1.2), with the client's own check.

    :raises EnvelopeError: if it is empty or contains spaces or controls.
    """
    return _checked(check_options_, (option,), "ESMTP parameter")[0]


def _checked(check: Callable[[T, str], U], value: T, what: str) -> U:
    """
    One of the client's checks (:mod:`txsmtpclient._checks`), its errors
    made :class:`EnvelopeError`.
    """
    try:
        return check(value, what)
    except (TypeError, ArgumentError) as e:
        raise EnvelopeError(str(e)) from None


def apply_attempt(entry: Entry, attempt: Attempt, *, keep: int = MAX_ATTEMPTS_KEPT) -> Entry:
    """
    Record an attempt: recipients in ``attempt.delivered`` become delivered,
    those refused with a 5xx reply failed, those refused with a 4xx reply stay
    pending with the reply noted.  Recipients the attempt does not name are
    left as they were.

    :param keep: how many attempts to keep, newest last.
    :returns: the updated entry.
    """
    delivered = set(attempt.delivered)
    recipients = []
    for recipient in entry.recipients:
        if recipient.state is RecipientState.PENDING:
            refusal = attempt.refused.get(recipient.address)
            if refusal is not None:
                state = RecipientState.FAILED if refusal.code >= 500 else RecipientState.PENDING
                recipient = replace(recipient, state=state, reply=refusal)
            elif recipient.address in delivered:
                reply = attempt.accepted.get(recipient.address)
                if reply is None and attempt.code:
                    reply = ReplyRecord(attempt.code, attempt.text)
                recipient = replace(recipient, state=RecipientState.DELIVERED, reply=reply)
        recipients.append(recipient)
    attempts = (*entry.attempts, attempt)[-keep:] if keep > 0 else ()
    return replace(entry, recipients=tuple(recipients), attempts=attempts)


def start_next_occurrence(entry: Entry, outcome: Outcome, now: float) -> Entry:
    """
    Finish the current occurrence of a recurring entry and set up the next:
    the outcome is recorded, every recipient is pending again, and the entry
    is due at the recurrence's next time after ``now`` (missed occurrences are
    not caught up, see :func:`~txsmtpclient.spool.schedule.next_occurrence`).

    :raises ValueError: if the entry does not recur.
    """
    if entry.recurrence is None:
        raise ValueError(f"entry {entry.id} does not recur")
    due = next_occurrence(entry.recurrence, entry.occurrence_due, now)
    return replace(
        entry,
        recipients=tuple(Recipient(r.address) for r in entry.recipients),
        due=due,
        occurrence_due=due,
        occurrences=entry.occurrences + 1,
        outcome=outcome,
    )


def make_recipients(addresses: Iterable[str]) -> tuple[Recipient, ...]:
    """
    Checked, pending recipients, duplicates dropped (first kept).

    :raises EnvelopeError: if there are none or one is malformed.
    """
    seen: dict[str, Recipient] = {}
    for address in addresses:
        check_address(address, what="recipient")
        if not address:
            raise EnvelopeError("recipient must not be empty")
        seen.setdefault(address, Recipient(address))
    if not seen:
        raise EnvelopeError("expected at least one recipient")
    return tuple(seen.values())


def check_options(options: Sequence[str]) -> tuple[str, ...]:
    """
    Check a sequence of ESMTP parameters (see :func:`check_option`).

    :raises EnvelopeError: for a malformed one, or a bare string passed where
        a sequence was expected.
    """
    return _checked(check_options_, options, "ESMTP parameter")
