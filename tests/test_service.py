"""
Tests for :mod:`txsmtpclient.spool.service`: the polling daemon on a
:class:`Clock`, spool calls run in line, a sender whose sends the tests fire.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import pytest_twisted
from helpers import success_result_of
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred, succeed
from twisted.internet.task import Clock
from twisted.logger import capturedLogs, formatEvent
from twisted.web.server import NOT_DONE_YET
from twisted.web.test.requesthelper import DummyRequest

from txsmtpclient.reply import Reply
from txsmtpclient.spool.envelope import State
from txsmtpclient.spool.schedule import RetryPolicy
from txsmtpclient.spool.service import SetAsideReporter, SpoolService, StatusResource
from txsmtpclient.spool.store import Spool, SpoolFull
from txsmtpclient.transaction import Envelope, Refused

T = TypeVar("T")

NOW = 1_800_000_000.0
MESSAGE = b"Subject: hi\r\n\r\nHello\r\n"


def inline(f: Callable[..., T], /, *args: Any) -> Deferred[T]:
    return maybeDeferred(f, *args)


class HeldSender:
    """Every send waits until the test fires it; records what was sent."""

    def __init__(self) -> None:
        self.sends: list[tuple[list[str], Deferred[dict[str, Reply]]]] = []
        self.closed = False

    def sendmail(self, *, msg: Any, envelope: Envelope) -> Deferred[dict[str, Reply]]:
        d: Deferred[dict[str, Reply]] = Deferred()
        self.sends.append((list(envelope.recipients), d))
        return d

    def accept(self, index: int) -> None:
        result = Refused.with_replies({}, [Reply(250, b"2.0.0 Ok: queued as X")])
        self.sends[index][1].callback(result)

    def close(self) -> Deferred[None]:
        self.closed = True
        return succeed(None)


@pytest.fixture
def clock() -> Clock:
    c = Clock()
    c.advance(NOW)
    return c


@pytest.fixture
def spool(tmp_path: Path, clock: Clock) -> Spool:
    return Spool(tmp_path / "spool", clock=clock.seconds, fsync=False)


def service_for(spool: Any, clock: Clock, sender: HeldSender, **kwargs: Any) -> SpoolService:
    return SpoolService(
        spool,
        sender,
        relay="relay.test:25",
        close_sender=sender.close,
        clock=clock,
        blocking=inline,
        concurrency=kwargs.pop("concurrency", 2),
        poll_interval=1.0,
        grace=kwargs.pop("grace", 10.0),
        policy=RetryPolicy(initial=60.0, maximum=600.0),
        watch=kwargs.pop("watch", False),
        **kwargs,
    )


def test_due_entries_are_sent_with_bounded_concurrency(spool: Spool, clock: Clock) -> None:
    """No more than ``concurrency`` sends run at once; a finished one makes room."""
    ids = [spool.enqueue(MESSAGE, "f@example.test", [f"r{i}@example.test"]) for i in range(5)]
    sender = HeldSender()
    service = service_for(spool, clock, sender, concurrency=2)
    service.startService()
    assert len(sender.sends) == 2
    assert len(service.in_flight) == 2
    clock.advance(5)
    assert len(sender.sends) == 2, "polling must not exceed the bound"
    sender.accept(0)
    assert len(sender.sends) == 3, "a finished send makes room at once"
    for i in range(1, 5):
        sender.accept(i)
    assert len(sender.sends) == 5
    assert all(spool.get(i).state is State.DONE for i in ids)
    assert service.handled["delivered"] == 5
    success_result_of(service.stopService())


def test_entry_due_later_waits_for_its_time(spool: Spool, clock: Clock) -> None:
    """An entry due in 10 s is left alone until the clock reaches it."""
    entry_id = spool.enqueue(MESSAGE, "f@example.test", ["r@example.test"], at=NOW + 10)
    sender = HeldSender()
    service = service_for(spool, clock, sender)
    service.startService()
    clock.advance(9)
    assert sender.sends == []
    clock.advance(1)
    assert len(sender.sends) == 1
    sender.accept(0)
    assert spool.get(entry_id).state is State.DONE
    success_result_of(service.stopService())


def test_start_recovers_entries_left_in_flight(spool: Spool, clock: Clock) -> None:
    """An entry left in sending/ by an earlier run of this pid is sent after recovery."""
    entry_id = spool.enqueue(MESSAGE, "f@example.test", ["r@example.test"])
    assert spool.claim(entry_id) is not None
    assert spool.counts()["sending"] == 1
    sender = HeldSender()
    service = service_for(spool, clock, sender)
    with capturedLogs() as events:
        service.startService()
    assert len(sender.sends) == 1
    assert any(e.get("requeued") == 1 for e in events)
    sender.accept(0)
    assert spool.get(entry_id).state is State.DONE
    success_result_of(service.stopService())


def test_stop_waits_for_sends_in_flight(spool: Spool, clock: Clock) -> None:
    """stopService takes no new work and fires only once the send in flight finished."""
    first = spool.enqueue(MESSAGE, "f@example.test", ["a@example.test"])
    sender = HeldSender()
    service = service_for(spool, clock, sender, concurrency=1)
    service.startService()
    second = spool.enqueue(MESSAGE, "f@example.test", ["b@example.test"])
    stopped = service.stopService()
    assert not stopped.called
    sender.accept(0)
    assert stopped.called
    assert len(sender.sends) == 1, "no new work after stop began"
    assert spool.get(first).state is State.DONE
    assert spool.get(second).state is State.QUEUED
    assert sender.closed


def test_stop_after_grace_cancels_and_requeues(spool: Spool, clock: Clock) -> None:
    """A send still running after the grace period is cancelled; its entry is queued again."""
    entry_id = spool.enqueue(MESSAGE, "f@example.test", ["a@example.test"])
    sender = HeldSender()
    service = service_for(spool, clock, sender, grace=10.0)
    service.startService()
    stopped = service.stopService()
    clock.advance(9.9)
    assert not stopped.called
    clock.advance(0.2)
    assert stopped.called
    entry = spool.get(entry_id)
    assert entry.state is State.QUEUED
    assert entry.attempts == ()
    assert service.handled["released"] == 1


def test_corrupt_entry_is_set_aside_and_rest_served(
    tmp_path: Path, spool: Spool, clock: Clock
) -> None:
    """A junk file in the queue is set aside (and logged); good entries are still sent."""
    reporter = SetAsideReporter()
    spool = Spool(tmp_path / "spool2", clock=clock.seconds, fsync=False, on_set_aside=reporter)
    good = spool.enqueue(MESSAGE, "f@example.test", ["a@example.test"])
    bad_id = spool.enqueue(MESSAGE, "f@example.test", ["b@example.test"])
    queue = tmp_path / "spool2" / "queue"
    [bad] = [p for p in queue.iterdir() if bad_id in p.name]
    bad.write_bytes(b"{not json")
    sender = HeldSender()
    service = service_for(spool, clock, sender)
    with capturedLogs() as events:
        service.startService()
    assert len(sender.sends) == 1
    assert sender.sends[0][0] == ["a@example.test"]
    sender.accept(0)
    assert spool.get(good).state is State.DONE
    assert spool.counts()["corrupt"] == 1
    aside = [e for e in events if "reason" in e and "path" in e]
    assert aside and bad_id in aside[0]["path"]
    success_result_of(service.stopService())


class FullSpool:
    """A spool that reports a full disk on every update after a send."""

    def __init__(self, spool: Spool) -> None:
        self.spool = spool
        self.full = True

    def __getattr__(self, name: str) -> Any:
        return getattr(self.spool, name)

    def complete(self, entry_id: str, outcome: Any = None, *, attempt: Any = None) -> Any:
        if self.full:
            raise SpoolFull(28, "No space left on device")
        return self.spool.complete(entry_id, outcome, attempt=attempt)


def test_full_disk_pauses_new_work(spool: Spool, clock: Clock) -> None:
    """While the disk is full the daemon reports it and claims nothing new."""
    for i in range(3):
        spool.enqueue(MESSAGE, "f@example.test", [f"r{i}@example.test"])
    full = FullSpool(spool)
    sender = HeldSender()
    service = service_for(full, clock, sender, concurrency=1, store_retry=5.0)
    with capturedLogs() as events:
        service.startService()
        sender.accept(0)
        assert service.disk_full
        clock.advance(20)
        assert len(sender.sends) == 1
        full.full = False
        clock.advance(5)
    assert not service.disk_full
    assert len(sender.sends) == 2
    assert any(e.get("log_level").name == "critical" for e in events)
    sender.accept(1)
    sender.accept(2)
    assert spool.counts()["done"] == 3
    success_result_of(service.stopService())


def test_status_counts_by_state(spool: Spool, clock: Clock) -> None:
    """The status resource answers JSON with the queue's counts by state."""
    spool.enqueue(MESSAGE, "f@example.test", ["a@example.test"])
    spool.enqueue(MESSAGE, "f@example.test", ["b@example.test"], at=NOW + 100)
    sender = HeldSender()
    service = service_for(spool, clock, sender, concurrency=1)
    service.startService()
    request = DummyRequest([b""])
    result = StatusResource(service).render_GET(request)  # type: ignore[arg-type]
    assert result == NOT_DONE_YET
    assert request.finished == 1
    body = json.loads(b"".join(request.written))
    assert body["counts"]["queue"] == 1
    assert body["counts"]["sending"] == 1
    assert body["in_flight"] == 1
    assert body["relay"] == "relay.test:25"
    assert request.responseHeaders.getRawHeaders(b"content-type") == [b"application/json"]
    sender.accept(0)
    success_result_of(service.stopService())


