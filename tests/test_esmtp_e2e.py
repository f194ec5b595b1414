"""
End-to-end tests of the ESMTP features (issue 3) against a real aiosmtpd
server on loopback (``servers.py``): STARTTLS with certificate checks and the
TLS policy, implicit TLS, AUTH with every mechanism, SIZE, 8BITMIME,
SMTPUTF8, DSN, CHUNKING, ``send_message`` and the one-shot helpers.

The server records every byte each connection sent, decrypted after
STARTTLS, so the tests can say exactly what was (and was not) sent.
"""

from __future__ import annotations

import base64
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from conftest import ServerFactory
from servers import AiosmtpdServer, ServerScript, TLSFiles
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.internet.ssl import Certificate, optionsForClientTLS
from twisted.logger import capturedLogs, formatEvent

import txsmtpclient
from txsmtpclient import SMTP, SMTP_SSL
from txsmtpclient.errors import (
    SMTPAuthenticationError,
    SMTPNotSupportedError,
    SMTPSenderRefused,
    SMTPServerDisconnected,
    SMTPTLSError,
)

SENDER = "sender@example.org"
RECIPIENT = "rcpt@example.test"
HELLO = b"EHLO client.test\r\n"
MESSAGE = (
    b"From: sender@example.org\r\n"
    b"To: rcpt@example.test\r\n"
    b"Subject: esmtp\r\n"
    b"\r\n"
    b".a line starting with a dot\r\n"
    b"..two dots\r\n"
    b"last line\r\n"
)
CREDENTIALS = {"alice": "correct horse battery staple"}


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


def trusting(tls: TLSFiles, name: str = "127.0.0.1") -> IOpenSSLClientConnectionCreator:
    """Client options that trust only the test certificate, checking ``name``."""
    return optionsForClientTLS(name, trustRoot=Certificate.loadPEM(tls.cert_pem))


def smtp(**kwargs: Any) -> SMTP:
    return SMTP(local_hostname="client.test", timeout=10, **kwargs)


async def received(server: AiosmtpdServer) -> list[bytes]:
    """Every connection's bytes, once each is closed."""
    await server.when_connections_closed(reactor=_reactor())
    return [bytes(c.received) for c in server.connections()]


# -- STARTTLS (RFC 3207) --------------------------------------------------------


@pytest_twisted.ensureDeferred  # type: ignore[untyped-decorator]
async def test_starttls_untrusted_certificate_fails_closed(
    smtp_server_factory: ServerFactory, tls_files: TLSFiles
) -> None:
    """
    Certificates are verified by default: a self-signed one gives
    SMTPTLSError, and nothing is sent after STARTTLS.
    """
    server = smtp_server_factory(tls=tls_files)
    client = smtp()
    await client.connect(server.address)
    with pytest.raises(SMTPTLSError):
        await client.sendmail(SENDER, [RECIPIENT], MESSAGE)
    assert await received(server) == [HELLO + b"STARTTLS\r\n"]
    assert server.messages == []
    with pytest.raises(SMTPServerDisconnected):
        await client.noop()


@pytest_twisted.ensureDeferred  # type: ignore[untyped-decorator]
async def test_starttls_wrong_host_name_fails(
    smtp_server_factory: ServerFactory, tls_files: TLSFiles
) -> None:
    """A trusted certificate for another name fails the handshake too."""
    server = smtp_server_factory(tls=tls_files)
    client = smtp(tls_options=trusting(tls_files, "other.example"))
    await client.connect(server.address)
    with pytest.raises(SMTPTLSError):
        await client.starttls()
    assert await received(server) == [HELLO + b"STARTTLS\r\n"]


@pytest_twisted.ensureDeferred  # type: ignore[untyped-decorator]
async def test_starttls_trusted_sends_over_tls(
    smtp_server_factory: ServerFactory, tls_files: TLSFiles
) -> None:
    """
    Trusting the certificate, STARTTLS succeeds, EHLO is said again, the
    features are re-read (AUTH appears only over TLS) and the mail goes
    over TLS.
    """
    server = smtp_server_factory(ServerScript(credentials=CREDENTIALS), tls=tls_files)
    client = smtp(tls_options=trusting(tls_files))
    await client.connect(server.address)
    await client.ehlo()
    assert client.has_option("starttls") and not client.has_option("auth")
    reply = await client.starttls()
    assert reply.code == 220
    assert client.has_option("auth") and not client.has_option("starttls")
    assert await client.sendmail(SENDER, [RECIPIENT], MESSAGE) == {}
    await client.quit()
    [message] = server.messages
    assert message.tls and message.content == MESSAGE
    [conversation] = await received(server)
    assert conversation.startswith(HELLO + b"STARTTLS\r\n" + HELLO + b"MAIL FROM:")


