"""
Delivery of one claimed spool entry through the SMTP client.

:class:`Deliverer` takes an entry the daemon has claimed, sends it to its
pending recipients over a :class:`Sender` (an
:class:`~txsmtpclient.pool.SMTPConnectionPool`), records the attempt and
moves the entry on:

* every pending recipient answered (2xx, or 5xx): ``complete`` (some
  delivered) or ``fail`` (none);
* some recipients refused with 4xx, or the whole transaction failed
  temporarily (4xx to MAIL or DATA, a refused connection, a timeout, a
  disconnect): ``reschedule`` with exponential backoff and jitter, only the
  pending recipients being tried again, until the maximum queue lifetime, then
  ``fail`` as expired;
* the whole transaction failed permanently (5xx): ``fail`` at once;
* the connection broke after the final dot was written and before its reply
  came (:class:`~txsmtpclient.errors.SMTPAmbiguousDelivery`): the attempt is
  recorded as ambiguous (the relay may have taken the message) and, by
  ``on_ambiguous``, the entry is sent again (``"resend"``, Postfix's
  choice: a possible duplicate rather than a possible loss) or kept back in
  the held state for an operator (``"hold"``).

The entry leaves the active queue only after the server's reply to the final
dot has been recorded (RFC 5321 section 6.1: the server takes responsibility
then, not earlier).  Every blocking store call runs through the injected
``blocking`` runner, so nothing here blocks the reactor.
"""

from __future__ import annotations

import functools
import random
import socket
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from typing import Any, ParamSpec, TypeVar

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger

from txsmtpclient._body import Body
from txsmtpclient.errors import (
    SMTPAmbiguousDelivery,
    SMTPArgumentError,
    SMTPDestinationDeferred,
    SMTPException,
    SMTPRecipientsRefused,
    SMTPResponseException,
)
from txsmtpclient.reply import Reply
from txsmtpclient.spool._notices import Notices
from txsmtpclient.spool._outcomes import (
    AMBIGUOUS_POLICIES,
    CONFIG_FAULT_LOG_INTERVAL,
    Blocking,
    DeliveryAction,
    DeliveryReport,
    Sender,
    _code_text,
    _envelope,
    _GaveUp,
    _is_config_fault,
    _is_temporary,
    _record,
    _text,
)
from txsmtpclient.spool._tracing import AttemptSpan, attempt_span, global_tracer
from txsmtpclient.spool.envelope import (
    Attempt,
    Entry,
    Outcome,
    OutcomeKind,
    ReplyRecord,
    apply_attempt,
    parse_queue_id,
)
from txsmtpclient.spool.notice import failure_notice
from txsmtpclient.spool.queue import (
    EntryNotFound,
    IChunkedMessages,
    IQueue,
    SpoolError,
    SpoolFull,
)
from txsmtpclient.spool.schedule import Jitter, RetryPolicy
from txsmtpclient.transaction import Refused

__all__ = [
    "AMBIGUOUS_POLICIES",
    "CONFIG_FAULT_LOG_INTERVAL",
    "Blocking",
    "Deliverer",
    "DeliveryAction",
    "DeliveryReport",
    "Sender",
    "failure_notice",
]

P = ParamSpec("P")
T = TypeVar("T")