def test_poll_errors_are_logged_and_polling_goes_on(spool: Spool, clock: Clock) -> None:
    """A failing due scan is logged; the next poll tries again."""

    class Flaky:
        def __init__(self) -> None:
            self.calls = 0

        def __getattr__(self, name: str) -> Any:
            return getattr(spool, name)

        def due(self, now: float, limit: int) -> Any:
            self.calls += 1
            if self.calls == 1:
                raise OSError(5, "I/O error")
            return spool.due(now, limit)

    spool.enqueue(MESSAGE, "f@example.test", ["a@example.test"])
    sender = HeldSender()
    service = service_for(Flaky(), clock, sender)
    with capturedLogs() as events:
        service.startService()
    assert sender.sends == []
    assert any("log_failure" in e for e in events)
    clock.advance(1.0)
    assert len(sender.sends) == 1
    sender.accept(0)
    success_result_of(service.stopService())


def test_rejects_bad_settings(spool: Spool, clock: Clock) -> None:
    """Zero concurrency or a non-positive poll interval is refused."""
    with pytest.raises(ValueError, match="concurrency"):
        service_for(spool, clock, HeldSender(), concurrency=0)
    with pytest.raises(ValueError, match="poll_interval"):
        SpoolService(spool, HeldSender(), relay="r", clock=clock, blocking=inline, poll_interval=0)


