"""
DKIM signing end to end: messages signed on send (``dkim=`` on every send
path) arrive at aiosmtpd and at the private Postfix's Maildir, and dkimpy's
verifier accepts them against the signers' DNS records (its ``dnsfunc``
hook).  Keys are made in the tests, never stored.
"""

from __future__ import annotations

import tracemalloc
from collections.abc import AsyncIterator, Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from dkimtools import ed25519_signer, rsa_signer, verify_all
from helpers import EHLO_PIPELINING, connected_session, success_result_of
from servers import TEST_DOMAIN, AiosmtpdServer, PostfixInstance, ServerScript

from txsmtpclient import SMTP, api
from txsmtpclient._body import body_source
from txsmtpclient._signing import signed_source
from txsmtpclient.commands import DataEncoder, encode_message
from txsmtpclient.dkim import DKIMSigner
from txsmtpclient.errors import DKIMError
from txsmtpclient.pool import SMTPConnectionPool

SENDER = "alice@example.com"
RECIPIENT = "bob@example.org"
MIB = 1024 * 1024

#: Dot lines, 8-bit text, trailing whitespace and empty lines at the end:
#: everything the canonicalisations and dot-stuffing touch.
MESSAGE = (
    "From: Alice <alice@example.com>\r\n"
    "To: bob@example.org\r\n"
    "Subject: signed\r\n"
    "Date: Wed, 02 Dec 2026 05:00:00 +0000\r\n"
    "Message-ID: <signed@example.com>\r\n"
    "MIME-Version: 1.0\r\n"
    "Content-Type: text/plain; charset=utf-8\r\n"
    "Content-Transfer-Encoding: 8bit\r\n"
    "\r\n"
    ".starts with a dot\r\n"
    "..two dots\r\n"
    ".\r\n"
    "Grüße aus Köln  \t\r\n"
    "\r\n\r\n"
).encode()


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


def _client(**kwargs: Any) -> SMTP:
    return SMTP(local_hostname="client.example", reactor=_reactor(), tls="never", **kwargs)


def _body_after_signatures(content: bytes) -> bytes:
    """The message as it arrived, without the DKIM-Signature fields put first."""
    while content.startswith(b"DKIM-Signature:"):
        end = content.index(b"\r\n")
        while content[end + 2 : end + 3] in (b" ", b"\t"):
            end = content.index(b"\r\n", end + 2)
        content = content[end + 2 :]
    return content


async def _send(
    server: AiosmtpdServer, msg: Any, dkim: Any, bdat_threshold: int = 1 << 20, **kwargs: Any
) -> bytes:
    smtp = _client(bdat_threshold=bdat_threshold)
    await smtp.connect(server.host, server.port)
    assert await smtp.sendmail(SENDER, [RECIPIENT], msg, dkim=dkim, **kwargs) == {}
    await smtp.quit()
    return server.messages[-1].content


@pytest.mark.parametrize("canonicalization", ["relaxed/relaxed", "simple/simple"])
@pytest.mark.parametrize("kind", ["rsa", "ed25519"])
@pytest_twisted.ensureDeferred  # type: ignore[untyped-decorator]
async def test_signed_message_arrives_and_verifies(
    smtp_server: AiosmtpdServer, kind: str, canonicalization: str
) -> None:
    """RSA and Ed25519, relaxed and simple: dot lines and 8-bit text arrive signed and verify."""
    signer = rsa_signer(canonicalization) if kind == "rsa" else ed25519_signer(canonicalization)
    content = await _send(smtp_server, MESSAGE, signer)
    assert content.startswith(b"DKIM-Signature: v=1; a=" + signer.algorithm.encode())
    # The signature was put first and nothing else changed.
    assert _body_after_signatures(content) == MESSAGE
    assert "BODY=8BITMIME" in smtp_server.messages[0].mail_options
    assert verify_all(content, [signer]) == [True]


@pytest.mark.parametrize("chunking", [False, True], ids=["DATA", "BDAT"])
@pytest_twisted.ensureDeferred  # type: ignore[untyped-decorator]
async def test_streamed_message_is_signed_by_two_keys(
    smtp_server_factory: Any, chunking: bool
) -> None:
    """A generator body with LF line ends, signed by RSA and Ed25519 at once, verifies twice."""
    server = smtp_server_factory(ServerScript(chunking=chunking))
    signers = [rsa_signer(), ed25519_signer("simple/simple")]
    lf = MESSAGE.replace(b"\r\n", b"\n")
    pieces = [lf[i : i + 7] for i in range(0, len(lf), 7)]
    content = await _send(
        server, iter(pieces), signers, bdat_threshold=0, mail_options=["BODY=8BITMIME"]
    )
    assert content.count(b"DKIM-Signature:") == 2
    assert _body_after_signatures(content) == MESSAGE
    assert verify_all(content, signers) == [True, True]
    if chunking:
        assert server.messages[0].bdat_chunks is not None