@pytest_twisted.ensureDeferred  # type: ignore[untyped-decorator]
async def test_transaction_event_after_starttls_and_login(
    smtp_server_factory: ServerFactory, tls_files: TLSFiles
) -> None:
    """
    The transaction event names the TLS version, cipher and peer certificate,
    times the handshake and AUTH, and holds no credential.
    """
    server = smtp_server_factory(ServerScript(credentials=CREDENTIALS), tls=tls_files)
    client = smtp(tls_options=trusting(tls_files))
    client.transaction_events = True
    with capturedLogs() as events:
        await client.connect(server.address)
        await client.login("alice", CREDENTIALS["alice"], "PLAIN")
        await client.sendmail(SENDER, [RECIPIENT], MESSAGE)
        await client.quit()
    [event] = [e for e in events if e["log_namespace"] == "txsmtpclient.transaction"]
    assert event["outcome"] == "sent"
    assert event["tls_version"] in ("TLSv1.2", "TLSv1.3") and event["tls_cipher"]
    assert "CN=" in event["peer_subject"]
    assert {"connect", "greeting", "ehlo", "tls", "auth", "envelope", "final"} <= set(
        event["timings"]
    )
    codes = [r.code for r in event["replies"]]
    assert codes[0] == 220 and 235 in codes and codes[-1] == 250
    assert "correct horse" not in repr(event) and "Y29ycmVjdCBob3Jz" not in repr(event)
    assert formatEvent(event).startswith("Transaction to ")


@pytest_twisted.ensureDeferred  # type: ignore[untyped-decorator]
async def test_required_against_server_without_starttls(
    smtp_server_factory: ServerFactory,
) -> None:
    """tls="required" and no STARTTLS: SMTPTLSError, only EHLO was sent."""
    server = smtp_server_factory()
    client = smtp(tls="required")
    await client.connect(server.address)
    with pytest.raises(SMTPTLSError) as caught:
        await client.sendmail(SENDER, [RECIPIENT], MESSAGE)
    assert isinstance(caught.value, SMTPNotSupportedError)
    assert await received(server) == [HELLO]
    assert server.messages == []


@pytest_twisted.ensureDeferred  # type: ignore[untyped-decorator]
async def test_required_with_starttls_sends_over_tls(
    smtp_server_factory: ServerFactory, tls_files: TLSFiles
) -> None:
    """tls="required" and STARTTLS offered: the mail goes over TLS."""
    server = smtp_server_factory(tls=tls_files)
    client = smtp(tls="required", tls_options=trusting(tls_files))
    await client.connect(server.address)
    await client.sendmail(SENDER, [RECIPIENT], MESSAGE)
    await client.quit()
    assert [m.tls for m in server.messages] == [True]


@pytest.mark.parametrize(("offered", "tls"), [(True, True), (False, False)])
@pytest_twisted.ensureDeferred  # type: ignore[untyped-decorator]
async def test_opportunistic_uses_starttls_when_offered(
    smtp_server_factory: ServerFactory, tls_files: TLSFiles, offered: bool, tls: bool
) -> None:
    """tls="opportunistic" (the default) upgrades when offered, goes on when not."""
    server = smtp_server_factory(tls=tls_files if offered else None)
    client = smtp(tls_options=trusting(tls_files))
    await client.connect(server.address)
    await client.sendmail(SENDER, [RECIPIENT], MESSAGE)
    await client.quit()
    assert [m.tls for m in server.messages] == [tls]
    [conversation] = await received(server)
    assert (b"STARTTLS\r\n" in conversation) is offered