@pytest_twisted.ensureDeferred  # type: ignore[untyped-decorator]
async def test_own_thread_pool_runs_spool_calls_off_the_reactor_thread(tmp_path: Path) -> None:
    """
    Without a blocking runner the service makes its own thread pool, runs the
    spool's blocking calls there, never in the reactor thread, and stops the
    pool with the service.
    """
    from twisted.internet import reactor

    threads: list[str] = []
    spool = Spool(tmp_path / "spool", fsync=False)
    real_recover, real_due = spool.recover, spool.due

    def recover() -> dict[str, int]:
        threads.append(threading.current_thread().name)
        return real_recover()

    def due(now: float, limit: int) -> Any:
        threads.append(threading.current_thread().name)
        return real_due(now, limit)

    spool.recover, spool.due = recover, due  # type: ignore[method-assign, assignment]
    service = SpoolService(spool, HeldSender(), relay="r", clock=reactor, reactor=reactor)
    service.startService()
    pool = service._threadpool
    assert pool is not None and pool.started
    await service.when_ready()
    await service.stopService()
    assert not pool.started and service._threadpool is None
    assert threads and threading.main_thread().name not in threads


def test_start_up_line_names_the_spool(spool: Spool, clock: Clock) -> None:
    """The start-up log line names the spool folder, to match the CLI's."""
    service = service_for(spool, clock, HeldSender())
    with capturedLogs() as events:
        service.startService()
    (line,) = [e for e in events if "Spool service starting" in e.get("log_format", "")]
    assert line["spool"] == spool.path
    assert spool.path in formatEvent(line)
    success_result_of(service.stopService())


