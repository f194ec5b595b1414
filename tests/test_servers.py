"""
Sanity tests of the real test servers in ``tests/servers.py``, driven with the
standard library's blocking ``smtplib``: plain synchronous tests, no reactor, except
the two that prove the Deferred waiters (there ``smtplib`` runs in a thread).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import smtplib
import socket
from pathlib import Path

import pytest
import pytest_twisted  # type: ignore[import-untyped]
from conftest import ServerFactory
from servers import (
    AIOSMTPD_HOSTNAME,
    POSTFIX_HOSTNAME,
    TEST_DOMAIN,
    AiosmtpdServer,
    PostfixInstance,
    RecordedMessage,
    ServerScript,
    TLSFiles,
    client_ssl_context,
    strip_added_headers,
)

MESSAGE = (
    b"From: sender@example.org\r\n"
    b"To: rcpt@example.test\r\n"
    b"Subject: servers\r\n"
    b"Message-ID: <servers-1@example.org>\r\n"
    b"Date: Thu, 01 Jan 2026 00:00:00 +0000\r\n"
    b"\r\n"
    b".a line starting with a dot\r\n"
    b"..two dots\r\n"
    b".\tdot and tab\r\n"
    b"last line\r\n"
)


def _connect(server: AiosmtpdServer) -> smtplib.SMTP:
    return smtplib.SMTP(server.host, server.port, local_hostname="client.test", timeout=10)


# ---------------------------------------------------------------------- aiosmtpd


def test_aiosmtpd_records_envelope_and_content_exactly(smtp_server: AiosmtpdServer) -> None:
    """The server records sender, options, recipients and dot-unstuffed CRLF content."""
    with _connect(smtp_server) as client:
        refused = client.sendmail(
            "sender@example.org",
            ["a@example.test", "b@example.test"],
            MESSAGE,
            mail_options=["BODY=8BITMIME"],
        )
    assert refused == {}
    [message] = smtp_server.wait_for_messages(1)
    assert message.mail_from == "sender@example.org"
    assert message.mail_options == ("SIZE=" + str(len(MESSAGE)), "BODY=8BITMIME")
    assert message.mail_arg == f"FROM:<sender@example.org> size={len(MESSAGE)} BODY=8BITMIME"
    assert message.rcpt_tos == ("a@example.test", "b@example.test")
    assert message.rcpt_options == ((), ())
    assert message.content == MESSAGE
    assert message.helo == "client.test"
    assert message.esmtp is True
    assert message.tls is False
    assert message.bdat_chunks is None


def test_aiosmtpd_records_raw_connection_bytes(smtp_server: AiosmtpdServer) -> None:
    """Every byte the client sent is kept per connection, and the close is noted."""
    with _connect(smtp_server) as client:
        client.noop()
    [connection] = smtp_server.wait_for_connections_closed()
    assert connection.received == b"noop\r\nQUIT\r\n"
    assert connection.closed


def test_aiosmtpd_refuses_scripted_recipients(smtp_server_factory: ServerFactory) -> None:
    """Recipients named in the script get their reply; the others are delivered."""
    script = ServerScript(
        refuse_recipients={
            "gone@example.test": "550 5.1.1 No such user",
            "busy@example.test": "451 4.2.0 Try later",
        }
    )
    server = smtp_server_factory(script)
    with _connect(server) as client:
        refused = client.sendmail(
            "s@example.org",
            ["gone@example.test", "ok@example.test", "busy@example.test"],
            b"x\r\n",
        )
    assert refused == {
        "gone@example.test": (550, b"5.1.1 No such user"),
        "busy@example.test": (451, b"4.2.0 Try later"),
    }
    assert [m.rcpt_tos for m in server.wait_for_messages(1)] == [("ok@example.test",)]


def test_aiosmtpd_refuses_sender(smtp_server_factory: ServerFactory) -> None:
    """A scripted sender refusal reaches smtplib as SMTPSenderRefused."""
    server = smtp_server_factory(ServerScript(refuse_sender="553 5.7.1 Not you"))
    with _connect(server) as client, pytest.raises(smtplib.SMTPSenderRefused) as caught:
        client.sendmail("s@example.org", ["r@example.test"], b"x\r\n")
    assert caught.value.smtp_code == 553
    assert server.messages == []


@pytest.mark.parametrize("when", ["after_content", "command"])
def test_aiosmtpd_refuses_data(smtp_server_factory: ServerFactory, when: str) -> None:
    """DATA can be refused before the 354 or after the final dot."""
    script = (
        ServerScript(refuse_data="554 5.6.0 Content rejected")
        if when == "after_content"
        else ServerScript(refuse_data_command="554 5.5.1 No DATA for you")
    )
    server = smtp_server_factory(script)
    with _connect(server) as client, pytest.raises(smtplib.SMTPDataError) as caught:
        client.sendmail("s@example.org", ["r@example.test"], b"x\r\n")
    assert caught.value.smtp_code == 554
    assert server.messages == []


def test_aiosmtpd_refusing_ehlo_forces_helo(smtp_server_factory: ServerFactory) -> None:
    """With refuse_ehlo, EHLO gets 502 and the session goes on after HELO."""
    server = smtp_server_factory(ServerScript(refuse_ehlo=True))
    with _connect(server) as client:
        code, _ = client.ehlo()
        assert code == 502
        assert client.helo()[0] == 250
        client.sendmail("s@example.org", ["r@example.test"], b"x\r\n")
    [message] = server.wait_for_messages(1)
    assert message.esmtp is False
    assert message.helo == "client.test"


def test_aiosmtpd_hides_and_adds_extensions(smtp_server_factory: ServerFactory) -> None:
    """EHLO keywords can be hidden and added; PIPELINING is offered by default."""
    script = ServerScript(
        hide_extensions=frozenset({"SIZE", "SMTPUTF8"}), add_extensions=("ENHANCEDSTATUSCODES",)
    )
    server = smtp_server_factory(script)
    with _connect(server) as client:
        code, text = client.ehlo()
    assert code == 250
    assert text.split(b"\n")[0] == AIOSMTPD_HOSTNAME.encode()
    assert set(client.esmtp_features) == {"8bitmime", "help", "pipelining", "enhancedstatuscodes"}


def test_aiosmtpd_dsn_parameters_accepted_and_recorded(smtp_server_factory: ServerFactory) -> None:
    """With dsn=True the DSN parameters of RFC 3461 are accepted and kept as sent."""
    server = smtp_server_factory(ServerScript(dsn=True))
    with _connect(server) as client:
        client.ehlo()
        assert client.has_extn("dsn")
        client.sendmail(
            "s@example.org",
            ["r@example.test"],
            b"x\r\n",
            mail_options=["RET=HDRS", "ENVID=Ab+2Bc"],
            rcpt_options=["NOTIFY=FAILURE,DELAY", "ORCPT=rfc822;r@example.test"],
        )
    [message] = server.wait_for_messages(1)
    assert message.mail_arg.endswith(" RET=HDRS ENVID=Ab+2Bc")
    assert message.rcpt_options == (("NOTIFY=FAILURE,DELAY", "ORCPT=RFC822;R@EXAMPLE.TEST"),)
    assert message.rcpt_args == (
        "TO:<r@example.test> NOTIFY=FAILURE,DELAY ORCPT=rfc822;r@example.test",
    )


def test_aiosmtpd_smtputf8_address(smtp_server: AiosmtpdServer) -> None:
    """A UTF-8 address with SMTPUTF8 is recorded as text, the flag set."""
    with _connect(smtp_server) as client:
        client.sendmail(
            "s@example.org",
            ["用户@example.test"],
            "Subject: ü\r\n\r\nü\r\n".encode(),
            ["SMTPUTF8"],
        )
    [message] = smtp_server.wait_for_messages(1)
    assert message.rcpt_tos == ("用户@example.test",)
    assert message.smtp_utf8 is True
    assert message.content == "Subject: ü\r\n\r\nü\r\n".encode()


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN", "CRAM-MD5"])
def test_aiosmtpd_auth_over_plaintext(smtp_server_factory: ServerFactory, mechanism: str) -> None:
    """Each offered mechanism accepts the right password and refuses a wrong one."""
    script = ServerScript(credentials={"alice": "s3cret"}, auth_mechanisms=(mechanism,))
    server = smtp_server_factory(script, auth_require_tls=False)
    with _connect(server) as client:
        client.ehlo()
        assert client.esmtp_features["auth"].split() == [mechanism]
        with pytest.raises(smtplib.SMTPAuthenticationError):
            client.login("alice", "wrong")
    with _connect(server) as client:
        client.login("alice", "s3cret")
        client.sendmail("s@example.org", ["r@example.test"], b"x\r\n")
    [message] = server.wait_for_messages(1)
    assert message.auth_login == b"alice"


def _scram_login(client: smtplib.SMTP, user: str, password: str) -> tuple[int, bytes]:
    """A minimal SCRAM-SHA-256 client (RFC 5802 section 3), for the server's test."""
    first_bare = f"n={user},r=clientnonce123"
    code, reply = client.docmd("AUTH", "SCRAM-SHA-256 " + _b64(f"n,,{first_bare}".encode()))
    assert code == 334, reply
    server_first = base64.b64decode(reply).decode()
    attrs = dict(item.split("=", 1) for item in server_first.split(","))
    assert attrs["r"].startswith("clientnonce123")
    without_proof = f"c=biws,r={attrs['r']}"
    salted = hashlib.pbkdf2_hmac(
        "sha256", password.encode(), base64.b64decode(attrs["s"]), int(attrs["i"])
    )
    client_key = hmac.digest(salted, b"Client Key", "sha256")
    auth_message = f"{first_bare},{server_first},{without_proof}".encode()
    signature = hmac.digest(hashlib.sha256(client_key).digest(), auth_message, "sha256")
    proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
    code, reply = client.docmd(_b64(f"{without_proof},p={_b64(proof)}".encode()))
    if code != 334:
        return code, reply
    server_key = hmac.digest(salted, b"Server Key", "sha256")
    expected = b"v=" + base64.b64encode(hmac.digest(server_key, auth_message, "sha256"))
    assert base64.b64decode(reply) == expected, "the server must prove it knows the password"
    return client.docmd("")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def test_aiosmtpd_scram_sha_256(smtp_server_factory: ServerFactory) -> None:
    """SCRAM-SHA-256 accepts the right password (proving the server) and refuses a wrong one."""
    script = ServerScript(credentials={"carol": "pa,ss=w0rd"}, auth_mechanisms=("SCRAM-SHA-256",))
    server = smtp_server_factory(script, auth_require_tls=False)
    with _connect(server) as client:
        client.ehlo()
        assert client.esmtp_features["auth"].split() == ["SCRAM-SHA-256"]
        assert _scram_login(client, "carol", "wrong")[0] == 535
        assert _scram_login(client, "carol", "pa,ss=w0rd")[0] == 235
        client.sendmail("s@example.org", ["r@example.test"], b"x\r\n")
    [message] = server.wait_for_messages(1)
    assert message.auth_login == b"carol"


