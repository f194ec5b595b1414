"""
Fakes and small helpers for the in-memory tests: a transport that records
``setTcpNoDelay``, an endpoint that hands back a protocol already connected
to a :class:`StringTransport`, and trial-style checks of a Deferred's state.

Nothing here imports the reactor: the clock is a :class:`MemoryReactorClock`.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IProtocol, IProtocolFactory, IStreamClientEndpoint
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from zope.interface import implementer

from txsmtpclient.client import SMTP
from txsmtpclient.protocol import SMTPClientProtocol, Timeouts
from txsmtpclient.reply import Reply
from txsmtpclient.session import Command, Kind

__all__ = [
    "EHLO_PIPELINING",
    "EHLO_PLAIN",
    "GREETING",
    "FakeEndpoint",
    "NoDelayTransport",
    "Session",
    "assert_no_result",
    "command",
    "connected_session",
    "deliver",
    "expect",
    "failure_result_of",
    "send_pipelined",
    "success_result_of",
    "wait_for",
    "without_reader",
]

T = TypeVar("T")
E = TypeVar("E", bound=BaseException)

GREETING = b"220 mx.example ESMTP ready\r\n"
#: An EHLO reply without PIPELINING: the client goes lock-step.
EHLO_PLAIN = b"250-mx.example greets client.example\r\n250-SIZE 1000000\r\n250 8BITMIME\r\n"
#: An EHLO reply with PIPELINING: MAIL, RCPT... and DATA go out in one write.
EHLO_PIPELINING = (
    b"250-mx.example greets client.example\r\n"
    b"250-PIPELINING\r\n250-SIZE 1000000\r\n250 8BITMIME\r\n"
)


class NoDelayTransport(StringTransport):
    """
    A :class:`StringTransport` that records what ``setTcpNoDelay`` was set to
    and every separate ``write`` call (to count writes).
    """

    def __init__(self) -> None:
        super().__init__(  # type: ignore[no-untyped-call]
            hostAddress=IPv4Address("TCP", "127.0.0.1", 40000),
            peerAddress=IPv4Address("TCP", "127.0.0.1", 25),
        )
        self.no_delay: bool | None = None
        self.writes: list[bytes] = []

    def setTcpNoDelay(self, enabled: bool) -> None:
        self.no_delay = enabled

    def write(self, data: bytes) -> None:
        self.writes.append(data)
        super().write(data)  # type: ignore[no-untyped-call]

    def take(self) -> bytes:
        """
        Everything written since the last call, and forget it.
        """
        value: bytes = self.io.getvalue()
        self.io.seek(0)
        self.io.truncate()
        self.writes.clear()
        return value


@implementer(IStreamClientEndpoint)
class FakeEndpoint:
    """
    An endpoint whose ``connect()`` either connects at once (the protocol
    is handed a :class:`NoDelayTransport`) or, with ``deferred=True``,
    returns a Deferred the test fires or fails itself (Twisted's
    ``endpointForTesting`` pattern).
    """

    def __init__(self, deferred: bool = False) -> None:
        self.deferred = deferred
        self.attempts: list[Deferred[IProtocol]] = []
        self.protocol: SMTPClientProtocol | None = None
        self.transport: NoDelayTransport | None = None
        self.cancelled = False

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        if self.deferred:

            def cancel(d: Deferred[IProtocol]) -> None:
                self.cancelled = True

            attempt: Deferred[IProtocol] = Deferred(cancel)
            self.attempts.append(attempt)
            self._factory = protocolFactory
            return attempt
        return succeed(self._build(protocolFactory))

    def complete(self) -> SMTPClientProtocol:
        """
        Fire the pending attempt with a connected protocol.
        """
        proto = self._build(self._factory)
        self.attempts[-1].callback(proto)
        return proto

    def _build(self, factory: IProtocolFactory) -> SMTPClientProtocol:
        proto = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 25))
        assert isinstance(proto, SMTPClientProtocol)
        transport = NoDelayTransport()
        cast(IProtocol, proto).makeConnection(transport)
        self.protocol, self.transport = proto, transport
        return proto


@dataclass
class Session:
    """
    An :class:`SMTP` connected through a :class:`FakeEndpoint`.
    """

    smtp: SMTP
    clock: MemoryReactorClock
    endpoint: FakeEndpoint
    connected: Deferred[Any] = field(default_factory=Deferred)

    @property
    def proto(self) -> SMTPClientProtocol:
        assert self.endpoint.protocol is not None
        return self.endpoint.protocol

    @property
    def transport(self) -> NoDelayTransport:
        assert self.endpoint.transport is not None
        return self.endpoint.transport

    def feed(self, data: bytes) -> None:
        """
        Deliver ``data`` from the server.
        """
        deliver(self.proto, data)

    def take(self) -> bytes:
        """
        What the client wrote since the last call.
        """
        return self.transport.take()

    def lose(self, reason: BaseException | None = None) -> None:
        """
        The connection goes away (server closed it, or a lost TCP link).
        """
        from twisted.internet.error import ConnectionDone

        self.proto.connectionLost(Failure(reason if reason is not None else ConnectionDone()))


def connected_session(
    *,
    greet: bool = True,
    timeout: Timeouts | float | None = None,
    hostname: str = "client.example",
) -> Session:
    """
    A session on a fake connection; with ``greet`` the 220 greeting has
    been fed and taken.
    """
    clock = MemoryReactorClock()
    endpoint = FakeEndpoint()
    if timeout is None:
        smtp = SMTP(local_hostname=hostname, reactor=clock)
    else:
        smtp = SMTP(local_hostname=hostname, reactor=clock, timeout=timeout)
    session = Session(smtp, clock, endpoint)
    session.connected = smtp.connect(endpoint)
    if greet:
        session.feed(GREETING)
        assert success_result_of(session.connected) == (220, b"mx.example ESMTP ready")
    return session


def success_result_of(d: Deferred[T]) -> T:
    """
    The result a Deferred has already fired with (trial's ``successResultOf``).
    """
    results: list[Any] = []
    d.addBoth(results.append)
    assert results, f"{d!r} has not fired"
    result = results[0]
    if isinstance(result, Failure):
        d.addErrback(lambda f: None)
        raise AssertionError(f"{d!r} failed: {result.getTraceback()}")
    value: T = result
    return value


def failure_result_of(d: Deferred[Any], kind: type[E]) -> E:
    """
    The exception a Deferred has already failed with, checked to be a
    ``kind`` (trial's ``failureResultOf``); the failure is consumed.
    """
    results: list[Any] = []
    d.addBoth(results.append)
    assert results, f"{d!r} has not fired"
    result = results[0]
    assert isinstance(result, Failure), f"{d!r} succeeded with {result!r}"
    error = result.value
    assert isinstance(error, kind), f"{error!r} is not a {kind.__name__}"
    return error


def deliver(proto: IProtocol, data: bytes) -> None:
    """
    Deliver ``data`` from the server (``dataReceived``, typed).
    """
    proto.dataReceived(data)


def assert_no_result(d: Deferred[Any]) -> None:
    """
    Check that a Deferred has not fired yet (trial's ``assertNoResult``).
    """
    results: list[Any] = []

    def record(result: object) -> object:
        results.append(result)
        return result  # passed on unchanged, for later checks

    d.addBoth(record)
    assert not results, f"{d!r} fired with {results[0]!r}"


def command(data: bytes, stage: str = "command", *, secret: bool = False) -> Command:
    """
    A :class:`Command` of the kind a stage name stands for (``"rcpt"``).
    """
    return Command(Kind(stage), data, secret=secret)


def send_pipelined(
    proto: SMTPClientProtocol, payload: bytes, stages: list[str]
) -> list[Deferred[Reply]]:
    """
    Write ``payload`` at once and await one reply per stage, each with its
    own Deferred (the protocol itself gives a pipelined batch one).
    """
    return [
        proto.send(command(payload if n == 0 else b"", stage)) for n, stage in enumerate(stages)
    ]


def expect(proto: SMTPClientProtocol, stage: str = "command") -> Deferred[Reply]:
    """
    Await one more reply without writing anything.
    """
    return proto.send(command(b"", stage))


def wait_for(check: Callable[[], bool], timeout: float, what: str) -> None:
    """
    Poll ``check`` with a bound, for what another process or a database
    does (never for code in this process's reactor).

    :raises AssertionError: naming ``what`` after ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


def without_reader(argv: list[str], env: dict[str, str], cwd: object) -> tuple[int, bytes]:
    """
    Run a command whose stdout's reader is already gone (``... | head``
    after head left): the pipe is closed before the child, still starting
    Python, writes, so its write fails.

    :returns: the exit status and what it wrote on stderr.
    """
    process = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=cwd
    )
    assert process.stdout is not None and process.stderr is not None
    process.stdout.close()
    code = process.wait(60)
    return code, process.stderr.read()
