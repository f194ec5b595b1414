"""
:class:`SpoolService`: the sending daemon as a Twisted service.

At start it recovers the spool (entries a dead process left in flight go
back to the queue); then it polls the queue on an injected clock, claims due
entries and hands them to a :class:`~txsmtpclient.spool.delivery.Deliverer`,
at most ``concurrency`` at once.  On Linux it also watches a spool folder's
queue with inotify, so an enqueued message is taken on the next reactor
turn rather than at the next poll; the poll stays as the safety net.  Every
blocking spool call runs in a small dedicated thread pool, never in the
reactor thread, and claims due entries in batches (one hand-off to the
thread pool for all the free slots).

On stop it takes no new work and lets the sends in flight finish within a
grace period; those still running after it are cancelled and go back to the
queue unchanged, to be sent again at the next start.

:class:`StatusResource` (in :mod:`._status`) is a small ``twisted.web``
resource answering ``GET`` with the queue's counts by state as JSON.
"""

from __future__ import annotations

import contextlib
from collections import Counter, deque
from collections.abc import Callable
from typing import Any, TypeVar

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.threads import deferToThread, deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from txsmtpclient.spool._status import StatusResource
from txsmtpclient.spool._wakeup import watch_queue
from txsmtpclient.spool.delivery import (
    Blocking,
    Deliverer,
    DeliveryAction,
    DeliveryReport,
    Sender,
)
from txsmtpclient.spool.envelope import Attempt, Entry
from txsmtpclient.spool.observer import DeliveryObserver, NullObserver
from txsmtpclient.spool.queue import IClaimDue, IQueue
from txsmtpclient.spool.schedule import Jitter, RetryPolicy

__all__ = ["SetAsideReporter", "SpoolService", "StatusResource"]

T = TypeVar("T")

#: Due ids looked up at once (and kept for the next ticks).
_BATCH = 1000
#: Batches of spool calls run at once in the thread pool.
_BATCHES = 4
#: Seconds from a batch that left deliveries waiting for the spool's
#: checkpoint until the daemon runs one: about once a second while busy, and
#: a second after the last delivery when idle.
_CHECKPOINT_DELAY = 1.0


class SetAsideReporter:
    """
    A ``Spool(on_set_aside=...)`` hook that logs each entry set aside (an
    unreadable file, a bad envelope) as an error event with ``path`` and
    ``reason`` fields.
    """

    log = Logger()

    def __call__(self, path: str, reason: str) -> None:
        self.log.error("Spool entry set aside: {path}: {reason}", path=path, reason=reason)