def test_aiosmtpd_without_credentials_offers_no_auth(smtp_server: AiosmtpdServer) -> None:
    """A server scripted without credentials advertises no AUTH at all."""
    with _connect(smtp_server) as client:
        client.ehlo()
        assert not client.has_extn("auth")


def test_aiosmtpd_starttls_then_auth(
    smtp_server_factory: ServerFactory, tls_files: TLSFiles
) -> None:
    """STARTTLS verifies against the test certificate; AUTH appears only after it."""
    server = smtp_server_factory(ServerScript(credentials={"bob": "pw"}), tls=tls_files)
    with _connect(server) as client:
        client.ehlo()
        assert client.has_extn("starttls")
        assert not client.has_extn("auth")
        client.starttls(context=client_ssl_context(tls_files))
        client.ehlo()
        assert not client.has_extn("starttls")
        client.login("bob", "pw")
        client.sendmail("s@example.org", ["r@example.test"], b"x\r\n")
    [message] = server.wait_for_messages(1)
    assert message.tls is True
    assert message.auth_login == b"bob"


def test_aiosmtpd_starttls_untrusted_certificate_fails(
    smtp_server_factory: ServerFactory, tls_files: TLSFiles
) -> None:
    """A client verifying with the system trust store rejects the self-signed cert."""
    import ssl

    server = smtp_server_factory(tls=tls_files)
    with _connect(server) as client, pytest.raises(ssl.SSLCertVerificationError):
        client.starttls(context=ssl.create_default_context())


