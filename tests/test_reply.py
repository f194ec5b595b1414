"""
Tests for :mod:`txsmtpclient.reply`: one table of replies drives the parser
directly and through the protocol's ``dataReceived`` (whole, one byte at a
time, and followed by more replies in the same segment).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import cast

import pytest
from helpers import command, deliver, expect, failure_result_of, success_result_of
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IProtocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from txsmtpclient.errors import SMTPProtocolError
from txsmtpclient.protocol import SMTPClientProtocol
from txsmtpclient.reply import (
    DEFAULT_MAX_LINE_LENGTH,
    DEFAULT_MAX_REPLY_LENGTH,
    MalformedReply,
    Reply,
    ReplyParser,
)

_LONGEST_TEXT = b"x" * (DEFAULT_MAX_LINE_LENGTH - 4)
# Each line counts its text and one separator byte towards the limit.
_LONG_LINE_COUNT = DEFAULT_MAX_REPLY_LENGTH // 97 + 1

#: (name, the bytes the server sends, the reply expected or None if malformed)
CASES: list[tuple[str, bytes, Reply | None]] = [
    ("single line", b"250 OK\r\n", Reply(250, b"OK")),
    ("greeting", b"220 mx.example ESMTP\r\n", Reply(220, b"mx.example ESMTP")),
    (
        "multi-line",
        b"250-mx.example\r\n250-SIZE 1000\r\n250 HELP\r\n",
        Reply(250, b"mx.example\nSIZE 1000\nHELP"),
    ),
    ("code only", b"250\r\n", Reply(250, b"")),
    ("code and space only", b"354 \r\n", Reply(354, b"")),
    ("empty continuation lines", b"250-\r\n250-\r\n250 end\r\n", Reply(250, b"\n\nend")),
    ("multi-line ended by a bare code", b"250-a\r\n250\r\n", Reply(250, b"a\n")),
    ("enhanced code", b"550 5.1.1 No such user\r\n", Reply(550, b"5.1.1 No such user")),
    ("bare LF line ends", b"250-a\n250 b\n", Reply(250, b"a\nb")),
    ("8-bit text kept", b"250 caf\xc3\xa9 \xff\r\n", Reply(250, b"caf\xc3\xa9 \xff")),
    ("text with hyphens and spaces", b"250 a - b  c \r\n", Reply(250, b"a - b  c ")),
    ("longest line", b"250 " + _LONGEST_TEXT + b"\r\n", Reply(250, _LONGEST_TEXT)),
    ("no code", b"OK\r\n", None),
    ("empty line", b"\r\n", None),
    ("short code", b"25 OK\r\n", None),
    ("letters in code", b"2x0 OK\r\n", None),
    ("code below 200", b"150 OK\r\n", None),
    ("code above 599", b"650 OK\r\n", None),
    ("disagreeing codes", b"250-a\r\n251 b\r\n", None),
    ("disagreeing continuation codes", b"250-a\r\n550-b\r\n550 c\r\n", None),
    ("bad separator", b"250_OK\r\n", None),
    ("four-digit code", b"2500 OK\r\n", None),
    ("tab separator", b"250\tOK\r\n", None),
    ("over-long line", b"250 " + _LONGEST_TEXT + b"x\r\n", None),
    (
        "over-long reply",
        b"".join(b"250-" + b"y" * 96 + b"\r\n" for _ in range(_LONG_LINE_COUNT)) + b"250 z\r\n",
        None,
    ),
]

IDS = [case[0] for case in CASES]
VALID = [case for case in CASES if case[2] is not None]


def _lines(data: bytes) -> Iterator[bytes]:
    for line in data.split(b"\n")[:-1]:
        yield line[:-1] if line.endswith(b"\r") else line


def _parse_all(data: bytes) -> list[Reply]:
    parser = ReplyParser()
    replies: list[Reply] = []
    for line in _lines(data):
        reply = parser.feed(line)
        if reply is not None:
            replies.append(reply)
    assert not parser.in_reply
    return replies


@pytest.mark.parametrize(("name", "data", "expected"), CASES, ids=IDS)
def test_parser_whole(name: str, data: bytes, expected: Reply | None) -> None:
    """The parser turns each case's lines into its one reply, or refuses them."""
    if expected is None:
        with pytest.raises(MalformedReply):
            _parse_all(data)
    else:
        assert _parse_all(data) == [expected]


@pytest.mark.parametrize(("name", "data", "expected"), VALID, ids=[c[0] for c in VALID])
def test_parser_several_replies(name: str, data: bytes, expected: Reply) -> None:
    """A case followed by another reply gives both, in order, and nothing more."""
    assert _parse_all(data + b"221 bye\r\n" + data) == [expected, Reply(221, b"bye"), expected]


def _protocol(waiters: int) -> tuple[SMTPClientProtocol, StringTransport, list[Deferred[Reply]]]:
    proto = SMTPClientProtocol(clock=Clock())
    transport = StringTransport()
    cast(IProtocol, proto).makeConnection(transport)
    deliver(proto, b"220 hi\r\n")
    deferreds = [expect(proto) for _ in range(waiters)]
    return proto, transport, deferreds


def _whole(proto: SMTPClientProtocol, data: bytes) -> None:
    deliver(proto, data)


def _bytewise(proto: SMTPClientProtocol, data: bytes) -> None:
    for i in range(len(data)):
        deliver(proto, data[i : i + 1])


FEEDERS: list[Callable[[SMTPClientProtocol, bytes], None]] = [_whole, _bytewise]