class Deliverer(Notices):
    """
    Sends claimed entries and moves them on in the queue.

    :param queue: the spool (every call blocks, so each goes through
        ``blocking``).
    :param sender: sends one message (a connection pool to the relay).
    :param relay: the relay's name, for the records and logs.
    :param clock: the time source for attempt times and durations, and
        for waiting while the disk is full.
    :param blocking: runs a blocking store call off the reactor thread.
    :param policy: backoff, jitter and maximum queue lifetime for
        temporary failures.
    :param jitter: randomness for the backoff (a seeded
        :class:`random.Random` in tests).
    :param notify_sender: enqueue a failure notice to the sender (from the
        null reverse-path) when recipients fail permanently or expire.
    :param hostname: the name the failure notice names as the reporting
        host.
    :param store_retry: seconds between retries of a store update that
        failed because the disk is full.
    :param is_stopping: tells a retry loop to give up (the daemon is
        stopping); the entry then stays claimed until the next start's
        recovery.
    :param on_ambiguous: after an ambiguous attempt (final dot written, no
        reply), ``"resend"`` (retry as after any temporary failure) or
        ``"hold"`` (keep the entry back in the held state).
    :param tracer: the OpenTelemetry tracer for one span per attempt;
        ``None`` for the global provider's (nothing at all when the ``otel``
        extra is not installed).
    :raises ValueError: for an unknown ``on_ambiguous``.
    """

    log = Logger()

    def __init__(
        self,
        queue: IQueue,
        sender: Sender,
        *,
        relay: str,
        clock: IReactorTime,
        blocking: Blocking,
        policy: RetryPolicy | None = None,
        jitter: Jitter | None = None,
        notify_sender: bool = False,
        hostname: str | None = None,
        store_retry: float = 5.0,
        is_stopping: Callable[[], bool] = lambda: False,
        on_disk_full: Callable[[bool], None] = lambda full: None,
        on_ambiguous: str = "resend",
        tracer: Any = None,
    ) -> None:
        # Looked up once: a lookup per attempt cost 3% of the daemon's time.
        self.tracer = tracer if tracer is not None else global_tracer()
        if on_ambiguous not in AMBIGUOUS_POLICIES:
            raise ValueError(
                f"on_ambiguous must be one of {', '.join(AMBIGUOUS_POLICIES)}, "
                f"got {on_ambiguous!r}"
            )
        self.on_ambiguous = on_ambiguous
        #: Events counted since start, for metrics: ``"ambiguous"`` attempts
        #: and ``"config_fault"`` attempts (TLS or AUTH refused by policy).
        self.events: Counter[str] = Counter()
        # When each relay's configuration fault was last logged at error level.
        self._fault_logged: dict[str, float] = {}
        self.queue = queue
        self.sender = sender
        self.relay = relay
        self.clock = clock
        self.blocking = blocking
        self.policy = policy if policy is not None else RetryPolicy()
        self.jitter: Jitter = jitter if jitter is not None else random.Random()
        self.notify_sender = notify_sender
        self.hostname = hostname or socket.gethostname()
        self.store_retry = store_retry
        self.is_stopping = is_stopping
        self.on_disk_full = on_disk_full
        #: The Deferreds of sends in progress, by entry id, so a stopping
        #: daemon can cancel them after its grace period.
        self.sending: dict[str, Deferred[dict[str, Reply]]] = {}

    def cancel_all(self) -> None:
        """
        Cancel every send in progress (the connections are aborted); each
        entry goes back to the queue unchanged, to be sent again, except one
        whose final dot was written, recorded as ambiguous.

        Newest first: a send pipelined behind another on one connection is
        cancelled before the connection's abort could fail it as lost.
        """
        for d in reversed(list(self.sending.values())):
            d.cancel()

    def deliver(self, entry: Entry, message: Body | None = None) -> Deferred[DeliveryReport]:
        """
        Send a claimed entry to its pending recipients and move it on.

        :param entry: an entry this process has claimed.
        :param message: its message, if already read (else it is read here).
        :returns: a Deferred firing with what became of it; it does not
            fail for SMTP or store errors (they are recorded, logged and
            reported in the result).
        """
        return Deferred.fromCoroutine(self._deliver(entry, message))

    async def _deliver(self, entry: Entry, message: Body | None) -> DeliveryReport:
        span = attempt_span(self.tracer, entry, self.relay, self.clock.seconds())
        report = await self._deliver_traced(entry, message, span)
        span.finish(
            report.action.value,
            delivered=report.action is DeliveryAction.DELIVERED,
            now=self.clock.seconds(),
        )
        return report

    async def _deliver_traced(
        self, entry: Entry, message: Body | None, span: AttemptSpan
    ) -> DeliveryReport:
        if message is None:
            try:
                message = await self._message(entry)
            except (OSError, EntryNotFound) as e:
                return await self._set_aside(entry, f"message unreadable: {e}")
        # Kept for the failure notice when it is in memory already.
        original = message if isinstance(message, bytes) else None
        span.event("spool.message_read", self.clock.seconds(), size=entry.size)
        if not entry.pending:
            # Claimed with nothing left to send (every recipient answered
            # before a crash): finish it.
            return await self._finish(entry, None, original)
        span.event("smtp.send", self.clock.seconds(), recipients=len(entry.pending))
        attempt = await self._attempt(entry, message)
        if attempt is None:
            return await self._release(entry)
        if isinstance(attempt, SMTPDestinationDeferred):
            return await self._postpone(entry, attempt)
        if isinstance(attempt, str):
            return await self._set_aside(entry, attempt)
        span.attempted(attempt)
        return await self._finish(entry, attempt, original)

    async def _message(self, entry: Entry) -> Body:
        """
        The message to send: bytes, or from a queue that stores it in
        chunks, a stream of them read one at a time off the reactor thread
        (memory stays flat whatever the size).  The first chunk is read now,
        so a missing message is found before the transaction starts; a
        message that fits in it is sent as bytes.
        """
        queue = self.queue
        if not isinstance(queue, IChunkedMessages):
            return await self.blocking(queue.read_message, entry.id)
        first = await self.blocking(queue.read_chunk, entry.id, 0)
        if first is None or len(first) >= entry.size > 0:
            return first or b""

        async def chunks() -> AsyncIterator[bytes]:
            chunk: bytes | None = first
            seq = 0
            while chunk is not None:
                yield chunk
                seq += 1
                chunk = await self.blocking(queue.read_chunk, entry.id, seq)

        return chunks()

    async def _attempt(
        self, entry: Entry, message: Body
    ) -> Attempt | str | SMTPDestinationDeferred | None:
        """
        One SMTP transaction.

        :returns: the attempt; a reason string for an envelope that can never
            be sent; ``None`` when it was cancelled (stopping); the sender's
            :class:`~txsmtpclient.errors.SMTPDestinationDeferred` when it
            tried nothing because every destination is backed off.
        """
        pending = entry.pending
        start = self.clock.seconds()
        code: int | None = None
        text = ""
        queue_id: str | None = None
        temporary = False
        refused: dict[str, ReplyRecord] = {}
        accepted: dict[str, ReplyRecord] = {}
        delivered: tuple[str, ...] = ()
        ambiguous = False
        try:
            d = self.sender.sendmail(msg=message, envelope=_envelope(entry, pending))
            self.sending[entry.id] = d
            try:
                result = await d
            finally:
                self.sending.pop(entry.id, None)
        except CancelledError:
            self._log_attempt(entry, None, "cancelled: the daemon is stopping", start, "released")
            return None
        except SMTPDestinationDeferred as e:
            if (
                self.policy.next_attempt(
                    failures=max(1, entry.failures),
                    occurrence_due=entry.occurrence_due,
                    now=self.clock.seconds(),
                    jitter=self.jitter,
                )
                is not None
            ):
                return e
            # Past the maximum queue lifetime: an attempt, so that it expires.
            code, text, temporary = 451, str(e), True
        except SMTPArgumentError as e:
            # Our own check refused the envelope before anything was sent:
            # no later attempt can do better.
            return f"bad envelope: {e}"
        except SMTPRecipientsRefused as e:
            refused = {a: _record(r) for a, r in e.recipients.items()}
            worst = max(e.recipients.values(), key=lambda r: r.code)
            code, text = worst.code, _text(worst.message)
            temporary = any(r.code < 500 for r in e.recipients.values())
        except SMTPResponseException as e:
            code, text, temporary = e.smtp_code, _text(e.smtp_error), e.temporary
            if not temporary:
                # A 5xx to MAIL or DATA refuses the message for everyone.
                refused = {a: ReplyRecord(code, text) for a in pending}
        except Exception as e:
            text = f"{type(e).__name__}: {e}"
            temporary = _is_temporary(e)
            ambiguous = isinstance(e, SMTPAmbiguousDelivery)
            if _is_config_fault(e):
                self._config_fault(entry, text)
            if not temporary and not isinstance(e, SMTPException):
                # Not an SMTP answer: most likely a bug; retry rather than lose.
                self.log.failure(
                    "Unexpected error sending {id} to {relay}", id=entry.id, relay=self.relay
                )
                temporary = True
            if not temporary:
                # The status a standard gives the refusal, for the bounce.
                enhanced = getattr(e, "enhanced_code", None)
                if enhanced:
                    text = f"{enhanced} {text}"
                refused = {a: ReplyRecord(550, text) for a in pending}
        else:
            refused = {a: _record(r) for a, r in result.items()}
            delivered = tuple(a for a in pending if a not in refused)
            final = result.final if isinstance(result, Refused) else None
            if isinstance(result, Refused):
                accepted = {a: _record(r) for a, r in result.accepted.items() if a in delivered}
            if final is not None:
                code, text = final.code, _text(final.message)
                queue_id = parse_queue_id(text)
            else:
                code, text = 250, "accepted"
            temporary = any(r.code < 500 for r in refused.values())
        duration = max(0.0, self.clock.seconds() - start)
        return Attempt(
            at=start,
            duration=duration,
            relay=self.relay,
            code=code,
            text=text,
            queue_id=queue_id,
            temporary=temporary,
            delivered=delivered,
            refused=refused,
            ambiguous=ambiguous,
            accepted=accepted,
        )

    def _config_fault(self, entry: Entry, text: str) -> None:
        """
        Count a configuration fault and log it at error level, at most once
        per relay every :data:`CONFIG_FAULT_LOG_INTERVAL` seconds.
        """
        self.events["config_fault"] += 1
        now = self.clock.seconds()
        last = self._fault_logged.get(self.relay)
        if last is not None and now - last < CONFIG_FAULT_LOG_INTERVAL:
            return
        self._fault_logged[self.relay] = now
        self.log.error(
            "Relay {relay} does not fit this daemon's configuration: {error} "
            "(entry {id}; retried as the policy says; logged once per {interval:.0f}s)",
            relay=self.relay,
            error=text,
            id=entry.id,
            interval=CONFIG_FAULT_LOG_INTERVAL,
        )

    def _log_attempt(
        self, entry: Entry, code: int | None, reply: str, start: float, action: str, **kw: Any
    ) -> None:
        self.log.info(
            "Delivery attempt {id} to {relay}: {code_text} {reply} ({duration:.3f}s) -> {action}",
            id=entry.id,
            relay=self.relay,
            code=code,
            code_text=_code_text(code),
            reply=reply,
            duration=max(0.0, self.clock.seconds() - start),
            action=action,
            **kw,
        )

    async def _finish(
        self, entry: Entry, attempt: Attempt | None, message: bytes | None
    ) -> DeliveryReport:
        """
        Record the attempt and complete, fail or reschedule the entry, in
        one store call.
        """
        after = apply_attempt(entry, attempt) if attempt is not None else entry
        now = self.clock.seconds()
        next_due: float | None = None
        if after.pending:
            next_due = self.policy.next_attempt(
                failures=max(1, after.failures),
                occurrence_due=after.occurrence_due,
                now=now,
                jitter=self.jitter,
            )
            action = DeliveryAction.RESCHEDULED if next_due is not None else DeliveryAction.EXPIRED
        elif after.delivered:
            action = DeliveryAction.DELIVERED
        else:
            action = DeliveryAction.FAILED
        if attempt is not None and attempt.ambiguous:
            self.events["ambiguous"] += 1
            self.log.warn(
                "Delivery attempt {id} to {relay} is ambiguous: the message was sent but "
                "no reply to it came, so the relay may have taken it; policy: {policy}",
                id=entry.id,
                relay=attempt.relay,
                policy=self.on_ambiguous,
                ambiguous=True,
            )
        if attempt is not None:
            self.log.info(
                "Delivery attempt {id} to {relay}: {code_text} {reply} ({duration:.3f}s) "
                "-> {action}",
                id=entry.id,
                relay=attempt.relay,
                code=attempt.code,
                code_text=_code_text(attempt.code),
                reply=attempt.text,
                duration=attempt.duration,
                queue_id=attempt.queue_id,
                delivered=attempt.delivered,
                refused={a: str(r) for a, r in attempt.refused.items()},
                action=action.value,
                next_due=next_due,
            )
        queue = self.queue
        entry_id = entry.id
        try:
            if action is DeliveryAction.RESCHEDULED:
                assert next_due is not None
                moved = await self._store(queue.reschedule, entry_id, next_due, attempt)
                if attempt is not None and attempt.ambiguous and self.on_ambiguous == "hold":
                    return await self._hold(entry_id, attempt, moved.due)
                return DeliveryReport(entry_id, action, attempt, moved.due)
            # The attempt is recorded in the same write that finishes the
            # entry: a crash before it leaves the entry claimed, and
            # recovery sends it again (the server's reply was not stored).
            if action is DeliveryAction.DELIVERED:
                moved = await self._store(queue.complete, entry_id, None, attempt=attempt)
            else:
                if attempt is not None:
                    kind = (
                        OutcomeKind.EXPIRED
                        if action is DeliveryAction.EXPIRED
                        else OutcomeKind.FAILED
                    )
                    outcome = Outcome.from_attempt(attempt, kind)
                    if kind is OutcomeKind.EXPIRED:
                        outcome = replace(
                            outcome,
                            text=f"maximum queue lifetime passed; last reply: {attempt.text}",
                        )
                else:
                    outcome = Outcome(now, OutcomeKind.FAILED, None, "no recipient accepted")
                moved = await self._store(queue.fail, entry_id, outcome, attempt=attempt)
        except _GaveUp as e:
            self.log.error(
                "Could not record the delivery of {id}: {error}; it stays in sending/ "
                "until the daemon restarts",
                id=entry_id,
                error=str(e),
            )
            return DeliveryReport(entry_id, DeliveryAction.STUCK, attempt)
        if self.notify_sender and attempt is not None:
            await self._notify(after, attempt, action, message)
        due = moved.due if moved.recurrence is not None else None
        return DeliveryReport(entry_id, action, attempt, due)

    async def _store(self, f: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """
        Run a store update off the reactor thread; while the disk is full,
        report it and try again every ``store_retry`` seconds (until the
        daemon stops).

        :raises _GaveUp: if the daemon is stopping, or another OS error.
        """
        was_full = False
        call: Callable[..., T] = functools.partial(f, **kwargs) if kwargs else f
        while True:
            try:
                result = await self.blocking(call, *args)
            except SpoolFull as e:
                was_full = True
                self.on_disk_full(True)
                self.log.critical(
                    "Spool disk full: cannot update {what}: {error}",
                    what=getattr(f, "__name__", "entry"),
                    error=str(e),
                )
                if self.is_stopping():
                    raise _GaveUp(str(e)) from e
                await deferLater(self.clock, self.store_retry, lambda: None)
                continue
            except OSError as e:
                raise _GaveUp(str(e)) from e
            if was_full:
                self.on_disk_full(False)
            return result

    async def _hold(self, entry_id: str, attempt: Attempt, due: float) -> DeliveryReport:
        """
        Keep an entry whose last attempt was ambiguous back for an operator.
        It was just rescheduled (after the backoff, so not claimed again
        meanwhile); if holding fails it stays queued and is sent again.
        """
        try:
            await self._store(self.queue.hold, entry_id)
        except (_GaveUp, SpoolError) as e:
            self.log.error(
                "Could not hold {id} after an ambiguous attempt: {error}; it stays queued",
                id=entry_id,
                error=str(e),
            )
            return DeliveryReport(entry_id, DeliveryAction.RESCHEDULED, attempt, due)
        self.log.warn(
            "Held {id}: its last attempt was ambiguous; check with the relay's "
            "operator, then 'retry' it or 'cancel' it",
            id=entry_id,
        )
        return DeliveryReport(entry_id, DeliveryAction.HELD, attempt)

    async def _postpone(self, entry: Entry, deferred: SMTPDestinationDeferred) -> DeliveryReport:
        """
        Queue an entry again, untried and with no attempt counted, for when
        its backed-off destination opens (direct delivery).
        """
        self.log.info(
            "Delivery {id} postponed: {reason}",
            id=entry.id,
            reason=str(deferred),
            due=deferred.until,
        )
        try:
            moved = await self._store(self.queue.reschedule, entry.id, deferred.until, None)
        except _GaveUp as e:
            self.log.error("Could not postpone {id}: {error}", id=entry.id, error=str(e))
            return DeliveryReport(entry.id, DeliveryAction.STUCK)
        return DeliveryReport(entry.id, DeliveryAction.POSTPONED, None, moved.due)

    async def _release(self, entry: Entry) -> DeliveryReport:
        try:
            await self.blocking(self.queue.release, entry.id)
        except Exception as e:
            self.log.error("Could not release {id}: {error}", id=entry.id, error=str(e))
            return DeliveryReport(entry.id, DeliveryAction.STUCK)
        return DeliveryReport(entry.id, DeliveryAction.RELEASED)

    async def _set_aside(self, entry: Entry, reason: str) -> DeliveryReport:
        self.log.error("Setting aside {id}: {reason}", id=entry.id, reason=reason)
        try:
            await self.blocking(self.queue.set_aside, entry.id, reason)
        except Exception as e:
            self.log.error("Could not set aside {id}: {error}", id=entry.id, error=str(e))
            return DeliveryReport(entry.id, DeliveryAction.STUCK)
        return DeliveryReport(entry.id, DeliveryAction.SET_ASIDE)