def test_aiosmtpd_implicit_tls(smtp_server_factory: ServerFactory, tls_files: TLSFiles) -> None:
    """implicit_tls wraps the connection from the first byte, as on port 465."""
    server = smtp_server_factory(tls=tls_files, implicit_tls=True)
    context = client_ssl_context(tls_files)
    with smtplib.SMTP_SSL(server.host, server.port, context=context, timeout=10) as client:
        client.sendmail("s@example.org", ["r@example.test"], b"x\r\n")
    [message] = server.wait_for_messages(1)
    assert message.tls is True


def test_aiosmtpd_bdat_chunks(smtp_server_factory: ServerFactory) -> None:
    """With chunking=True BDAT chunks are taken byte for byte, without dot-unstuffing."""
    server = smtp_server_factory(ServerScript(chunking=True))
    with _connect(server) as client:
        client.ehlo()
        assert client.has_extn("chunking")
        assert client.mail("s@example.org", ["BODY=BINARYMIME"])[0] == 250
        assert client.rcpt("r@example.test")[0] == 250
        client.send(b"BDAT 7\r\n..x\r\n.\r")
        assert client.getreply() == (250, b"2.0.0 7 octets received")
        client.send(b"BDAT 3 LAST\r\n\nz\n")
        assert client.getreply()[0] == 250
    [message] = server.wait_for_messages(1)
    assert message.content == b"..x\r\n.\r\nz\n"
    assert message.bdat_chunks == (7, 3)
    assert message.mail_options == ("BODY=BINARYMIME",)


