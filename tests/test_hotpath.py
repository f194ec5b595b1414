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
from collections.abc import Callable
from typing import Any

import pytest
from helpers import (
    EHLO_PIPELINING,
    GREETING,
    command,
    connected_session,
    failure_result_of,
    send_pipelined,
    success_result_of,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.testing import MemoryReactorClock, StringTransport

from txsmtpclient.commands import (
    _PLAIN_ADDRESS,
    DataEncoder,
    check_argument,
    plain_addresses,
    quote_checked_address,
)
from txsmtpclient.errors import SMTPArgumentError, SMTPProtocolError, SMTPServerDisconnected
from txsmtpclient.extensions import Extensions
from txsmtpclient.protocol import SMTPClientProtocol
from txsmtpclient.reply import Reply, ReplyParser
from txsmtpclient.session import Command, Kind
from txsmtpclient.transaction import Envelope, plan_transaction


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


def _collect_replies(proto: Any, count: int, batch: bool) -> Callable[[], list[Reply]]:
    """
    Await ``count`` replies the way sendmail does (one batch waiter, with its
    fast path for plain replies) or one waiter per reply.
    """
    if batch:
        whole = proto.send_batch([Command(Kind.RCPT, b"(pipelined)\r\n", replies=count)])
        return lambda: success_result_of(whole)
    waiters = send_pipelined(proto, b"(pipelined)\r\n", ["rcpt"] * count)
    return lambda: [success_result_of(d) for d in waiters]


@pytest.mark.parametrize("batch", [False, True], ids=["waiter-each", "batch"])
def test_thousand_replies_in_one_segment_each_reach_their_own_waiter(batch: bool) -> None:
    """1,000 pipelined replies in one segment: each waiter gets its own, in order."""
    proto, _transport = _protocol()
    collect = _collect_replies(proto, 1000, batch)
    segment = b"".join(
        b"250 2.1.5 recipient %d ok\r\n" % n if n % 3 else b"550-5.1.1 no\r\n550 user %d\r\n" % n
        for n in range(1000)
    )
    proto.dataReceived(segment)
    replies = collect()
    assert replies == [
        Reply(250, b"2.1.5 recipient %d ok" % n) if n % 3 else Reply(550, b"5.1.1 no\nuser %d" % n)
        for n in range(1000)
    ]
    assert proto.usable and proto.pending == 0


_REPLIES = st.lists(
    st.tuples(
        st.sampled_from([b"250", b"251", b"451", b"550"]),
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
@given(replies=_REPLIES, data=st.data(), batch=st.booleans())
def test_replies_cut_anywhere_give_the_same_replies(replies: Any, data: Any, batch: bool) -> None:
    """
    However the stream is cut into segments, the same replies reach the same
    waiters, one waiter each or one batch waiter (sendmail's fast path).
    """
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
    collect = _collect_replies(proto, len(replies), batch)
    for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        proto.dataReceived(stream[start:end])
    assert collect() == expected


def test_reply_fed_one_byte_at_a_time() -> None:
    """A multi-line reply fed a byte at a time is one reply."""
    proto, _transport = _protocol()
    d = proto.send(command(b"EHLO x\r\n"))
    for byte in EHLO_PIPELINING:
        proto.dataReceived(bytes([byte]))
    assert success_result_of(d) == Reply(
        250, b"mx.example greets client.example\nPIPELINING\nSIZE 1000000\n8BITMIME"
    )


def test_data_fed_from_a_reply_callback_is_read_after_in_order() -> None:
    """Data delivered while a line is being handled waits its turn, after the segment."""
    proto, _transport = _protocol()
    first, second, third = send_pipelined(proto, b"x\r\n", ["command"] * 3)
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
    ehlo = proto.send(command(b"EHLO client.example\r\n"))
    proto.dataReceived(b"250-mx.example\r\n250 AUTH PLAIN\r\n")
    assert success_result_of(ehlo) == Reply(250, b"mx.example\nAUTH PLAIN")


def test_line_over_the_limit_in_mid_segment_fails_and_stops() -> None:
    """A line over the limit among others fails everything waiting; no later line is read."""
    proto, transport = _protocol()
    first, second, third = send_pipelined(proto, b"x\r\n", ["command"] * 3)
    proto.dataReceived(b"250 ok\r\n250 " + b"x" * 9000 + b"\r\n250 never\r\n")
    assert success_result_of(first) == Reply(250, b"ok")
    assert "exceeds the limit" in str(failure_result_of(second, SMTPProtocolError))
    failure_result_of(third, SMTPProtocolError)
    assert transport.disconnected


def test_unterminated_line_over_the_limit_fails() -> None:
    """A line that never ends is refused once it passes the limit, without waiting for its end."""
    proto, transport = _protocol()
    d = proto.send(command(b"NOOP\r\n"))
    proto.dataReceived(b"250 " + b"y" * 5000)
    assert not d.called
    proto.dataReceived(b"y" * 5000)
    failure_result_of(d, SMTPProtocolError)
    assert transport.disconnected


def test_lines_after_a_closing_421_are_not_read() -> None:
    """After an unsolicited 421 the connection is closing: the rest of the segment is ignored."""
    proto = SMTPClientProtocol(clock=MemoryReactorClock())
    transport = TLSStringTransport()
    proto.makeConnection(transport)  # type: ignore[no-untyped-call]
    proto.dataReceived(GREETING + b"421 4.3.2 shutting down\r\n250 junk\r\n500 more junk\r\n")
    assert success_result_of(proto.greeting).code == 220
    assert transport.disconnecting
    error = proto.failure
    assert isinstance(error, SMTPServerDisconnected)
    assert not isinstance(error, SMTPProtocolError)
    assert "421 4.3.2 shutting down" in str(error)
    # The session itself stopped at the 421: the junk after it in the same
    # segment made no second failure (a broken server's protocol error).
    assert proto.session.error is error
    assert proto.session.receive_data(b"250 more\r\n") == []


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


def test_encoder_alternating_but_separated_cr_and_lf_are_normalised() -> None:
    """CR and LF that alternate without touching are bare ones: each becomes a CRLF."""
    encoder = DataEncoder()
    assert encoder.encode(b"a\rb\nc\r\n") == b"a\r\nb\r\nc\r\n"
    assert encoder.encode(b".\r.\n") == b"..\r\n..\r\n"


#: Pieces that make every awkward case likely: CR, LF and dots next to each
#: other, doubled, at the start and end of chunks.
_AWKWARD = st.sampled_from([b"\r", b"\n", b"\r\n", b".", b"..", b"\r\n.", b"a", b"a.", b"\x00"])


@settings(max_examples=500, deadline=None)
@given(pieces=st.lists(_AWKWARD, max_size=60), data=st.data())
def test_encoder_any_bytes_cut_anywhere_match_the_one_shot_encoding(
    pieces: list[bytes], data: Any
) -> None:
    """Any mix of CR, LF and dots, cut anywhere, encodes as in one piece and as the reference."""
    message = b"".join(pieces)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(message)), max_size=10)))
    chunks = [message[a:b] for a, b in zip([0, *cuts], [*cuts, len(message)], strict=True)]
    one_shot = _encode([message])
    assert _encode(chunks) == one_shot == _reference(message)
    assert _encode(chunks, dot_stuff=False) == _encode([message], dot_stuff=False)