@pytest_twisted.ensureDeferred  # type: ignore[untyped-decorator]
async def test_never_does_not_send_starttls(
    smtp_server_factory: ServerFactory, tls_files: TLSFiles
) -> None:
    """tls="never" stays in the clear although STARTTLS is offered."""
    server = smtp_server_factory(tls=tls_files)
    client = smtp(tls="never")
    await client.connect(server.address)
    await client.sendmail(SENDER, [RECIPIENT], MESSAGE)
    await client.quit()
    assert [m.tls for m in server.messages] == [False]
    [conversation] = await received(server)
    assert b"STARTTLS" not in conversation


# -- implicit TLS (RFC 8314) ---------------------------------------------------------


@pytest_twisted.ensureDeferred  # type: ignore[untyped-decorator]
async def test_smtp_ssl_implicit_tls(
    smtp_server_factory: ServerFactory, tls_files: TLSFiles
) -> None:
    """SMTP_SSL talks TLS from the first byte; login needs no plaintext permission."""
    server = smtp_server_factory(
        ServerScript(credentials=CREDENTIALS),
        tls=tls_files,
        implicit_tls=True,
        auth_require_tls=False,
    )
    client = SMTP_SSL(local_hostname="client.test", timeout=10, context=trusting(tls_files))
    greeting = await client.connect(server.host, server.port)
    assert greeting.code == 220
    assert (await client.login("alice", CREDENTIALS["alice"])).code == 235
    await client.sendmail(SENDER, [RECIPIENT], MESSAGE)
    await client.quit()
    [message] = server.messages
    assert message.tls and message.auth_login == b"alice"
    [conversation] = await received(server)
    assert b"STARTTLS" not in conversation


@pytest_twisted.ensureDeferred  # type: ignore[untyped-decorator]
async def test_smtp_ssl_untrusted_certificate_fails(
    smtp_server_factory: ServerFactory, tls_files: TLSFiles
) -> None:
    """SMTP_SSL verifies by default: the self-signed certificate is refused."""
    server = smtp_server_factory(tls=tls_files, implicit_tls=True)
    client = SMTP_SSL(local_hostname="client.test", timeout=10)
    with pytest.raises(SMTPTLSError, match="certificate verify failed"):
        await client.connect(server.host, server.port)
    with pytest.raises(SMTPServerDisconnected):
        await client.noop()
    # asyncio never hands a connection whose handshake failed to aiosmtpd.
    assert [bytes(c.received) for c in server.connections()] in ([], [b""])
    assert server.messages == []


@pytest_twisted.ensureDeferred  # type: ignore[untyped-decorator]
async def test_tls_endpoint_description(
    smtp_server_factory: ServerFactory, tls_files: TLSFiles, tmp_path: Path
) -> None:
    """A "tls:" endpoint description connects with implicit TLS."""
    server = smtp_server_factory(tls=tls_files, implicit_tls=True)
    roots = tmp_path / "roots"
    roots.mkdir()
    (roots / "ca.pem").write_bytes(tls_files.cert_pem)
    client = smtp(tls="required")
    await client.connect(f"tls:127.0.0.1:{server.port}:trustRoots={roots}")
    await client.sendmail(SENDER, [RECIPIENT], MESSAGE)
    await client.quit()
    assert [m.tls for m in server.messages] == [True]


# -- AUTH (RFC 4954) ------------------------------------------------------------------


async def _login_and_send(
    server: AiosmtpdServer, tls_files: TLSFiles, mechanism: str | None, password: str
) -> bytes:
    client = smtp(tls_options=trusting(tls_files))
    await client.connect(server.address)
    try:
        reply = await client.login("alice", password, mechanism)
        assert reply.code == 235
        await client.sendmail(SENDER, [RECIPIENT], MESSAGE)
    finally:
        await client.quit()
    [conversation] = await received(server)
    return conversation


