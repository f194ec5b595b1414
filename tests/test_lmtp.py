"""
The LMTP client (RFC 2033): LHLO instead of EHLO, and after the final dot
one reply per accepted recipient, each reported on its own.

In memory (exact bytes, delivery failures per recipient) and against
aiosmtpd's LMTP server over TCP and a Unix socket.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import pytest_twisted
from conftest import ServerFactory
from servers import AiosmtpdServer, ServerScript
from test_esmtp_inmemory import failure_of, result_of, session, step

from txsmtpclient import LMTP
from txsmtpclient.errors import SMTPNotSupportedError, SMTPRecipientsRefused

LHLO = b"LHLO client.example\r\n"
LHLO_REPLY = b"250-lmtp.example\r\n250-PIPELINING\r\n250 ENHANCEDSTATUSCODES\r\n"
MESSAGE = b"From: a@example.org\r\nSubject: lmtp\r\n\r\n.dot\r\nbody\r\n"


# -- in memory -------------------------------------------------------------------


def test_lmtp_says_lhlo_and_reads_one_reply_per_recipient() -> None:
    """
    LHLO; MAIL, RCPTs and DATA pipelined; after the dot one reply per
    accepted recipient, a delivery failure reported for its recipient only.
    """
    s = session(LMTP, tls="never")
    d = s.smtp.sendmail("a@x", ["b@y", "c@y", "d@y"], b".hi\r\n")
    step(s, LHLO, LHLO_REPLY)
    step(
        s,
        b"MAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nRCPT TO:<c@y>\r\nRCPT TO:<d@y>\r\nDATA\r\n",
        b"250 2.1.0 ok\r\n250 2.1.5 ok\r\n550 5.1.1 unknown\r\n250 2.1.5 ok\r\n354 go\r\n",
    )
    assert s.transport.writes == [b"..hi\r\n.\r\n"]
    s.take()
    # Two accepted recipients: two replies; the first alone does not finish.
    s.feed(b"250 2.1.5 delivered to b\r\n")
    assert not d.called
    s.feed(b"452 4.2.2 mailbox full\r\n")
    refused = result_of(d)
    assert refused == {
        "c@y": (550, b"5.1.1 unknown"),
        "d@y": (452, b"4.2.2 mailbox full"),
    }
    assert refused["d@y"].enhanced_code == "4.2.2"
    assert s.transport.writes == []


def test_lmtp_all_deliveries_failing_raises() -> None:
    """When every accepted recipient fails after the dot: SMTPRecipientsRefused."""
    s = session(LMTP, tls="never")
    d = s.smtp.sendmail("a@x", ["b@y", "c@y"], b"hi\r\n")
    step(s, LHLO, b"250-lmtp.example\r\n250 8BITMIME\r\n")
    step(s, b"MAIL FROM:<a@x>\r\n", b"250 ok\r\n")
    step(s, b"RCPT TO:<b@y>\r\n", b"250 ok\r\n")
    step(s, b"RCPT TO:<c@y>\r\n", b"250 ok\r\n")
    step(s, b"DATA\r\n", b"354 go\r\n")
    step(s, b"hi\r\n.\r\n", b"552 5.2.2 over quota\r\n451 4.3.0 try later\r\n")
    # The final dot ended the transaction: no RSET.
    assert s.transport.writes == []
    e = failure_of(d, SMTPRecipientsRefused)
    assert e.recipients == {
        "b@y": (552, b"5.2.2 over quota"),
        "c@y": (451, b"4.3.0 try later"),
    }
    assert not e.temporary


def test_lmtp_pipelined_across_transactions() -> None:
    """
    A second queued send's envelope goes out with the first message's dot;
    the first message's per-recipient replies come before the second's
    envelope replies and are paired with it alone.
    """
    s = session(LMTP, tls="never")
    first = s.smtp.sendmail("a@x", ["b@y", "c@y"], b"one\r\n")
    second = s.smtp.sendmail("a@x", ["d@y"], b"two\r\n")
    step(s, LHLO, LHLO_REPLY)
    step(
        s,
        b"MAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nRCPT TO:<c@y>\r\nDATA\r\n",
        b"250 ok\r\n250 ok\r\n250 ok\r\n354 go\r\n",
    )
    step(
        s,
        b"one\r\n.\r\nMAIL FROM:<a@x>\r\nRCPT TO:<d@y>\r\nDATA\r\n",
        b"250 2.1.5 b ok\r\n452 4.2.2 c full\r\n250 ok\r\n250 ok\r\n354 go\r\n",
    )
    assert result_of(first) == {"c@y": (452, b"4.2.2 c full")}
    step(s, b"two\r\n.\r\n", b"250 2.1.5 d ok\r\n")
    assert result_of(second) == {}


def test_lmtp_replies_only_for_accepted_recipients() -> None:
    """A recipient refused at RCPT gets no reply after the dot."""
    s = session(LMTP, tls="never")
    d = s.smtp.sendmail("a@x", ["b@y", "c@y"], b"hi\r\n")
    step(s, LHLO, LHLO_REPLY)
    step(
        s,
        b"MAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nRCPT TO:<c@y>\r\nDATA\r\n",
        b"250 ok\r\n550 5.1.1 no\r\n250 ok\r\n354 go\r\n",
    )
    step(s, b"hi\r\n.\r\n", b"250 2.1.5 ok\r\n")
    assert result_of(d) == {"b@y": (550, b"5.1.1 no")}
    # The session is idle and usable: a NOOP is answered as its own reply.
    noop = s.smtp.noop()
    step(s, b"NOOP\r\n", b"250 ok\r\n")
    assert result_of(noop).code == 250


def test_lmtp_bdat_gets_one_reply_per_recipient() -> None:
    """With CHUNKING, BDAT LAST also gets one reply per accepted recipient."""
    s = session(LMTP, tls="never", bdat_threshold=0)
    d = s.smtp.sendmail("a@x", ["b@y", "c@y"], b"hi\r\n")
    step(s, LHLO, b"250-lmtp.example\r\n250 CHUNKING\r\n")
    step(s, b"MAIL FROM:<a@x>\r\n", b"250 ok\r\n")
    step(s, b"RCPT TO:<b@y>\r\n", b"250 ok\r\n")
    step(s, b"RCPT TO:<c@y>\r\n", b"250 ok\r\n")
    step(s, b"BDAT 4 LAST\r\nhi\r\n", b"250 ok\r\n550 5.1.1 gone\r\n")
    assert result_of(d) == {"c@y": (550, b"5.1.1 gone")}


def test_lmtp_has_no_helo() -> None:
    """helo() fails: LMTP has only LHLO."""
    s = session(LMTP, tls="never")
    failure_of(s.smtp.helo(), SMTPNotSupportedError)
    assert s.transport.writes == []


def test_lmtp_lhlo_refused_does_not_fall_back_to_helo() -> None:
    """A refused LHLO is an error; HELO is never tried."""
    from txsmtpclient.errors import SMTPHeloError

    s = session(LMTP, tls="never")
    d = s.smtp.sendmail("a@x", ["b@y"], b"hi\r\n")
    step(s, LHLO, b"500 5.5.1 what\r\n")
    e = failure_of(d, SMTPHeloError)
    assert e.smtp_code == 500
    assert s.transport.writes == []


# -- against aiosmtpd's LMTP server -------------------------------------------------


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A folder with a short path: Unix socket paths are limited to ~107 bytes."""
    path = Path(tempfile.mkdtemp(prefix="txsmtp-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


async def _send(server: AiosmtpdServer, host: str) -> dict[str, tuple[int, bytes]]:
    client = LMTP(local_hostname="client.test", timeout=10)
    await client.connect(host)
    refused = await client.sendmail(
        "a@example.org", ["one@example.test", "gone@example.test", "two@example.test"], MESSAGE
    )
    await client.quit()
    return dict(refused)


@pytest.mark.parametrize("transport", ["tcp", "unix-path", "unix-description"])
@pytest_twisted.ensureDeferred  # type: ignore[untyped-decorator]
async def test_lmtp_end_to_end(
    smtp_server_factory: ServerFactory, short_dir: Path, transport: str
) -> None:
    """
    Over TCP and a Unix socket (a path, or a "unix:" description): LHLO,
    a recipient refused at RCPT, one delivery reply per accepted recipient.
    """
    script = ServerScript(refuse_recipients={"gone@example.test": "550 5.1.1 No such user"})
    socket_path = short_dir / "lmtp.sock"
    if transport == "tcp":
        server = smtp_server_factory(script, lmtp=True)
        host = server.address
    else:
        server = smtp_server_factory(script, lmtp=True, unix_path=socket_path)
        host = str(socket_path) if transport == "unix-path" else f"unix:{socket_path}"
    refused = await _send(server, host)
    assert refused == {"gone@example.test": (550, b"5.1.1 No such user")}
    [message] = server.messages
    assert message.helo == "client.test" and message.esmtp
    assert message.rcpt_tos == ("one@example.test", "two@example.test")
    assert message.content == MESSAGE
    await server.when_connections_closed()
    [connection] = server.connections()
    assert connection.received.startswith(b"LHLO client.test\r\n")
    assert b"EHLO" not in connection.received and b"HELO" not in connection.received
