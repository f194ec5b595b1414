"""
In-memory tests of the ESMTP features (issue 3): STARTTLS and the TLS policy,
AUTH and its redaction, PIPELINING, SIZE, 8BITMIME, SMTPUTF8, DSN, enhanced
status codes and CHUNKING, byte for byte.

The test plays the server: it feeds ``dataReceived`` and checks every write
the client makes on a :class:`StringTransport` that also records
``startTLS``.  Time is a :class:`MemoryReactorClock`; no reactor runs.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import (
    IOpenSSLClientConnectionCreator,
    IProtocol,
    IProtocolFactory,
    IStreamClientEndpoint,
    ITLSTransport,
)
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import capturedLogs, formatEvent
from twisted.python.failure import Failure
from zope.interface import implementer

from txsmtpclient import SMTP, Reply
from txsmtpclient._tls import client_tls_options
from txsmtpclient.errors import (
    SMTPArgumentError,
    SMTPAuthenticationError,
    SMTPDataError,
    SMTPNotSupportedError,
    SMTPRecipientsRefused,
    SMTPSenderRefused,
    SMTPServerDisconnected,
    SMTPTLSError,
)
from txsmtpclient.protocol import SMTPClientProtocol

T = TypeVar("T")
E = TypeVar("E", bound=BaseException)

GREETING = b"220 mx.example ESMTP ready\r\n"
EHLO_PLAIN = b"250-mx.example\r\n250-SIZE 1000000\r\n250 8BITMIME\r\n"
EHLO_PIPELINING = b"250-mx.example\r\n250-PIPELINING\r\n250-SIZE 1000000\r\n250 8BITMIME\r\n"
EHLO_STARTTLS = b"250-mx.example\r\n250-STARTTLS\r\n250-SIZE 1000000\r\n250 PIPELINING\r\n"
EHLO_AFTER_TLS = b"250-mx.example\r\n250-AUTH PLAIN LOGIN CRAM-MD5\r\n250 8BITMIME\r\n"
HELLO = b"EHLO client.example\r\n"


# -- fakes: kept here so these tests do not move with other files' helpers ----


@implementer(ITLSTransport)
class TLSStringTransport(StringTransport):
    """
    A string transport that keeps each write apart (to count them) and
    records ``startTLS`` instead of doing TLS; the test says when the
    handshake is done with the protocol's ``handshakeCompleted()``.
    """

    def __init__(self) -> None:
        super().__init__(  # type: ignore[no-untyped-call]
            hostAddress=IPv4Address("TCP", "127.0.0.1", 40000),
            peerAddress=IPv4Address("TCP", "127.0.0.1", 25),
        )
        self.writes: list[bytes] = []
        self.tls_started: list[object] = []
        self.no_delay = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)
        super().write(data)  # type: ignore[no-untyped-call]

    def startTLS(self, contextFactory: object, normal: bool = True) -> None:
        self.tls_started.append(contextFactory)

    # The rest of ITCPTransport, which ITLSTransport extends.
    def setTcpNoDelay(self, enabled: bool) -> None:
        self.no_delay = enabled

    def getTcpNoDelay(self) -> bool:
        return bool(self.no_delay)

    def setTcpKeepAlive(self, enabled: bool) -> None:
        pass

    def getTcpKeepAlive(self) -> bool:
        return False

    def loseWriteConnection(self) -> None:
        self.loseConnection()  # type: ignore[no-untyped-call]

    def take(self) -> bytes:
        """Everything written since the last call, forgotten."""
        value = b"".join(self.writes)
        self.writes.clear()
        self.clear()  # type: ignore[no-untyped-call]
        return value


@implementer(IOpenSSLClientConnectionCreator)
class FakeTLSOptions:
    """Stands for TLS client options; the fake transport never uses it."""

    def clientConnectionForTLS(self, tlsProtocol: object) -> Any:
        raise NotImplementedError("no TLS in memory")


@implementer(IStreamClientEndpoint)
class TLSEndpoint:
    """An endpoint that connects at once to a :class:`TLSStringTransport`."""

    def __init__(self) -> None:
        self.protocol: SMTPClientProtocol | None = None
        self.transport = TLSStringTransport()

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        proto = protocolFactory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 25))
        assert isinstance(proto, SMTPClientProtocol)
        proto.makeConnection(self.transport)
        self.protocol = proto
        return succeed(proto)


@dataclass
class Session:
    """An SMTP (or subclass) on a :class:`TLSEndpoint`, greeted."""

    smtp: SMTP
    clock: MemoryReactorClock
    endpoint: TLSEndpoint

    @property
    def proto(self) -> SMTPClientProtocol:
        assert self.endpoint.protocol is not None
        return self.endpoint.protocol

    @property
    def transport(self) -> TLSStringTransport:
        return self.endpoint.transport

    def feed(self, data: bytes) -> None:
        """The server sends ``data`` (in one segment)."""
        cast(IProtocol, self.proto).dataReceived(data)

    def take(self) -> bytes:
        """What the client wrote since the last call."""
        return self.transport.take()

    def lose(self, reason: BaseException | None = None) -> None:
        """The connection goes away."""
        self.proto.connectionLost(Failure(reason if reason is not None else ConnectionDone()))


def result_of(d: Deferred[T]) -> T:
    """The result ``d`` already fired with (trial's ``successResultOf``)."""
    results: list[Any] = []
    d.addBoth(results.append)
    assert results, f"{d!r} has not fired"
    if isinstance(results[0], Failure):
        raise AssertionError(f"{d!r} failed: {results[0].getTraceback()}")
    value: T = results[0]
    return value


def failure_of(d: Deferred[Any], kind: type[E]) -> E:
    """The exception ``d`` already failed with, checked to be a ``kind``."""
    results: list[Any] = []
    d.addBoth(results.append)
    assert results, f"{d!r} has not fired"
    assert isinstance(results[0], Failure), f"{d!r} succeeded with {results[0]!r}"
    error = results[0].value
    assert isinstance(error, kind), f"{error!r} is not a {kind.__name__}"
    return error


def session(cls: type[SMTP] = SMTP, greeting: bytes = GREETING, **kwargs: Any) -> Session:
    """
    A session of ``cls`` built with ``kwargs`` (``local_hostname`` is
    client.example), connected and greeted.
    """
    clock = MemoryReactorClock()
    endpoint = TLSEndpoint()
    smtp = cls(local_hostname="client.example", reactor=clock, **kwargs)
    s = Session(smtp, clock, endpoint)
    connected = smtp.connect(endpoint)
    s.feed(greeting)
    assert result_of(connected).code == 220
    return s


def tls_transport(s: Session) -> TLSStringTransport:
    return s.transport


def step(s: Session, expected: bytes, reply: bytes) -> None:
    """The client wrote exactly ``expected`` in one write; the server answers."""
    assert s.transport.writes == [expected], s.transport.writes
    s.take()
    s.feed(reply)


def nothing_written(s: Session) -> None:
    assert s.transport.writes == [], s.transport.writes


# -- STARTTLS and the TLS policy (RFC 3207) ------------------------------------


def test_starttls_discards_injected_reply_and_says_ehlo_again() -> None:
    """
    A reply injected after the 220 in the same segment is thrown away; TLS
    starts with options verifying the server's name; EHLO is said again and
    the old features (SIZE, PIPELINING) are forgotten.
    """
    s = session(server_hostname="mx.example")
    d = s.smtp.sendmail("a@x.example", ["b@y.example"], b"Subject: t\r\n\r\nhi\r\n")
    step(s, HELLO, EHLO_STARTTLS)
    step(s, b"STARTTLS\r\n", b"220 2.0.0 Ready to start TLS\r\n250-evil\r\n250 AUTH PLAIN\r\n")
    transport = tls_transport(s)
    # Verified by default: the cached optionsForClientTLS for the host name.
    assert transport.tls_started == [client_tls_options("mx.example")]
    nothing_written(s)
    assert s.proto.usable
    assert not s.smtp.has_option("size") and not s.smtp.has_option("auth")
    s.proto.handshakeCompleted()
    assert s.proto.tls
    # Nothing read before the handshake answers this EHLO.
    assert s.transport.writes == [HELLO]
    s.take()
    s.feed(EHLO_AFTER_TLS)
    assert s.smtp.has_option("auth") and not s.smtp.has_option("starttls")
    # No SIZE= and lock-step: the new feature list has neither.
    step(s, b"MAIL FROM:<a@x.example>\r\n", b"250 ok\r\n")
    step(s, b"RCPT TO:<b@y.example>\r\n", b"250 ok\r\n")
    step(s, b"DATA\r\n", b"354 go\r\n")
    step(s, b"Subject: t\r\n\r\nhi\r\n.\r\n", b"250 queued\r\n")
    assert result_of(d) == {}


def test_starttls_without_a_name_to_verify_fails_closed() -> None:
    """
    Given only an endpoint object, there is no name to check the certificate
    against: STARTTLS is not attempted unverified, and no MAIL goes in clear.
    """
    s = session()
    d = s.smtp.sendmail("a@x.example", ["b@y.example"], b"hi\r\n")
    step(s, HELLO, EHLO_STARTTLS)
    e = failure_of(d, SMTPTLSError)
    assert "server_hostname" in str(e)
    nothing_written(s)


def test_starttls_uses_given_tls_options() -> None:
    """``tls_options`` replace the default options (a private CA, say)."""
    options = FakeTLSOptions()
    s = session(tls_options=options)
    d = s.smtp.starttls()
    step(s, HELLO, EHLO_STARTTLS)
    step(s, b"STARTTLS\r\n", b"220 go ahead\r\n")
    assert tls_transport(s).tls_started == [options]
    s.proto.handshakeCompleted()
    step(s, HELLO, EHLO_AFTER_TLS)
    assert result_of(d) == (220, b"go ahead")
    assert s.smtp.has_option("auth")


def test_starttls_context_argument_wins() -> None:
    """``starttls(context)`` uses that context."""
    context = FakeTLSOptions()
    s = session(tls_options=FakeTLSOptions())
    s.smtp.starttls(context)
    step(s, HELLO, EHLO_STARTTLS)
    step(s, b"STARTTLS\r\n", b"220 go ahead\r\n")
    assert tls_transport(s).tls_started == [context]


def test_starttls_handshake_failure_is_tls_error_and_nothing_sent() -> None:
    """A handshake that fails gives SMTPTLSError; nothing is sent after STARTTLS."""
    s = session(server_hostname="mx.example")
    d = s.smtp.sendmail("a@x.example", ["b@y.example"], b"hi\r\n")
    step(s, HELLO, EHLO_STARTTLS)
    step(s, b"STARTTLS\r\n", b"220 go ahead\r\n")
    s.lose(ConnectionLost("certificate verify failed"))
    e = failure_of(d, SMTPTLSError)
    assert isinstance(e, SMTPNotSupportedError)
    nothing_written(s)
    assert not s.proto.usable


def test_starttls_not_offered_is_not_supported() -> None:
    """``starttls()`` against a server without STARTTLS sends nothing for it."""
    s = session(tls="never")
    d = s.smtp.starttls()
    step(s, HELLO, EHLO_PLAIN)
    failure_of(d, SMTPNotSupportedError)
    nothing_written(s)


def test_required_without_starttls_fails_closed() -> None:
    """tls="required" and no STARTTLS: SMTPTLSError, no MAIL, connection closed."""
    s = session(tls="required", server_hostname="mx.example")
    d = s.smtp.sendmail("a@x.example", ["b@y.example"], b"hi\r\n")
    step(s, HELLO, EHLO_PIPELINING)
    e = failure_of(d, SMTPTLSError)
    assert isinstance(e, SMTPNotSupportedError)
    assert "nothing was sent in the clear" in str(e)
    nothing_written(s)
    assert s.transport.disconnecting
    # Later calls fail without writing either.
    failure_of(s.smtp.noop(), SMTPServerDisconnected)
    nothing_written(s)


def test_required_starttls_refused_fails_closed() -> None:
    """tls="required" and STARTTLS answered 454: SMTPTLSError, no MAIL."""
    s = session(tls="required", server_hostname="mx.example")
    d = s.smtp.sendmail("a@x.example", ["b@y.example"], b"hi\r\n")
    step(s, HELLO, EHLO_STARTTLS)
    step(s, b"STARTTLS\r\n", b"454 4.7.0 TLS not available\r\n")
    failure_of(d, SMTPTLSError)
    nothing_written(s)
    assert s.transport.disconnecting
    assert tls_transport(s).tls_started == []


def test_opportunistic_starttls_refused_goes_on_in_clear() -> None:
    """tls="opportunistic" (the default) and STARTTLS refused: the mail goes on."""
    s = session(server_hostname="mx.example")
    d = s.smtp.sendmail("a@x.example", ["b@y.example"], b"hi\r\n")
    step(s, HELLO, EHLO_STARTTLS)
    step(s, b"STARTTLS\r\n", b"454 4.7.0 TLS not available\r\n")
    step(
        s,
        b"MAIL FROM:<a@x.example> SIZE=4\r\nRCPT TO:<b@y.example>\r\nDATA\r\n",
        b"250 ok\r\n250 ok\r\n354 go\r\n",
    )
    step(s, b"hi\r\n.\r\n", b"250 ok\r\n")
    assert result_of(d) == {}


def test_opportunistic_without_starttls_sends_mail_in_clear() -> None:
    """tls="opportunistic" and no STARTTLS: MAIL follows EHLO directly."""
    s = session(server_hostname="mx.example")
    s.smtp.sendmail("a@x.example", ["b@y.example"], b"hi\r\n")
    step(s, HELLO, EHLO_PLAIN)
    assert s.transport.writes == [b"MAIL FROM:<a@x.example> SIZE=4\r\n"]


def test_never_does_not_send_starttls() -> None:
    """tls="never" ignores an offered STARTTLS."""
    s = session(tls="never")
    s.smtp.sendmail("a@x.example", ["b@y.example"], b"hi\r\n")
    step(s, HELLO, EHLO_STARTTLS)
    assert s.transport.writes == [
        b"MAIL FROM:<a@x.example> SIZE=4\r\nRCPT TO:<b@y.example>\r\nDATA\r\n"
    ]
    assert tls_transport(s).tls_started == []


def test_bad_tls_policy_is_refused() -> None:
    """A policy other than the three is a ValueError at construction."""
    with pytest.raises(ValueError, match="tls must be one of"):
        SMTP(tls="sometimes", reactor=MemoryReactorClock())  # type: ignore[arg-type]


# -- AUTH (RFC 4954) -----------------------------------------------------------

EHLO_AUTH = b"250-mx.example\r\n250 AUTH PLAIN LOGIN CRAM-MD5\r\n"


def test_login_refused_over_plaintext_sends_nothing() -> None:
    """Without TLS and without allow_plaintext_auth, no AUTH is written."""
    s = session(tls="never")
    d = s.smtp.login("user", "s3cret")
    step(s, HELLO, EHLO_AUTH)
    e = failure_of(d, SMTPNotSupportedError)
    assert "without TLS" in str(e)
    nothing_written(s)


def test_login_after_starttls_is_allowed() -> None:
    """After STARTTLS, login goes ahead without allow_plaintext_auth."""
    s = session(tls_options=FakeTLSOptions())
    d = s.smtp.login("user", "s3cret", "plain")
    step(s, HELLO, EHLO_STARTTLS)
    step(s, b"STARTTLS\r\n", b"220 go\r\n")
    s.proto.handshakeCompleted()
    step(s, HELLO, EHLO_AFTER_TLS)
    step(s, b"AUTH PLAIN " + base64.b64encode(b"\0user\0s3cret") + b"\r\n", b"235 2.7.0 ok\r\n")
    reply = result_of(d)
    assert reply == (235, b"2.7.0 ok")
    assert reply.enhanced_code == "2.7.0"


def test_login_strongest_of_offered_is_cram_md5() -> None:
    """Of PLAIN, LOGIN and CRAM-MD5, CRAM-MD5 is chosen; the digest is right."""
    s = session(tls="never", allow_plaintext_auth=True)
    d = s.smtp.login("user", "s3cret")
    step(s, HELLO, EHLO_AUTH)
    challenge = b"<1896.697170952@mx.example>"
    step(s, b"AUTH CRAM-MD5\r\n", b"334 " + base64.b64encode(challenge) + b"\r\n")
    digest = hmac.new(b"s3cret", challenge, hashlib.md5).hexdigest().encode()
    step(s, base64.b64encode(b"user " + digest) + b"\r\n", b"235 ok\r\n")
    assert result_of(d).code == 235


def test_login_wrong_password_carries_server_reply() -> None:
    """A 535 fails with SMTPAuthenticationError carrying code and enhanced code."""
    s = session(tls="never", allow_plaintext_auth=True)
    d = s.smtp.login("user", "wrong", "PLAIN")
    step(s, HELLO, EHLO_AUTH)
    step(
        s,
        b"AUTH PLAIN " + base64.b64encode(b"\0user\0wrong") + b"\r\n",
        b"535 5.7.8 Authentication credentials invalid\r\n",
    )
    e = failure_of(d, SMTPAuthenticationError)
    assert e.smtp_code == 535
    assert e.enhanced_code == "5.7.8"
    assert e.smtp_error == b"5.7.8 Authentication credentials invalid"


def test_login_xoauth2_with_token() -> None:
    """XOAUTH2 sends the token as a bearer token; it is never chosen unasked."""
    s = session(tls="never", allow_plaintext_auth=True)
    d = s.smtp.login("alice@example.org", "ya29.token", "xoauth2")
    step(s, HELLO, b"250-mx.example\r\n250 AUTH XOAUTH2 PLAIN\r\n")
    blob = b"user=alice@example.org\x01auth=Bearer ya29.token\x01\x01"
    step(s, b"AUTH XOAUTH2 " + base64.b64encode(blob) + b"\r\n", b"235 2.7.0 Accepted\r\n")
    assert result_of(d).code == 235
    # Without naming it, a password is never sent as a token.
    d = s.smtp.login("alice", "pw")
    assert s.transport.writes == [b"AUTH PLAIN " + base64.b64encode(b"\0alice\0pw") + b"\r\n"]


def test_login_mechanism_not_offered() -> None:
    """Naming a mechanism the server lacks fails before anything is written."""
    s = session(tls="never", allow_plaintext_auth=True)
    d = s.smtp.login("user", "pw", "SCRAM-SHA-256")
    step(s, HELLO, EHLO_AUTH)
    failure_of(d, SMTPNotSupportedError)
    nothing_written(s)


def _event_text(event: dict[str, Any]) -> str:
    """Every field of a log event, and the formatted event, as one string."""
    parts = [formatEvent(event)]
    for key, value in event.items():
        if key == "log_logger":
            continue
        parts.append(f"{key}={value!r}")
        if isinstance(value, bytes):
            parts.append(value.decode("latin-1"))
        else:
            parts.append(str(value))
    return "\n".join(parts)


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN", "CRAM-MD5"])
def test_debug_log_never_shows_credentials(mechanism: str) -> None:
    """
    At debug level 2, no event field holds the password, the user's base64,
    or any AUTH payload the client wrote or the server sent.
    """
    password = "Pa55-w0rd-Zebra"
    s = session(tls="never", allow_plaintext_auth=True)
    s.smtp.set_debuglevel(2)
    with capturedLogs() as events:
        d = s.smtp.login("alice", password, mechanism)
        step(s, HELLO, EHLO_AUTH)
        payloads: list[bytes] = []
        written = s.take()
        assert written.startswith(b"AUTH " + mechanism.encode())
        payloads += written.split()[2:]
        challenges = {
            "PLAIN": [],
            "LOGIN": [b"Username:", b"Password:"],
            "CRAM-MD5": [b"<42.42@mx.example>"],
        }[mechanism]
        for challenge in challenges[len(payloads) :] if mechanism == "LOGIN" else challenges:
            encoded = base64.b64encode(challenge)
            payloads.append(encoded)
            s.feed(b"334 " + encoded + b"\r\n")
            payloads.append(s.take().strip())
        s.feed(b"235 2.7.0 Authentication successful\r\n")
        assert result_of(d).code == 235
    payloads = [p for p in payloads if p]
    assert payloads, "the exchange carried no payload"
    texts = [_event_text(e) for e in events]
    assert any("AUTH" in t for t in texts), "the AUTH command itself was not logged"
    forbidden = [password, base64.b64encode(password.encode()).decode()]
    forbidden += [base64.b64encode(b"alice").decode()]
    forbidden += [p.decode("ascii") for p in payloads]
    for text in texts:
        for secret in forbidden:
            assert secret not in text, (secret, text)


# -- PIPELINING (RFC 2920) ------------------------------------------------------


def test_pipelining_one_write_for_mail_rcpts_and_data() -> None:
    """MAIL, three RCPTs and DATA leave in one write; replies matched in order."""
    s = session(tls="never")
    d = s.smtp.sendmail("a@x", ["b@y", "c@y", "d@y"], b"hi\r\n")
    step(s, HELLO, EHLO_PIPELINING)
    step(
        s,
        b"MAIL FROM:<a@x> SIZE=4\r\nRCPT TO:<b@y>\r\nRCPT TO:<c@y>\r\nRCPT TO:<d@y>\r\nDATA\r\n",
        b"250 ok\r\n250 ok\r\n550 5.1.1 no such user\r\n250 ok\r\n354 go\r\n",
    )
    step(s, b"hi\r\n.\r\n", b"250 queued\r\n")
    refused = result_of(d)
    assert refused == {"c@y": (550, b"5.1.1 no such user")}
    assert refused["c@y"].enhanced_code == "5.1.1"


def test_lock_step_without_pipelining() -> None:
    """Without PIPELINING each command waits for the reply to the one before."""
    s = session(tls="never")
    d = s.smtp.sendmail("a@x", ["b@y", "c@y"], b"hi\r\n")
    step(s, HELLO, EHLO_PLAIN)
    writes = 0
    for expected, reply in [
        (b"MAIL FROM:<a@x> SIZE=4\r\n", b"250 ok\r\n"),
        (b"RCPT TO:<b@y>\r\n", b"250 ok\r\n"),
        (b"RCPT TO:<c@y>\r\n", b"250 ok\r\n"),
        (b"DATA\r\n", b"354 go\r\n"),
        (b"hi\r\n.\r\n", b"250 ok\r\n"),
    ]:
        step(s, expected, reply)
        writes += 1
    assert writes == 5
    assert result_of(d) == {}


# -- SIZE (RFC 1870) -------------------------------------------------------------


def test_size_over_limit_refused_before_mail() -> None:
    """Over the advertised SIZE: SMTPSenderRefused 552 before MAIL is written."""
    s = session(tls="never")
    d = s.smtp.sendmail("a@x", ["b@y"], b"x" * 101 + b"\r\n")
    step(s, HELLO, b"250-mx\r\n250-PIPELINING\r\n250 SIZE 100\r\n")
    e = failure_of(d, SMTPSenderRefused)
    assert e.smtp_code == 552
    assert e.enhanced_code == "5.3.4"
    assert e.sender == "a@x"
    assert not e.temporary
    nothing_written(s)
    assert s.proto.usable


def test_size_refusal_matches_a_server_552() -> None:
    """The server's own 552 to MAIL gives the same exception type and code."""
    s = session(tls="never")
    d = s.smtp.sendmail("a@x", ["b@y"], b"hi\r\n")
    step(s, HELLO, EHLO_PLAIN)
    step(s, b"MAIL FROM:<a@x> SIZE=4\r\n", b"552 5.3.4 Message too big\r\n")
    step(s, b"RSET\r\n", b"250 ok\r\n")
    e = failure_of(d, SMTPSenderRefused)
    assert (e.smtp_code, e.enhanced_code) == (552, "5.3.4")


# -- 8BITMIME (RFC 6152) and SMTPUTF8 (RFC 6531) --------------------------------

EIGHT_BIT = "Subject: caf\u00e9\r\n\r\nd\u00e9j\u00e0 vu\r\n".encode()


def test_eight_bit_message_declares_body_8bitmime() -> None:
    """An 8-bit message gets BODY=8BITMIME and goes out unchanged."""
    s = session(tls="never")
    d = s.smtp.sendmail("a@x", ["b@y"], EIGHT_BIT)
    step(s, HELLO, b"250-mx\r\n250 8BITMIME\r\n")
    step(s, b"MAIL FROM:<a@x> BODY=8BITMIME\r\n", b"250 ok\r\n")
    step(s, b"RCPT TO:<b@y>\r\n", b"250 ok\r\n")
    step(s, b"DATA\r\n", b"354 go\r\n")
    step(s, EIGHT_BIT + b".\r\n", b"250 ok\r\n")
    assert result_of(d) == {}


def test_ascii_message_has_no_body_option() -> None:
    """A 7-bit message declares no BODY."""
    s = session(tls="never")
    s.smtp.sendmail("a@x", ["b@y"], b"hi\r\n")
    step(s, HELLO, b"250-mx\r\n250 8BITMIME\r\n")
    assert s.transport.writes == [b"MAIL FROM:<a@x>\r\n"]


def test_eight_bit_message_without_8bitmime_is_refused() -> None:
    """No 8BITMIME: SMTPNotSupportedError and nothing written after EHLO."""
    s = session(tls="never")
    d = s.smtp.sendmail("a@x", ["b@y"], EIGHT_BIT)
    step(s, HELLO, b"250-mx\r\n250 PIPELINING\r\n")
    e = failure_of(d, SMTPNotSupportedError)
    assert "8BITMIME" in str(e)
    nothing_written(s)


def test_utf8_address_adds_smtputf8() -> None:
    """A non-ASCII address gets SMTPUTF8 on MAIL and is sent as UTF-8."""
    s = session(tls="never")
    d = s.smtp.sendmail("j\u00f6rg@b\u00fccher.example", ["\u0645@x.example"], b"hi\r\n")
    step(s, HELLO, b"250-mx\r\n250-SMTPUTF8\r\n250 8BITMIME\r\n")
    step(s, "MAIL FROM:<j\u00f6rg@b\u00fccher.example> SMTPUTF8\r\n".encode(), b"250 ok\r\n")
    step(s, "RCPT TO:<\u0645@x.example>\r\n".encode(), b"250 ok\r\n")
    step(s, b"DATA\r\n", b"354 go\r\n")
    step(s, b"hi\r\n.\r\n", b"250 ok\r\n")
    assert result_of(d) == {}


def test_utf8_address_without_smtputf8_is_refused() -> None:
    """No SMTPUTF8: SMTPNotSupportedError and nothing written after EHLO."""
    s = session(tls="never")
    d = s.smtp.sendmail("a@x", ["j\u00f6rg@x.example"], b"hi\r\n")
    step(s, HELLO, b"250-mx\r\n250 8BITMIME\r\n")
    e = failure_of(d, SMTPNotSupportedError)
    assert "SMTPUTF8" in str(e)
    nothing_written(s)


# -- DSN (RFC 3461) and ENHANCEDSTATUSCODES (RFC 2034) -------------------------


def test_dsn_parameters_exact_bytes() -> None:
    """RET and ENVID (xtext) on MAIL; NOTIFY and ORCPT (xtext) on each RCPT."""
    s = session(tls="never")
    d = s.smtp.sendmail(
        "a@x",
        ["b+tag@y", "c=d@y"],
        b"hi\r\n",
        dsn_ret="hdrs",
        dsn_envid="QQ 314+159=2",
        dsn_notify=["success", "FAILURE"],
        dsn_orcpt=True,
    )
    step(s, HELLO, b"250-mx\r\n250-DSN\r\n250 ENHANCEDSTATUSCODES\r\n")
    step(s, b"MAIL FROM:<a@x> RET=HDRS ENVID=QQ+20314+2B159+3D2\r\n", b"250 2.1.0 ok\r\n")
    step(
        s,
        b"RCPT TO:<b+tag@y> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;b+2Btag@y\r\n",
        b"250 2.1.5 ok\r\n",
    )
    step(
        s,
        b"RCPT TO:<c=d@y> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;c+3Dd@y\r\n",
        b"250 2.1.5 ok\r\n",
    )
    step(s, b"DATA\r\n", b"354 go\r\n")
    step(s, b"hi\r\n.\r\n", b"250 2.0.0 queued\r\n")
    assert result_of(d) == {}


def test_dsn_notify_never() -> None:
    """NOTIFY=NEVER alone is sent as given."""
    s = session(tls="never")
    s.smtp.sendmail("a@x", ["b@y"], b"hi\r\n", dsn_notify=["NEVER"])
    step(s, HELLO, b"250-mx\r\n250 DSN\r\n")
    step(s, b"MAIL FROM:<a@x>\r\n", b"250 ok\r\n")
    assert s.transport.writes == [b"RCPT TO:<b@y> NOTIFY=NEVER\r\n"]


def test_dsn_left_out_when_not_advertised() -> None:
    """Without DSN the parameters are not sent (as smtplib drops options)."""
    s = session(tls="never")
    s.smtp.sendmail("a@x", ["b@y"], b"hi\r\n", dsn_ret="FULL", dsn_notify=["DELAY"])
    step(s, HELLO, b"250-mx\r\n250 8BITMIME\r\n")
    step(s, b"MAIL FROM:<a@x>\r\n", b"250 ok\r\n")
    assert s.transport.writes == [b"RCPT TO:<b@y>\r\n"]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"dsn_ret": "SOME"}, "dsn_ret"),
        ({"dsn_notify": ["NEVER", "SUCCESS"]}, "dsn_notify"),
        ({"dsn_envid": "x" * 101}, "dsn_envid"),
    ],
)
def test_dsn_bad_values_refused_at_once(kwargs: dict[str, Any], match: str) -> None:
    """Bad DSN values raise before anything is queued or written."""
    s = session(tls="never")
    with pytest.raises(SMTPArgumentError, match=match):
        s.smtp.sendmail("a@x", ["b@y"], b"hi\r\n", **kwargs)
    nothing_written(s)


