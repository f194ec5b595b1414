"""
What a direct delivery gives back: the per-recipient :class:`DirectResult`,
and the gathering of every domain's results, which is where a cancelled
delivery (a daemon stopping) is wound down.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass

from twisted.internet.defer import CancelledError, Deferred, DeferredList
from twisted.internet.error import ConnectingCancelledError
from twisted.python.failure import Failure

from txsmtpclient.direct._mtasts import TLSReportEntry
from txsmtpclient.direct._route import Destination
from txsmtpclient.errors import SMTPException, SMTPServerDisconnected
from txsmtpclient.reply import Reply

__all__ = ["DirectResult", "Stop", "gather"]


@dataclass(frozen=True, slots=True)
class DirectResult:
    """
    What happened to one recipient.

    :ivar recipient: the address.
    :ivar delivered: a mail host accepted the message for it.
    :ivar final: the outcome will not change by trying again: delivered, or
        refused permanently (5xx, null MX, no such domain).  ``False``: try
        again later.
    :ivar reply: the server's reply that decided (the RCPT refusal or the
        reply to the end of the message), if a server decided.
    :ivar mx: the mail host that gave the reply, if any.
    :ivar error: what went wrong when no reply decided, or the error the
        reply was part of.
    :ivar tls_report: transport-security failures met on the way, in the
        TLSRPT shape (RFC 8460), for the operator's records.
    """

    recipient: str
    delivered: bool
    final: bool
    reply: Reply | None = None
    mx: str | None = None
    error: SMTPException | None = None
    tls_report: tuple[TLSReportEntry, ...] = ()

    @property
    def temporary(self) -> bool:
        """
        Not delivered, and worth trying again later.
        """
        return not self.delivered and not self.final


class Stop:
    """
    Whether the caller gave up on a :func:`send_direct` call.

    Cancelling reaches only the Deferred a domain's delivery awaits at that
    moment, and a layer below may turn it into an ordinary failure (a DNS
    or policy-fetch error) and go on; so each step that would start more
    work checks here first, and no new lookup or connection starts once
    the call is cancelled.
    """

    __slots__ = ("cancelled",)

    def __init__(self) -> None:
        self.cancelled = False

    def check(self) -> None:
        """
        :raises CancelledError: once the call was cancelled.
        """
        if self.cancelled:
            raise CancelledError()


async def gather(
    stop: Stop,
    destinations: Sequence[Destination],
    parts: Sequence[Deferred[dict[str, DirectResult]]],
) -> dict[str, DirectResult]:
    """
    Every domain's results, once every domain's delivery has ended.

    Cancelled (a daemon stopping), the deliveries still running are
    cancelled and awaited (their sessions closed).  A recipient already
    decided for good (delivered, or refused with a 5xx) keeps its result,
    so that it is not sent to again; the others get a temporary one whose
    error says the delivery was cancelled.  With no recipient decided for
    good the call fails with the :class:`CancelledError`.

    :raises CancelledError: when cancelled before any domain's outcome was
        final.
    """
    outcomes: dict[int, dict[str, DirectResult] | Failure] = {}

    def keep(outcome: dict[str, DirectResult] | Failure, index: int) -> None:
        outcomes[index] = outcome

    for index, part in enumerate(parts):
        part.addBoth(keep, index)

    def cancel(_: Deferred[None]) -> None:
        # The flag first: a part may swallow its cancellation and go on.
        stop.cancelled = True
        for part in parts:
            part.cancel()

    waiting: Deferred[None] = Deferred(cancel)

    def settled(_: object) -> None:
        if not waiting.called:
            waiting.callback(None)

    DeferredList(list(parts)).addCallback(settled)
    with contextlib.suppress(CancelledError):
        await waiting
    while len(outcomes) < len(parts):
        # Cancelled: every part ends (its session closed) before this does;
        # a second cancel reaches the parts' closing too, and is waited out.
        with contextlib.suppress(CancelledError):
            await DeferredList([p for i, p in enumerate(parts) if i not in outcomes])
    cancelled = (CancelledError, ConnectingCancelledError)
    for outcome in outcomes.values():
        if isinstance(outcome, Failure) and not outcome.check(*cancelled):
            # Not a recipient's outcome: our own bug, not wrapped.
            outcome.raiseException()
    results: dict[str, DirectResult] = {}
    kept = False
    for index, destination in enumerate(destinations):
        outcome = outcomes[index]
        error = SMTPServerDisconnected(
            f"delivery to {destination.domain} was cancelled before its outcome was known"
        )
        for recipient in destination.recipients:
            result = outcome.get(recipient) if isinstance(outcome, dict) else None
            if result is not None and (result.final or not stop.cancelled):
                results[recipient] = result
                kept = True
            else:
                results[recipient] = DirectResult(recipient, False, False, error=error)
    if stop.cancelled and not kept:
        raise CancelledError()
    return results
