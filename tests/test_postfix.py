"""
End to end against a real MTA: a private Postfix (``servers.PostfixInstance``,
started once per run on a free loopback port, delivering every recipient of
``example.test`` into one Maildir) with STARTTLS on the tests' self-signed
certificate, PIPELINING, CHUNKING, DSN, SMTPUTF8 and SIZE 30 MiB.

What arrives is compared byte for byte with what was sent, apart from the
trace headers Postfix adds on top and CRLF becoming LF in the Maildir.
Skipped, with the reason, where Postfix is not installed or we are not root.
"""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted
from servers import TEST_DOMAIN, MaildirMessage, PostfixInstance, TLSFiles
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.internet.ssl import Certificate, optionsForClientTLS

import txsmtpclient
from txsmtpclient import SMTP
from txsmtpclient.errors import SMTPSenderRefused, SMTPTLSError
from txsmtpclient.extensions import Extensions

SENDER = f"sender@{TEST_DOMAIN}"


def headers(to: str = f"rcpt@{TEST_DOMAIN}", subject: str = "postfix", n: int = 1) -> bytes:
    """A header block Postfix's cleanup has no reason to add to."""
    return (
        f"From: Sender <{SENDER}>\r\n"
        f"To: {to}\r\n"
        f"Subject: {subject}\r\n"
        "Date: Thu, 01 Jan 2026 00:00:00 +0000\r\n"
        f"Message-ID: <txsmtpclient-{subject}-{n}@{TEST_DOMAIN}>\r\n"
        "MIME-Version: 1.0\r\n"
        "\r\n"
    ).encode()


DOTS = headers(subject="dots") + (
    b".\r\n"
    b"..\r\n"
    b"...\r\n"
    b".a line starting with a dot\r\n"
    b"..two dots\r\n"
    b". space\r\n"
    b".\tdot and tab\r\n"
    b"middle\r\n"
    b".\r\n"
    b"last line.\r\n"
    b".\r\n"
)


def trusting(tls: TLSFiles) -> IOpenSSLClientConnectionCreator:
    """Client options trusting only the test certificate, for 127.0.0.1."""
    return optionsForClientTLS("127.0.0.1", trustRoot=Certificate.loadPEM(tls.cert_pem))


def client(postfix: PostfixInstance, **kwargs: Any) -> SMTP:
    kwargs.setdefault("tls_options", trusting(postfix.tls))
    return SMTP(local_hostname="client.example.org", timeout=30, **kwargs)


async def send(
    postfix: PostfixInstance, recipients: list[str], msg: bytes, **kwargs: Any
) -> Extensions:
    """
    Connect, send one message, quit.

    :returns: the extensions the session last read (after STARTTLS, if used).
    """
    options = {k: kwargs.pop(k) for k in list(kwargs) if k.startswith("dsn_")}
    mail_options = kwargs.pop("mail_options", ())
    smtp = client(postfix, **kwargs)
    await smtp.connect(postfix.host, postfix.port)
    refused = await smtp.sendmail(SENDER, recipients, msg, mail_options, **options)
    assert refused == {}
    features = smtp.esmtp_features
    await smtp.quit()
    return features


def arrived_as_sent(message: MaildirMessage, sent: bytes) -> None:
    """The delivered file holds exactly what was sent (LF line ends)."""
    expected = sent.replace(b"\r\n", b"\n")
    original = message.original
    if original != expected:
        # A short diff, not 20 MB of assertion text.
        at = next(
            (i for i, (a, b) in enumerate(zip(original, expected, strict=False)) if a != b),
            min(len(original), len(expected)),
        )
        raise AssertionError(
            f"differs at byte {at} (lengths {len(original)}, {len(expected)}): "
            f"got {original[max(0, at - 40) : at + 40]!r}, "
            f"expected {expected[max(0, at - 40) : at + 40]!r}"
        )


def trace(message: MaildirMessage) -> bytes:
    """The headers Postfix added (Received shows whether TLS was used)."""
    return message.raw[: len(message.raw) - len(message.original)]


@pytest.mark.parametrize("bdat", [False, True], ids=["DATA", "BDAT"])
@pytest_twisted.ensureDeferred  # type: ignore[untyped-decorator]
async def test_dot_lines_arrive_exactly(postfix: PostfixInstance, bdat: bool) -> None:
    """Lines starting with "." arrive unchanged, by DATA (stuffed) and by BDAT."""
    threshold = 0 if bdat else 1 << 20
    features = await send(postfix, [f"dots@{TEST_DOMAIN}"], DOTS, bdat_threshold=threshold)
    assert features.has("chunking")
    [message] = await postfix.when_messages(1)
    arrived_as_sent(message, DOTS)
    assert message.delivered_to == f"dots@{TEST_DOMAIN}"


