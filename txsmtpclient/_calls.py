"""
The queue that runs an :class:`~txsmtpclient.SMTP` session's calls one after
another, so callers may make them without waiting.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from twisted.internet.defer import CancelledError, Deferred
from twisted.python.failure import Failure

from txsmtpclient.errors import SMTPException

__all__ = ["CallQueue"]

T = TypeVar("T")


class CallQueue:
    """
    Runs coroutine functions in the order they were queued, each when the
    one before it has finished, successfully or not.

    Cancelling a result that has not started drops it (nothing was sent for
    it); cancelling the running one cancels the Deferred it is awaiting,
    which aborts the connection.
    """

    def __init__(self) -> None:
        self._queue: deque[tuple[Callable[[], Coroutine[Any, Any, Any]], Deferred[Any]]] = deque()
        self._running: Deferred[Any] | None = None

    def call(self, op: Callable[[], Coroutine[Any, Any, T]]) -> Deferred[T]:
        """
        Queue ``op``.

        :returns: a Deferred firing with what ``op()`` returns or raises.
        """
        result: Deferred[T] = Deferred(self._cancel)
        self._queue.append((op, result))
        if self._running is None:
            self._next()
        return result

    def _next(self) -> None:
        while self._running is None and self._queue:
            op, result = self._queue.popleft()
            inner: Deferred[Any] = Deferred.fromCoroutine(op())
            if not inner.called:
                self._running = inner
                inner.addBoth(self._finished, result)
                return
            inner.addBoth(self._settle, result)

    def _finished(self, outcome: object, result: Deferred[Any]) -> None:
        self._running = None
        self._settle(outcome, result)
        self._next()

    @staticmethod
    def _settle(outcome: object, result: Deferred[Any]) -> None:
        if result.called:  # cancelled while running
            if isinstance(outcome, Failure):
                outcome.trap(CancelledError, SMTPException)
            return
        if isinstance(outcome, Failure):
            result.errback(outcome)
        else:
            result.callback(outcome)

    def _cancel(self, result: Deferred[Any]) -> None:
        for entry in self._queue:
            if entry[1] is result:
                self._queue.remove(entry)
                return
        if self._running is not None:
            self._running.cancel()
