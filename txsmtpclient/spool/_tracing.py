"""
Optional OpenTelemetry tracing of delivery attempts: one span per attempt
(``txsmtp.delivery``), with an event at each stage the daemon goes through
(message read, sent, reply or error, recorded in the spool).

Install the ``otel`` extra (``opentelemetry-api``) and configure an SDK to
export spans.  Without it, :func:`attempt_span` returns a shared object
whose methods do nothing: the import is tried once, and no span, attribute
or event is built.  Sans-IO; imports nothing from Twisted.
"""

from __future__ import annotations

from typing import Any

from txsmtpclient.spool.envelope import Attempt, Entry

try:  # The otel extra is optional.
    import opentelemetry.trace as _otel_trace
except ImportError:  # pragma: no cover - exercised where it is not installed
    _otel_trace = None  # type: ignore[assignment, unused-ignore]

__all__ = ["AttemptSpan", "attempt_span", "available", "global_tracer"]

#: The instrumentation scope's name.
SCOPE = "txsmtpclient.spool"


def available() -> bool:
    """
    Whether ``opentelemetry-api`` is installed.
    """
    return _otel_trace is not None


class AttemptSpan:
    """
    One delivery attempt's span; every method is a no-op when there is no
    span (OpenTelemetry not installed).
    """

    __slots__ = ("_span",)

    def __init__(self, span: Any = None) -> None:
        self._span = span

    def event(self, name: str, now: float, **attributes: str | int | float | bool) -> None:
        """
        Add a stage event to the span, at ``now`` (epoch seconds).
        """
        if self._span is not None:
            self._span.add_event(name, attributes, timestamp=int(now * 1e9))

    def attempted(self, attempt: Attempt) -> None:
        """
        Record the attempt's result: the reply that decided it, or the error
        (with ``ambiguous`` when the end of the message got no reply).
        """
        span = self._span
        if span is None:
            return
        ended_ns = int((attempt.at + attempt.duration) * 1e9)
        attributes: dict[str, str | int | bool] = {
            "txsmtp.reply.text": attempt.text,
            "txsmtp.temporary": attempt.temporary,
            "txsmtp.ambiguous": attempt.ambiguous,
            "txsmtp.delivered": len(attempt.delivered),
            "txsmtp.refused": len(attempt.refused),
        }
        if attempt.code is not None:
            attributes["txsmtp.reply.code"] = attempt.code
        if attempt.queue_id:
            attributes["txsmtp.relay.queue_id"] = attempt.queue_id
        name = "smtp.reply" if attempt.code is not None else "smtp.error"
        span.add_event(name, attributes, timestamp=ended_ns)
        span.set_attribute("txsmtp.ambiguous", attempt.ambiguous)
        if attempt.code is not None:
            span.set_attribute("txsmtp.reply.code", attempt.code)

    def finish(self, action: str, *, delivered: bool, now: float) -> None:
        """
        Record what became of the entry and end the span.

        :param action: a :class:`~.delivery.DeliveryAction` value.
        :param delivered: whether the attempt delivered (the span's status
            is OK, else ERROR).
        :param now: the end, epoch seconds (the daemon's clock).
        """
        span = self._span
        if span is None:
            return
        assert _otel_trace is not None
        end_ns = int(now * 1e9)
        span.add_event("spool.recorded", {"txsmtp.action": action}, timestamp=end_ns)
        span.set_attribute("txsmtp.action", action)
        if delivered:
            span.set_status(_otel_trace.Status(_otel_trace.StatusCode.OK))
        else:
            span.set_status(_otel_trace.Status(_otel_trace.StatusCode.ERROR, action))
        span.end(end_time=end_ns)


_NO_SPAN = AttemptSpan()


def global_tracer() -> Any:
    """
    The global provider's tracer for :data:`SCOPE`, to look up once and
    keep (it follows a provider configured later), or ``None`` when
    OpenTelemetry is not installed.
    """
    return None if _otel_trace is None else _otel_trace.get_tracer(SCOPE)


def attempt_span(tracer: Any, entry: Entry, relay: str, now: float) -> AttemptSpan:
    """
    Start the span of one delivery attempt.

    :param tracer: an OpenTelemetry tracer, or ``None`` for the global
        provider's.
    :param entry: the claimed entry.
    :param relay: where it is sent.
    :param now: the start, epoch seconds (the daemon's clock).
    :returns: the span, or a no-op when OpenTelemetry is not installed.
    """
    if _otel_trace is None:
        return _NO_SPAN
    if tracer is None:
        tracer = global_tracer()
    span = tracer.start_span(
        "txsmtp.delivery",
        kind=_otel_trace.SpanKind.CLIENT,
        start_time=int(now * 1e9),
        attributes={
            "txsmtp.entry_id": entry.id,
            "txsmtp.relay": relay,
            "txsmtp.recipients": len(entry.pending),
            "txsmtp.attempt": len(entry.attempts) + 1,
            "txsmtp.size": entry.size,
        },
    )
    return AttemptSpan(span)