@pytest.mark.parametrize("flaw", [b"\n", b"\r", b"\n\r", b"\r\r\n", b"\r\n\n"])
@pytest.mark.parametrize("where", [0, 1, 7, 35_000, -2, -1])
def test_encoder_one_bare_line_end_in_a_large_crlf_chunk_is_normalised(
    flaw: bytes, where: int
) -> None:
    """A single stray CR or LF anywhere in 70 KB of CRLF text is found and made CRLF."""
    text = b"".join(b"%d. line\r\n.dot line\r\n" % i for i in range(3_000))
    position = where if where >= 0 else len(text) + where
    message = text[:position] + flaw + text[position:]
    assert _encode([message]) == _reference(message)
    half = len(message) // 2
    assert _encode([message[:half], message[half:]]) == _reference(message)


# -- a thousand recipients checked and quoted in bulk -----------------------------------------


def _one_by_one_plain(addresses: tuple[object, ...]) -> bool:
    """Every address a str of ASCII matching the one-address fast path's pattern."""
    return bool(addresses) and all(
        isinstance(a, str) and a.isascii() and _PLAIN_ADDRESS.fullmatch(a) is not None
        for a in addresses
    )


_ADDRESS_PARTS = st.sampled_from(
    [
        "a",
        "b.c",
        "@",
        " ",
        "<",
        ">",
        '"',
        ",",
        ";",
        ":",
        "\\",
        "(",
        "[",
        "\r",
        "\x00",
        "\x7f",
        "é",
        "+x",
    ]
)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.lists(_ADDRESS_PARTS, max_size=6).map("".join), max_size=6))
def test_plain_addresses_agrees_with_checking_each(addresses: list[str]) -> None:
    """The bulk check says "plain" exactly when every address alone would take the fast path."""
    plain = plain_addresses(tuple(addresses))
    assert plain == _one_by_one_plain(tuple(addresses))
    if plain:
        # So building the lines in bulk is safe: each passes and quotes as <it>.
        for address in addresses:
            assert check_argument(address, "address") == address
            assert quote_checked_address(address) == f"<{address}>"


