"""
What the sending daemon reports as it works, for metrics: a
:class:`DeliveryObserver` is told of each finished delivery and each entry
set aside.  :class:`NullObserver` ignores everything (the default), so the
spool needs no metrics library; :mod:`txsmtpclient.control.metrics` has the
Prometheus one.  Nothing here touches files or imports Twisted.
"""

from __future__ import annotations

from typing import Protocol

from txsmtpclient.spool.envelope import Attempt, Entry

__all__ = ["DeliveryObserver", "NullObserver", "queue_latency"]


class DeliveryObserver(Protocol):
    """
    Told what the daemon did.  Methods must return quickly and never raise;
    :meth:`entry_set_aside` may be called from any thread.
    """

    def delivery_finished(
        self, entry: Entry, attempt: Attempt | None, action: str, now: float
    ) -> None:
        """
        A delivery of ``entry`` (as claimed) ended.

        :param attempt: the SMTP attempt made, or ``None`` if none was
            (released at stop, set aside, stuck).
        :param action: what became of the entry, a
            :class:`~txsmtpclient.spool.delivery.DeliveryAction` value
            (``"delivered"``, ``"rescheduled"``, ...).
        :param now: the clock's time, epoch seconds.
        """

    def entry_set_aside(self, path: str, reason: str) -> None:
        """
        A file was moved to ``corrupt/`` (the ``Spool(on_set_aside=)`` hook).
        """


class NullObserver:
    """
    A :class:`DeliveryObserver` that does nothing.
    """

    def delivery_finished(
        self, entry: Entry, attempt: Attempt | None, action: str, now: float
    ) -> None:
        """Ignored."""

    def entry_set_aside(self, path: str, reason: str) -> None:
        """Ignored."""


def queue_latency(entry: Entry, now: float) -> float:
    """
    Seconds an entry waited in the queue: from when its current occurrence
    fell due (its enqueue, for a message sent at once; its scheduled time
    otherwise) to ``now``; never negative.
    """
    return max(0.0, now - max(entry.created, entry.occurrence_due))
