"""
End-to-end tests: :class:`txsmtpclient.SMTP` and the one-shot
:func:`txsmtpclient.sendmail` against a real aiosmtpd server on loopback
(see ``servers.py``), comparing what arrives byte for byte.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
import pytest_twisted
from servers import AiosmtpdServer, ServerScript
from twisted.internet.error import ConnectionRefusedError as TwistedConnectionRefused
from twisted.internet.protocol import Factory, Protocol

import txsmtpclient
from txsmtpclient import SMTP
from txsmtpclient.errors import SMTPRecipientsRefused, SMTPServerDisconnected

SENDER = "sender@example.test"
RECIPIENT = "rcpt@example.test"


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


def _wire(message: bytes) -> bytes:
    """What the server should record: CRLF line ends, ending in CRLF unless empty."""
    normalised = re.sub(rb"\r\n|\r|\n", b"\r\n", message)
    if normalised and not normalised.endswith(b"\r\n"):
        normalised += b"\r\n"
    return normalised


def _big_message(size: int) -> bytes:
    """A message of about ``size`` bytes with "." lines and mixed endings throughout."""
    lines = []
    endings = [b"\n", b"\r\n", b"\r"]
    i = 0
    total = 0
    while total < size:
        if i % 7 == 0:
            line = b"."
        elif i % 11 == 0:
            line = b".." + b"d" * (i % 50)
        else:
            line = b"line %d " % i + b"x" * (i % 70)
        line += endings[i % 3]
        lines.append(line)
        total += len(line)
        i += 1
    return b"".join(lines)


def _dot_at(offset: int) -> bytes:
    """A message whose lone "." line starts exactly at ``offset``."""
    head = (b"y" * 75 + b"\n") * (offset // 76)
    head += b"z" * (offset - len(head) - 1) + b"\n"
    assert len(head) == offset
    return head + b".\nQUIT\n.\r\n..\rlast"


MESSAGES = {
    "dots everywhere": (
        b".first\n..second\n.\nmiddle\r\n.\r\n.x\r.y\r...\rend.\n. \n.\t\nSubject: x\r\n\r\n.\r\n"
    ),
    "mixed line endings": b"a\nb\r\nc\rd\n\re\r\r\nf\n\ng",
    "empty": b"",
    "no final newline": b"Subject: x\r\n\r\nbody",
    "lone dot line": b".",
    "8-bit": b"Subject: caf\xc3\xa9\n\n\xff\xfe\n",
    "dot at the 256 KiB chunk boundary": _dot_at(256 * 1024),
    "dot one past the 256 KiB chunk boundary": _dot_at(256 * 1024 + 1),
    "5 MB": _big_message(5 * 1024 * 1024),
}


async def _send(server: AiosmtpdServer, message: bytes, recipients: Any = RECIPIENT) -> Any:
    smtp = SMTP(local_hostname="client.example", reactor=_reactor())
    await smtp.connect(server.host, server.port)
    try:
        return await smtp.sendmail(SENDER, recipients, message)
    finally:
        await smtp.quit()


@pytest.mark.parametrize("name", list(MESSAGES))
@pytest_twisted.ensureDeferred  # type: ignore[untyped-decorator]
async def test_message_arrives_byte_exact(smtp_server: AiosmtpdServer, name: str) -> None:
    """What the server records is the message with CRLF line ends, dots unstuffed by it."""
    message = MESSAGES[name]
    refused = await _send(smtp_server, message)
    assert refused == {}
    (record,) = await smtp_server.when_messages(1, reactor=_reactor())
    assert record.content == _wire(message)
    assert record.mail_from == SENDER
    assert record.rcpt_tos == (RECIPIENT,)
    assert record.helo == "client.example"
    assert record.esmtp
    assert record.mail_arg.startswith(f"FROM:<{SENDER}> SIZE=")


@pytest_twisted.ensureDeferred  # type: ignore[untyped-decorator]
async def test_pipelined_dialogue_bytes(smtp_server: AiosmtpdServer) -> None:
    """The server sees EHLO, then MAIL, RCPT and DATA together, the message, QUIT."""
    await _send(smtp_server, b"hi\n", [RECIPIENT, "other@example.test"])
    await smtp_server.when_connections_closed(reactor=_reactor())
    (connection,) = smtp_server.connections()
    assert bytes(connection.received) == (
        b"EHLO client.example\r\n"
        b"MAIL FROM:<sender@example.test> SIZE=4\r\n"
        b"RCPT TO:<rcpt@example.test>\r\nRCPT TO:<other@example.test>\r\nDATA\r\n"
        b"hi\r\n.\r\nQUIT\r\n"
    )


@pytest_twisted.ensureDeferred  # type: ignore[untyped-decorator]
async def test_partial_refusal(smtp_server_factory: Any) -> None:
    """One recipient refused: the others get the message, the refusal is returned."""
    server = smtp_server_factory(
        ServerScript(refuse_recipients={"bad@example.test": "550 5.1.1 no such user"})
    )
    refused = await _send(server, b"hi", ["bad@example.test", RECIPIENT])
    assert refused == {"bad@example.test": (550, b"5.1.1 no such user")}
    (record,) = await server.when_messages(1, reactor=_reactor())
    assert record.rcpt_tos == (RECIPIENT,)


@pytest_twisted.ensureDeferred  # type: ignore[untyped-decorator]
async def test_total_refusal_then_next_message(smtp_server_factory: Any) -> None:
    """Every recipient refused: SMTPRecipientsRefused; the same session then sends another."""
    server = smtp_server_factory(
        ServerScript(refuse_recipients={"bad@example.test": "550 5.1.1 no such user"})
    )
    smtp = SMTP(local_hostname="client.example", reactor=_reactor())
    await smtp.connect(server.address)
    with pytest.raises(SMTPRecipientsRefused) as info:
        await smtp.sendmail(SENDER, ["bad@example.test"], b"first")
    assert info.value.recipients == {"bad@example.test": (550, b"5.1.1 no such user")}
    assert await smtp.sendmail(SENDER, [RECIPIENT], b"second") == {}
    await smtp.quit()
    (record,) = await server.when_messages(1, reactor=_reactor())
    assert record.content == b"second\r\n"


@pytest_twisted.ensureDeferred  # type: ignore[untyped-decorator]
async def test_helo_fallback(smtp_server_factory: Any) -> None:
    """A server refusing EHLO gets HELO and a MAIL without any ESMTP option."""
    server = smtp_server_factory(ServerScript(refuse_ehlo=True))
    await _send(server, b"hi")
    (record,) = await server.when_messages(1, reactor=_reactor())
    assert not record.esmtp
    assert record.mail_arg == f"FROM:<{SENDER}>"
    assert record.content == b"hi\r\n"


@pytest_twisted.ensureDeferred  # type: ignore[untyped-decorator]
async def test_one_shot_sendmail(smtp_server: AiosmtpdServer) -> None:
    """txsmtpclient.sendmail connects, sends, and quits."""
    refused = await txsmtpclient.sendmail(
        smtp_server.address,
        SENDER,
        [RECIPIENT],
        "Subject: one shot\n\nhello\n",
        local_hostname="client.example",
        reactor=_reactor(),
    )
    assert refused == {}
    (record,) = await smtp_server.when_messages(1, reactor=_reactor())
    assert record.content == b"Subject: one shot\r\n\r\nhello\r\n"
    await smtp_server.when_connections_closed(reactor=_reactor())
    (connection,) = smtp_server.connections()
    assert bytes(connection.received).endswith(b"QUIT\r\n")


@pytest_twisted.ensureDeferred  # type: ignore[untyped-decorator]
async def test_one_shot_with_port_argument(smtp_server: AiosmtpdServer) -> None:
    """The one-shot helper takes host and port separately too."""
    await txsmtpclient.sendmail(
        "127.0.0.1",
        SENDER,
        RECIPIENT,
        b"x",
        port=smtp_server.port,
        local_hostname="client.example",
        reactor=_reactor(),
    )
    assert len(await smtp_server.when_messages(1, reactor=_reactor())) == 1


class _HangUpAfterMail(Protocol):
    """Greets, answers EHLO, then closes the connection when MAIL arrives."""

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(b"220 hangup.test ESMTP\r\n")
        self.buffer = b""

    def dataReceived(self, data: bytes) -> None:
        assert self.transport is not None
        self.buffer += data
        while b"\r\n" in self.buffer:
            line, self.buffer = self.buffer.split(b"\r\n", 1)
            if line.startswith(b"EHLO"):
                self.transport.write(b"250-hangup.test\r\n250 8BITMIME\r\n")
            elif line.startswith(b"MAIL"):
                self.transport.loseConnection()
                return


@pytest_twisted.ensureDeferred  # type: ignore[untyped-decorator]
async def test_server_closes_mid_dialogue() -> None:
    """A server hanging up after MAIL: sendmail and the queued quit both fail."""
    reactor = _reactor()
    port = reactor.listenTCP(0, Factory.forProtocol(_HangUpAfterMail), interface="127.0.0.1")
    try:
        smtp = SMTP(
            f"127.0.0.1:{port.getHost().port}", local_hostname="client.example", reactor=reactor
        )
        sending = smtp.sendmail(SENDER, RECIPIENT, b"hi")
        quitting = smtp.quit()
        with pytest.raises(SMTPServerDisconnected):
            await sending
        with pytest.raises(SMTPServerDisconnected):
            await quitting
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred  # type: ignore[untyped-decorator]
async def test_connect_refused() -> None:
    """Connecting to a closed port fails with SMTPServerDisconnected; later calls name it."""
    reactor = _reactor()
    port = reactor.listenTCP(0, Factory.forProtocol(Protocol), interface="127.0.0.1")
    number = port.getHost().port
    await port.stopListening()
    smtp = SMTP(local_hostname="client.example", reactor=reactor)
    connecting = smtp.connect("127.0.0.1", number)
    sending = smtp.sendmail(SENDER, RECIPIENT, b"hi")
    with pytest.raises(SMTPServerDisconnected) as refused:
        await connecting
    assert isinstance(refused.value.__cause__, (ConnectionRefusedError, TwistedConnectionRefused))
    with pytest.raises(SMTPServerDisconnected, match="connect"):
        await sending