@pytest.mark.parametrize(
    ("offered", "chosen"),
    [
        (None, b"SCRAM-SHA-256"),
        (("PLAIN", "LOGIN", "CRAM-MD5"), b"CRAM-MD5"),
        (("LOGIN", "PLAIN"), b"PLAIN"),
        (("LOGIN",), b"LOGIN"),
    ],
)
@pytest_twisted.ensureDeferred  # type: ignore[untyped-decorator]
async def test_login_chooses_strongest(
    smtp_server_factory: ServerFactory,
    tls_files: TLSFiles,
    offered: tuple[str, ...] | None,
    chosen: bytes,
) -> None:
    """login() picks the strongest mechanism both sides have, and it works."""
    script = ServerScript(credentials=CREDENTIALS, auth_mechanisms=offered)
    server = smtp_server_factory(script, tls=tls_files)
    conversation = await _login_and_send(server, tls_files, None, CREDENTIALS["alice"])
    assert b"\r\nAUTH " + chosen in conversation
    assert [m.auth_login for m in server.messages] == [b"alice"]


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN", "CRAM-MD5", "SCRAM-SHA-256"])
@pytest_twisted.ensureDeferred  # type: ignore[untyped-decorator]
async def test_login_explicit_mechanism(
    smtp_server_factory: ServerFactory, tls_files: TLSFiles, mechanism: str
) -> None:
    """Each mechanism works when named."""
    server = smtp_server_factory(ServerScript(credentials=CREDENTIALS), tls=tls_files)
    conversation = await _login_and_send(server, tls_files, mechanism, CREDENTIALS["alice"])
    assert b"\r\nAUTH " + mechanism.encode() in conversation
    assert [m.auth_login for m in server.messages] == [b"alice"]


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN", "CRAM-MD5", "SCRAM-SHA-256"])
@pytest_twisted.ensureDeferred  # type: ignore[untyped-decorator]
async def test_login_wrong_password(
    smtp_server_factory: ServerFactory, tls_files: TLSFiles, mechanism: str
) -> None:
    """A wrong password fails with SMTPAuthenticationError carrying the 535."""
    server = smtp_server_factory(ServerScript(credentials=CREDENTIALS), tls=tls_files)
    client = smtp(tls_options=trusting(tls_files))
    await client.connect(server.address)
    with pytest.raises(SMTPAuthenticationError) as caught:
        await client.login("alice", "wrong", mechanism)
    assert caught.value.smtp_code == 535
    assert caught.value.enhanced_code == "5.7.8"
    # The session is still usable (RFC 4954 section 4).
    assert (await client.noop()).code == 250
    await client.quit()


@pytest_twisted.ensureDeferred  # type: ignore[untyped-decorator]
async def test_login_over_plaintext_refused_unless_allowed(
    smtp_server_factory: ServerFactory,
) -> None:
    """Without TLS, login sends nothing unless allow_plaintext_auth=True."""
    script = ServerScript(credentials=CREDENTIALS)
    server = smtp_server_factory(script, auth_require_tls=False)
    client = smtp()
    await client.connect(server.address)
    with pytest.raises(SMTPNotSupportedError):
        await client.login("alice", CREDENTIALS["alice"])
    await client.quit()

    allowed = smtp(allow_plaintext_auth=True)
    await allowed.connect(server.address)
    assert (await allowed.login("alice", CREDENTIALS["alice"])).code == 235
    await allowed.quit()
    first, second = await received(server)
    assert first == HELLO + b"QUIT\r\n"
    assert b"AUTH SCRAM-SHA-256" in second


def _scrub(event: dict[str, Any]) -> str:
    parts = [formatEvent(event)]
    for key, value in event.items():
        if key == "log_logger":
            continue
        parts.append(f"{key}={value!r}")
        parts.append(value.decode("latin-1") if isinstance(value, bytes) else str(value))
    return "\n".join(parts)


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN", "CRAM-MD5", "SCRAM-SHA-256"])
@pytest_twisted.ensureDeferred  # type: ignore[untyped-decorator]
async def test_debug_log_never_shows_credentials(
    smtp_server_factory: ServerFactory, tls_files: TLSFiles, mechanism: str
) -> None:
    """
    With set_debuglevel(2), no field of any logged event holds the password,
    the base64 of the user or password, or any AUTH payload that crossed the
    wire (taken from the server's decrypted record of the connection).
    """
    server = smtp_server_factory(ServerScript(credentials=CREDENTIALS), tls=tls_files)
    password = CREDENTIALS["alice"]
    with capturedLogs() as events:
        client = smtp(tls_options=trusting(tls_files))
        client.set_debuglevel(2)
        await client.connect(server.address)
        await client.login("alice", password, mechanism)
        await client.quit()
    [conversation] = await received(server)
    lines = conversation.split(b"\r\n")
    start = next(i for i, line in enumerate(lines) if line.startswith(b"AUTH "))
    end = lines.index(b"QUIT")
    payloads = lines[start].split()[2:] + [line for line in lines[start + 1 : end] if line]
    assert payloads, "no AUTH payload crossed the wire"
    forbidden = {password, base64.b64encode(password.encode()).decode()}
    forbidden.add(base64.b64encode(b"alice").decode())
    forbidden |= {p.decode("ascii") for p in payloads}
    texts = [_scrub(e) for e in events]
    assert any("AUTH " + mechanism in t for t in texts), "the AUTH verb was not logged"
    assert any("235" in t for t in texts)
    for text in texts:
        for secret in forbidden:
            assert secret not in text, (secret, text)