def test_enhanced_codes_on_replies_and_exceptions() -> None:
    """Refused recipients and data errors carry the enhanced status code."""
    s = session(tls="never")
    d = s.smtp.sendmail("a@x", ["b@y", "c@y"], b"hi\r\n")
    step(s, HELLO, b"250-mx\r\n250 ENHANCEDSTATUSCODES\r\n")
    step(s, b"MAIL FROM:<a@x>\r\n", b"250 2.1.0 ok\r\n")
    step(s, b"RCPT TO:<b@y>\r\n", b"450 4.2.1 mailbox busy\r\n")
    step(s, b"RCPT TO:<c@y>\r\n", b"250 2.1.5 ok\r\n")
    step(s, b"DATA\r\n", b"354 go\r\n")
    step(s, b"hi\r\n.\r\n", b"554 5.6.0 content refused\r\n")
    # The final dot ended the transaction: no RSET is needed.
    e = failure_of(d, SMTPDataError)
    assert (e.smtp_code, e.enhanced_code) == (554, "5.6.0")
    assert e.reply.enhanced_code == "5.6.0"

    d = s.smtp.sendmail("a@x", ["b@y"], b"hi\r\n")
    step(s, b"MAIL FROM:<a@x>\r\n", b"250 2.1.0 ok\r\n")
    step(s, b"RCPT TO:<b@y>\r\n", b"550 5.1.1 no such user\r\n")
    step(s, b"RSET\r\n", b"250 2.0.0 ok\r\n")
    refusal = failure_of(d, SMTPRecipientsRefused)
    assert refusal.recipients["b@y"].enhanced_code == "5.1.1"