class SpoolService(MultiService):
    """
    Delivers a spool's due entries through a sender (a connection pool).

    :param queue: the spool, or any :class:`~txsmtpclient.spool.queue.IQueue`.
    :param sender: sends one message; an
        :class:`~txsmtpclient.pool.SMTPConnectionPool` to the relay.
    :param relay: the relay's name, for records, logs and the status.
    :param close_sender: called at stop, after the last send, to close the
        sender's connections (``pool.close``).
    :param clock: polls and times attempts; the global reactor when ``None``.
    :param reactor: runs the thread pool's results back into the reactor
        thread (``IReactorFromThreads``); the global reactor when ``None``.
        Unused when ``blocking`` is given.
    :param blocking: runs blocking spool calls off the reactor thread; by
        default a dedicated thread pool of ``concurrency + 1`` threads.
    :param concurrency: the most entries sent at once (``twist txsmtp``
        gives twice its relay connections: see ``_tapconfig.in_flight``).
    :param poll_interval: seconds between looks at the queue when idle.
    :param grace: seconds a stop waits for sends in flight before
        cancelling them.
    :param policy: retry backoff and maximum queue lifetime.
    :param jitter: randomness for the backoff.
    :param notify_sender: queue a failure notice to the sender of a failed
        message.
    :param store_retry: seconds between tries of a spool update while the
        disk is full.
    :param observer: told of every finished delivery (metrics); by default
        nothing is.
    :param on_ambiguous: ``"resend"`` or ``"hold"``: what follows an
        attempt whose final dot got no reply (see :class:`.delivery.Deliverer`).
    :param watch: watch a spool folder for new entries (Linux inotify, read
        by ``reactor``) rather than only polling.
    """

    log = Logger()

    def __init__(
        self,
        queue: IQueue,
        sender: Sender,
        *,
        relay: str,
        close_sender: Callable[[], Deferred[Any]] | None = None,
        clock: IReactorTime | None = None,
        reactor: Any = None,
        blocking: Blocking | None = None,
        concurrency: int = 10,
        poll_interval: float = 1.0,
        grace: float = 30.0,
        policy: RetryPolicy | None = None,
        jitter: Jitter | None = None,
        notify_sender: bool = False,
        store_retry: float = 5.0,
        observer: DeliveryObserver | None = None,
        on_ambiguous: str = "resend",
        watch: bool = True,
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {concurrency!r}")
        if poll_interval <= 0:
            raise ValueError(f"poll_interval must be positive, got {poll_interval!r}")
        if grace < 0:
            raise ValueError(f"grace must not be negative, got {grace!r}")
        if reactor is None or clock is None:
            from twisted.internet import reactor as global_reactor

            reactor = reactor if reactor is not None else global_reactor
            clock = clock if clock is not None else global_reactor
        self.queue = queue
        self.sender = sender
        self.relay = relay
        self.clock: IReactorTime = clock
        self._reactor = reactor
        self._close_sender = close_sender
        self.concurrency = concurrency
        self.poll_interval = poll_interval
        self.grace = grace
        self._threadpool: ThreadPool | None = None
        self._given_blocking = blocking
        self._blocking: Blocking | None = blocking
        self.deliverer = Deliverer(
            queue,
            sender,
            relay=relay,
            clock=clock,
            blocking=self._run_blocking,
            policy=policy,
            jitter=jitter,
            notify_sender=notify_sender,
            store_retry=store_retry,
            is_stopping=lambda: self.stopping,
            on_disk_full=self._note_disk_full,
            on_ambiguous=on_ambiguous,
        )
        #: Sends in progress, by entry id.
        self.in_flight: dict[str, Deferred[DeliveryReport]] = {}
        #: What became of the entries handled since start, by action.
        self.handled: Counter[str] = Counter()
        #: Whether the last spool update failed for a full disk.
        self.disk_full = False
        #: Whether the service is stopping (or stopped): no new work.
        self.stopping = False
        self._timer: IDelayedCall | None = None
        # Due ids found by the last look at the queue and not claimed yet;
        # only the spool thread running _claim_batch touches it.
        self._ready: deque[str] = deque()
        # Spool calls waiting for the thread pool, and whether a batch runs.
        self._pending: list[tuple[Callable[..., Any], tuple[Any, ...], Deferred[Any]]] = []
        self._batches_running = 0
        self._flush_call: IDelayedCall | None = None
        self._checkpoint_call: IDelayedCall | None = None
        self._watch = watch
        self._unwatch: Callable[[], None] | None = None
        self._poke: IDelayedCall | None = None
        #: Looks at the queue (ticks) since start, for tests and metrics.
        self.ticks = 0
        self._ticking: Deferred[None] | None = None
        self._again = False
        self._tick_active = False
        self._recovering = False
        self._ready_waiters: list[Deferred[None]] = []
        self._started: Deferred[None] | None = None
        self.observer: DeliveryObserver = observer if observer is not None else NullObserver()

    # -- running blocking calls ---------------------------------------------------

    def _run_blocking(self, f: Callable[..., T], /, *args: Any) -> Deferred[T]:
        if self._blocking is None:
            raise RuntimeError("the spool service is not running")
        return self._blocking(f, *args)

    def run_blocking(self, f: Callable[..., T], /, *args: Any) -> Deferred[T]:
        """
        Run a blocking queue call off the reactor thread (for the control
        plane): in the service's thread pool while it runs, else in the
        reactor's.

        :returns: a Deferred of ``f(*args)``.
        """
        if self._blocking is None:
            return deferToThread(f, *args)
        return self._blocking(f, *args)

    def _pool_blocking(self, f: Callable[..., T], /, *args: Any) -> Deferred[T]:
        """
        Run a spool call in the thread pool, batched: at once when none
        runs; else the calls made while :data:`_BATCHES` batches run (or
        within one reactor turn) go to the pool together, one hand-off for all, inside the queue's
        ``group_commit()`` if it has one, so that they share folder fsyncs.
        Each call's Deferred fires after the whole batch is durable.  A few
        batches run at once: the file system merges their fsyncs.
        """
        d: Deferred[T] = Deferred()
        self._pending.append((f, args, d))
        if self._batches_running == 0:
            # Idle: no wait (a just-due message goes out at once).
            self._flush()
        elif self._batches_running < _BATCHES and self._flush_call is None:
            self._flush_call = self._reactor.callLater(0, self._flush)
        return d

    def _flush(self) -> None:
        self._flush_call = None
        if self._threadpool is None:
            pending, self._pending = self._pending, []
            for _, _, d in pending:
                d.errback(RuntimeError("the spool service is not running"))
            return
        if self._batches_running >= _BATCHES or not self._pending:
            return
        batch, self._pending = self._pending, []
        self._batches_running += 1
        calls = [(f, args) for f, args, _ in batch]
        running = deferToThreadPool(self._reactor, self._threadpool, self._run_batch, calls)
        running.addBoth(self._batch_done, batch)

    def _run_batch(
        self, calls: list[tuple[Callable[..., Any], tuple[Any, ...]]]
    ) -> list[tuple[bool, Any]]:
        group = getattr(self.queue, "group_commit", None)
        results: list[tuple[bool, Any]] = []
        try:
            with group() if group is not None else contextlib.nullcontext():
                for f, args in calls:
                    try:
                        results.append((True, f(*args)))
                    except Exception:
                        results.append((False, Failure()))
        except Exception:
            # The group's fsyncs failed: nothing in it is known durable.
            failed = Failure()
            return [(False, failed)] * len(calls)
        return results

    def _batch_done(
        self,
        results: list[tuple[bool, Any]] | Failure,
        batch: list[tuple[Callable[..., Any], tuple[Any, ...], Deferred[Any]]],
    ) -> None:
        self._batches_running -= 1
        if isinstance(results, Failure):
            results = [(False, results)] * len(batch)
        for (ok, value), (_, _, d) in zip(results, batch, strict=True):
            if ok:
                d.callback(value)
            else:
                d.errback(value)
        if self._pending:
            self._flush()
        self._schedule_checkpoint()

    def _schedule_checkpoint(self) -> None:
        """
        If deliveries wait for the spool's checkpoint (see
        :meth:`~txsmtpclient.spool.store.Spool.checkpoint`), run one within
        :data:`_CHECKPOINT_DELAY`, busy or idle.
        """
        unsynced = getattr(self.queue, "unsynced", None)
        if unsynced is None or self._checkpoint_call is not None or self.stopping:
            return
        if unsynced():
            self._checkpoint_call = self.clock.callLater(_CHECKPOINT_DELAY, self._checkpoint)

    def _checkpoint(self) -> Deferred[None]:
        self._checkpoint_call = None
        checkpoint = self.queue.checkpoint  # type: ignore[attr-defined]
        if self._threadpool is not None:
            # A thread of its own, not a batch: acknowledgements and claims
            # never wait for its fsyncs.
            d = deferToThreadPool(self._reactor, self._threadpool, checkpoint)
        elif self._blocking is not None:
            d = self._blocking(checkpoint)
        else:
            return succeed(None)
        return d.addCallbacks(
            lambda _: None, lambda f: self.log.failure("Spool checkpoint failed", f)
        )

    # -- service ----------------------------------------------------------------------

    def startService(self) -> None:
        """
        Start the children (the status endpoint), the thread pool, recovery
        and then polling.
        """
        super().startService()  # type: ignore[no-untyped-call]
        self.stopping = False
        if self._given_blocking is None:
            self._threadpool = ThreadPool(
                minthreads=0, maxthreads=self.concurrency + 1, name="txsmtp-spool"
            )
            self._threadpool.start()
            self._blocking = self._pool_blocking
        self.log.info(
            "Spool service starting: spool {spool}, relay {relay}, concurrency {concurrency}",
            spool=getattr(self.queue, "path", self.queue),
            relay=self.relay,
            concurrency=self.concurrency,
        )
        self._recovering = True
        started = Deferred.fromCoroutine(self._start())
        self._started = None if started.called else started

    async def _start(self) -> None:
        try:
            report = await self._run_blocking(self.queue.recover)
        except Exception:
            self.log.failure("Spool recovery failed")
        else:
            self.log.info(
                "Spool recovered: {requeued} requeued, {finished} finished, "
                "{set_aside} set aside, {tmp_removed} temporary and "
                "{orphans_removed} orphan files removed",
                **{
                    k: report.get(k, 0)
                    for k in (
                        "requeued",
                        "finished",
                        "set_aside",
                        "tmp_removed",
                        "orphans_removed",
                    )
                },
            )
        self._recovering = False
        self._started = None
        if self._watch and not self.stopping:
            self._unwatch = watch_queue(self.queue, self._reactor, self._poked)
        waiting, self._ready_waiters = self._ready_waiters, []
        for d in waiting:
            d.callback(None)
        self.wake()

    def when_ready(self) -> Deferred[None]:
        """
        A Deferred firing once start-up recovery is over and the service
        is taking work.  Writers in the same process should wait for it:
        recovery removes unfinished files in ``tmp/`` that carry this
        process's id.
        """
        d: Deferred[None] = Deferred()
        if self.running and not self._recovering:
            d.callback(None)
        else:
            self._ready_waiters.append(d)
        return d

    def stopService(self) -> Deferred[None]:
        """
        Stop taking work, let sends in flight finish within the grace period
        (cancelling the rest, which go back to the queue), close the sender's
        connections and stop the children.

        :returns: a Deferred firing once everything has stopped.
        """
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        self.stopping = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if self._unwatch is not None:
            self._unwatch()
            self._unwatch = None
        if self._poke is not None and self._poke.active():
            self._poke.cancel()
        self._poke = None
        if self._started is not None:
            await self._started
        if self._ticking is not None:
            await self._ticking
        if self.in_flight:
            self.log.info(
                "Stopping: waiting up to {grace}s for {count} send(s) in flight",
                grace=self.grace,
                count=len(self.in_flight),
            )
            cutoff = self.clock.callLater(self.grace, self._grace_over)
            await DeferredList(list(self.in_flight.values()), consumeErrors=True)
            if cutoff.active():
                cutoff.cancel()
        if self._checkpoint_call is not None and self._checkpoint_call.active():
            self._checkpoint_call.cancel()
        self._checkpoint_call = None
        if getattr(self.queue, "checkpoint", None) is not None:
            # Deliveries since the last checkpoint: durable before exit.
            await self._checkpoint()
        if self._close_sender is not None:
            closing = self._close_sender()
            closing.addTimeout(max(self.grace, 1.0), self.clock)
            try:
                await closing
            except Exception as e:
                self.log.warn("Closing the relay connections: {error}", error=str(e))
        if self._threadpool is not None:
            self._threadpool.stop()
            self._threadpool = None
            self._blocking = None
        await super().stopService()  # type: ignore[no-untyped-call]
        self.log.info("Spool service stopped")

    def _grace_over(self) -> None:
        self.log.warn(
            "Grace period over: cancelling {count} send(s); they go back to the queue",
            count=len(self.in_flight),
        )
        self.deliverer.cancel_all()

    # -- polling ------------------------------------------------------------------------

    def wake(self) -> None:
        """
        Look at the queue now rather than at the next poll (after a send
        finishes, or when a caller knows something was enqueued).
        """
        if self.stopping or not self.running or self._recovering:
            return
        if self._tick_active:
            self._again = True
            return
        d = Deferred.fromCoroutine(self._tick())
        # With spool calls that finish at once the tick is already over.
        self._ticking = None if d.called else d

    def _poked(self) -> None:
        """
        An entry arrived in the queue: look on the next reactor turn, once
        for however many arrived meanwhile (no busy loop on a burst).
        """
        if self._poke is None or not self._poke.active():
            self._poke = self._reactor.callLater(0, self.wake)

    async def _tick(self) -> None:
        self._tick_active = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        try:
            while True:
                self._again = False
                self.ticks += 1
                await self._take_work()
                if not self._again or self.stopping:
                    break
        except Exception:
            self.log.failure("Spool poll failed")
        finally:
            self._tick_active = False
            self._ticking = None
            if not self.stopping and self.running:
                self._timer = self.clock.callLater(self.poll_interval, self.wake)

    async def _take_work(self) -> None:
        free = self.concurrency - len(self.in_flight)
        if free <= 0 or self.stopping or self.disk_full:
            return
        claimed = await self._run_blocking(self._claim_batch, self.clock.seconds(), free)
        for i, (entry, message) in enumerate(claimed):
            if self.stopping:
                # Not sent: back to the queue as they were.
                for rest, _ in claimed[i:]:
                    await self._run_blocking(self.queue.release, rest.id)
                return
            self._send(entry, message)

    def _claim_batch(self, now: float, free: int) -> list[tuple[Entry, bytes | None]]:
        """
        In a spool thread: claim up to ``free`` due entries and read their
        messages, so one hand-off to the thread pool serves a whole batch.
        The due ids are looked up ``_BATCH`` at a time and kept, so the
        queue's listing is not read again for every message.
        """
        if isinstance(self.queue, IClaimDue):
            # A shared database claims due entries in one step (SKIP LOCKED),
            # so workers do not race for the same ids; the deliverer streams
            # each message from it.
            return [(entry, None) for entry in self.queue.claim_due(now, free)]
        claimed: list[tuple[Entry, bytes | None]] = []
        # A spool folder reads an entry and its message in one read.
        claim_with_message = getattr(self.queue, "claim_with_message", None)
        scanned = False
        while len(claimed) < free:
            if not self._ready:
                if scanned:
                    break
                self._ready.extend(self.queue.due(now, max(free, _BATCH)))
                scanned = True
                continue
            entry_id = self._ready.popleft()
            message: bytes | None = None
            if claim_with_message is not None:
                taken = claim_with_message(entry_id)
                entry, message = taken if taken is not None else (None, None)
            else:
                entry = self.queue.claim(entry_id)
            if entry is None:
                continue  # another process took it, or it was cancelled
            if message is None:
                try:
                    message = self.queue.read_message(entry.id)
                except Exception:
                    message = None  # the deliverer reads again, and sets it aside
            claimed.append((entry, message))
        return claimed

    def _send(self, entry: Entry, message: bytes | None = None) -> None:
        d = self.deliverer.deliver(entry, message)
        self.in_flight[entry.id] = d

        def done(result: DeliveryReport | Failure) -> None:
            self.in_flight.pop(entry.id, None)
            if isinstance(result, Failure):
                self.handled[DeliveryAction.STUCK.value] += 1
                self.log.failure("Delivery of {id} failed unexpectedly", result, id=entry.id)
                self._observe(entry, None, DeliveryAction.STUCK.value)
            else:
                self.handled[result.action.value] += 1
                self._observe(entry, result.attempt, result.action.value)
            self.wake()

        d.addBoth(done)

    def _observe(self, entry: Entry, attempt: Attempt | None, action: str) -> None:
        try:
            self.observer.delivery_finished(entry, attempt, action, self.clock.seconds())
        except Exception:
            self.log.failure("Delivery observer failed")

    def _note_disk_full(self, full: bool) -> None:
        if full != self.disk_full:
            self.disk_full = full
            if full:
                self.log.critical("Spool disk is full: taking no new work until it has room")
            else:
                self.log.info("Spool disk has room again")

    # -- status ---------------------------------------------------------------------------

    def status(self) -> Deferred[dict[str, Any]]:
        """
        The queue's counts by state and the daemon's own state.

        :returns: a Deferred firing with a JSON-ready dict: ``counts`` (by
            state name), ``in_flight``, ``handled`` (since start, by
            action), ``disk_full``, ``stopping`` and ``relay``.
        """

        def build(counts: dict[str, int]) -> dict[str, Any]:
            return {
                "relay": self.relay,
                "counts": counts,
                "in_flight": len(self.in_flight),
                "handled": dict(self.handled),
                "disk_full": self.disk_full,
                "stopping": self.stopping,
            }

        return self.run_blocking(self.queue.counts).addCallback(build)