class ArrivalSender(HeldSender):
    """
    A HeldSender whose ``arrived`` fires once ``expected`` sends have come in,
    on a later reactor turn (so the last send's caller has returned first).
    """

    def __init__(self, expected: int) -> None:
        super().__init__()
        self.expected = expected
        self.arrived: Deferred[None] = Deferred()

    def sendmail(self, *args: Any, **kwargs: Any) -> Deferred[dict[str, Reply]]:
        from twisted.internet import reactor

        d = super().sendmail(*args, **kwargs)
        if len(self.sends) == self.expected:
            reactor.callLater(0, self.arrived.callback, None)
        return d


linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="inotify is Linux's")


def watching_service(spool: Any, clock: Clock, sender: HeldSender, concurrency: int) -> Any:
    from twisted.internet import reactor

    return SpoolService(
        spool,
        sender,
        relay="relay.test:25",
        clock=clock,
        reactor=reactor,
        blocking=inline,
        concurrency=concurrency,
        poll_interval=1.0,
        watch=True,
    )


@linux_only
@pytest_twisted.ensureDeferred  # type: ignore[untyped-decorator]
async def test_enqueue_wakes_the_service_without_waiting_for_the_poll(
    spool: Spool, clock: Clock
) -> None:
    """
    A message enqueued while the service idles is sent at once: the poll's
    Clock is never advanced, the spool watch alone starts the delivery.
    """
    from twisted.internet import reactor

    sender = ArrivalSender(expected=1)
    service = watching_service(spool, clock, sender, concurrency=2)
    service.startService()
    assert sender.sends == [] and service.ticks == 1
    spool.enqueue(MESSAGE, "f@example.test", ["a@example.test"])
    await sender.arrived.addTimeout(30, reactor)
    assert sender.sends[0][0] == ["a@example.test"]
    assert clock.seconds() == NOW  # no poll ran
    sender.accept(0)
    assert spool.counts()["done"] == 1
    await service.stopService()


@linux_only
@pytest_twisted.ensureDeferred  # type: ignore[untyped-decorator]
async def test_burst_of_enqueues_wakes_a_bounded_number_of_times(
    spool: Spool, clock: Clock
) -> None:
    """
    300 messages arriving at once (150 enqueues and one enqueue_many of
    150) are all taken in a handful of looks at the queue, not one per
    message.
    """
    from twisted.internet import reactor

    from txsmtpclient.spool.queue import Submission

    looks: list[int] = []

    class Counting:
        def __getattr__(self, name: str) -> Any:
            return getattr(spool, name)

        def due(self, now: float, limit: int) -> list[str]:
            found = spool.due(now, limit)
            looks.append(len(found))
            return found

    sender = ArrivalSender(expected=300)
    service = watching_service(Counting(), clock, sender, concurrency=1000)
    service.startService()
    for i in range(150):
        spool.enqueue(MESSAGE, "f@example.test", [f"r{i}@example.test"])
    spool.enqueue_many(
        [Submission(MESSAGE, "f@example.test", [f"s{i}@example.test"]) for i in range(150)]
    )
    await sender.arrived.addTimeout(60, reactor)
    assert len(sender.sends) == 300
    assert len(looks) <= 10, looks
    assert service.ticks <= 10
    for i in range(300):
        sender.accept(i)
    assert spool.counts()["done"] == 300
    await service.stopService()


@linux_only
@pytest_twisted.ensureDeferred  # type: ignore[untyped-decorator]
async def test_without_a_watch_new_mail_waits_for_the_poll(spool: Spool, clock: Clock) -> None:
    """With watching off, an enqueue is found by the next poll and not before."""
    sender = ArrivalSender(expected=1)
    service = service_for(spool, clock, sender, watch=False)
    service.startService()
    spool.enqueue(MESSAGE, "f@example.test", ["a@example.test"])
    assert sender.sends == []
    clock.advance(1.0)
    assert len(sender.sends) == 1
    sender.accept(0)
    await service.stopService()


