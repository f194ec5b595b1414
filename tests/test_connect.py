"""
Tests for what ``connect()`` makes of a host (``"host:port"``, IPv6
literals, endpoint descriptions, endpoint objects) and for
:class:`txsmtpclient.SMTPClientFactory` on a :class:`MemoryReactorClock`.
"""

from __future__ import annotations

from typing import Any, cast

import pytest
from helpers import (
    GREETING,
    FakeEndpoint,
    NoDelayTransport,
    assert_no_result,
    deliver,
    failure_result_of,
    success_result_of,
)
from twisted.internet.address import IPv4Address
from twisted.internet.endpoints import (
    HostnameEndpoint,
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
    UNIXClientEndpoint,
)
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.interfaces import IProtocol
from twisted.internet.ssl import optionsForClientTLS
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure

from txsmtpclient import SMTP, SMTP_SSL, SMTPClientFactory, SMTPClientProtocol, SMTPTLSError
from txsmtpclient._endpoints import resolve_endpoint
from txsmtpclient.errors import SMTPArgumentError, SMTPConnectError, SMTPServerDisconnected


@pytest.mark.parametrize(
    ("host", "port", "name", "expected_port"),
    [
        ("mail.example.com", None, "mail.example.com", 25),
        ("mail.example.com", 587, "mail.example.com", 587),
        ("mail.example.com:2525", None, "mail.example.com", 2525),
    ],
)
def test_host_and_port(host: str, port: int | None, name: str, expected_port: int) -> None:
    """Host names become a HostnameEndpoint (resolved without blocking)."""
    endpoint, shown = resolve_endpoint(MemoryReactorClock(), host, port, 25, 7)
    assert isinstance(endpoint, HostnameEndpoint)
    assert shown == name
    assert endpoint._hostText == name
    assert endpoint._port == expected_port
    assert endpoint._timeout == 7


@pytest.mark.parametrize(
    ("host", "port", "kind", "name", "expected_port"),
    [
        ("127.0.0.1:2525", None, TCP4ClientEndpoint, "127.0.0.1", 2525),
        ("[::1]", None, TCP6ClientEndpoint, "::1", 25),
        ("[::1]", 2525, TCP6ClientEndpoint, "::1", 2525),
        ("[::1]:2525", None, TCP6ClientEndpoint, "::1", 2525),
        ("::1", None, TCP6ClientEndpoint, "::1", 25),
        ("2001:db8::25", 26, TCP6ClientEndpoint, "2001:db8::25", 26),
    ],
)
def test_address_literal(
    host: str, port: int | None, kind: type, name: str, expected_port: int
) -> None:
    """Address literals connect directly: no name resolution, no thread hop."""
    endpoint, shown = resolve_endpoint(MemoryReactorClock(), host, port, 25, 7)
    assert type(endpoint) is kind
    assert shown == name
    assert isinstance(endpoint, (TCP4ClientEndpoint, TCP6ClientEndpoint))
    assert (endpoint._host, endpoint._port, endpoint._timeout) == (name, expected_port, 7)


def test_tcp_description() -> None:
    """A "tcp:" description is parsed by Twisted."""
    endpoint, _name = resolve_endpoint(MemoryReactorClock(), "tcp:127.0.0.1:2525", None, 25, 7)
    assert isinstance(endpoint, TCP4ClientEndpoint)
    assert (endpoint._host, endpoint._port) == ("127.0.0.1", 2525)


def test_unix_description() -> None:
    """A "unix:" description gives a Unix socket endpoint, not a host called "unix"."""
    endpoint, _name = resolve_endpoint(MemoryReactorClock(), "unix:/run/smtp.sock", None, 25, 7)
    assert isinstance(endpoint, UNIXClientEndpoint)
    assert endpoint._path == "/run/smtp.sock"


def test_endpoint_object_used_as_is() -> None:
    """An IStreamClientEndpoint is used unchanged."""
    fake = FakeEndpoint()
    endpoint, name = resolve_endpoint(MemoryReactorClock(), fake, None, 25, 7)
    assert endpoint is fake
    assert name == ""