def test_plain_addresses_refuses_non_strings() -> None:
    """A bytes address is not plain (the one-by-one check then names it)."""
    assert not plain_addresses(("a@b", b"c@d"))
    with pytest.raises(TypeError, match="recipient address must be str"):
        Envelope.check("s@x", ["a@b", b"c@d"])  # type: ignore[list-item]


@pytest.mark.parametrize(
    ("bad", "error", "message"),
    [
        ("r500@x\r\nRSET", SMTPArgumentError, "control character"),
        ("<>", SMTPArgumentError, "is empty"),
    ],
)
def test_envelope_check_names_the_culprit_among_a_thousand(
    bad: str, error: type[Exception], message: str
) -> None:
    """One bad address among 1,000 fails the check, naming it, as when checked alone."""
    recipients = [f"r{n}@example.test" for n in range(1000)]
    recipients[500] = bad
    with pytest.raises(error, match=message) as raised:
        Envelope.check("s@x", recipients)
    assert repr(bad) in str(raised.value)


def test_plan_quotes_plain_and_other_addresses_alike() -> None:
    """RCPT lines for plain addresses built in bulk equal those built one by one."""
    plain = Envelope.check("s@x", [f"r{n}@example.test" for n in range(3)])
    mixed = Envelope.check("s@x", ["r0@example.test", "Name <r1@example.test>", "r2@example.test"])
    features = Extensions.from_ehlo(b"mx\nSIZE 1000")
    expected = tuple(b"RCPT TO:<r%d@example.test>\r\n" % n for n in range(3))
    assert plan_transaction(plain, features, 10, False).rcpts == expected
    assert plan_transaction(mixed, features, 10, False).rcpts == expected


# -- batch replies taken in bulk, timers reused -----------------------------------------------


def test_batch_of_differing_plain_replies_keeps_each_text() -> None:
    """Accepted recipients' replies with different texts each keep their own text."""
    proto, _transport = _protocol()
    d = proto.send_batch(
        [
            Command(Kind.MAIL, b"(batch)\r\n"),
            Command(Kind.RCPT, b"", replies=5),
            Command(Kind.DATA, b""),
        ]
    )
    texts = [b"2.1.5 ok %d" % (n % 2) for n in range(5)]
    proto.dataReceived(
        b"250 sender\r\n" + b"".join(b"250 " + t + b"\r\n" for t in texts) + b"354 go\r\n"
    )
    assert success_result_of(d) == [
        Reply(250, b"sender"),
        *(Reply(250, t) for t in texts),
        Reply(354, b"go"),
    ]


def test_command_sent_from_a_reply_callback_reuses_the_timer() -> None:
    """A command written in answer to a reply moves the running timer instead of a new one."""
    clock = MemoryReactorClock()
    proto = SMTPClientProtocol(clock=clock)
    proto.makeConnection(StringTransport())  # type: ignore[no-untyped-call]
    timer = clock.getDelayedCalls()[0]
    second: list[Deferred[Reply]] = []
    proto.greeting.addCallback(lambda _: second.append(proto.send(command(b"EHLO x\r\n"))))
    clock.advance(100)
    proto.dataReceived(GREETING)
    assert clock.getDelayedCalls() == [timer]
    # The new command still gets its whole timeout, counted from its write.
    clock.advance(proto.timeouts.command - 0.5)  # type: ignore[operator]
    assert proto.usable
    clock.advance(1)
    assert not proto.usable
    failure_result_of(second[0], SMTPServerDisconnected)
    assert not clock.getDelayedCalls()


def test_shared_ehlo_features_are_read_only() -> None:
    """Sessions hearing the same EHLO reply share its parse, which none can change."""
    first = connected_session()
    second = connected_session()
    for s in (first, second):
        s.smtp.ehlo()
        s.take()
        s.feed(EHLO_PIPELINING)
    assert first.smtp.esmtp_features is second.smtp.esmtp_features
    assert first.smtp.has_option("pipelining")
    with pytest.raises(TypeError):
        first.smtp.esmtp_features.features["auth"] = "PLAIN"  # type: ignore[index]
