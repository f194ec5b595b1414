"""
Every failure from every public send path is an SMTPException with
``temporary`` set truthfully (issue 8, defect 4): a refused connection, an
unknown host, a timeout at each stage, a malformed host and a bad argument,
each through ``SMTP``, the pool and the one-shot helpers.  Nothing leaves
127.0.0.0/8: the unknown host is "resolved" by a resolver the test gives
the reactor.
"""

from __future__ import annotations

from collections.abc import Callable
from email.message import EmailMessage
from typing import Any

import pytest
import pytest_twisted
from helpers import EHLO_PLAIN, GREETING, FakeEndpoint, failure_result_of
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionAborted, ConnectionRefusedError, DNSLookupError
from twisted.internet.interfaces import (
    IHostnameResolver,
    IHostResolution,
    IReactorPluggableNameResolver,
    IResolutionReceiver,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from zope.interface import implementer

import txsmtpclient
from txsmtpclient import SMTP
from txsmtpclient.errors import (
    SMTPArgumentError,
    SMTPException,
    SMTPServerDisconnected,
    SMTPTimeoutError,
)
from txsmtpclient.pool import SMTPConnectionPool

SENDER = "a@example.test"
RECIPIENT = "b@example.test"


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


def _email() -> EmailMessage:
    email = EmailMessage()
    email["From"], email["To"] = SENDER, RECIPIENT
    email.set_content("hi")
    return email


#: One send of one message through each public path, to ``host`` (and
#: ``port``) with ``reactor`` and timeouts of ``timeout`` seconds.
Send = Callable[[Any, "int | None", Any, float], "Deferred[Any]"]


def _via_smtp(host: Any, port: int | None, reactor: Any, timeout: float) -> Deferred[Any]:
    smtp = SMTP(local_hostname="client.example", reactor=reactor, timeout=timeout, tls="never")
    smtp.connect(host, port).addErrback(lambda _: None)  # reported by sendmail too
    return smtp.sendmail(SENDER, [RECIPIENT], b"hi\r\n")


def _via_smtp_connect(host: Any, port: int | None, reactor: Any, timeout: float) -> Deferred[Any]:
    smtp = SMTP(local_hostname="client.example", reactor=reactor, timeout=timeout, tls="never")
    return smtp.connect(host, port)


def _via_pool(host: Any, port: int | None, reactor: Any, timeout: float) -> Deferred[Any]:
    def make_client() -> SMTP:
        return SMTP(local_hostname="client.example", reactor=reactor, timeout=timeout, tls="never")

    pool = SMTPConnectionPool(host, port, make_client=make_client, reactor=reactor)
    return pool.send_message(_email())


def _via_one_shot(host: Any, port: int | None, reactor: Any, timeout: float) -> Deferred[Any]:
    return txsmtpclient.sendmail(
        host,
        SENDER,
        [RECIPIENT],
        b"hi\r\n",
        port=port,
        local_hostname="client.example",
        reactor=reactor,
        timeout=timeout,
        tls="never",
    )


def _via_one_shot_message(
    host: Any, port: int | None, reactor: Any, timeout: float
) -> Deferred[Any]:
    return txsmtpclient.send_message(
        host,
        _email(),
        port=port,
        local_hostname="client.example",
        reactor=reactor,
        timeout=timeout,
        tls="never",
    )


PATHS: dict[str, Send] = {
    "SMTP.connect": _via_smtp_connect,
    "SMTP.sendmail": _via_smtp,
    "pool.send_message": _via_pool,
    "txsmtpclient.sendmail": _via_one_shot,
    "txsmtpclient.send_message": _via_one_shot_message,
}


# -- refused connections -------------------------------------------------------------------


@pytest.mark.parametrize("path", PATHS)
@pytest_twisted.ensureDeferred  # type: ignore[untyped-decorator]
async def test_refused_connection_is_temporary_smtp_exception(path: str) -> None:
    """A closed loopback port: SMTPServerDisconnected, temporary, Twisted's error as cause."""
    reactor = _reactor()
    port = reactor.listenTCP(0, Factory.forProtocol(Protocol), interface="127.0.0.1")
    number = port.getHost().port
    await port.stopListening()
    with pytest.raises(SMTPServerDisconnected) as raised:
        await PATHS[path]("127.0.0.1", number, reactor, 10)
    error = raised.value
    assert error.temporary
    assert isinstance(error.__cause__, ConnectionRefusedError) or isinstance(
        error.__cause__.__cause__, ConnectionRefusedError
    )


# -- unknown hosts ---------------------------------------------------------------------------


@implementer(IHostResolution)
class _Resolution:
    def __init__(self, name: str) -> None:
        self.name = name

    def cancel(self) -> None:
        pass


@implementer(IHostnameResolver)
class _NoSuchHost:
    """A resolver that knows no host at all, and records what it was asked."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    def resolveHostName(
        self,
        resolutionReceiver: IResolutionReceiver,
        hostName: str,
        portNumber: int = 0,
        addressTypes: Any = None,
        transportSemantics: str = "TCP",
    ) -> IHostResolution:
        self.asked.append(hostName)
        resolution = _Resolution(hostName)
        resolutionReceiver.resolutionBegan(resolution)
        resolutionReceiver.resolutionComplete()
        return resolution


@implementer(IReactorPluggableNameResolver)
class _ReactorWithResolver(MemoryReactorClock):
    def __init__(self) -> None:
        super().__init__()
        self.nameResolver = _NoSuchHost()

    def installNameResolver(self, resolver: IHostnameResolver) -> IHostnameResolver:
        old, self.nameResolver = self.nameResolver, resolver  # type: ignore[assignment]
        return old


@pytest.mark.parametrize("path", PATHS)
def test_unknown_host_is_temporary_smtp_exception(path: str) -> None:
    """A host no resolver knows: SMTPServerDisconnected, temporary, DNSLookupError as cause."""
    reactor = _ReactorWithResolver()
    d = PATHS[path]("mail.unknown.test", None, reactor, 10)
    error = failure_result_of(d, SMTPServerDisconnected)
    assert error.temporary
    cause = error.__cause__
    if not isinstance(cause, DNSLookupError):  # a later call names the first failure
        assert isinstance(cause, SMTPServerDisconnected)
        cause = cause.__cause__
    assert isinstance(cause, DNSLookupError)
    assert "mail.unknown.test" in str(error)
    assert reactor.nameResolver.asked == ["mail.unknown.test"]
    assert reactor.tcpClients == []


# -- timeouts at each stage -------------------------------------------------------------------

#: The server's replies, in order, each named by the stage that waits for it.
_SCRIPT = [
    ("greeting", GREETING),
    ("command", EHLO_PLAIN),
    ("mail", b"250 ok\r\n"),
    ("rcpt", b"250 ok\r\n"),
    ("data_init", b"354 go ahead\r\n"),
    ("data_end", b"250 queued\r\n"),
]


@pytest.mark.parametrize("stall", ["connect"] + [stage for stage, _ in _SCRIPT])
@pytest.mark.parametrize("path", [p for p in PATHS if p != "SMTP.connect"])
def test_timeout_at_each_stage_is_temporary_smtp_exception(path: str, stall: str) -> None:
    """A server silent at any stage: SMTPServerDisconnected (a timeout), temporary."""
    clock = MemoryReactorClock()
    endpoint = FakeEndpoint(deferred=True)
    d = PATHS[path](endpoint, None, clock, 10)
    if stall != "connect":
        proto = endpoint.complete()
        for stage, reply in _SCRIPT:
            if stage == stall:
                break
            proto.dataReceived(reply)
    clock.advance(11)
    if endpoint.transport is not None and endpoint.transport.disconnecting:
        # What a real transport does once aborted (the one-shot helpers
        # wait for the connection to be gone).
        assert endpoint.protocol is not None
        endpoint.protocol.connectionLost(Failure(ConnectionAborted()))
    error = failure_result_of(d, SMTPServerDisconnected)
    assert error.temporary
    timeout = error if isinstance(error, SMTPTimeoutError) else error.__cause__
    assert isinstance(timeout, SMTPTimeoutError), repr(error)
    assert timeout.stage == stall


# -- malformed hosts and bad arguments --------------------------------------------------------


@pytest.mark.parametrize("host", ["foo:bar:baz", "localhost:notaport", "[::1", "host:0", ""])
@pytest.mark.parametrize("path", PATHS)
def test_malformed_host_is_argument_error_at_once(path: str, host: str) -> None:
    """A malformed host string: SMTPArgumentError before anything is attempted."""
    reactor = _ReactorWithResolver()
    with pytest.raises(SMTPArgumentError) as raised:
        PATHS[path](host, None, reactor, 10)
    assert not raised.value.temporary
    assert reactor.tcpClients == [] and reactor.nameResolver.asked == []


def test_smtp_constructor_refuses_a_malformed_host() -> None:
    """SMTP(host) connects at once, so it refuses a malformed host at once too."""
    reactor = MemoryReactorClock()
    with pytest.raises(SMTPArgumentError, match="foo:bar:baz"):
        SMTP("foo:bar:baz", reactor=reactor)
    assert reactor.tcpClients == []


@pytest.mark.parametrize(
    "send",
    [
        lambda smtp, pool: smtp.sendmail("a@x\r\nRSET", ["b@y"], b"hi"),
        lambda smtp, pool: pool.sendmail("a@x", ["b@y\n"], b"hi"),
        lambda smtp, pool: pool.sendmail("a@x", ["b@y"], b"hi", dsn_ret="ALL"),
        lambda smtp, pool: txsmtpclient.sendmail("127.0.0.1", "a@x", [], b"hi", pool=pool),
        lambda smtp, pool: txsmtpclient.sendmail("127.0.0.1:26", "a@x", ["b@y"], b"hi", pool=pool),
        lambda smtp, pool: txsmtpclient.sendmail("127.0.0.1", "a@x", ["b@y"], b"hi", port=70000),
        lambda smtp, pool: txsmtpclient.send_message("127.0.0.1", _email(), mail_options=["A B"]),
        lambda smtp, pool: SMTPConnectionPool("127.0.0.1", max_connections=0),
    ],
)
def test_bad_argument_is_argument_error_at_once(send: Callable[[SMTP, Any], Any]) -> None:
    """A bad value: SMTPArgumentError (an SMTPException, not temporary), nothing sent."""
    reactor = MemoryReactorClock()
    smtp = SMTP(local_hostname="client.example", reactor=reactor)
    pool = SMTPConnectionPool("127.0.0.1", 25, reactor=reactor)
    with pytest.raises(SMTPArgumentError) as raised:
        send(smtp, pool)
    assert isinstance(raised.value, SMTPException) and not raised.value.temporary
    assert reactor.tcpClients == []
