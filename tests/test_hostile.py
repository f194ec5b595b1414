"""
Hostile and broken servers (issue 3, point 11).

A small scripted Twisted server on loopback plays a man in the middle: it
injects a reply right after its STARTTLS 220 in the same segment, strips
STARTTLS from its EHLO reply, fails the handshake, or sends a reply over the
length limit.  An unsolicited 421 at every stage is played in memory, where
every byte the client writes is seen.  Each case must end with a clear
exception, a closed connection, and no command that should not have been
sent.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, cast

import pytest
import pytest_twisted
from servers import TLSFiles
from test_esmtp_inmemory import (
    EHLO_PIPELINING,
    EHLO_PLAIN,
    EHLO_STARTTLS,
    HELLO,
    FakeTLSOptions,
    Session,
    TLSEndpoint,
    failure_of,
    result_of,
    session,
    step,
)
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IListeningPort,
    IOpenSSLClientConnectionCreator,
    IProtocol,
)
from twisted.internet.protocol import Factory, ServerFactory
from twisted.internet.ssl import (
    Certificate,
    DefaultOpenSSLContextFactory,
    optionsForClientTLS,
)
from twisted.internet.testing import MemoryReactorClock
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure

from txsmtpclient import SMTP
from txsmtpclient.errors import (
    SMTPAuthenticationError,
    SMTPConnectError,
    SMTPDataError,
    SMTPException,
    SMTPProtocolError,
    SMTPRecipientsRefused,
    SMTPSenderRefused,
    SMTPServerDisconnected,
    SMTPTLSError,
)

CLOSING = b"421 4.3.2 Service shutting down, closing channel\r\n"
MESSAGE = b"Subject: hostile\r\n\r\nbody\r\n"


# -- a scripted Twisted server --------------------------------------------------------


class HostileServer(LineReceiver):
    """
    One server connection: greets, records every line it receives (after
    STARTTLS, decrypted) and lets the test's ``respond`` answer each.
    """

    delimiter = b"\r\n"
    MAX_LENGTH = 1 << 20

    def __init__(self, factory: HostileFactory) -> None:
        self.factory = factory
        self.lines: list[bytes] = []
        self.in_data = False
        self.tls = False
        self.lost: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        self.factory.connections.append(self)
        assert self.transport is not None
        self.transport.write(b"220 hostile.test ESMTP\r\n")

    def lineReceived(self, line: bytes) -> None:
        if self.in_data:
            if line == b".":
                self.in_data = False
                self.reply(b"250 2.0.0 queued")
            return
        self.lines.append(line)
        self.factory.respond(self, line)

    def reply(self, *lines: bytes) -> None:
        assert self.transport is not None
        self.transport.write(b"".join(line + b"\r\n" for line in lines))

    def start_tls(self, before: bytes = b"") -> None:
        """
        Say 220 to STARTTLS, with ``before`` in the same write, then start TLS.
        """
        assert self.transport is not None
        self.transport.write(b"220 2.0.0 Ready to start TLS\r\n" + before)
        self.transport.startTLS(self.factory.tls_options)  # type: ignore[attr-defined]
        self.tls = True

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.lost.callback(None)


def ordinary(server: HostileServer, line: bytes) -> None:
    """A well-behaved server: STARTTLS on offer before TLS, accepts mail."""
    verb = line.split(b" ", 1)[0].upper()
    if verb == b"EHLO":
        features = [b"250-hostile.test", b"250-PIPELINING"]
        features += [b"250 8BITMIME"] if server.tls else [b"250 STARTTLS"]
        server.reply(*features)
    elif verb == b"STARTTLS":
        server.start_tls()
    elif verb in (b"MAIL", b"RCPT", b"RSET", b"NOOP"):
        server.reply(b"250 2.0.0 ok")
    elif verb == b"DATA":
        server.in_data = True
        server.reply(b"354 go ahead")
    elif verb == b"QUIT":
        server.reply(b"221 2.0.0 bye")
        assert server.transport is not None
        server.transport.loseConnection()
    else:
        server.reply(b"502 5.5.2 what")


Responder = Callable[[HostileServer, bytes], None]


class HostileFactory(Factory):
    def __init__(self, tls_options: Any) -> None:
        self.tls_options = tls_options
        self.respond: Responder = ordinary
        self.connections: list[HostileServer] = []

    def buildProtocol(self, addr: Any) -> HostileServer:
        return HostileServer(self)


class Hostile:
    """The listening scripted server, for one test."""

    def __init__(self, factory: HostileFactory, port: IListeningPort) -> None:
        self.factory = factory
        self.port = port

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port.getHost().port}"  # type: ignore[attr-defined]

    def script(self, respond: Responder) -> None:
        self.factory.respond = respond

    @property
    def server(self) -> HostileServer:
        [connection] = self.factory.connections
        return connection


@pytest.fixture
def hostile(tls_files: TLSFiles) -> Iterator[Hostile]:
    """A scripted server on 127.0.0.1 offering STARTTLS with the test certificate."""
    from twisted.internet import reactor

    factory = HostileFactory(
        DefaultOpenSSLContextFactory(str(tls_files.key_path), str(tls_files.cert_path))
    )
    port = reactor.listenTCP(0, cast(ServerFactory, factory), interface="127.0.0.1")
    try:
        yield Hostile(factory, port)
    finally:
        for connection in factory.connections:
            if connection.transport is not None:
                connection.transport.abortConnection()  # type: ignore[attr-defined]
        pytest_twisted.blockon(port.stopListening())


def trusting(tls_files: TLSFiles) -> IOpenSSLClientConnectionCreator:
    return optionsForClientTLS("127.0.0.1", trustRoot=Certificate.loadPEM(tls_files.cert_pem))


def client(**kwargs: Any) -> SMTP:
    return SMTP(local_hostname="client.test", timeout=10, **kwargs)


# -- STARTTLS attacks, over a real socket ----------------------------------------------


@pytest.mark.parametrize(
    "injected",
    [
        b"250-evil.test\r\n250-AUTH PLAIN\r\n250 SIZE 10\r\n",
        b"250 2.0.0 ok\r\n250 2.0.0 ok\r\n250 2.0.0 ok\r\n354 go\r\n",
        CLOSING,
        b"250-partial line without an e",
    ],
)
@pytest_twisted.ensureDeferred  # type: ignore[untyped-decorator]
async def test_reply_injected_after_starttls_220_is_discarded(
    hostile: Hostile, tls_files: TLSFiles, injected: bytes
) -> None:
    """
    Bytes sent in the clear after the 220, in the same segment, are never
    read as replies: the features come from the EHLO over TLS and the mail
    goes through.
    """

    def respond(server: HostileServer, line: bytes) -> None:
        if line == b"STARTTLS":
            server.start_tls(before=injected)
        else:
            ordinary(server, line)

    hostile.script(respond)
    smtp = client(tls="required", tls_options=trusting(tls_files))
    await smtp.connect(hostile.address)
    assert await smtp.sendmail("a@example.org", ["b@example.test"], MESSAGE) == {}
    # Exactly the reply to the EHLO sent over TLS.
    assert smtp.ehlo_resp == b"hostile.test\nPIPELINING\n8BITMIME"
    assert set(smtp.esmtp_features) == {"pipelining", "8bitmime"}
    await smtp.quit()
    server = hostile.server
    await server.lost
    assert (
        server.lines
        == [
            b"EHLO client.test",
            b"STARTTLS",
            b"EHLO client.test",
            b"MAIL FROM:<a@example.org>",
            b"RCPT TO:<b@example.test>",
            b"DATA",
            b"QUIT",
        ][: len(server.lines)]
    )
    assert server.lines[3].startswith(b"MAIL FROM:")


@pytest_twisted.ensureDeferred  # type: ignore[untyped-decorator]
async def test_stripped_starttls_under_required(hostile: Hostile, tls_files: TLSFiles) -> None:
    """
    A man in the middle removes STARTTLS from the EHLO reply: under
    tls="required" the client fails with SMTPTLSError and sends nothing more.
    """

    def respond(server: HostileServer, line: bytes) -> None:
        if line.startswith(b"EHLO"):
            server.reply(b"250-hostile.test", b"250-AUTH PLAIN LOGIN", b"250 PIPELINING")
        else:
            ordinary(server, line)

    hostile.script(respond)
    smtp = client(tls="required", tls_options=trusting(tls_files), allow_plaintext_auth=False)
    await smtp.connect(hostile.address)
    with pytest.raises(SMTPTLSError):
        await smtp.sendmail("a@example.org", ["b@example.test"], MESSAGE)
    with pytest.raises(SMTPServerDisconnected):
        await smtp.login("user", "password")
    server = hostile.server
    await server.lost
    assert server.lines == [b"EHLO client.test"]


@pytest.mark.parametrize("how", ["untrusted", "garbage", "close"])
@pytest_twisted.ensureDeferred  # type: ignore[untyped-decorator]
async def test_handshake_failure(hostile: Hostile, tls_files: TLSFiles, how: str) -> None:
    """
    A handshake that fails (a certificate the client does not trust,
    plaintext instead of TLS, or a hang-up after the 220) gives SMTPTLSError
    under every policy that tried, and nothing is sent after STARTTLS.
    """

    def respond(server: HostileServer, line: bytes) -> None:
        if line == b"STARTTLS" and how == "garbage":
            server.reply(b"220 go ahead")
            server.setRawMode()  # type: ignore[no-untyped-call]
        elif line == b"STARTTLS" and how == "close":
            server.reply(b"220 go ahead")
            assert server.transport is not None
            server.transport.loseConnection()
        else:
            ordinary(server, line)

    def raw(data: bytes) -> None:
        # The client's ClientHello arrives; answer in plain text.
        server = hostile.server
        assert server.transport is not None
        server.transport.write(b"250 this is not TLS\r\n")

    hostile.script(respond)
    options = optionsForClientTLS("127.0.0.1") if how == "untrusted" else trusting(tls_files)
    smtp = client(tls_options=options)
    await smtp.connect(hostile.address)
    if how == "garbage":
        hostile.server.rawDataReceived = raw  # type: ignore[method-assign]
    with pytest.raises(SMTPTLSError):
        await smtp.sendmail("a@example.org", ["b@example.test"], MESSAGE)
    server = hostile.server
    await server.lost
    assert server.lines == [b"EHLO client.test", b"STARTTLS"]
    with pytest.raises(SMTPServerDisconnected):
        await smtp.noop()


@pytest.mark.parametrize(
    "reply",
    [
        b"250 " + b"x" * 20000 + b"\r\n",
        b"".join(b"250-" + b"y" * 8000 + b"\r\n" for _ in range(40)) + b"250 end\r\n",
    ],
    ids=["line", "reply"],
)
@pytest_twisted.ensureDeferred  # type: ignore[untyped-decorator]
async def test_reply_over_length_limit(hostile: Hostile, reply: bytes) -> None:
    """A reply line or whole reply over the limit: SMTPProtocolError, dropped."""

    def respond(server: HostileServer, line: bytes) -> None:
        if line.startswith(b"EHLO"):
            assert server.transport is not None
            server.transport.write(reply)
        else:
            ordinary(server, line)

    hostile.script(respond)
    smtp = client(tls="never")
    await smtp.connect(hostile.address)
    with pytest.raises(SMTPProtocolError, match="limit"):
        await smtp.sendmail("a@example.org", ["b@example.test"], MESSAGE)
    server = hostile.server
    await server.lost
    assert server.lines == [b"EHLO client.test"]


@pytest_twisted.ensureDeferred  # type: ignore[untyped-decorator]
async def test_unsolicited_421_over_a_socket(hostile: Hostile) -> None:
    """An unsolicited 421 on an idle session: the next call fails, nothing sent."""
    received: Deferred[None] = Deferred()

    def respond(server: HostileServer, line: bytes) -> None:
        ordinary(server, line)
        if line.startswith(b"EHLO"):
            server.reply(CLOSING.rstrip(b"\r\n"))
            received.callback(None)

    hostile.script(respond)
    smtp = client(tls="never")
    await smtp.connect(hostile.address)
    # EHLO's reply and the 421 leave in one segment or two: either way the
    # 421 is no reply to anything the client asked.
    await smtp.ehlo()
    await received
    server = hostile.server
    await server.lost
    with pytest.raises(SMTPServerDisconnected):
        await smtp.sendmail("a@example.org", ["b@example.test"], MESSAGE)
    assert server.lines == [b"EHLO client.test"]


# -- an unsolicited 421 at each stage, in memory ----------------------------------------


def closed_and_silent(s: Session) -> None:
    """The client closed the connection and wrote nothing more."""
    assert s.transport.writes == [], s.transport.writes
    assert s.transport.disconnecting
    assert not s.proto.usable


def test_421_greeting() -> None:
    """A 421 greeting: SMTPConnectError 421, closed, nothing written."""
    clock = MemoryReactorClock()
    endpoint = TLSEndpoint()
    smtp = SMTP(local_hostname="client.example", reactor=clock)
    d = smtp.connect(endpoint)
    assert endpoint.protocol is not None
    cast(IProtocol, endpoint.protocol).dataReceived(CLOSING)
    e = failure_of(d, SMTPConnectError)
    assert e.smtp_code == 421 and e.temporary
    assert endpoint.transport.writes == []
    assert endpoint.transport.disconnecting
    failure_of(smtp.sendmail("a@x", ["b@y"], MESSAGE), SMTPServerDisconnected)
    assert endpoint.transport.writes == []


def test_421_while_idle_after_ehlo() -> None:
    """A 421 nobody asked for: the connection closes; later calls write nothing."""
    s = session(tls="never")
    d = s.smtp.ehlo()
    step(s, HELLO, EHLO_PLAIN)
    assert result_of(d).code == 250
    s.feed(CLOSING)
    assert s.transport.disconnecting
    e = failure_of(s.smtp.sendmail("a@x", ["b@y"], MESSAGE), SMTPServerDisconnected)
    assert "closing" in str(e)
    assert s.transport.writes == []


def test_421_to_ehlo() -> None:
    """EHLO answered 421: no HELO fallback, no MAIL."""
    s = session(tls="never")
    d = s.smtp.sendmail("a@x", ["b@y"], MESSAGE)
    step(s, HELLO, CLOSING)
    e = failure_of(d, SMTPException)
    assert e.temporary
    closed_and_silent(s)


def test_421_to_starttls() -> None:
    """STARTTLS answered 421: no TLS, no MAIL, under either policy."""
    for policy in ("required", "opportunistic"):
        s = session(tls=policy, tls_options=FakeTLSOptions())
        d = s.smtp.sendmail("a@x", ["b@y"], MESSAGE)
        step(s, HELLO, EHLO_STARTTLS)
        step(s, b"STARTTLS\r\n", CLOSING)
        e = failure_of(d, SMTPServerDisconnected)
        assert e.temporary
        assert s.transport.tls_started == []
        closed_and_silent(s)


def test_421_to_auth() -> None:
    """AUTH answered 421: SMTPAuthenticationError 421, closed."""
    s = session(tls="never", allow_plaintext_auth=True)
    d = s.smtp.login("user", "pw", "PLAIN")
    step(s, HELLO, b"250-mx\r\n250 AUTH PLAIN\r\n")
    s.take()
    s.feed(CLOSING)
    e = failure_of(d, SMTPAuthenticationError)
    assert e.smtp_code == 421 and e.temporary
    closed_and_silent(s)


def test_421_to_mail() -> None:
    """MAIL answered 421: SMTPSenderRefused 421; no RCPT, no RSET."""
    s = session(tls="never")
    d = s.smtp.sendmail("a@x", ["b@y"], MESSAGE)
    step(s, HELLO, EHLO_PLAIN)
    step(s, b"MAIL FROM:<a@x> SIZE=%d\r\n" % len(MESSAGE), CLOSING)
    e = failure_of(d, SMTPSenderRefused)
    assert e.smtp_code == 421 and e.temporary
    closed_and_silent(s)


def test_421_to_rcpt() -> None:
    """The first RCPT answered 421: no second RCPT, no DATA, no RSET."""
    s = session(tls="never")
    d = s.smtp.sendmail("a@x", ["b@y", "c@y"], MESSAGE)
    step(s, HELLO, EHLO_PLAIN)
    step(s, b"MAIL FROM:<a@x> SIZE=%d\r\n" % len(MESSAGE), b"250 ok\r\n")
    step(s, b"RCPT TO:<b@y>\r\n", CLOSING)
    e = failure_of(d, SMTPException)
    assert e.temporary
    closed_and_silent(s)


def test_421_to_only_rcpt() -> None:
    """The only RCPT answered 421: SMTPRecipientsRefused with that reply."""
    s = session(tls="never")
    d = s.smtp.sendmail("a@x", ["b@y"], MESSAGE)
    step(s, HELLO, EHLO_PLAIN)
    step(s, b"MAIL FROM:<a@x> SIZE=%d\r\n" % len(MESSAGE), b"250 ok\r\n")
    step(s, b"RCPT TO:<b@y>\r\n", CLOSING)
    e = failure_of(d, SMTPRecipientsRefused)
    assert e.recipients["b@y"].code == 421 and e.temporary
    closed_and_silent(s)


def test_421_to_data() -> None:
    """DATA answered 421: SMTPDataError 421 and not a byte of the message."""
    s = session(tls="never")
    d = s.smtp.sendmail("a@x", ["b@y"], MESSAGE)
    step(s, HELLO, EHLO_PLAIN)
    step(s, b"MAIL FROM:<a@x> SIZE=%d\r\n" % len(MESSAGE), b"250 ok\r\n")
    step(s, b"RCPT TO:<b@y>\r\n", b"250 ok\r\n")
    step(s, b"DATA\r\n", CLOSING)
    e = failure_of(d, SMTPDataError)
    assert e.smtp_code == 421 and e.temporary
    closed_and_silent(s)


def test_421_after_the_dot() -> None:
    """The final dot answered 421: SMTPDataError 421; no RSET, no QUIT."""
    s = session(tls="never")
    d = s.smtp.sendmail("a@x", ["b@y"], MESSAGE)
    step(s, HELLO, EHLO_PLAIN)
    step(s, b"MAIL FROM:<a@x> SIZE=%d\r\n" % len(MESSAGE), b"250 ok\r\n")
    step(s, b"RCPT TO:<b@y>\r\n", b"250 ok\r\n")
    step(s, b"DATA\r\n", b"354 go\r\n")
    step(s, MESSAGE + b".\r\n", CLOSING)
    e = failure_of(d, SMTPDataError)
    assert e.smtp_code == 421 and e.temporary
    closed_and_silent(s)
    failure_of(s.smtp.quit(), SMTPServerDisconnected)
    assert s.transport.writes == []


def test_421_to_pipelined_mail() -> None:
    """
    In a pipelined batch, MAIL answered 421 (and nothing else): the client
    fails and never sends the message, though its DATA was already out.
    """
    s = session(tls="never")
    d = s.smtp.sendmail("a@x", ["b@y"], MESSAGE)
    step(s, HELLO, EHLO_PIPELINING)
    step(
        s,
        b"MAIL FROM:<a@x> SIZE=%d\r\nRCPT TO:<b@y>\r\nDATA\r\n" % len(MESSAGE),
        CLOSING,
    )
    e = failure_of(d, SMTPException)
    assert e.temporary
    closed_and_silent(s)


def test_421_in_the_middle_of_a_pipelined_batch() -> None:
    """RCPT answered 421 in a batch: the DATA 354 that follows is not acted on."""
    s = session(tls="never")
    d = s.smtp.sendmail("a@x", ["b@y", "c@y"], MESSAGE)
    step(s, HELLO, EHLO_PIPELINING)
    step(
        s,
        b"MAIL FROM:<a@x> SIZE=%d\r\nRCPT TO:<b@y>\r\nRCPT TO:<c@y>\r\nDATA\r\n" % len(MESSAGE),
        b"250 ok\r\n" + CLOSING + b"250 ok\r\n354 go\r\n",
    )
    e = failure_of(d, SMTPException)
    assert e.temporary
    closed_and_silent(s)


def test_421_during_bdat() -> None:
    """A BDAT chunk answered 421: no further chunk, no RSET."""
    from txsmtpclient._body import CHUNK_SIZE

    s = session(tls="never")
    d = s.smtp.sendmail("a@x", ["b@y"], b"z" * (CHUNK_SIZE * 2))
    step(s, HELLO, b"250-mx\r\n250 CHUNKING\r\n")
    step(s, b"MAIL FROM:<a@x>\r\n", b"250 ok\r\n")
    step(s, b"RCPT TO:<b@y>\r\n", b"250 ok\r\n")
    assert s.take().startswith(b"BDAT %d\r\n" % CHUNK_SIZE)
    s.feed(CLOSING)
    e = failure_of(d, SMTPException)
    assert e.temporary
    closed_and_silent(s)


def test_reply_line_over_limit_in_memory() -> None:
    """A reply line over the limit, even unfinished, fails and aborts at once."""
    s = session(tls="never")
    d = s.smtp.ehlo()
    assert s.take() == HELLO
    s.feed(b"250-" + b"x" * 9000)
    e = failure_of(d, SMTPProtocolError)
    assert "limit" in str(e)
    assert s.transport.disconnected  # aborted, not closed politely
    assert s.transport.writes == []
