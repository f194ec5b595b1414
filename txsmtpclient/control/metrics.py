"""
Prometheus metrics for the sending daemon, on a registry of its own (never
``prometheus_client``'s global one, so tests and applications embedding the
daemon do not collide).

:class:`DaemonMetrics` is the spool service's
:class:`~txsmtpclient.spool.observer.DeliveryObserver` (attempts by outcome
and reply-code class, retries, enqueue-to-delivered latency, entries set
aside) and, once :meth:`~DaemonMetrics.watch` is called, reads the queue
depth per state, the sends in flight and the connection pool's gauges at
each scrape.  :meth:`~DaemonMetrics.resource` serves them with
``prometheus_client.twisted.MetricsResource``, which renders in the
reactor's thread pool: the queue count (a folder listing) is never read in
the reactor thread.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from twisted.logger import Logger
from twisted.web.resource import IResource

from txsmtpclient.spool.delivery import DeliveryAction
from txsmtpclient.spool.envelope import Attempt, Entry
from txsmtpclient.spool.observer import queue_latency
from txsmtpclient.spool.service import SpoolService

__all__ = ["LATENCY_BUCKETS", "DaemonMetrics", "PoolGauges", "code_class"]

#: Enqueue-to-delivered latency buckets, in seconds: a second to the
#: default five-day queue lifetime.
LATENCY_BUCKETS = (
    0.1,
    0.5,
    1.0,
    5.0,
    15.0,
    60.0,
    300.0,
    900.0,
    3600.0,
    4 * 3600.0,
    86400.0,
    5 * 86400.0,
)


class PoolGauges(Protocol):
    """
    What the metrics read off a connection pool
    (:class:`~txsmtpclient.pool.SMTPConnectionPool` has these).
    """

    @property
    def size(self) -> int:
        """Connections open or opening."""

    @property
    def idle(self) -> int:
        """Connections open and idle."""

    @property
    def waiting(self) -> int:
        """Sends waiting for a connection."""


def code_class(code: int | None) -> str:
    """
    The class of a reply code for a label: ``"2xx"``, ``"4xx"``, ``"5xx"``,
    or ``"none"`` when no reply came (refused connection, timeout).
    """
    if code is None or not 100 <= code <= 599:
        return "none"
    return f"{code // 100}xx"


class DaemonMetrics:
    """
    The daemon's metrics and their registry.

    :param registry: where they are registered; a new one by default.
    """

    log = Logger()

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.attempts = Counter(
            "txsmtp_delivery_attempts",
            "SMTP delivery attempts, by what became of the entry and the reply-code class",
            ["outcome", "code_class"],
            registry=self.registry,
        )
        self.retries = Counter(
            "txsmtp_retries",
            "Attempts that failed temporarily and were rescheduled",
            registry=self.registry,
        )
        self.set_aside = Counter(
            "txsmtp_set_aside_entries",
            "Spool files moved to corrupt/ (unreadable, or unsendable envelopes)",
            registry=self.registry,
        )
        self.latency = Histogram(
            "txsmtp_delivery_latency_seconds",
            "From enqueue (or the scheduled time) to the relay's acceptance",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )

    # -- DeliveryObserver -------------------------------------------------------

    def delivery_finished(
        self, entry: Entry, attempt: Attempt | None, action: str, now: float
    ) -> None:
        """
        Count the attempt; time a delivery; count a retry.
        """
        if attempt is not None:
            self.attempts.labels(outcome=action, code_class=code_class(attempt.code)).inc()
        if action == DeliveryAction.RESCHEDULED.value:
            self.retries.inc()
        elif action == DeliveryAction.DELIVERED.value:
            self.latency.observe(queue_latency(entry, now))

    def entry_set_aside(self, path: str, reason: str) -> None:
        """
        Count a file set aside (called from the spool's threads).
        """
        self.set_aside.inc()

    # -- gauges read at scrape time ----------------------------------------------

    def watch(self, service: SpoolService, pool: PoolGauges | None = None) -> None:
        """
        Also report the queue depth per state, the sends in flight, whether
        the disk is full and, given a pool, its connections.
        """
        self.registry.register(_DaemonCollector(service, pool))

    def resource(self) -> IResource:
        """
        The ``/metrics`` resource: what ``prometheus_client.twisted.MetricsResource``
        builds (a ``WSGIResource`` over ``make_wsgi_app``, rendering in the
        reactor's thread pool), with the answer sized by ``Content-Length``
        rather than chunked (Twisted's chunked path also trips a BytesWarning
        under ``python -bb``).
        """
        from prometheus_client import make_wsgi_app
        from twisted.internet import reactor
        from twisted.web.wsgi import WSGIResource

        threads = reactor.getThreadPool()  # type: ignore[attr-defined]
        return WSGIResource(reactor, threads, _sized(make_wsgi_app(self.registry)))


def _sized(app: Callable[..., Iterable[bytes]]) -> Callable[..., list[bytes]]:
    """
    A WSGI app answering as ``app`` does, in one piece with ``Content-Length``.
    """

    def sized(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        started: list[tuple[str, list[tuple[str, str]]]] = []

        def keep(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> None:
            started.append((status, headers))

        body = b"".join(app(environ, keep))
        status, headers = started[-1]
        headers = [h for h in headers if h[0].lower() != "content-length"]
        start_response(status, [*headers, ("Content-Length", str(len(body)))])
        return [body]

    return sized


class _DaemonCollector(Collector):
    """
    Gauges read when scraped: the queue's counts (a folder listing, so the
    scrape must run off the reactor thread, as ``MetricsResource`` does), the
    service's state and the pool's.
    """

    log = Logger()

    def __init__(self, service: SpoolService, pool: PoolGauges | None) -> None:
        self.service = service
        self.pool = pool

    def _families(self, values: bool) -> Iterable[GaugeMetricFamily]:
        depth = GaugeMetricFamily(
            "txsmtp_queue_entries", "Spool entries by state", labels=["state"]
        )
        if values:
            try:
                counts = self.service.queue.counts()
            except Exception as e:
                self.log.warn("Metrics: cannot count the spool: {error}", error=str(e))
                counts = {}
            for state, count in sorted(counts.items()):
                depth.add_metric([state], count)
        yield depth
        gauges = [
            ("txsmtp_in_flight", "Sends in progress", len(self.service.in_flight)),
            ("txsmtp_disk_full", "1 while the spool's disk is full", int(self.service.disk_full)),
        ]
        if self.pool is not None:
            # Plain int reads of the pool's counters; a scrape may see them a
            # moment apart, never torn.
            gauges += [
                ("txsmtp_pool_connections", "Relay connections open or opening", self.pool.size),
                ("txsmtp_pool_idle_connections", "Relay connections idle", self.pool.idle),
                ("txsmtp_pool_waiting_sends", "Sends waiting for a connection", self.pool.waiting),
            ]
        for name, help_text, value in gauges:
            yield GaugeMetricFamily(name, help_text, value=value if values else None)

    def describe(self) -> Iterable[GaugeMetricFamily]:
        """
        The families without values, so registering reads nothing.
        """
        return self._families(values=False)

    def collect(self) -> Iterable[GaugeMetricFamily]:
        """
        The families with their current values.
        """
        return self._families(values=True)
