"""
Reactor turns per connection (issue 9, item 3), as behaviour rather than
timing: each step from the connection to the first MAIL is written in the
very call that delivers the reply it waits for; a greeting already waiting
when a TCP connection completes is read in that same call; a connection
whose every write was answered closes without waiting for another turn; an
address literal never reaches a name resolver or a thread.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest
import pytest_twisted
from helpers import EHLO_PIPELINING, GREETING, FakeEndpoint, deliver, success_result_of
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.interfaces import IProtocol, IProtocolFactory, IStreamClientEndpoint
from twisted.internet.testing import MemoryReactorClock
from zope.interface import implementer

from txsmtpclient import SMTP, SMTPClientProtocol


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


def test_each_step_to_the_first_mail_is_written_in_the_call_that_delivers_its_reply() -> None:
    """Greeting in, EHLO out; EHLO reply in, MAIL out: one write per delivery, no turn between."""
    clock = MemoryReactorClock()
    endpoint = FakeEndpoint()
    smtp = SMTP(local_hostname="client.example", reactor=clock)
    smtp.connect(endpoint)
    sent = smtp.sendmail("a@example.com", ["b@example.com"], b"hello\r\n")
    assert endpoint.transport is not None and endpoint.protocol is not None
    transport, proto = endpoint.transport, endpoint.protocol
    assert transport.writes == []
    deliver(proto, GREETING)
    assert transport.writes == [b"EHLO client.example\r\n"]
    deliver(proto, EHLO_PIPELINING)
    assert len(transport.writes) == 2
    assert transport.writes[1].startswith(b"MAIL FROM:<a@example.com>")
    # Nothing was left for a later turn: no timer but the reply deadline.
    assert [call.func.__name__ for call in clock.getDelayedCalls()] == ["_check_deadline"]
    assert not sent.called


@pytest.mark.parametrize(
    ("host", "address"),
    [
        ("127.0.0.1", "127.0.0.1"),
        ("127.0.0.1:2525", "127.0.0.1"),
        ("::1", "::1"),
        ("[::1]", "::1"),
    ],
)
def test_address_literal_connects_without_a_resolver_or_a_thread(host: str, address: str) -> None:
    """connect() with an IP literal reaches connectTCP in the same call; no lookup, no thread."""

    class NoLookups(MemoryReactorClock):
        def getThreadPool(self) -> Any:
            raise AssertionError("an address literal went to the thread pool")

        def __getattribute__(self, name: str) -> Any:
            if name == "nameResolver":
                raise AssertionError("an address literal went to a name resolver")
            return super().__getattribute__(name)

    reactor = NoLookups()
    smtp = SMTP(local_hostname="client.example", reactor=reactor)
    smtp.connect(host, 2525)
    assert [(h, p) for h, p, *_ in reactor.tcpClients] == [(address, 2525)]


# -- a real TCP connection on loopback, the server a plain socket the test drives -----------


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A listening socket on 127.0.0.1, accepted from by the test itself."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    # A bound on every wait, never a sleep: loopback answers at once.
    server.settimeout(10)
    yield server
    server.close()


@implementer(IStreamClientEndpoint)
class _GreetFirst:
    """
    A TCP endpoint whose server accepts and sends its greeting before the
    reactor next polls: the greeting is already in the client's socket
    when the connection is reported, as with a fast server near by.
    """

    def __init__(self, listener: socket.socket) -> None:
        self._listener = listener
        self.accepted: socket.socket | None = None
        self.greeting_read_at_connect: bool | None = None

    def connect(self, factory: IProtocolFactory) -> Deferred[IProtocol]:
        reactor = _reactor()
        port = self._listener.getsockname()[1]
        attempt = TCP4ClientEndpoint(reactor, "127.0.0.1", port).connect(factory)
        # Runs right after the connect() system call, in the same turn.
        reactor.callLater(0, self._greet)
        attempt.addCallback(self._connected)
        return attempt

    def _greet(self) -> None:
        self.accepted, _ = self._listener.accept()
        self.accepted.settimeout(10)
        self.accepted.sendall(GREETING)

    def _connected(self, proto: IProtocol) -> IProtocol:
        assert isinstance(proto, SMTPClientProtocol)
        self.greeting_read_at_connect = proto.greeting.called
        return proto


@pytest_twisted.ensureDeferred  # type: ignore[untyped-decorator]
async def test_greeting_waiting_at_connect_is_read_in_that_call(listener: socket.socket) -> None:
    """A greeting already in the socket is read as the connection is reported, not a turn later."""
    endpoint = _GreetFirst(listener)
    smtp = SMTP(local_hostname="client.example", reactor=_reactor(), tls="never")
    greeting = await smtp.connect(endpoint)
    assert greeting.code == 220
    assert endpoint.greeting_read_at_connect is True
    assert endpoint.accepted is not None
    endpoint.accepted.close()
    await smtp.close()


@pytest_twisted.ensureDeferred  # type: ignore[untyped-decorator]
async def test_connection_with_everything_answered_closes_in_the_same_call(
    listener: socket.socket,
) -> None:
    """close() after the last reply closes the socket at once: the server reads its end now."""
    endpoint = _GreetFirst(listener)
    smtp = SMTP(local_hostname="client.example", reactor=_reactor(), tls="never")
    await smtp.connect(endpoint)
    server = endpoint.accepted
    assert server is not None
    closed = smtp.close()
    assert closed.called
    assert success_result_of(closed) is None
    # The FIN is already on its way: the server sees the end of the stream.
    assert server.recv(100) == b""
    server.close()