# -- CHUNKING (RFC 3030) -----------------------------------------------------------

EHLO_CHUNKING = b"250-mx\r\n250-CHUNKING\r\n250-BINARYMIME\r\n250 8BITMIME\r\n"


def test_bdat_no_dot_stuffing_and_last() -> None:
    """Over the threshold, BDAT carries the message with CRLF, no dot-stuffing."""
    s = session(tls="never", bdat_threshold=0)
    msg = b"Subject: t\n\n.leading dot\n..two\n.\nend\n"
    wire = msg.replace(b"\n", b"\r\n")
    d = s.smtp.sendmail("a@x", ["b@y"], msg)
    step(s, HELLO, EHLO_CHUNKING)
    step(s, b"MAIL FROM:<a@x>\r\n", b"250 ok\r\n")
    step(s, b"RCPT TO:<b@y>\r\n", b"250 ok\r\n")
    step(s, b"BDAT %d LAST\r\n" % len(wire) + wire, b"250 2.0.0 ok\r\n")
    assert result_of(d) == {}


def test_small_message_uses_data_despite_chunking() -> None:
    """Under the threshold DATA is used, dot-stuffed."""
    s = session(tls="never")
    s.smtp.sendmail("a@x", ["b@y"], b".x\r\n")
    step(s, HELLO, EHLO_CHUNKING)
    step(s, b"MAIL FROM:<a@x>\r\n", b"250 ok\r\n")
    step(s, b"RCPT TO:<b@y>\r\n", b"250 ok\r\n")
    step(s, b"DATA\r\n", b"354 go\r\n")
    assert s.transport.writes == [b"..x\r\n.\r\n"]


