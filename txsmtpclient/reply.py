"""
SMTP replies: the :class:`Reply` value and :class:`ReplyParser`, which turns
reply lines into complete replies (RFC 5321 section 4.2).

Sans-IO: lines in, replies or exceptions out; nothing here imports Twisted.
"""

from __future__ import annotations

import re
from typing import NamedTuple

__all__ = [
    "DEFAULT_MAX_LINE_LENGTH",
    "DEFAULT_MAX_REPLY_LENGTH",
    "MalformedReply",
    "Reply",
    "ReplyParser",
    "parse_queue_id",
]

#: RFC 5321 section 4.5.3.1.5 allows 512 octets per reply line, but real
#: servers send longer EHLO and error lines; smtplib and aiosmtplib allow 8192.
DEFAULT_MAX_LINE_LENGTH = 8192
#: A whole (multi-line) reply; far beyond any honest EHLO list.
DEFAULT_MAX_REPLY_LENGTH = 256 * 1024

# RFC 3463 section 2: class "." subject "." detail, then a space (RFC 2034),
# or the end of the first line.
_ENHANCED = re.compile(rb"([245])\.(\d{1,3})\.(\d{1,3})(?:[ \n]|$)")


#: Where relays put their queue id in the reply to the final dot.
_QUEUE_ID_PATTERNS = (
    # Postfix, Sendmail ("Ok: queued as 4F3A2B1C0D", "Message accepted for
    # delivery" has none), SendGrid, Mailgun-like.
    re.compile(r"queued as\s+<?([^\s>]+?)>?(?:\s|$)", re.IGNORECASE),
    # Exim: "OK id=1qXyZ9-000AbC-Dd".
    re.compile(r"\bid=([A-Za-z0-9._@-]+)"),
    # Exchange: "[InternalId=12345, Hostname=...] Queued mail for delivery".
    re.compile(r"InternalId=([0-9A-Za-z]+)"),
    # Gmail: "2.0.0 OK  1700000000 x1-20020a05600c000000b0040000000000si.123 - gsmtp".
    re.compile(r"OK\s+\d+\s+(\S+)\s+-\s+gsmtp", re.IGNORECASE),
)


def parse_queue_id(text: str) -> str | None:
    """
    Find the relay's queue id in the text of a 250 reply to the final dot.

    :param text: the reply text without the code, e.g. ``"2.0.0 Ok: queued
        as ABC123"``.
    :returns: ``"ABC123"``, or ``None`` if the text names no id.
    """
    for pattern in _QUEUE_ID_PATTERNS:
        match = pattern.search(text)
        if match is not None:
            return match.group(1)
    return None


class MalformedReply(Exception):
    """
    A reply line broke RFC 5321 section 4.2: no three-digit code, a code that
    disagrees with the earlier lines of the same reply, a bad separator, or a
    length over the limit.  The protocol turns it into
    :class:`~txsmtpclient.errors.SMTPProtocolError`.
    """


class Reply(NamedTuple):
    """
    One complete server reply, smtplib's ``(code, message)`` 2-tuple.

    ``message`` is the text of every line with the codes stripped, joined by
    ``b"\\n"``, exactly as smtplib's ``getreply()`` gives it.
    """

    code: int
    message: bytes

    @property
    def lines(self) -> list[bytes]:
        """
        The text of each line of the reply, codes stripped.
        """
        return self.message.split(b"\n")

    @property
    def text(self) -> str:
        """
        The message decoded as UTF-8 (invalid bytes replaced), for humans.
        """
        return self.message.decode("utf-8", "replace")

    @property
    def enhanced_code(self) -> str | None:
        """
        The RFC 3463 enhanced status code (``"2.1.5"``) that starts the first
        line, if there is one whose class agrees with the reply code.
        """
        match = _ENHANCED.match(self.message)
        if match is None or match.group(1)[0] != 0x30 + self.code // 100:
            return None
        return match.group(0).rstrip().decode("ascii")

    @property
    def queue_id(self) -> str | None:
        """
        The relay's queue id named in the reply (``"250 2.0.0 Ok: queued as
        ABC123"`` gives ``"ABC123"``), if any: see :func:`parse_queue_id`.
        """
        return parse_queue_id(self.text)

    @property
    def is_positive(self) -> bool:
        """
        A 2xx or 3xx reply.
        """
        return 200 <= self.code < 400

    @property
    def is_transient(self) -> bool:
        """
        A 4xx reply: try again later.
        """
        return 400 <= self.code < 500

    @property
    def is_permanent(self) -> bool:
        """
        A 5xx reply.
        """
        return self.code >= 500