@pytest.mark.parametrize("feed", FEEDERS, ids=["whole", "bytewise"])
@pytest.mark.parametrize(("name", "data", "expected"), CASES, ids=IDS)
def test_protocol_receives(
    name: str,
    data: bytes,
    expected: Reply | None,
    feed: Callable[[SMTPClientProtocol, bytes], None],
) -> None:
    """
    Through ``dataReceived``, whole or byte by byte, a case fires the
    waiting Deferred with its reply; a malformed one fails it with
    SMTPProtocolError and aborts the connection.
    """
    proto, transport, (waiter,) = _protocol(1)
    feed(proto, data)
    if expected is None:
        failure_result_of(waiter, SMTPProtocolError)
        assert transport.disconnected  # aborted, not a polite close
        assert not proto.usable
        failure_result_of(proto.send(command(b"NOOP\r\n")), SMTPProtocolError)
    else:
        assert success_result_of(waiter) == expected
        assert proto.usable
        assert not transport.disconnecting


@pytest.mark.parametrize(("name", "data", "expected"), CASES, ids=IDS)
def test_protocol_trailing_replies(name: str, data: bytes, expected: Reply | None) -> None:
    """
    A case with two more replies in the same segment fires three waiters in
    order; after a malformed case, every waiter fails.
    """
    proto, transport, waiters = _protocol(3)
    deliver(proto, data + b"251 second\r\n252-third\r\n252 end\r\n")
    if expected is None:
        for waiter in waiters:
            failure_result_of(waiter, SMTPProtocolError)
        assert transport.disconnected
    else:
        assert [success_result_of(w) for w in waiters] == [
            expected,
            Reply(251, b"second"),
            Reply(252, b"third\nend"),
        ]


def test_partial_reply_waits() -> None:
    """Half a multi-line reply fires nothing until its last line arrives."""
    proto, _transport, (waiter,) = _protocol(1)
    deliver(proto, b"250-first\r\n250 sec")
    assert not waiter.called
    deliver(proto, b"ond\r\n")
    assert success_result_of(waiter) == Reply(250, b"first\nsecond")


def test_parser_reset_forgets_partial_reply() -> None:
    """After reset(), a half-collected reply is gone and codes may change."""
    parser = ReplyParser()
    assert parser.feed(b"250-a") is None
    assert parser.in_reply
    parser.reset()
    assert not parser.in_reply
    assert parser.feed(b"220 ready") == Reply(220, b"ready")


def test_parser_limits_are_configurable() -> None:
    """Smaller limits are enforced exactly at their edge."""
    parser = ReplyParser(max_line_length=10, max_reply_length=12)
    assert parser.feed(b"250 123456") == Reply(250, b"123456")
    with pytest.raises(MalformedReply, match="exceeds"):
        parser.feed(b"250 1234567")
    parser = ReplyParser(max_line_length=10, max_reply_length=12)
    assert parser.feed(b"250-12345") is None  # 6 bytes counted
    with pytest.raises(MalformedReply, match="multi-line reply exceeds"):
        parser.feed(b"250-123456")  # 7 more: 13


def test_parser_recovers_after_complete_reply() -> None:
    """A finished reply leaves no state: the next reply may use another code."""
    parser = ReplyParser()
    assert parser.feed(b"250-a") is None
    assert parser.feed(b"250 b") == Reply(250, b"a\nb")
    assert parser.feed(b"550 c") == Reply(550, b"c")


@pytest.mark.parametrize(
    ("reply", "enhanced"),
    [
        (Reply(250, b"2.1.5 OK"), "2.1.5"),
        (Reply(550, b"5.1.1 No such user"), "5.1.1"),
        (Reply(452, b"4.3.1 Insufficient system storage"), "4.3.1"),
        (Reply(250, b"2.0.0"), "2.0.0"),
        (Reply(554, b"5.123.456 odd but legal"), "5.123.456"),
        (Reply(451, b"4.7.1\nmore text"), "4.7.1"),
        (Reply(250, b"OK"), None),
        (Reply(250, b""), None),
        (Reply(550, b"2.1.5 class disagrees with the code"), None),
        (Reply(250, b"2.1.5x"), None),
        (Reply(250, b"2.1000.5 too long"), None),
        (Reply(250, b"3.1.5 no such class"), None),
        (Reply(250, b" 2.1.5 leading space"), None),
    ],
)
def test_enhanced_code(reply: Reply, enhanced: str | None) -> None:
    """The RFC 3463 code is read from the first line when its class matches."""
    assert reply.enhanced_code == enhanced


def test_reply_is_smtplib_tuple() -> None:
    """A Reply unpacks and compares as smtplib's (code, message) tuple."""
    reply = Reply(250, b"a\nb")
    code, message = reply
    assert (code, message) == (250, b"a\nb")
    assert reply == (250, b"a\nb")
    assert reply.lines == [b"a", b"b"]
    assert reply.text == "a\nb"
    assert Reply(250, b"\xff").text == "\ufffd"


@pytest.mark.parametrize(
    ("code", "positive", "transient", "permanent"),
    [
        (220, True, False, False),
        (354, True, False, False),
        (421, False, True, False),
        (450, False, True, False),
        (550, False, False, True),
        (554, False, False, True),
    ],
)
def test_reply_classes(code: int, positive: bool, transient: bool, permanent: bool) -> None:
    """Each reply class answers exactly one of the three questions."""
    reply = Reply(code, b"")
    assert (reply.is_positive, reply.is_transient, reply.is_permanent) == (
        positive,
        transient,
        permanent,
    )