@pytest_twisted.ensureDeferred  # type: ignore[untyped-decorator]
async def test_smtputf8_message_is_signed(smtp_server: AiosmtpdServer) -> None:
    """send_message with a non-ASCII address goes with SMTPUTF8, signed, and verifies."""
    message = EmailMessage()
    message["From"] = "Jörg <jörg@example.com>"
    message["To"] = "zoë@example.org"
    message["Subject"] = "Grüße"
    message.set_content("Hallo, Zoë.\n.und Punkt\n")
    signer = ed25519_signer()
    smtp = _client()
    await smtp.connect(smtp_server.host, smtp_server.port)
    assert await smtp.send_message(message, dkim=signer) == {}
    await smtp.quit()
    (arrived,) = smtp_server.messages
    assert arrived.smtp_utf8
    assert "jörg@example.com" in arrived.content.decode("utf-8")
    assert verify_all(arrived.content, [signer]) == [True]


@pytest_twisted.ensureDeferred  # type: ignore[untyped-decorator]
async def test_pool_and_one_shot_helpers_sign(smtp_server: AiosmtpdServer) -> None:
    """The pool, api.sendmail and api.send_message take dkim= as SMTP.sendmail does."""
    signer = rsa_signer()
    pool = SMTPConnectionPool(
        smtp_server.address, make_client=_client, reactor=_reactor(), max_connections=1
    )
    try:
        assert await pool.sendmail(SENDER, [RECIPIENT], MESSAGE, dkim=signer) == {}
    finally:
        await pool.close()
    assert (
        await api.sendmail(
            smtp_server.host,
            SENDER,
            [RECIPIENT],
            MESSAGE,
            port=smtp_server.port,
            tls="never",
            reactor=_reactor(),
            dkim=[signer],
        )
        == {}
    )
    email = EmailMessage()
    email["From"] = SENDER
    email["To"] = RECIPIENT
    email.set_content("one-shot\n")
    assert (
        await api.send_message(
            smtp_server.host,
            email,
            port=smtp_server.port,
            tls="never",
            reactor=_reactor(),
            dkim=signer,
        )
        == {}
    )
    messages = smtp_server.messages
    assert len(messages) == 3
    for message in messages:
        assert verify_all(message.content, [signer]) == [True]


@pytest_twisted.ensureDeferred  # type: ignore[untyped-decorator]
async def test_message_changed_in_transit_fails_verification(
    smtp_server_factory: Any,
) -> None:
    """Relayed untouched, the signature verifies; relayed with a header rewritten, it fails."""
    first = smtp_server_factory()
    last = smtp_server_factory()
    signer = rsa_signer()
    signed = await _send(first, MESSAGE, signer)
    # The relay: take what arrived and send it on, once as is, once with the
    # Subject rewritten (as a list server tagging subjects would).
    await _send(last, signed, None)
    await _send(last, signed.replace(b"Subject: signed", b"Subject: [list] signed"), None)
    untouched, rewritten = last.messages
    assert untouched.content == signed
    assert verify_all(untouched.content, [signer]) == [True]
    assert verify_all(rewritten.content, [signer]) == [False]


@pytest_twisted.ensureDeferred  # type: ignore[untyped-decorator]
async def test_unsignable_message_sends_nothing(smtp_server: AiosmtpdServer) -> None:
    """No From header: DKIMError before MAIL, and the session stays usable."""
    smtp = _client()
    await smtp.connect(smtp_server.host, smtp_server.port)
    with pytest.raises(DKIMError, match="no From header"):
        await smtp.sendmail(
            SENDER, [RECIPIENT], b"To: bob@example.org\r\n\r\nhi\r\n", dkim=rsa_signer()
        )
    with pytest.raises(DKIMError, match="no From header"):
        await smtp.sendmail(
            SENDER, [RECIPIENT], iter([b"To: x@example.org\r\n\r\n", b"hi\r\n"]), dkim=rsa_signer()
        )
    assert await smtp.sendmail(SENDER, [RECIPIENT], MESSAGE, dkim=rsa_signer()) == {}
    await smtp.quit()
    (connection,) = smtp_server.wait_for_connections_closed()
    assert bytes(connection.received).count(b"MAIL FROM") == 1
    assert len(smtp_server.messages) == 1