@pytest_twisted.ensureDeferred  # type: ignore[untyped-decorator]
async def test_spool_calls_made_together_share_one_group_commit(tmp_path: Path) -> None:
    """
    With its own thread pool, spool calls made while another runs go to the
    pool as one batch inside the queue's group_commit(), and each caller
    hears back only after its batch's group has ended (the changes are
    durable).
    """
    from twisted.internet import reactor

    spool = Spool(tmp_path / "spool", fsync=False)
    events: list[tuple[str, int]] = []
    current = threading.local()
    batches = iter(range(1, 100))

    class Recording:
        def __getattr__(self, name: str) -> Any:
            return getattr(spool, name)

        def counts(self) -> dict[str, int]:
            events.append(("call", current.batch))
            return {"batch": current.batch}

        @contextlib.contextmanager
        def group_commit(self) -> Iterator[None]:
            current.batch = next(batches)
            events.append(("enter", current.batch))
            yield
            events.append(("exit", current.batch))

    service = SpoolService(
        Recording(), HeldSender(), relay="r", clock=reactor, reactor=reactor, watch=False
    )
    service.startService()
    await service.when_ready()
    del events[:]
    answered: list[int] = []

    def check(status: dict[str, Any]) -> None:
        batch = status["counts"]["batch"]
        assert ("exit", batch) in events
        answered.append(batch)

    calls = [service.status().addCallback(check) for _ in range(3)]
    await DeferredList(calls, fireOnOneErrback=True)
    # The first went out at once (nothing ran); the next two, made while it
    # ran, went together (the two batches may run at the same time).
    assert sorted(Counter(answered).values()) == [1, 2]
    assert Counter(b for kind, b in events if kind == "call") == Counter(answered)
    await service.stopService()


class AcceptingSender:
    """Accepts every message at once."""

    def sendmail(self, *, msg: Any, envelope: Envelope) -> Deferred[Refused]:
        return succeed(Refused.with_replies({}, [Reply(250, b"2.0.0 Ok: queued as X")]))


async def _until(check: Callable[[], bool], what: str) -> None:
    """Poll ``check`` on the reactor, every 10 ms, for at most 30 s."""
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    for _ in range(3000):
        if check():
            return
        await deferLater(reactor, 0.01, lambda: None)
    raise AssertionError(f"timed out waiting for {what}")


@pytest_twisted.ensureDeferred  # type: ignore[untyped-decorator]
async def test_daemon_checkpoints_deliveries_when_idle_and_at_stop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """
    The daemon's deliveries wait for a checkpoint (held copies in sending/);
    a moment after the last batch it runs one, and a stop runs one before
    the service has stopped, so none is left waiting.
    """
    from twisted.internet import reactor

    from txsmtpclient.spool import _finish

    monkeypatch.setattr(_finish, "CHECKPOINT_AGE", 3600.0)  # only the daemon's
    spool = Spool(tmp_path / "spool")  # fsync on: deliveries are lazy
    clock = Clock()
    clock.advance(spool._clock() + 60)

    def copies() -> list[str]:
        return [n for n in os.listdir(os.path.join(spool.path, "sending")) if "delivered" in n]

    for _ in range(5):
        spool.enqueue(MESSAGE, "f@example.test", ["a@example.test"])
    service = SpoolService(
        spool, AcceptingSender(), relay="r", clock=clock, reactor=reactor, watch=False
    )
    service.startService()
    await _until(lambda: spool.counts()["done"] == 5, "five deliveries")
    await _until(lambda: service._checkpoint_call is not None, "a checkpoint scheduled")
    assert len(copies()) == spool.unsynced() == 5
    clock.advance(1.0)
    await _until(lambda: spool.unsynced() == 0 and not copies(), "the idle checkpoint")
    for _ in range(3):
        spool.enqueue(MESSAGE, "f@example.test", ["a@example.test"])
    service.wake()
    await _until(lambda: spool.counts()["done"] == 8, "three more deliveries")
    assert len(copies()) == 3
    await service.stopService()
    assert copies() == [] and spool.unsynced() == 0
    assert spool.counts() == {**spool.counts(), "done": 8, "sending": 0, "queue": 0}