# -- SIZE, 8BITMIME, SMTPUTF8 -----------------------------------------------------


@pytest_twisted.ensureDeferred  # type: ignore[untyped-decorator]
async def test_size_limit_refused_before_mail(smtp_server_factory: ServerFactory) -> None:
    """A message over the advertised SIZE is refused with 552 before MAIL."""
    server = smtp_server_factory(data_size_limit=1000)
    client = smtp()
    await client.connect(server.address)
    with pytest.raises(SMTPSenderRefused) as caught:
        await client.sendmail(SENDER, [RECIPIENT], b"x" * 2000)
    assert caught.value.smtp_code == 552
    await client.quit()
    assert await received(server) == [HELLO + b"QUIT\r\n"]


@pytest_twisted.ensureDeferred  # type: ignore[untyped-decorator]
async def test_eight_bit_body_arrives_exactly(smtp_server_factory: ServerFactory) -> None:
    """An 8-bit message is declared BODY=8BITMIME and arrives byte for byte."""
    server = smtp_server_factory()
    body = "Subject: caf\u00e9\r\n\r\nd\u00e9j\u00e0 vu \u2603\r\n".encode() + b"\xff\r\n"
    client = smtp()
    await client.connect(server.address)
    await client.sendmail(SENDER, [RECIPIENT], body)
    await client.quit()
    [message] = server.messages
    assert "BODY=8BITMIME" in message.mail_options
    assert message.content == body


@pytest_twisted.ensureDeferred  # type: ignore[untyped-decorator]
async def test_eight_bit_without_8bitmime_sends_nothing(
    smtp_server_factory: ServerFactory,
) -> None:
    """No 8BITMIME: SMTPNotSupportedError and nothing after EHLO."""
    server = smtp_server_factory(ServerScript(hide_extensions=frozenset({"8BITMIME"})))
    client = smtp()
    await client.connect(server.address)
    with pytest.raises(SMTPNotSupportedError):
        await client.sendmail(SENDER, [RECIPIENT], b"caf\xc3\xa9\r\n")
    await client.quit()
    assert await received(server) == [HELLO + b"QUIT\r\n"]


@pytest_twisted.ensureDeferred  # type: ignore[untyped-decorator]
async def test_utf8_addresses_use_smtputf8(smtp_server_factory: ServerFactory) -> None:
    """Non-ASCII addresses go with SMTPUTF8, as UTF-8."""
    server = smtp_server_factory()
    client = smtp()
    await client.connect(server.address)
    await client.sendmail("j\u00f6rg@b\u00fccher.example", ["\u00e9l\u00e8ve@x.test"], MESSAGE)
    await client.quit()
    [message] = server.messages
    assert message.smtp_utf8
    assert message.mail_from == "j\u00f6rg@b\u00fccher.example"
    assert message.rcpt_tos == ("\u00e9l\u00e8ve@x.test",)


@pytest_twisted.ensureDeferred  # type: ignore[untyped-decorator]
async def test_utf8_address_without_smtputf8_sends_nothing(
    smtp_server_factory: ServerFactory,
) -> None:
    """No SMTPUTF8: SMTPNotSupportedError and nothing after EHLO."""
    server = smtp_server_factory(ServerScript(hide_extensions=frozenset({"SMTPUTF8"})))
    client = smtp()
    await client.connect(server.address)
    with pytest.raises(SMTPNotSupportedError):
        await client.sendmail(SENDER, ["\u00e9l\u00e8ve@x.test"], MESSAGE)
    await client.quit()
    assert await received(server) == [HELLO + b"QUIT\r\n"]


# -- DSN and enhanced codes ------------------------------------------------------------