@pytest_twisted.ensureDeferred  # type: ignore[untyped-decorator]
async def test_eight_bit_body(postfix: PostfixInstance) -> None:
    """An 8-bit body is declared BODY=8BITMIME and arrives byte for byte."""
    body = (
        headers(subject="eight-bit")[:-2]
        + b"Content-Type: text/plain; charset=utf-8\r\n"
        + b"Content-Transfer-Encoding: 8bit\r\n\r\n"
        + "Gr\u00fc\u00dfe, caf\u00e9, \u65e5\u672c\u8a9e, \u2603\r\n".encode()
        + b"latin-1 too: \xe9\xe8\r\n"
    )
    features = await send(postfix, [f"eight@{TEST_DOMAIN}"], body)
    # The client adds BODY=8BITMIME when advertised and refuses otherwise.
    assert features.has("8bitmime")
    [message] = await postfix.when_messages(1)
    arrived_as_sent(message, body)


@pytest_twisted.ensureDeferred  # type: ignore[untyped-decorator]
async def test_utf8_address(postfix: PostfixInstance) -> None:
    """A UTF-8 recipient goes with SMTPUTF8 and is delivered to that address."""
    recipient = f"j\u00f6rg.\u00e9l\u00e8ve@{TEST_DOMAIN}"
    body = headers(to=recipient, subject="utf8")
    body = body[:-2] + b"Content-Type: text/plain; charset=utf-8\r\n\r\nhall\xc3\xb6\r\n"
    await send(postfix, [recipient], body)
    [message] = await postfix.when_messages(1)
    assert message.delivered_to == recipient
    arrived_as_sent(message, body)


@pytest_twisted.ensureDeferred  # type: ignore[untyped-decorator]
async def test_hundred_recipients(postfix: PostfixInstance) -> None:
    """100 recipients in one pipelined transaction: 100 deliveries, all exact."""
    recipients = [f"r{i:03d}@{TEST_DOMAIN}" for i in range(100)]
    body = headers(subject="hundred") + b"to many\r\n.\r\n"
    await send(postfix, recipients, body)
    messages = await postfix.when_messages(100)
    assert sorted(m.delivered_to for m in messages) == recipients
    for message in messages:
        arrived_as_sent(message, body)