@pytest.mark.parametrize("transport", ["tcp", "unix"])
def test_aiosmtpd_lmtp_replies_per_recipient(
    smtp_server_factory: ServerFactory, tmp_path: Path, transport: str
) -> None:
    """The LMTP server answers LHLO and gives one reply per recipient after DATA."""
    unix_path = tmp_path / "lmtp.sock" if transport == "unix" else None
    server = smtp_server_factory(lmtp=True, unix_path=unix_path)
    if unix_path is not None:
        client = smtplib.LMTP(str(unix_path))
    else:
        client = smtplib.LMTP(server.host, server.port)
    with client:
        assert client.docmd("EHLO", "client.test")[0] == 500, "EHLO is not LMTP"
        assert client.ehlo("client.test")[0] == 250, "smtplib.LMTP sends LHLO"
        client.mail("s@example.org")
        client.rcpt("a@example.test")
        client.rcpt("b@example.test")
        assert client.data(b"x\r\n")[0] == 250
        assert client.getreply() == (250, b"2.1.5 OK")
    [message] = server.wait_for_messages(1)
    assert message.rcpt_tos == ("a@example.test", "b@example.test")


def test_aiosmtpd_wait_for_messages_times_out(smtp_server: AiosmtpdServer) -> None:
    """Waiting for a message that never comes fails after the bound."""
    with pytest.raises(TimeoutError, match="expected 1 message"):
        smtp_server.wait_for_messages(1, timeout=0.1)


def _send_blocking(server: AiosmtpdServer, count: int) -> None:
    with _connect(server) as client:
        for i in range(count):
            client.sendmail("s@example.org", [f"r{i}@example.test"], b"x\r\n")


@pytest_twisted.ensureDeferred  # type: ignore[untyped-decorator]
async def test_aiosmtpd_when_messages_fires_in_reactor(smtp_server: AiosmtpdServer) -> None:
    """when_messages() fires in the reactor thread once the count is reached."""
    from twisted.internet import reactor, threads

    waiting = smtp_server.when_messages(3, timeout=10, reactor=reactor)
    assert not waiting.called
    sent = threads.deferToThread(_send_blocking, smtp_server, 3)
    messages: list[RecordedMessage] = await waiting
    await sent
    assert [m.rcpt_tos for m in messages][:3] == [(f"r{i}@example.test",) for i in range(3)]
    assert (await smtp_server.when_connections_closed(reactor=reactor)) == messages


@pytest_twisted.ensureDeferred  # type: ignore[untyped-decorator]
async def test_aiosmtpd_when_messages_times_out(smtp_server: AiosmtpdServer) -> None:
    """when_messages() fails with TimeoutError after its bound when nothing arrives."""
    from twisted.internet import reactor

    with pytest.raises(TimeoutError, match="0 arrived"):
        await smtp_server.when_messages(1, timeout=0.1, reactor=reactor)