def test_dkim_keyword_is_checked_at_once() -> None:
    """A dkim= of the wrong type raises TypeError before any connection."""
    smtp = _client()
    with pytest.raises(TypeError, match="DKIMSigner"):
        smtp.sendmail(SENDER, [RECIPIENT], MESSAGE, dkim="example.com")  # type: ignore[arg-type]


# -- a 20 MB stream ------------------------------------------------------------------

BIG_SIZE = 20 * MIB
LINE = b"The quick brown fox jumps over the lazy dog, 0123456789 times. \n"


def _big_chunks() -> Iterator[bytes]:
    """A 20 MB message in 256 KiB chunks, made as it is read (never whole in memory here)."""
    yield b"From: alice@example.com\nTo: bob@example.org\nSubject: big\n\n"
    chunk = LINE * (256 * 1024 // len(LINE))
    sent = 0
    while sent < BIG_SIZE:
        yield chunk
        sent += len(chunk)
    yield b".last line\n\n\n"


async def _aiter(chunks: Iterator[bytes]) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


@pytest_twisted.ensureDeferred  # type: ignore[untyped-decorator]
async def test_20_mb_stream_signs_in_bounded_memory() -> None:
    """Signing a 20 MB stream holds a few chunks at most: peak traced memory stays under 4 MB."""
    signers: list[DKIMSigner] = [rsa_signer(), ed25519_signer("simple/simple")]
    source = body_source(_aiter(_big_chunks()))
    await source.prime(_reactor())
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        signed = await signed_source(source, signers, _reactor())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    try:
        assert signed.size is not None and signed.size > BIG_SIZE
        assert peak - before < 4 * MIB
    finally:
        signed.close()  # type: ignore[attr-defined]


@pytest_twisted.ensureDeferred  # type: ignore[untyped-decorator]
async def test_20_mb_stream_arrives_signed_and_verifies(smtp_server: AiosmtpdServer) -> None:
    """A 20 MB generator body, signed on send, arrives whole and verifies with both keys."""
    signers = [rsa_signer(), ed25519_signer("simple/simple")]
    content = await _send(smtp_server, _big_chunks(), signers)
    assert len(content) > BIG_SIZE
    assert verify_all(content, signers) == [True, True]


@pytest_twisted.ensureDeferred  # type: ignore[untyped-decorator]
async def test_large_message_in_memory_is_signed_in_a_thread(
    smtp_server: AiosmtpdServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 2 MB bytes message is signed off the reactor's thread, in its pool, and verifies."""
    import threading

    from txsmtpclient import _signing

    threads: list[threading.Thread] = []
    real = _signing.sign_message

    def recording(*args: Any) -> bytes:
        threads.append(threading.current_thread())
        return real(*args)

    monkeypatch.setattr(_signing, "sign_message", recording)
    signer = ed25519_signer()
    message = MESSAGE + LINE.replace(b"\n", b"\r\n") * (2 * MIB // len(LINE))
    content = await _send(smtp_server, message, signer)
    assert threads and threads[0] is not threading.main_thread()
    assert _body_after_signatures(content) == message
    assert verify_all(content, [signer]) == [True]


@pytest.mark.parametrize("chunking", [False, True], ids=["DATA", "BDAT"])
@pytest_twisted.ensureDeferred  # type: ignore[untyped-decorator]
async def test_file_message_is_read_twice_and_verifies(
    smtp_server_factory: Any, tmp_path: Path, chunking: bool
) -> None:
    """A seekable file (LF line ends, no final newline) is hashed, then sent from its start."""
    server = smtp_server_factory(ServerScript(chunking=chunking))
    signer = ed25519_signer()
    path = tmp_path / "message.eml"
    path.write_bytes(b"From: alice@example.com\nSubject: file\n\nline  \n.dot\nno newline  ")
    with path.open("rb") as f:
        f.seek(0)
        content = await _send(server, f, signer, bdat_threshold=0 if chunking else 1 << 20)
    expected = (
        b"From: alice@example.com\r\nSubject: file\r\n\r\nline  \r\n.dot\r\nno newline  \r\n"
    )
    assert _body_after_signatures(content) == expected
    assert verify_all(content, [signer]) == [True]
    assert (server.messages[0].bdat_chunks is not None) is chunking


@pytest_twisted.ensureDeferred  # type: ignore[untyped-decorator]
async def test_20_mb_file_signs_in_bounded_memory(tmp_path: Path) -> None:
    """A 20 MB file is hashed in a first pass, then re-read to send: peak traced memory < 4 MB."""
    path = tmp_path / "big.eml"
    with path.open("wb") as f:
        for chunk in _big_chunks():
            f.write(chunk)
    signers: list[DKIMSigner] = [rsa_signer()]
    with path.open("rb") as f:
        source = body_source(f)
        await source.prime(_reactor())
        tracemalloc.start()
        try:
            before, _ = tracemalloc.get_traced_memory()
            signed = await signed_source(source, signers, _reactor())
            # What the DATA/BDAT writer makes of the chunks: CRLF line ends.
            encoder = DataEncoder(dot_stuff=False)
            sent = 0
            async for chunk in signed.chunks(_reactor()):
                sent += len(encoder.encode(chunk))
            sent += len(encoder.finish())
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert signed.size == sent
    assert sent > BIG_SIZE
    assert peak - before < 4 * MIB


@pytest_twisted.ensureDeferred  # type: ignore[untyped-decorator]
async def test_binarymime_cannot_be_signed(smtp_server_factory: Any) -> None:
    """BODY=BINARYMIME with dkim= raises DKIMError before MAIL: binary is not lines of text."""
    server = smtp_server_factory(ServerScript(chunking=True))
    smtp = _client()
    await smtp.connect(server.host, server.port)
    with pytest.raises(DKIMError, match="BINARYMIME"):
        await smtp.sendmail(
            SENDER, [RECIPIENT], MESSAGE, ["BODY=BINARYMIME"], dkim=ed25519_signer()
        )
    await smtp.quit()
    assert server.messages == []


# -- Postfix ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["rsa", "ed25519"])
@pytest_twisted.ensureDeferred  # type: ignore[untyped-decorator]
async def test_postfix_maildir_copy_verifies(postfix: PostfixInstance, kind: str) -> None:
    """Through Postfix into its Maildir (trace headers added, LF line ends), it verifies."""
    signer = rsa_signer() if kind == "rsa" else ed25519_signer("simple/simple")
    message = MESSAGE.replace(b"bob@example.org", f"dkim@{TEST_DOMAIN}".encode())
    smtp = SMTP(local_hostname="client.example.org", timeout=30, tls="never", reactor=_reactor())
    await smtp.connect(postfix.host, postfix.port)
    assert await smtp.sendmail(SENDER, [f"dkim@{TEST_DOMAIN}"], message, dkim=signer) == {}
    await smtp.quit()
    [delivered] = await postfix.when_messages(1)
    assert delivered.raw.lower().startswith(b"return-path:")
    assert verify_all(delivered.raw, [signer]) == [True]
    assert verify_all(
        delivered.raw.replace(b"Subject: signed", b"Subject: changed"), [signer]
    ) == [False]


# -- in memory: the exact bytes on the wire ------------------------------------------


@pytest.mark.parametrize("kind", ["bytes", "generator"])
def test_wire_bytes_are_the_signed_message_dot_stuffed(kind: str) -> None:
    """After 354: the signature fields, then the message, dot-stuffed, then the final dot."""
    session = connected_session()
    signer = ed25519_signer()
    body: Any = MESSAGE if kind == "bytes" else iter([MESSAGE[:100], MESSAGE[100:]])
    d = session.smtp.sendmail(SENDER, [RECIPIENT], body, dkim=signer)
    assert session.take() == b"EHLO client.example\r\n"
    session.feed(EHLO_PIPELINING)
    assert session.take().startswith(b"MAIL FROM:<alice@example.com>")
    session.feed(b"250 ok\r\n250 ok\r\n354 go ahead\r\n")
    wire = session.take()
    signature = wire[: wire.index(b"From: Alice")]
    assert signature.startswith(b"DKIM-Signature: v=1; a=ed25519-sha256;")
    assert wire == encode_message(signature + MESSAGE)
    assert b"\r\n...two dots\r\n" in wire
    assert verify_all(signature + MESSAGE, [signer]) == [True]
    session.feed(b"250 queued\r\n")
    assert success_result_of(d) == {}
