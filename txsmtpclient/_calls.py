"""
The queue that runs an :class:`~txsmtpclient.SMTP` session's calls one after
another, so callers may make them without waiting.

One overlap is allowed, for cross-transaction pipelining (RFC 2920 section
3.1: the end of a message may be the first "command" of a group): once the
running call has written its message's final dot, :meth:`CallQueue.overlap`
starts the next call early if it was queued as ``pipelinable``, so its MAIL,
RCPT and DATA go out before the first call's reply is read.  Results still
fire in the order the calls were queued.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

__all__ = ["CallQueue"]

T = TypeVar("T")

#: A started call's outcome before it has one.
_PENDING: Any = object()


class _Started:
    """
    A call that has started: what it awaits, the caller's Deferred, and its
    outcome once it has one (kept until every earlier call has settled).
    """

    __slots__ = ("inner", "outcome", "result")

    def __init__(self, result: Deferred[Any]) -> None:
        self.result = result
        self.inner: Deferred[Any] | None = None
        self.outcome: object = _PENDING


class CallQueue:
    """
    Runs coroutine functions in the order they were queued, each when the
    one before it has finished, successfully or not; or, when the one
    before it has called :meth:`overlap`, at once if it is pipelinable.

    Cancelling a result that has not started drops it (nothing was sent for
    it); cancelling a started one cancels the Deferred it is awaiting,
    which aborts the connection (and so fails an overlapped call before it
    that still awaits its reply).
    """

    def __init__(self) -> None:
        self._queue: deque[tuple[Callable[[], Coroutine[Any, Any, Any]], Deferred[Any], bool]] = (
            deque()
        )
        # Started calls, oldest first, until their results have fired.
        self._started: deque[_Started] = deque()
        # The started call that may still write (not yet overlapped), if any.
        self._running: _Started | None = None
        # Whether _next is looping: calls that finish at once do not recurse.
        self._looping = False

    def call(
        self, op: Callable[[], Coroutine[Any, Any, T]], pipelinable: bool = False
    ) -> Deferred[T]:
        """
        Queue ``op``.

        :param pipelinable: ``op`` may start while the call before it awaits
            the reply to its message's end (see :meth:`overlap`).
        :returns: a Deferred firing with what ``op()`` returns or raises.
        """
        result: Deferred[T] = Deferred(self._cancel)
        self._queue.append((op, result, pipelinable))
        self._next()
        return result

    def overlap(self) -> None:
        """
        The running call has written all it will write (its message's final
        dot) and now only awaits replies: start the next call at once if it
        is pipelinable.  Calls that are not wait as before.
        """
        self._running = None
        self._next()

    def _next(self) -> None:
        if self._looping:
            return
        self._looping = True
        try:
            while self._running is None and self._queue:
                op, result, pipelinable = self._queue[0]
                if self._started and not pipelinable:
                    # Waits for the overlapped call to finish.
                    return
                self._queue.popleft()
                started = _Started(result)
                self._started.append(started)
                self._running = started
                inner: Deferred[Any] = Deferred.fromCoroutine(op())
                started.inner = inner
                inner.addBoth(self._finished, started)
        finally:
            self._looping = False

    def _finished(self, outcome: object, started: _Started) -> None:
        started.outcome = outcome
        if self._running is started:
            self._running = None
        try:
            # Results fire in call order: a later call that finished first
            # (it failed before writing anything) waits for the earlier ones.
            while self._started and self._started[0].outcome is not _PENDING:
                done = self._started.popleft()
                self._settle(done.outcome, done.result)
        finally:
            self._next()

    @staticmethod
    def _settle(outcome: object, result: Deferred[Any]) -> None:
        if result.called:
            # Cancelled while running, or while its result waited for an
            # earlier call's: the caller already has CancelledError, and
            # whatever the call ended with has nobody left to tell.
            return
        if isinstance(outcome, Failure):
            result.errback(outcome)
        else:
            result.callback(outcome)

    def _cancel(self, result: Deferred[Any]) -> None:
        for entry in self._queue:
            if entry[1] is result:
                self._queue.remove(entry)
                # It may have held back a pipelinable call behind it.
                self._next()
                return
        for started in self._started:
            if started.result is result and started.inner is not None:
                started.inner.cancel()
                return
