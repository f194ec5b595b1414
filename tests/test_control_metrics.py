"""
Tests for the daemon's Prometheus metrics (:mod:`txsmtpclient.control.metrics`):
the spool service on a :class:`Clock` reports each delivery through its
observer, and the registry's text exposition is read back.
"""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client import REGISTRY, generate_latest
from test_service import MESSAGE, NOW, HeldSender, clock, service_for, spool
from twisted.internet.task import Clock

from txsmtpclient.control.metrics import DaemonMetrics, code_class
from txsmtpclient.errors import SMTPRecipientsRefused
from txsmtpclient.reply import Reply
from txsmtpclient.spool.store import Spool

__all__ = ["clock", "spool"]


class Pool:
    size = 3
    idle = 2
    waiting = 1


def text(metrics: DaemonMetrics) -> str:
    return generate_latest(metrics.registry).decode()


def test_code_class() -> None:
    """Reply codes fold into 2xx/4xx/5xx; no reply (or nonsense) is "none"."""
    assert [code_class(c) for c in (250, 451, 554, None, 99, 600)] == [
        "2xx",
        "4xx",
        "5xx",
        "none",
        "none",
        "none",
    ]


def test_deliveries_retries_and_latency(spool: Spool, clock: Clock) -> None:
    """A 4xx counts a retry, a 2xx a delivery with its queue latency."""
    metrics = DaemonMetrics()
    sender = HeldSender()
    service = service_for(spool, clock, sender, concurrency=1, observer=metrics)
    metrics.watch(service, Pool())
    entry_id = spool.enqueue(MESSAGE, "f@example.test", ["a@example.test"])
    service.startService()
    clock.advance(2)
    assert len(sender.sends) == 1
    sender.sends[0][1].errback(
        SMTPRecipientsRefused({"a@example.test": Reply(451, b"4.3.0 later")})
    )
    clock.advance(120)
    assert len(sender.sends) == 2
    clock.advance(3)
    sender.accept(1)
    assert spool.get(entry_id).state.value == "done"
    exposition = text(metrics)
    for line in (
        'txsmtp_delivery_attempts_total{code_class="4xx",outcome="rescheduled"} 1.0',
        'txsmtp_delivery_attempts_total{code_class="2xx",outcome="delivered"} 1.0',
        "txsmtp_retries_total 1.0",
        "txsmtp_delivery_latency_seconds_count 1.0",
        "txsmtp_delivery_latency_seconds_sum 125.0",
        'txsmtp_queue_entries{state="done"} 1.0',
        'txsmtp_queue_entries{state="queue"} 0.0',
        "txsmtp_pool_connections 3.0",
        "txsmtp_pool_idle_connections 2.0",
        "txsmtp_pool_waiting_sends 1.0",
        "txsmtp_in_flight 0.0",
        "txsmtp_disk_full 0.0",
    ):
        assert line in exposition, line
    service.stopService()


def test_latency_counts_from_the_scheduled_time(spool: Spool, clock: Clock) -> None:
    """A message scheduled for later is timed from its due time, not its enqueue."""
    metrics = DaemonMetrics()
    sender = HeldSender()
    service = service_for(spool, clock, sender, concurrency=1, observer=metrics)
    spool.enqueue(MESSAGE, "f@example.test", ["a@example.test"], at=NOW + 3600)
    service.startService()
    clock.advance(3600)
    clock.advance(4)
    sender.accept(0)
    assert "txsmtp_delivery_latency_seconds_sum 4.0" in text(metrics)
    service.stopService()


def test_set_aside_is_counted(tmp_path: Any, clock: Clock) -> None:
    """Every file the spool sets aside is counted, whoever set it aside."""
    metrics = DaemonMetrics()
    store = Spool(
        tmp_path / "s", clock=clock.seconds, fsync=False, on_set_aside=metrics.entry_set_aside
    )
    entry_id = store.enqueue(MESSAGE, "f@example.test", ["a@example.test"])
    store.set_aside(entry_id, "test")
    assert "txsmtp_set_aside_entries_total 1.0" in text(metrics)


def test_registries_are_private() -> None:
    """Two daemons' metrics do not collide, and nothing lands in the global registry."""
    first, second = DaemonMetrics(), DaemonMetrics()
    first.retries.inc()
    assert "txsmtp_retries_total 1.0" in text(first)
    assert "txsmtp_retries_total 0.0" in text(second)
    assert REGISTRY.get_sample_value("txsmtp_retries_total") is None


@pytest.mark.parametrize("failing", [OSError("gone"), RuntimeError("bug")])
def test_unreadable_spool_leaves_depth_empty(
    spool: Spool, clock: Clock, failing: Exception
) -> None:
    """A scrape while the spool cannot be counted still answers, without queue depth."""
    metrics = DaemonMetrics()
    service = service_for(spool, clock, HeldSender())
    metrics.watch(service)

    def broken() -> dict[str, int]:
        raise failing

    spool.counts = broken  # type: ignore[method-assign]
    exposition = text(metrics)
    assert "txsmtp_queue_entries{" not in exposition
    assert "txsmtp_in_flight 0.0" in exposition