@pytest_twisted.ensureDeferred  # type: ignore[untyped-decorator]
async def test_dsn_parameters_arrive(smtp_server_factory: ServerFactory) -> None:
    """RET, ENVID, NOTIFY and ORCPT reach the server as sent."""
    server = smtp_server_factory(ServerScript(dsn=True))
    client = smtp()
    await client.connect(server.address)
    await client.sendmail(
        SENDER,
        ["a+b@example.test"],
        MESSAGE,
        dsn_ret="FULL",
        dsn_envid="id 1",
        dsn_notify=["SUCCESS", "DELAY"],
        dsn_orcpt=True,
    )
    await client.quit()
    [message] = server.messages
    assert message.mail_arg == f"FROM:<{SENDER}> SIZE={len(MESSAGE)} RET=FULL ENVID=id+201"
    assert message.rcpt_args == (
        "TO:<a+b@example.test> NOTIFY=SUCCESS,DELAY ORCPT=rfc822;a+2Bb@example.test",
    )


@pytest_twisted.ensureDeferred  # type: ignore[untyped-decorator]
async def test_enhanced_code_from_real_server(smtp_server_factory: ServerFactory) -> None:
    """A refused recipient's reply carries its enhanced code."""
    script = ServerScript(refuse_recipients={"gone@example.test": "550 5.1.1 No such user"})
    server = smtp_server_factory(script)
    client = smtp()
    await client.connect(server.address)
    refused = await client.sendmail(SENDER, ["gone@example.test", RECIPIENT], MESSAGE)
    await client.quit()
    assert refused["gone@example.test"].enhanced_code == "5.1.1"


# -- CHUNKING (RFC 3030) -------------------------------------------------------------


@pytest.mark.parametrize("pipelining", [True, False])
@pytest_twisted.ensureDeferred  # type: ignore[untyped-decorator]
async def test_bdat_end_to_end(smtp_server_factory: ServerFactory, pipelining: bool) -> None:
    """
    Over the threshold the message goes by BDAT, in several chunks when
    large, with no dot-stuffing, and arrives exactly.
    """
    server = smtp_server_factory(ServerScript(chunking=True, pipelining=pipelining))
    small = b"Subject: x\r\n\r\n.dot\r\n..dots\r\n.\r\nend\r\n"
    large = b"".join(b".%06d line of text\r\n" % i for i in range(40000))
    client = smtp(bdat_threshold=0)
    await client.connect(server.address)
    await client.sendmail(SENDER, [RECIPIENT], small)
    await client.sendmail(SENDER, [RECIPIENT], large)
    await client.quit()
    first, second = server.messages
    assert first.content == small and first.bdat_chunks == (len(small),)
    assert second.content == large
    assert second.bdat_chunks is not None and len(second.bdat_chunks) > 1
    [conversation] = await received(server)
    assert b"\r\nDATA\r\n" not in conversation


@pytest_twisted.ensureDeferred  # type: ignore[untyped-decorator]
async def test_binarymime_end_to_end(smtp_server_factory: ServerFactory) -> None:
    """BODY=BINARYMIME sends the bytes untouched by BDAT."""
    server = smtp_server_factory(ServerScript(chunking=True))
    body = b"Content-Type: application/octet-stream\n\n\x00\x01\n.\r\xff"
    client = smtp()
    await client.connect(server.address)
    await client.sendmail(SENDER, [RECIPIENT], body, ["BODY=BINARYMIME"])
    await client.quit()
    [message] = server.messages
    assert message.content == body
    assert message.mail_arg.endswith("BODY=BINARYMIME")


# -- send_message ------------------------------------------------------------------


@pytest_twisted.ensureDeferred  # type: ignore[untyped-decorator]
async def test_send_message_strips_bcc(smtp_server_factory: ServerFactory) -> None:
    """Bcc recipients get the message; the Bcc header does not travel."""
    server = smtp_server_factory()
    msg = EmailMessage()
    msg["From"] = SENDER
    msg["To"] = "to@example.test"
    msg["Cc"] = "cc@example.test"
    msg["Bcc"] = "hidden@example.test"
    msg["Subject"] = "bcc"
    msg.set_content("hello\n")
    client = smtp()
    await client.connect(server.address)
    assert await client.send_message(msg) == {}
    await client.quit()
    [message] = server.messages
    assert message.mail_from == SENDER
    assert message.rcpt_tos == ("to@example.test", "hidden@example.test", "cc@example.test")
    assert b"hidden" not in message.content
    assert b"\r\nCc: cc@example.test\r\n" in message.content


