"""
The one place the SMTP transcript is logged.

At debug level 1 every command sent and every reply received is emitted as
a :mod:`twisted.logger` event in the ``txsmtpclient`` namespace; at level 2
each also carries a timestamp, as smtplib's ``set_debuglevel(2)`` prints one.
AUTH payloads and credentials never reach an event: callers pass what may be
shown through :func:`redact`.
"""

from __future__ import annotations

import datetime
import re

from twisted.logger import Logger

from txsmtpclient.reply import Reply
from txsmtpclient.session import Command, Kind

__all__ = ["REDACTED", "Transcript", "redact"]

REDACTED = b"<redacted>"

# AUTH, its mechanism, then the initial response (RFC 4954 section 4).
_AUTH_ARGUMENT = re.compile(rb"(?i)(AUTH[ \t]+[^ \t\r\n]+)[ \t]+[^\r\n]*")

#: Kinds whose bytes are message data: summarised, never logged.
_MESSAGE_DATA = frozenset({Kind.MESSAGE_END, Kind.BDAT, Kind.BDAT_LAST})

# Module level, not a class attribute: a Logger read through an instance
# (Logger.__get__) takes the class's dotted name as its namespace instead.
log = Logger(namespace="txsmtpclient")


def redact(line: bytes) -> bytes:
    """
    The one redaction: what may be logged of a command line.  ``AUTH
    <mechanism>`` keeps its mechanism name and loses any initial response
    (``AUTH PLAIN <redacted>``); anything else is shown as it is.  A
    trailing CRLF is kept.
    """
    if line[:4].upper() != b"AUTH":
        return line
    return _AUTH_ARGUMENT.sub(rb"\1 " + REDACTED, line, count=1)


class Transcript:
    """
    Logs one connection's dialogue when its debug level asks for it.

    :ivar level: 0 (silent), 1 (commands and replies) or 2 (with timestamps).
    """

    __slots__ = ("level",)

    def __init__(self, level: int = 0) -> None:
        self.level = level

    def _stamp(self) -> str:
        return datetime.datetime.now().time().isoformat() + " " if self.level > 1 else ""

    def sent(self, data: bytes) -> None:
        """
        Log bytes written to the server (already redacted by the caller).
        """
        if self.level:
            log.info(
                "{timestamp}send: {data!r}", timestamp=self._stamp(), data=data, direction="send"
            )

    def sent_command(self, command: Command) -> None:
        """
        Log a command written: message data as its size, secret steps
        (AUTH) through :func:`redact`, the rest line by line.
        """
        if not self.level:
            return
        if command.kind in _MESSAGE_DATA:
            self.sent(b"<%d bytes of message data>" % len(command.data))
        elif command.secret:
            self.sent(redact(command.data) if command.kind is Kind.AUTH else REDACTED)
        else:
            for line in command.data.splitlines(keepends=True):
                self.sent(redact(line))

    def received(self, reply: Reply, secret: bool = False) -> None:
        """
        Log one complete reply from the server; only its code when it is
        part of a secret exchange.
        """
        if self.level:
            if secret:
                reply = Reply(reply.code, REDACTED)
            log.info(
                "{timestamp}reply: {code} {message!r}",
                timestamp=self._stamp(),
                code=reply.code,
                message=reply.message,
                direction="reply",
            )

    def note(self, text: str) -> None:
        """
        Log a connection event (connected, closed, TLS started).
        """
        if self.level:
            log.info("{timestamp}{text}", timestamp=self._stamp(), text=text, direction="note")