@pytest.mark.parametrize(
    ("host", "port"),
    [
        ("host:abc", None),
        ("host:", None),
        ("[::1]:x", None),
        ("host", 0),
        ("host", 65536),
        ("host", -1),
    ],
)
def test_bad_port(host: str, port: int | None) -> None:
    """A port that is no number, or out of range, is a ValueError at once."""
    with pytest.raises(ValueError):
        resolve_endpoint(MemoryReactorClock(), host, port, 25, 7)


@pytest.mark.parametrize("host", ["host:abc", "localhost:99999"])
def test_smtp_connect_bad_port_raises_at_once(host: str) -> None:
    """SMTP.connect() refuses a bad port synchronously; nothing is attempted."""
    reactor = MemoryReactorClock()
    smtp = SMTP(local_hostname="client.example", reactor=reactor)
    with pytest.raises(ValueError):
        smtp.connect(host)
    assert reactor.tcpClients == []


def test_host_with_control_characters() -> None:
    """A host with CR/LF is refused (it could end up in a log or a description)."""
    with pytest.raises(SMTPArgumentError):
        resolve_endpoint(MemoryReactorClock(), "host\r\n", None, 25, 7)
    with pytest.raises(TypeError):
        resolve_endpoint(MemoryReactorClock(), b"host", None, 25, 7)  # type: ignore[arg-type]


def _answer_tcp(reactor: MemoryReactorClock) -> tuple[Any, NoDelayTransport]:
    """
    Complete the last connectTCP the reactor recorded; the protocol is an
    SMTPClientProtocol, or an endpoint's wrapper around one.
    """
    _host, _port, factory, _timeout, _bind = reactor.tcpClients[-1]
    proto = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 2525))
    inner = getattr(proto, "_wrappedProtocol", proto)
    assert isinstance(inner, SMTPClientProtocol)
    transport = NoDelayTransport()
    cast(IProtocol, proto).makeConnection(transport)
    return proto, transport


def test_smtp_host_in_constructor_connects_at_once() -> None:
    """SMTP("tcp:...") starts connecting in the constructor; calls wait for the greeting."""
    reactor = MemoryReactorClock()
    smtp = SMTP("tcp:127.0.0.1:2525", local_hostname="client.example", reactor=reactor)
    assert [(h, p) for h, p, *_ in reactor.tcpClients] == [("127.0.0.1", 2525)]
    d = smtp.noop()
    proto, transport = _answer_tcp(reactor)
    assert transport.io.getvalue() == b""
    deliver(proto, GREETING)
    assert transport.io.getvalue() == b"NOOP\r\n"
    deliver(proto, b"250 ok\r\n")
    assert success_result_of(d) == (250, b"ok")


# -- SMTPClientFactory ---------------------------------------------------------------------


def test_factory_connection_failed() -> None:
    """connectTCP failing reaches factory.deferred with the reason."""
    reactor = MemoryReactorClock()
    factory = SMTPClientFactory(local_hostname="client.example", reactor=reactor)
    connector = reactor.connectTCP("127.0.0.1", 2525, factory)
    assert_no_result(factory.deferred)
    factory.clientConnectionFailed(connector, Failure(ConnectionRefusedError()))
    error = failure_result_of(factory.deferred, SMTPServerDisconnected)
    assert error.temporary and isinstance(error.__cause__, ConnectionRefusedError)


def test_factory_good_greeting_gives_a_working_smtp() -> None:
    """A 220 greeting fires factory.deferred with an SMTP that can sendmail."""
    reactor = MemoryReactorClock()
    factory = SMTPClientFactory(local_hostname="client.example", reactor=reactor)
    reactor.connectTCP("127.0.0.1", 2525, factory)
    proto, transport = _answer_tcp(reactor)
    assert_no_result(factory.deferred)
    deliver(proto, GREETING)
    smtp = success_result_of(factory.deferred)
    assert isinstance(smtp, SMTP)
    assert smtp is factory.client
    d = smtp.sendmail("a@x", "b@x", b"hi")
    script: list[tuple[bytes, bytes]] = [
        (b"EHLO client.example\r\n", b"250 mx\r\n"),
        (b"MAIL FROM:<a@x>\r\n", b"250 ok\r\n"),
        (b"RCPT TO:<b@x>\r\n", b"250 ok\r\n"),
        (b"DATA\r\n", b"354 go\r\n"),
        (b"hi\r\n.\r\n", b"250 ok\r\n"),
    ]
    for expected, reply in script:
        assert transport.io.getvalue() == expected
        transport.take()
        deliver(proto, reply)
    assert success_result_of(d) == {}