@pytest_twisted.ensureDeferred  # type: ignore[untyped-decorator]
async def test_twenty_megabyte_message(postfix: PostfixInstance) -> None:
    """A 20 MB message (by BDAT, in chunks) arrives exactly."""
    line = b"%07d .dotted and plain text, 0123456789 abcdefghijklmnopqrstuvwxyz\r\n"
    lines = [b"." + line % i if i % 5 == 0 else line % i for i in range(20 * 1024 * 1024 // 70)]
    body = headers(subject="big") + b"".join(lines)
    assert len(body) > 20 * 1024 * 1024 - 1024
    features = await send(postfix, [f"big@{TEST_DOMAIN}"], body)
    assert features.has("chunking")
    [message] = await postfix.when_messages(1, timeout=60)
    arrived_as_sent(message, body)


@pytest_twisted.ensureDeferred  # type: ignore[untyped-decorator]
async def test_size_limit_from_postfix(postfix: PostfixInstance) -> None:
    """Over Postfix's advertised SIZE the message is refused (552) before MAIL."""
    smtp = client(postfix)
    await smtp.connect(postfix.host, postfix.port)
    with pytest.raises(SMTPSenderRefused) as caught:
        await smtp.sendmail(SENDER, [f"big@{TEST_DOMAIN}"], b"x" * (postfix.size_limit + 1))
    assert caught.value.smtp_code == 552
    assert (await smtp.noop()).code == 250
    await smtp.quit()


@pytest_twisted.ensureDeferred  # type: ignore[untyped-decorator]
async def test_dsn_parameters_accepted(postfix: PostfixInstance) -> None:
    """RET, ENVID, NOTIFY and ORCPT are accepted by Postfix."""
    body = headers(subject="dsn") + b"dsn\r\n"
    features = await send(
        postfix,
        [f"dsn+tag@{TEST_DOMAIN}"],
        body,
        dsn_ret="HDRS",
        dsn_envid="envelope id=1",
        dsn_notify=["NEVER"],
        dsn_orcpt=True,
    )
    # Without DSN advertised the client would have left the parameters out.
    assert features.has("dsn")
    [message] = await postfix.when_messages(1)
    arrived_as_sent(message, body)


@pytest_twisted.ensureDeferred  # type: ignore[untyped-decorator]
async def test_starttls_required(postfix: PostfixInstance) -> None:
    """tls="required": STARTTLS, verified; Postfix received it over TLS."""
    body = headers(subject="required") + b"secret\r\n"
    features = await send(postfix, [f"tls@{TEST_DOMAIN}"], body, tls="required")
    assert not features.has("starttls")  # the list read after TLS
    [message] = await postfix.when_messages(1)
    assert b"with ESMTPS" in trace(message)
    arrived_as_sent(message, body)


@pytest_twisted.ensureDeferred  # type: ignore[untyped-decorator]
async def test_starttls_opportunistic(postfix: PostfixInstance) -> None:
    """tls="opportunistic" (the default) upgrades since Postfix offers it."""
    body = headers(subject="opportunistic") + b"hello\r\n"
    await send(postfix, [f"tls@{TEST_DOMAIN}"], body)
    [message] = await postfix.when_messages(1)
    assert b"with ESMTPS" in trace(message)
    arrived_as_sent(message, body)


@pytest_twisted.ensureDeferred  # type: ignore[untyped-decorator]
async def test_tls_never_stays_in_clear(postfix: PostfixInstance) -> None:
    """tls="never": Postfix received it without TLS."""
    body = headers(subject="never") + b"clear\r\n"
    await send(postfix, [f"clear@{TEST_DOMAIN}"], body, tls="never")
    [message] = await postfix.when_messages(1)
    assert b"with ESMTP " in trace(message) and b"ESMTPS" not in trace(message)


@pytest_twisted.ensureDeferred  # type: ignore[untyped-decorator]
async def test_starttls_unverified_certificate_refused(postfix: PostfixInstance) -> None:
    """Without trusting the self-signed certificate, STARTTLS fails closed."""
    smtp = client(postfix, tls_options=None)
    await smtp.connect(postfix.host, postfix.port)
    with pytest.raises(SMTPTLSError):
        await smtp.sendmail(SENDER, [f"tls@{TEST_DOMAIN}"], headers() + b"x\r\n")
    assert postfix.delivered_paths() == []


@pytest_twisted.ensureDeferred  # type: ignore[untyped-decorator]
async def test_one_shot_sendmail_required(postfix: PostfixInstance) -> None:
    """The one-shot helper with tls="required" delivers over TLS."""
    body = headers(subject="one-shot") + b"once\r\n"
    refused = await txsmtpclient.sendmail(
        f"{postfix.host}:{postfix.port}",
        SENDER,
        [f"once@{TEST_DOMAIN}"],
        body,
        tls="required",
        tls_options=trusting(postfix.tls),
        local_hostname="client.example.org",
    )
    assert refused == {}
    [message] = await postfix.when_messages(1)
    assert b"with ESMTPS" in trace(message)
    arrived_as_sent(message, body)


@pytest_twisted.ensureDeferred  # type: ignore[untyped-decorator]
async def test_queued_sends_pipelined_across_transactions(postfix: PostfixInstance) -> None:
    """
    Twenty sends queued at once on one session, each message's envelope
    going out with the previous message's final dot (RFC 2920 section 3.1),
    and one in the middle refused before MAIL (over SIZE): the other twenty
    arrive, each exactly as sent, each result its own.
    """
    from twisted.internet.defer import DeferredList

    smtp = client(postfix, tls="never")
    await smtp.connect(postfix.host, postfix.port)
    bodies = [
        headers(subject="pipelined", n=n) + b"message %d\r\n.dot line\r\n" % n for n in range(21)
    ]
    sends = [
        smtp.sendmail(SENDER, [f"p{n:02d}@{TEST_DOMAIN}"], body)
        for n, body in enumerate(bodies[:10])
    ]
    too_big = smtp.sendmail(SENDER, [f"big@{TEST_DOMAIN}"], b"x" * (postfix.size_limit + 1))
    sends += [
        smtp.sendmail(SENDER, [f"p{n:02d}@{TEST_DOMAIN}"], body)
        for n, body in enumerate(bodies[10:], start=10)
    ]
    results = await DeferredList([*sends, too_big], consumeErrors=True)
    assert [ok for ok, _ in results] == [True] * 21 + [False]
    assert all(result.final.code == 250 for _, result in results[:21])
    assert results[-1][1].check(SMTPSenderRefused)
    assert smtp.has_option("pipelining")
    await smtp.quit()
    messages = await postfix.when_messages(21)
    by_rcpt = {m.delivered_to: m for m in messages}
    for n, body in enumerate(bodies):
        arrived_as_sent(by_rcpt[f"p{n:02d}@{TEST_DOMAIN}"], body)
