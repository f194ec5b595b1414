"""
What a delivery attempt is judged by and ends in: the sender it uses, the
actions and reports, and the rules that sort errors into temporary,
permanent and configuration faults.  :class:`~.delivery.Deliverer` acts on
them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any, Protocol, TypeVar

from twisted.internet import error as neterror
from twisted.internet.defer import Deferred
from twisted.internet.defer import TimeoutError as DeferTimeoutError

from txsmtpclient._body import Body
from txsmtpclient.errors import (
    SMTPAuthenticationError,
    SMTPException,
    SMTPTLSError,
)
from txsmtpclient.reply import Reply
from txsmtpclient.spool.envelope import (
    Attempt,
    Entry,
    ReplyRecord,
)
from txsmtpclient.transaction import DSN, Envelope

__all__ = [
    "AMBIGUOUS_POLICIES",
    "CONFIG_FAULT_LOG_INTERVAL",
    "Blocking",
    "DeliveryAction",
    "DeliveryReport",
    "Sender",
]

T = TypeVar("T")

#: What ``on_ambiguous`` may be: send again, or keep back for an operator.
AMBIGUOUS_POLICIES = ("resend", "hold")

#: Seconds between two error-level log lines about the same relay's
#: configuration fault (every attempt is still logged at info level).
CONFIG_FAULT_LOG_INTERVAL = 300.0


class Blocking(Protocol):
    """
    Runs a blocking callable off the reactor thread (``deferToThreadPool``
    bound to a reactor and a pool) and returns a Deferred of its result.
    """

    def __call__(self, f: Callable[..., T], /, *args: Any) -> Deferred[T]: ...


class Sender(Protocol):
    """
    What sends one message: :class:`~txsmtpclient.pool.SMTPConnectionPool`
    has this method.  The returned dict may be a :class:`~txsmtpclient.transaction.Refused`
    carrying the reply to the final dot.
    """

    def sendmail(self, *, msg: Body, envelope: Envelope) -> Deferred[dict[str, Reply]]: ...


class DeliveryAction(str, Enum):
    """
    What became of an entry after one delivery attempt.
    """

    #: Every pending recipient answered and at least one was accepted.
    DELIVERED = "delivered"
    #: Refused permanently (or none accepted).
    FAILED = "failed"
    #: Temporary failure past the maximum queue lifetime.
    EXPIRED = "expired"
    #: Temporary failure: queued again for later.
    RESCHEDULED = "rescheduled"
    #: Not attempted (stopping): back in the queue as it was.
    RELEASED = "released"
    #: Not attempted (its destination is backed off): queued for when it opens.
    POSTPONED = "postponed"
    #: Unreadable message or unsendable envelope: moved to ``corrupt/``.
    SET_ASIDE = "set_aside"
    #: Ambiguous attempt with ``on_ambiguous="hold"``: kept back for an
    #: operator (``State.HELD``).
    HELD = "held"
    #: The store could not record the result (left claimed; restart recovers).
    STUCK = "stuck"


@dataclass(frozen=True, slots=True)
class DeliveryReport:
    """
    The result of :meth:`Deliverer.deliver`.

    :ivar entry_id: the entry.
    :ivar action: what became of it.
    :ivar attempt: the attempt made, if one was.
    :ivar next_due: when it is due again, for a rescheduled (or recurring)
        entry.
    """

    entry_id: str
    action: DeliveryAction
    attempt: Attempt | None = None
    next_due: float | None = None


def _text(message: bytes) -> str:
    return message.decode("utf-8", "replace")


def _record(reply: Reply | tuple[int, bytes]) -> ReplyRecord:
    return ReplyRecord(reply[0], _text(reply[1]))


def _code_text(code: int | None) -> str:
    """
    A reply code for a log line: the code, or ``"no reply"``.
    """
    return "no reply" if code is None else str(code)


def _is_config_fault(error: BaseException) -> bool:
    """
    Whether an error says the daemon's configuration does not fit the relay
    (TLS required but not offered or not verifiable, credentials refused):
    retrying will not help until an operator acts.
    """
    return isinstance(error, (SMTPTLSError, SMTPAuthenticationError))


def _is_temporary(error: BaseException) -> bool:
    """
    Whether a failure of the whole transaction may succeed later: a 4xx
    reply, a lost or refused connection, a timeout (RFC 5321 section 4.5.4.1
    asks a sender to retry those).
    """
    if isinstance(error, SMTPException):
        return error.temporary
    return isinstance(
        error,
        (
            OSError,
            ConnectionError,
            TimeoutError,
            DeferTimeoutError,
            neterror.ConnectError,
            neterror.ConnectionLost,
            neterror.ConnectionDone,
            neterror.TimeoutError,
            neterror.DNSLookupError,
        ),
    )


def _envelope(entry: Entry, pending: Sequence[str]) -> Envelope:
    """
    The client's envelope for an entry's pending recipients.

    :raises SMTPArgumentError: for what the client will not send.
    """
    dsn = None
    if entry.dsn is not None:
        # The client leaves these out where the server lacks DSN
        # (RFC 3461 section 4).
        dsn = DSN.check(entry.dsn.ret, entry.dsn.envid, entry.dsn.notify)
    return Envelope.check(entry.sender, pending, entry.mail_options, entry.rcpt_options, dsn)


class _GaveUp(Exception):
    """
    A store update that could not be made.
    """