def test_factory_bad_greeting() -> None:
    """A greeting other than 220 fails factory.deferred with SMTPConnectError."""
    reactor = MemoryReactorClock()
    factory = SMTPClientFactory(local_hostname="client.example", reactor=reactor)
    reactor.connectTCP("127.0.0.1", 2525, factory)
    proto, transport = _answer_tcp(reactor)
    deliver(proto, b"554 no service\r\n")
    error = failure_result_of(factory.deferred, SMTPConnectError)
    assert (error.smtp_code, error.smtp_error) == (554, b"no service")
    assert transport.disconnecting


def test_factory_lost_before_greeting() -> None:
    """The connection dropping before the greeting fails factory.deferred."""
    reactor = MemoryReactorClock()
    factory = SMTPClientFactory(local_hostname="client.example", reactor=reactor)
    connector = reactor.connectTCP("127.0.0.1", 2525, factory)
    proto, _transport = _answer_tcp(reactor)
    proto.connectionLost(Failure(ConnectionDone()))
    factory.clientConnectionLost(connector, Failure(ConnectionDone()))
    failure_result_of(factory.deferred, SMTPServerDisconnected)


def test_factory_builds_one_protocol() -> None:
    """One factory serves one connection."""
    reactor = MemoryReactorClock()
    factory = SMTPClientFactory(local_hostname="client.example", reactor=reactor)
    reactor.connectTCP("127.0.0.1", 2525, factory)
    proto, _transport = _answer_tcp(reactor)
    deliver(proto, GREETING)
    success_result_of(factory.deferred)
    address: Any = IPv4Address("TCP", "127.0.0.1", 2525)
    assert factory.buildProtocol(address) is None


@pytest.mark.parametrize(
    ("host", "port", "name"),
    [
        ("mail.example.com", None, "mail.example.com"),
        ("mail.example.com:465", None, "mail.example.com"),
        ("[::1]:465", None, "::1"),
        ("::1", 465, "::1"),
        ("127.0.0.1:465", None, "127.0.0.1"),
        ("tcp:127.0.0.1:465", None, "127.0.0.1"),
        ("tcp:host=mail.example.com:port=465", None, "mail.example.com"),
    ],
)
def test_implicit_tls_gets_the_parsed_host_name(host: str, port: int | None, name: str) -> None:
    """Implicit TLS is asked for options with the host name parsing found, however written."""
    asked: list[str] = []

    def options(hostname: str) -> Any:
        asked.append(hostname)
        return optionsForClientTLS("example.com")

    endpoint, shown = resolve_endpoint(MemoryReactorClock(), host, port, 465, 7, options)
    assert asked == [name] and shown == name
    assert type(endpoint).__name__ == "_WrapperEndpoint"


def test_implicit_tls_leaves_tls_descriptions_alone() -> None:
    """A "tls:" description is TLS already: it is not wrapped twice."""
    asked: list[str] = []
    endpoint, _ = resolve_endpoint(
        MemoryReactorClock(),
        "tls:mail.example.com:465",
        None,
        465,
        7,
        asked.append,  # type: ignore[arg-type]
    )
    assert asked == [] and endpoint is not None


@pytest.mark.parametrize("host", ["[::1]:465", "::1", "tcp:127.0.0.1:465", "mail.example.com"])
def test_smtp_ssl_accepts_every_host_form_smtp_does(host: str) -> None:
    """SMTP_SSL parses hosts as SMTP does (it once re-parsed them and choked on IPv6)."""
    reactor = MemoryReactorClock()
    smtp = SMTP_SSL(host, reactor=reactor)
    assert len(reactor.tcpClients) == 1
    smtp.close()


def test_smtp_ssl_without_a_host_name_refuses_at_once() -> None:
    """An endpoint object gives no name to verify against: a typed error, nothing connected."""
    reactor = MemoryReactorClock()
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", 465)
    with pytest.raises(SMTPTLSError, match="no host name"):
        SMTP_SSL(reactor=reactor).connect(endpoint)
    assert reactor.tcpClients == []