def test_binarymime_sends_bytes_as_they_are() -> None:
    """BODY=BINARYMIME goes by BDAT even when small, bare LF and NUL untouched."""
    s = session(tls="never")
    msg = b"Content-Type: application/octet-stream\n\n\x00\xff\n.\r\x01"
    d = s.smtp.sendmail("a@x", ["b@y"], msg, ["BODY=BINARYMIME"])
    step(s, HELLO, EHLO_CHUNKING)
    step(s, b"MAIL FROM:<a@x> BODY=BINARYMIME\r\n", b"250 ok\r\n")
    step(s, b"RCPT TO:<b@y>\r\n", b"250 ok\r\n")
    step(s, b"BDAT %d LAST\r\n" % len(msg) + msg, b"250 ok\r\n")
    assert result_of(d) == {}


def test_binarymime_without_chunking_is_refused() -> None:
    """BINARYMIME without CHUNKING is refused before MAIL."""
    s = session(tls="never")
    d = s.smtp.sendmail("a@x", ["b@y"], b"x\r\n", ["BODY=BINARYMIME"])
    step(s, HELLO, b"250-mx\r\n250 BINARYMIME\r\n")
    failure_of(d, SMTPNotSupportedError)
    nothing_written(s)


def test_bdat_chunks_lock_step_and_refused_chunk() -> None:
    """
    A large message goes in several BDAT chunks, each awaiting its 250
    without PIPELINING; a refused chunk fails with SMTPDataError.
    """
    from txsmtpclient._body import CHUNK_SIZE

    s = session(tls="never")
    msg = (b"y" * 99 + b"\r\n") * (CHUNK_SIZE * 2 // 100 + 10)
    d = s.smtp.sendmail("a@x", ["b@y"], msg)
    step(s, HELLO, EHLO_CHUNKING)
    step(s, b"MAIL FROM:<a@x>\r\n", b"250 ok\r\n")
    step(s, b"RCPT TO:<b@y>\r\n", b"250 ok\r\n")
    sent = b""
    first = s.take()
    assert first.startswith(b"BDAT %d\r\n" % CHUNK_SIZE)
    sent += first.split(b"\r\n", 1)[1]
    assert s.transport.writes == []  # waits for the 250
    s.feed(b"250 ok\r\n")
    second = s.take()
    assert second.startswith(b"BDAT %d\r\n" % CHUNK_SIZE)
    sent += second.split(b"\r\n", 1)[1]
    s.feed(b"250 ok\r\n")
    last = s.take()
    header, rest = last.split(b"\r\n", 1)
    assert header == b"BDAT %d LAST" % len(rest)
    sent += rest
    assert sent == msg
    s.feed(b"250 2.0.0 ok\r\n")
    assert result_of(d) == {}

    d = s.smtp.sendmail("a@x", ["b@y"], msg)
    step(s, b"MAIL FROM:<a@x>\r\n", b"250 ok\r\n")
    step(s, b"RCPT TO:<b@y>\r\n", b"250 ok\r\n")
    s.take()
    s.feed(b"552 5.3.4 too much\r\n")
    # Nothing more of the message: RSET ends the transaction.
    step(s, b"RSET\r\n", b"250 ok\r\n")
    e = failure_of(d, SMTPDataError)
    assert (e.smtp_code, e.enhanced_code) == (552, "5.3.4")


# -- send_message ----------------------------------------------------------------


def test_send_message_strips_bcc_and_uses_resent_headers() -> None:
    """Resent-* give the envelope; Bcc and Resent-Bcc are not sent."""
    from email.message import EmailMessage

    msg = EmailMessage()
    msg["From"] = "orig@x.example"
    msg["To"] = "first@y.example"
    msg["Bcc"] = "hidden@y.example"
    msg["Resent-Date"] = "Thu, 01 Jan 2026 00:00:00 +0000"
    msg["Resent-From"] = "fwd@x.example"
    msg["Resent-To"] = "again@y.example"
    msg["Resent-Bcc"] = "secret@y.example"
    msg["Subject"] = "resent"
    msg.set_content("body\n")
    s = session(tls="never")
    d = s.smtp.send_message(msg)
    step(s, HELLO, b"250-mx\r\n250 8BITMIME\r\n")
    step(s, b"MAIL FROM:<fwd@x.example>\r\n", b"250 ok\r\n")
    step(s, b"RCPT TO:<again@y.example>\r\n", b"250 ok\r\n")
    step(s, b"RCPT TO:<secret@y.example>\r\n", b"250 ok\r\n")
    step(s, b"DATA\r\n", b"354 go\r\n")
    [data] = s.transport.writes
    assert b"Resent-From: fwd@x.example\r\n" in data
    assert b"hidden@" not in data and b"secret@" not in data
    assert b"\nBcc" not in data and b"Resent-Bcc" not in data
    assert data.endswith(b"body\r\n.\r\n")
    s.take()
    s.feed(b"250 ok\r\n")
    assert result_of(d) == {}


def test_reply_type_is_smtplib_tuple() -> None:
    """Replies are smtplib's (code, message) tuples."""
    assert Reply(250, b"2.0.0 ok") == (250, b"2.0.0 ok")


def test_connection_lost_during_starttls_handshake_fails_pending() -> None:
    """Calls queued behind a failed STARTTLS fail without writing."""
    s = session(tls_options=FakeTLSOptions())
    d1 = s.smtp.starttls()
    d2 = s.smtp.noop()
    step(s, HELLO, EHLO_STARTTLS)
    step(s, b"STARTTLS\r\n", b"220 go\r\n")
    s.proto.connectionLost(Failure(ConnectionLost("handshake failed")))
    failure_of(d1, SMTPTLSError)
    failure_of(d2, SMTPServerDisconnected)
    nothing_written(s)