class ReplyParser:
    """
    Collects reply lines into complete replies.

    Feed it each line as received, without its line terminator; it returns a
    :class:`Reply` when the line completed one (the last line of a reply has a
    space, or nothing, after the code; the others a hyphen) and ``None`` when
    more lines are needed.

    :param max_line_length: the longest line accepted, in bytes.
    :param max_reply_length: the most bytes of text one reply may collect.
    """

    __slots__ = ("_code", "_lines", "_size", "max_line_length", "max_reply_length")

    def __init__(
        self,
        max_line_length: int = DEFAULT_MAX_LINE_LENGTH,
        max_reply_length: int = DEFAULT_MAX_REPLY_LENGTH,
    ) -> None:
        self.max_line_length = max_line_length
        self.max_reply_length = max_reply_length
        self._code = b""
        self._lines: list[bytes] = []
        self._size = 0

    @property
    def in_reply(self) -> bool:
        """
        Whether part of a multi-line reply has been collected.
        """
        return bool(self._lines)

    def reset(self) -> None:
        """
        Forget any partly collected reply (after STARTTLS, say).
        """
        self._code = b""
        self._lines = []
        self._size = 0

    def one_line(self, line: bytes) -> Reply | None:
        """
        The one fast path for replies: the :class:`Reply` on ``line`` (its
        terminator stripped) when it is a whole, valid one-line reply within
        the limits, without touching the parser's state; ``None`` for
        anything else, which :meth:`feed` then judges line by line.
        """
        if (
            line[3:4] == b" "
            and len(line) <= self.max_line_length
            and len(line) - 3 <= self.max_reply_length
            and line[:3].isdigit()
            and 0x32 <= line[0] <= 0x35
        ):
            return Reply(int(line[:3]), line[4:])
        return None

    def feed(self, line: bytes) -> Reply | None:
        """
        Take one reply line.

        :returns: the completed reply, or ``None`` if the reply goes on.
        :raises MalformedReply: if the line or the reply breaks the rules.
        """
        if not self._lines:
            # The usual case, a one-line reply, checked in one step.
            reply = self.one_line(line)
            if reply is not None:
                return reply
        if len(line) > self.max_line_length:
            raise MalformedReply(
                f"reply line of {len(line)} bytes exceeds the limit of {self.max_line_length}"
            )
        code = line[:3]
        if len(code) != 3 or not code.isdigit() or not 0x32 <= code[0] <= 0x35:
            raise MalformedReply(f"reply line without a valid reply code: {line[:80]!r}")
        separator = line[3:4]
        if separator not in (b" ", b"-", b""):
            raise MalformedReply(f"bad separator after the reply code: {line[:80]!r}")
        if self._lines and code != self._code:
            raise MalformedReply(
                f"reply code {code.decode()} disagrees with {self._code.decode()} "
                "earlier in the same reply"
            )
        text = line[4:]
        self._size += len(text) + 1
        if self._size > self.max_reply_length:
            raise MalformedReply(
                f"multi-line reply exceeds the limit of {self.max_reply_length} bytes"
            )
        if separator == b"-":
            self._code = code
            self._lines.append(text)
            return None
        if self._lines:
            self._lines.append(text)
            message = b"\n".join(self._lines)
            self._lines = []
        else:
            message = text
        self._code = b""
        self._size = 0
        return Reply(int(code), message)
