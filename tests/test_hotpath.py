"""
Behaviour of the hot path (issue 5, point 3), not its timing: the protocol
splits a whole segment into lines at once instead of re-splitting its buffer
per line, and must keep every rule of ``LineReceiver`` while doing so (line
length limit, discarding what follows STARTTLS's 220, stopping once the
connection is closing, re-entrant data); the DATA encoder's shortcut for
text already in CRLF form must encode exactly as the general path does; a
pipelined transaction to a thousand recipients goes out in one write and
its thousand replies, arriving in one segment, are matched one for one.
"""

from __future__ import annotations

import re
from typing import Any

from helpers import (
    EHLO_PIPELINING,
    GREETING,
    connected_session,
    failure_result_of,
    success_result_of,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.testing import MemoryReactorClock, StringTransport

from txsmtpclient.commands import DataEncoder
from txsmtpclient.errors import SMTPProtocolError, SMTPServerDisconnected
from txsmtpclient.protocol import SMTPClientProtocol
from txsmtpclient.reply import Reply, ReplyParser


class TLSStringTransport(StringTransport):
    """
    A :class:`StringTransport` that records ``startTLS`` and what was
    written before and after it.
    """

    def __init__(self) -> None:
        super().__init__(  # type: ignore[no-untyped-call]
            hostAddress=IPv4Address("TCP", "127.0.0.1", 40000),
            peerAddress=IPv4Address("TCP", "127.0.0.1", 25),
        )
        self.tls_options: object = None

    def startTLS(self, options: object) -> None:
        self.tls_options = options


def _protocol() -> tuple[SMTPClientProtocol, TLSStringTransport]:
    proto = SMTPClientProtocol(clock=MemoryReactorClock())
    transport = TLSStringTransport()
    proto.makeConnection(transport)  # type: ignore[no-untyped-call]
    proto.dataReceived(GREETING)
    assert success_result_of(proto.greeting).code == 220
    return proto, transport


def _collect(ds: list[Deferred[Reply]]) -> list[Any]:
    results: list[Any] = []
    for d in ds:
        d.addBoth(results.append)
    return results


# -- many replies in one segment -------------------------------------------------------


def test_thousand_replies_in_one_segment_each_reach_their_own_waiter() -> None:
    """1,000 pipelined replies in one segment: each waiter gets its own, in order."""
    proto, _transport = _protocol()
    waiters = proto.send_pipelined(b"(pipelined)\r\n", ["rcpt"] * 1000)
    segment = b"".join(
        b"250 2.1.5 recipient %d ok\r\n" % n if n % 3 else b"550-5.1.1 no\r\n550 user %d\r\n" % n
        for n in range(1000)
    )
    proto.dataReceived(segment)
    replies = [success_result_of(d) for d in waiters]
    assert replies == [
        Reply(250, b"2.1.5 recipient %d ok" % n) if n % 3 else Reply(550, b"5.1.1 no\nuser %d" % n)
        for n in range(1000)
    ]
    assert proto.usable and proto.pending == 0


_REPLIES = st.lists(
    st.tuples(
        st.sampled_from([b"250", b"354", b"451", b"550"]),
        st.lists(
            st.binary(max_size=20).map(lambda b: re.sub(rb"[\r\n]", b"_", b)),
            min_size=1,
            max_size=3,
        ),
        st.sampled_from([b"\r\n", b"\n"]),
    ),
    min_size=1,
    max_size=30,
)


@settings(max_examples=200, deadline=None)
@given(replies=_REPLIES, data=st.data())
def test_replies_cut_anywhere_give_the_same_replies(replies: Any, data: Any) -> None:
    """However the stream is cut into segments, the same replies reach the same waiters."""
    stream = b""
    expected = []
    for code, texts, ending in replies:
        lines = [code + b"-" + t for t in texts[:-1]] + [code + b" " + texts[-1]]
        stream += b"".join(line + ending for line in lines)
        parser = ReplyParser()
        results = [parser.feed(line) for line in lines]
        expected.append(results[-1])
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    proto, _transport = _protocol()
    waiters = proto.send_pipelined(b"x\r\n", ["command"] * len(replies))
    for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        proto.dataReceived(stream[start:end])
    assert [success_result_of(d) for d in waiters] == expected


def test_reply_fed_one_byte_at_a_time() -> None:
    """A multi-line reply fed a byte at a time is one reply."""
    proto, _transport = _protocol()
    d = proto.send(b"EHLO x\r\n")
    for byte in EHLO_PIPELINING:
        proto.dataReceived(bytes([byte]))
    assert success_result_of(d) == Reply(
        250, b"mx.example greets client.example\nPIPELINING\nSIZE 1000000\n8BITMIME"
    )


def test_data_fed_from_a_reply_callback_is_read_after_in_order() -> None:
    """Data delivered while a line is being handled waits its turn, after the segment."""
    proto, _transport = _protocol()
    first, second, third = proto.send_pipelined(b"x\r\n", ["command"] * 3)
    first.addCallback(lambda reply: proto.dataReceived(b"250 third\r\n"))
    proto.dataReceived(b"250 first\r\n250 second\r\n")
    assert success_result_of(second) == Reply(250, b"second")
    assert success_result_of(third) == Reply(250, b"third")


# -- LineReceiver's rules, kept ------------------------------------------------------------


def test_starttls_220_and_injected_lines_in_one_segment_are_discarded() -> None:
    """Lines after STARTTLS's 220 in the same segment are thrown away (RFC 3207 section 4.2)."""
    proto, transport = _protocol()
    d = proto.starttls(object())  # type: ignore[arg-type]
    proto.dataReceived(b"220 2.0.0 go ahead\r\n250-injected\r\n250 by an attacker\r\n250-part")
    assert success_result_of(d).code == 220
    assert transport.tls_options is not None
    assert proto.usable and proto.pending == 0
    proto.handshakeCompleted()
    # The next command's reply is the server's, not the injected lines.
    ehlo = proto.send(b"EHLO client.example\r\n")
    proto.dataReceived(b"250-mx.example\r\n250 AUTH PLAIN\r\n")
    assert success_result_of(ehlo) == Reply(250, b"mx.example\nAUTH PLAIN")


def test_clear_line_buffer_mid_segment_returns_the_rest() -> None:
    """clearLineBuffer() called while a segment is read returns and drops the rest of it."""
    proto, _transport = _protocol()
    first, second = proto.send_pipelined(b"x\r\n", ["command"] * 2)
    cleared: list[bytes] = []
    first.addCallback(lambda reply: cleared.append(proto.clearLineBuffer()))
    proto.dataReceived(b"250 one\r\n250 two\r\n250 thr")
    assert cleared == [b"250 two\r\n250 thr"]
    assert not second.called
    proto.dataReceived(b"250 real two\r\n")
    assert success_result_of(second) == Reply(250, b"real two")


def test_line_over_the_limit_in_mid_segment_fails_and_stops() -> None:
    """A line over the limit among others fails everything waiting; no later line is read."""
    proto, transport = _protocol()
    first, second, third = proto.send_pipelined(b"x\r\n", ["command"] * 3)
    proto.dataReceived(b"250 ok\r\n250 " + b"x" * 9000 + b"\r\n250 never\r\n")
    assert success_result_of(first) == Reply(250, b"ok")
    assert "exceeds the limit" in str(failure_result_of(second, SMTPProtocolError))
    failure_result_of(third, SMTPProtocolError)
    assert transport.disconnected


def test_unterminated_line_over_the_limit_fails() -> None:
    """A line that never ends is refused once it passes the limit, without waiting for its end."""
    proto, transport = _protocol()
    d = proto.send(b"NOOP\r\n")
    proto.dataReceived(b"250 " + b"y" * 5000)
    assert not d.called
    proto.dataReceived(b"y" * 5000)
    failure_result_of(d, SMTPProtocolError)
    assert transport.disconnected


class _Recording(SMTPClientProtocol):
    """Records every line handed to lineReceived."""

    lines: list[bytes]

    def lineReceived(self, line: bytes) -> None:
        self.lines.append(line)
        super().lineReceived(line)


def test_lines_after_a_closing_421_are_not_read() -> None:
    """After an unsolicited 421 the connection is closing: the rest of the segment is ignored."""
    proto = _Recording(clock=MemoryReactorClock())
    proto.lines = []
    transport = TLSStringTransport()
    proto.makeConnection(transport)  # type: ignore[no-untyped-call]
    proto.dataReceived(GREETING + b"421 4.3.2 shutting down\r\n250 junk\r\n500 more junk\r\n")
    assert proto.lines == [GREETING[:-2] + b"\r", b"421 4.3.2 shutting down\r"]
    assert transport.disconnecting
    error = proto.failure
    assert isinstance(error, SMTPServerDisconnected)
    assert not isinstance(error, SMTPProtocolError)
    assert "shutting down" in str(error)


# -- one write per pipelined batch, a thousand recipients -------------------------------------


def test_thousand_recipients_one_write_and_one_segment_of_replies() -> None:
    """MAIL, 1,000 RCPTs and DATA in one write; 1,000 replies in one segment judged right."""
    s = connected_session()
    recipients = [f"r{n}@example.test" for n in range(1000)]
    d = s.smtp.sendmail("from@example.test", recipients, b"hello\r\n")
    assert s.take() == b"EHLO client.example\r\n"
    s.feed(EHLO_PIPELINING)
    assert len(s.transport.writes) == 1
    batch = s.take()
    assert batch.count(b"\r\nRCPT TO:<") == 1000 and batch.endswith(b"DATA\r\n")
    replies = b"".join(b"550 5.1.1 no\r\n" if n % 10 == 0 else b"250 ok\r\n" for n in range(1000))
    s.feed(b"250 sender ok\r\n" + replies + b"354 go ahead\r\n")
    assert s.take() == b"hello\r\n.\r\n"
    s.feed(b"250 queued\r\n")
    refused = success_result_of(d)
    assert sorted(refused) == sorted(recipients[::10])
    assert all(reply.code == 550 for reply in refused.values())


# -- the DATA encoder's CRLF shortcut -------------------------------------------------------


def _reference(message: bytes) -> bytes:
    lines = re.split(rb"\r\n|\r|\n", message)
    if lines[-1] == b"":
        lines.pop()
    stuffed = [b"." + line if line.startswith(b".") else line for line in lines]
    return b"".join(line + b"\r\n" for line in stuffed) + b".\r\n"


def _encode(pieces: list[bytes], dot_stuff: bool = True) -> bytes:
    encoder = DataEncoder(dot_stuff=dot_stuff)
    return b"".join(encoder.encode(p) for p in pieces) + encoder.finish()


@settings(max_examples=300, deadline=None)
@given(
    lines=st.lists(
        st.tuples(
            st.sampled_from([b"", b".", b"..", b"a", b".a", b"a.b", b"x" * 30]),
            st.sampled_from([b"\r\n", b"\r\n", b"\r\n", b"\n", b"\r"]),
        ),
        max_size=40,
    ),
    data=st.data(),
)
def test_encoder_matches_the_reference_however_the_message_is_cut(lines: Any, data: Any) -> None:
    """Mostly-CRLF text with dots, cut anywhere, encodes as the line-by-line reference does."""
    message = b"".join(text + ending for text, ending in lines)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(message)), max_size=8)))
    pieces = [message[a:b] for a, b in zip([0, *cuts], [*cuts, len(message)], strict=True)]
    assert _encode(pieces) == _reference(message)
    # BDAT (no dot-stuffing, no end marker): only the line ends change.
    assert _encode(pieces, dot_stuff=False) == re.sub(rb"\r\n|\r|\n", b"\r\n", message)


def test_encoder_crlf_chunk_is_passed_through_when_nothing_needs_changing() -> None:
    """A chunk already in CRLF form without leading dots comes back as the very same object."""
    chunk = b"Subject: x\r\n\r\nbody line\r\n" * 100
    encoder = DataEncoder()
    assert encoder.encode(chunk) is chunk
    assert encoder.encode(b"next.\r\n.dot\r\n") == b"next.\r\n..dot\r\n"