def test_aiosmtpd_stop_closes_open_connections(smtp_server_factory: ServerFactory) -> None:
    """Stopping the server drops a client still connected."""
    server = smtp_server_factory()
    client = _connect(server)
    server.stop()
    with pytest.raises(smtplib.SMTPServerDisconnected):
        client.noop()
    client.close()


# ----------------------------------------------------------------------- Postfix


def test_postfix_listens_on_private_loopback_port(postfix: PostfixInstance) -> None:
    """The private Postfix is on 127.0.0.1, not port 25, with its own config folder."""
    assert postfix.host == "127.0.0.1"
    assert postfix.port != 25
    assert postfix.conf.is_relative_to(postfix.base)
    with socket.create_connection((postfix.host, postfix.port), timeout=10) as s:
        assert s.recv(100).startswith(f"220 {POSTFIX_HOSTNAME} ESMTP".encode())


def test_postfix_advertises_extensions(postfix: PostfixInstance) -> None:
    """EHLO offers the extensions the end-to-end tests rely on, and the SIZE limit."""
    with smtplib.SMTP(postfix.host, postfix.port, timeout=10) as client:
        client.ehlo()
        for keyword in ("starttls", "pipelining", "chunking", "dsn", "smtputf8", "8bitmime"):
            assert client.has_extn(keyword), keyword
        assert client.has_extn("enhancedstatuscodes")
        assert client.esmtp_features["size"] == str(30 * 1024 * 1024)
        code, _ = client.mail("s@example.org", [f"SIZE={31 * 1024 * 1024}"])
        assert code == 552


def test_postfix_starttls_delivers_dot_lines_byte_exact(
    postfix: PostfixInstance, tls_files: TLSFiles
) -> None:
    """Over STARTTLS (trusting the test cert) a message with leading dots arrives
    byte for byte, apart from Postfix's trace headers and CRLF stored as LF."""
    with smtplib.SMTP(postfix.host, postfix.port, timeout=10) as client:
        client.starttls(context=client_ssl_context(tls_files))
        refused = client.sendmail("sender@example.org", [f"rcpt@{TEST_DOMAIN}"], MESSAGE)
    assert refused == {}
    [delivered] = postfix.wait_for_messages(1)
    assert delivered.original == MESSAGE.replace(b"\r\n", b"\n")
    assert delivered.delivered_to == f"rcpt@{TEST_DOMAIN}"
    assert b"with ESMTPS id" in delivered.raw, "the Received header should record TLS"


def test_postfix_delivers_utf8_address_and_8bit_body(postfix: PostfixInstance) -> None:
    """SMTPUTF8 recipients land in the same Maildir; an 8-bit body is not converted."""
    body = "From: s@example.org\r\nMessage-ID: <u@x>\r\nDate: Thu, 01 Jan 2026 00:00:00 +0000\r\n"
    body += "\r\nGrüße, 用户\r\n"
    with smtplib.SMTP(postfix.host, postfix.port, timeout=10) as client:
        client.sendmail(
            "s@example.org", [f"用户@{TEST_DOMAIN}"], body.encode(), ["SMTPUTF8", "BODY=8BITMIME"]
        )
    [delivered] = postfix.wait_for_messages(1)
    assert delivered.delivered_to == f"用户@{TEST_DOMAIN}"
    assert delivered.original == body.encode().replace(b"\r\n", b"\n")


def test_postfix_delivers_every_recipient(postfix: PostfixInstance) -> None:
    """Each of 100 recipients of the test domain gets its own Maildir file."""
    recipients = [f"user{i}@{TEST_DOMAIN}" for i in range(100)]
    with smtplib.SMTP(postfix.host, postfix.port, timeout=10) as client:
        assert client.sendmail("s@example.org", recipients, b"Subject: many\r\n\r\nhi\r\n") == {}
    delivered = postfix.wait_for_messages(100, timeout=60)
    assert sorted(m.delivered_to for m in delivered) == sorted(recipients)


def test_strip_added_headers_keeps_client_headers() -> None:
    """Only the leading trace headers (with continuation lines) are removed."""
    raw = (
        b"Return-Path: <a@b>\nDelivered-To: c@d\nReceived: from x\n\tby y\n"
        b"Subject: s\nReceived: kept\n\nbody\n"
    )
    assert strip_added_headers(raw) == b"Subject: s\nReceived: kept\n\nbody\n"