@pytest_twisted.ensureDeferred  # type: ignore[untyped-decorator]
async def test_send_message_utf8_addresses(smtp_server_factory: ServerFactory) -> None:
    """UTF-8 addresses in the headers make SMTPUTF8 and a UTF-8 header block."""
    server = smtp_server_factory()
    msg = EmailMessage()
    msg["From"] = "J\u00f6rg <j\u00f6rg@b\u00fccher.example>"
    msg["To"] = "\u00e9l\u00e8ve@x.test"
    msg["Subject"] = "gr\u00fc\u00dfe"
    msg.set_content("hall\u00f6\n")
    client = smtp()
    await client.connect(server.address)
    await client.send_message(msg)
    await client.quit()
    [message] = server.messages
    assert message.smtp_utf8
    assert message.mail_from == "j\u00f6rg@b\u00fccher.example"
    assert message.rcpt_tos == ("\u00e9l\u00e8ve@x.test",)
    assert "To: \u00e9l\u00e8ve@x.test\r\n".encode() in message.content


@pytest_twisted.ensureDeferred  # type: ignore[untyped-decorator]
async def test_send_message_resent(smtp_server_factory: ServerFactory) -> None:
    """A resent message's envelope comes from its Resent-* headers."""
    server = smtp_server_factory()
    msg = EmailMessage()
    msg["From"] = SENDER
    msg["To"] = "first@example.test"
    msg["Resent-Date"] = "Thu, 01 Jan 2026 00:00:00 +0000"
    msg["Resent-From"] = "fwd@example.org"
    msg["Resent-To"] = "again@example.test"
    msg["Resent-Bcc"] = "quiet@example.test"
    msg.set_content("x\n")
    client = smtp()
    await client.connect(server.address)
    await client.send_message(msg)
    await client.quit()
    [message] = server.messages
    assert message.mail_from == "fwd@example.org"
    assert message.rcpt_tos == ("again@example.test", "quiet@example.test")
    assert b"quiet@" not in message.content


# -- one-shot helpers ------------------------------------------------------------------


@pytest_twisted.ensureDeferred  # type: ignore[untyped-decorator]
async def test_one_shot_sendmail_required_tls_and_login(
    smtp_server_factory: ServerFactory, tls_files: TLSFiles
) -> None:
    """txsmtpclient.sendmail with tls="required", a login and trusted options."""
    server = smtp_server_factory(ServerScript(credentials=CREDENTIALS), tls=tls_files)
    refused = await txsmtpclient.sendmail(
        server.address,
        SENDER,
        [RECIPIENT],
        MESSAGE,
        tls="required",
        tls_options=trusting(tls_files),
        username="alice",
        password=CREDENTIALS["alice"],
        local_hostname="client.test",
        timeout=10,
    )
    assert refused == {}
    [message] = server.messages
    assert message.tls and message.auth_login == b"alice"


@pytest_twisted.ensureDeferred  # type: ignore[untyped-decorator]
async def test_one_shot_sendmail_required_without_starttls(
    smtp_server_factory: ServerFactory,
) -> None:
    """The one-shot helper fails closed under tls="required" too."""
    server = smtp_server_factory()
    with pytest.raises(SMTPTLSError):
        await txsmtpclient.sendmail(
            server.address,
            SENDER,
            [RECIPIENT],
            MESSAGE,
            tls="required",
            local_hostname="client.test",
            timeout=10,
        )
    assert await received(server) == [HELLO]


@pytest_twisted.ensureDeferred  # type: ignore[untyped-decorator]
async def test_one_shot_implicit_tls(
    smtp_server_factory: ServerFactory, tls_files: TLSFiles
) -> None:
    """implicit_tls=True connects with SMTP_SSL."""
    server = smtp_server_factory(tls=tls_files, implicit_tls=True)
    await txsmtpclient.sendmail(
        server.host,
        SENDER,
        [RECIPIENT],
        MESSAGE,
        port=server.port,
        implicit_tls=True,
        tls_options=trusting(tls_files),
        local_hostname="client.test",
        timeout=10,
    )
    assert [m.tls for m in server.messages] == [True]
