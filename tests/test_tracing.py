"""
Tests for the optional OpenTelemetry spans of delivery attempts
(:mod:`txsmtpclient.spool._tracing`): one span per attempt with its stage
events, read back from opentelemetry-sdk's in-memory exporter; and the
no-op path when OpenTelemetry is not installed (a fresh interpreter that
cannot import it).
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from helpers import success_result_of
from twisted.internet.defer import Deferred, fail, maybeDeferred, succeed
from twisted.internet.task import Clock

from txsmtpclient.errors import SMTPAmbiguousDelivery
from txsmtpclient.reply import Reply
from txsmtpclient.spool.delivery import Deliverer, DeliveryAction
from txsmtpclient.spool.store import Spool
from txsmtpclient.transaction import Refused

REPO = Path(__file__).resolve().parent.parent
NOW = 1_800_000_000.0
MESSAGE = b"Subject: hi\r\n\r\nHello\r\n"


class OneReply:
    """A sender answering the next send with a fixed result."""

    def __init__(self, result: Any) -> None:
        self.result = result

    def sendmail(self, *args: Any, **kwargs: Any) -> Deferred[dict[str, Reply]]:
        if isinstance(self.result, BaseException):
            return fail(self.result)
        return succeed(self.result)


def _deliver(tmp_path: Path, result: Any) -> tuple[DeliveryAction, Any, str]:
    """Deliver one entry with a tracer that exports to memory (needs the SDK)."""
    pytest.importorskip("opentelemetry.sdk", reason="opentelemetry-sdk is not installed")
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    clock = Clock()
    clock.advance(NOW)
    spool = Spool(tmp_path / "spool", clock=clock.seconds, fsync=False)
    entry_id = spool.enqueue(MESSAGE, "a@example.test", ["b@example.test"])
    entry = spool.claim(entry_id)
    assert entry is not None
    deliverer = Deliverer(
        spool,
        OneReply(result),
        relay="relay.test:25",
        clock=clock,
        blocking=maybeDeferred,
        jitter=random.Random(1),
        hostname="daemon.test",
        tracer=provider.get_tracer("test"),
    )
    report = success_result_of(deliverer.deliver(entry))
    return report.action, exporter, entry_id


def test_delivered_attempt_is_one_span_with_stage_events(tmp_path: Path) -> None:
    """
    A delivered message makes one client span named txsmtp.delivery: entry,
    relay and reply as attributes, the stages as events in order, status OK.
    """
    final = Refused.with_replies({}, [Reply(250, b"2.0.0 Ok: queued as Q1")])
    action, exporter, entry_id = _deliver(tmp_path, final)
    assert action is DeliveryAction.DELIVERED
    (span,) = exporter.get_finished_spans()
    assert span.name == "txsmtp.delivery"
    attributes = dict(span.attributes or {})
    assert attributes["txsmtp.entry_id"] == entry_id
    assert attributes["txsmtp.relay"] == "relay.test:25"
    assert attributes["txsmtp.reply.code"] == 250
    assert attributes["txsmtp.action"] == "delivered"
    assert attributes["txsmtp.ambiguous"] is False
    assert [e.name for e in span.events] == [
        "spool.message_read",
        "smtp.send",
        "smtp.reply",
        "spool.recorded",
    ]
    reply = dict(span.events[2].attributes or {})
    assert reply["txsmtp.relay.queue_id"] == "Q1"
    assert span.status.status_code.name == "OK"
    assert span.start_time == int(NOW * 1e9)


def test_ambiguous_attempt_span_says_so(tmp_path: Path) -> None:
    """
    An ambiguous attempt ends its span with an smtp.error event marked
    ambiguous, the action rescheduled, and status ERROR.
    """
    action, exporter, _ = _deliver(tmp_path, SMTPAmbiguousDelivery("lost after the dot"))
    assert action is DeliveryAction.RESCHEDULED
    (span,) = exporter.get_finished_spans()
    names = [e.name for e in span.events]
    assert names == ["spool.message_read", "smtp.send", "smtp.error", "spool.recorded"]
    error = dict(span.events[2].attributes or {})
    assert error["txsmtp.ambiguous"] is True and "txsmtp.reply.code" not in error
    assert dict(span.attributes or {})["txsmtp.action"] == "rescheduled"
    assert span.status.status_code.name == "ERROR"


def test_without_opentelemetry_spans_are_a_shared_no_op() -> None:
    """
    Where opentelemetry cannot be imported, attempt_span returns one shared
    object whose methods do nothing, and delivery does not need it.
    """
    code = """
import sys
sys.modules["opentelemetry"] = None
from txsmtpclient.spool import _tracing
from txsmtpclient.spool.envelope import Attempt, Entry, Recipient
assert not _tracing.available()
entry = Entry("1-2-deadbeef", "a@x", (Recipient("b@x"),), 0.0, 0.0)
span = _tracing.attempt_span(None, entry, "relay", 0.0)
assert span is _tracing.attempt_span(None, entry, "relay", 1.0)
span.event("smtp.send", 0.0, recipients=1)
span.attempted(Attempt(0.0, 1.0, "relay", 250, "ok"))
span.finish("delivered", delivered=True, now=1.0)
print("no-op")
"""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60
    )
    assert (result.returncode, result.stdout.strip()) == (0, "no-op"), result.stderr
