"""
Per-destination limits for a direct-delivery daemon, as Postfix's queue
manager keeps them per next-hop domain: at most so many sessions at once
to one destination (``default_destination_concurrency_limit``), the rest
waiting their turn in a queue per destination; and a backoff per
destination, so that a 421, a 4.7.x rate-limit reply or failed connections
slow that destination down instead of hammering it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from txsmtpclient.direct._deliver import DirectResult, _reply
from txsmtpclient.errors import (
    SMTPAmbiguousDelivery,
    SMTPDestinationDeferred,
    SMTPResponseException,
    SMTPServerDisconnected,
)

__all__ = ["Backoff", "Destinations", "throttle_reason"]


@dataclass(frozen=True, slots=True)
class Backoff:
    """
    How long a destination rests after each consecutive throttling:
    ``initial * factor ** (n - 1)`` seconds, at most ``maximum``.

    :raises ValueError: for a non-positive delay or a factor below 1.
    """

    initial: float = 60.0
    maximum: float = 1800.0
    factor: float = 2.0

    def __post_init__(self) -> None:
        if self.initial <= 0 or self.maximum < self.initial:
            raise ValueError(
                f"backoff needs 0 < initial <= maximum, got {self.initial!r}, {self.maximum!r}"
            )
        if self.factor < 1:
            raise ValueError(f"backoff factor must be at least 1, got {self.factor!r}")

    def delay(self, failures: int) -> float:
        """
        Seconds to rest after ``failures`` consecutive throttlings (1 or more).
        """
        exponent = min(max(failures, 1) - 1, 64)
        return float(min(self.maximum, self.initial * self.factor**exponent))


def throttle_reason(result: DirectResult) -> str | None:
    """
    Why a recipient's result should slow its destination down, or ``None``:
    a 421 (the server is closing the channel, RFC 5321 section 3.8), a 4xx
    with enhanced code 4.7.x (a policy or rate limit, RFC 3463), or a
    connection that failed or was lost at every mail host.
    """
    reply = result.reply
    error = result.error
    if reply is None and isinstance(error, SMTPResponseException):
        reply = _reply(error)
    if reply is not None:
        enhanced = reply.enhanced_code or ""
        if reply.code == 421 or (400 <= reply.code < 500 and enhanced.startswith("4.7.")):
            return f"{reply.code} {reply.message.decode('utf-8', 'replace')}"
        return None
    if isinstance(error, SMTPServerDisconnected) and not isinstance(error, SMTPAmbiguousDelivery):
        return f"connection failed: {error}"
    return None


def _healthy(result: DirectResult) -> bool:
    """
    Whether a mail host took the message or answered without throttling
    (a 5xx about a mailbox is an answer from a working destination).
    """
    if result.delivered:
        return True
    answered = result.reply is not None or isinstance(result.error, SMTPResponseException)
    return answered and throttle_reason(result) is None


@dataclass(slots=True)
class _State:
    active: int = 0
    waiting: deque[Deferred[None]] = field(default_factory=deque)
    failures: int = 0
    open_at: float = 0.0
    reason: str = ""


class Destinations:
    """
    The per-destination gate of the direct sender (a
    :class:`~txsmtpclient.direct.DestinationGate` for
    :func:`~txsmtpclient.direct.send_direct`).

    Each destination (recipient domain) has at most ``concurrency`` sessions
    at once; further deliveries wait in its queue, first come first served.
    A throttled result (see :func:`throttle_reason`) when nothing was
    delivered backs the destination off for :meth:`Backoff.delay` seconds:
    deliveries to it are refused with
    :class:`~txsmtpclient.errors.SMTPDestinationDeferred` until then, and
    afterwards one session at a time probes it until a mail host takes a
    message or answers without throttling, which resets it.

    :param clock: tells the time of the backoff.
    :param concurrency: sessions at once per destination.
    :param backoff: the per-destination backoff.
    :param on_backoff: called with the destination, the seconds it rests and
        the reason each time it is backed off (a seam for metrics).
    :raises ValueError: for a concurrency below 1.
    """

    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        *,
        concurrency: int = 20,
        backoff: Backoff | None = None,
        on_backoff: Callable[[str, float, str], None] | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {concurrency!r}")
        self.clock = clock
        self.concurrency = concurrency
        self.backoff = backoff if backoff is not None else Backoff()
        self.on_backoff = on_backoff
        self._states: dict[str, _State] = {}

    def active(self, destination: str) -> int:
        """
        Sessions to ``destination`` now.
        """
        state = self._states.get(destination)
        return state.active if state is not None else 0

    def waiting(self, destination: str) -> int:
        """
        Deliveries to ``destination`` waiting for a session slot.
        """
        state = self._states.get(destination)
        return len(state.waiting) if state is not None else 0

    def open_at(self, destination: str) -> float | None:
        """
        When a backed-off destination opens again, or ``None`` if it is open.
        """
        state = self._states.get(destination)
        if state is None or state.open_at <= self.clock.seconds():
            return None
        return state.open_at

    def _limit(self, state: _State) -> int:
        # While recovering from a backoff, probe with one session at a time.
        return 1 if state.failures else self.concurrency

    def _deferred(self, destination: str, state: _State) -> SMTPDestinationDeferred:
        return SMTPDestinationDeferred(destination, state.open_at, state.reason)

    def enter(self, destination: str) -> Deferred[None]:
        """
        Fire when a session to ``destination`` may start; fail at once with
        :class:`~txsmtpclient.errors.SMTPDestinationDeferred` while it is
        backed off.  Cancelling the wait leaves the queue.
        """
        state = self._states.setdefault(destination, _State())
        if self.open_at(destination) is not None:
            return fail(self._deferred(destination, state))
        if state.active < self._limit(state) and not state.waiting:
            state.active += 1
            return succeed(None)

        def cancel(d: Deferred[None]) -> None:
            if d in state.waiting:
                state.waiting.remove(d)

        waiter: Deferred[None] = Deferred(cancel)
        state.waiting.append(waiter)
        return waiter

    def leave(self, destination: str, results: dict[str, DirectResult]) -> None:
        """
        End a session to ``destination``; judge its results (back off, or
        reset after a delivery) and let the next waiting one in.
        """
        state = self._states[destination]
        state.active -= 1
        reasons = [why for why in map(throttle_reason, results.values()) if why]
        if any(_healthy(r) for r in results.values()):
            state.failures, state.open_at, state.reason = 0, 0.0, ""
        else:
            if reasons:
                state.failures += 1
                delay = self.backoff.delay(state.failures)
                state.open_at = self.clock.seconds() + delay
                state.reason = reasons[0]
                self.log.warn(
                    "Destination {destination} backed off for {delay:.0f}s "
                    "(throttled {failures} times in a row): {reason}",
                    destination=destination,
                    delay=delay,
                    failures=state.failures,
                    reason=state.reason,
                )
                if self.on_backoff is not None:
                    self.on_backoff(destination, delay, state.reason)
        self._wake(destination, state)

    def _wake(self, destination: str, state: _State) -> None:
        if self.open_at(destination) is not None:
            # Those waiting would hammer a destination that asked for rest.
            waiting, state.waiting = state.waiting, deque()
            for waiter in waiting:
                waiter.errback(self._deferred(destination, state))
        while state.waiting and state.active < self._limit(state):
            state.active += 1
            state.waiting.popleft().callback(None)
        if not state.active and not state.waiting and not state.failures:
            # Forget idle, healthy destinations: the table stays small.
            del self._states[destination]
