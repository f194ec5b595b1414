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
import time
from collections.abc import Mapping
from typing import TextIO

from twisted.logger import Logger, LogLevel, globalLogBeginner

from txsmtpclient.errors import SMTPAmbiguousDelivery
from txsmtpclient.reply import Reply
from txsmtpclient.session import Command, Kind

__all__ = ["REDACTED", "Trace", "Transcript", "log_transaction", "logging_begun", "redact"]

REDACTED = b"<redacted>"

# AUTH, its mechanism, then the initial response (RFC 4954 section 4).
_AUTH_ARGUMENT = re.compile(rb"(?i)(AUTH[ \t]+[^ \t\r\n]+)[ \t]+[^\r\n]*")

#: Kinds whose bytes are message data: summarised, never logged.
_MESSAGE_DATA = frozenset({Kind.MESSAGE_END, Kind.BDAT, Kind.BDAT_LAST})

# Module level, not a class attribute: a Logger read through an instance
# (Logger.__get__) takes the class's dotted name as its namespace instead.
log = Logger(namespace="txsmtpclient")


def logging_begun() -> bool:
    """
    Whether anything has begun observing :mod:`twisted.logger` events
    (``twist``, ``twistd`` and ``globalLogBeginner.beginLoggingTo`` do); until
    then events are only buffered, and a transcript nobody sees is no use.
    """
    # Twisted (26.10) offers no public way to ask.  LogBeginner's public
    # members are beginLoggingTo() and showwarning(); LogPublisher lists no
    # observers; beginLoggingTo()'s one other visible effect, setting
    # warnings.showwarning to globalLogBeginner.showwarning, is undone by
    # any warnings.catch_warnings() (pytest wraps each test in one) and by
    # applications that set their own.  The beginner's documented ivar
    # _temporaryObserver becomes None in beginLoggingTo() and nowhere else,
    # so it is exact.  Were it renamed, getattr() would answer "begun" and
    # the transcript would only reach the log's buffer; the README example's
    # test in tests/test_smtplib_parity.py, which expects it on stderr while
    # no observer runs, would then fail.
    return getattr(globalLogBeginner, "_temporaryObserver", None) is None


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

    __slots__ = ("echo", "level")

    def __init__(self, level: int = 0) -> None:
        self.level = level
        #: Also print each line here, as smtplib prints to stderr: used
        #: while no twisted.logger observer has begun (see
        #: :func:`logging_begun`), so ``set_debuglevel(1)`` shows something
        #: under ``task.react`` too.
        self.echo: TextIO | None = None

    def _print(self, text: str) -> None:
        if self.echo is not None:
            print(text, file=self.echo)

    def _stamp(self) -> str:
        return datetime.datetime.now().time().isoformat() + " " if self.level > 1 else ""

    def sent(self, data: bytes) -> None:
        """
        Log bytes written to the server (already redacted by the caller).
        """
        if self.level:
            stamp = self._stamp()
            log.info("{timestamp}send: {data!r}", timestamp=stamp, data=data, direction="send")
            self._print(f"{stamp}send: {data!r}")

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
            stamp = self._stamp()
            log.info(
                "{timestamp}reply: {code} {message!r}",
                timestamp=stamp,
                code=reply.code,
                message=reply.message,
                direction="reply",
            )
            self._print(f"{stamp}reply: {reply.code} {reply.message!r}")

    def note(self, text: str) -> None:
        """
        Log a connection event (connected, closed, TLS started).
        """
        if self.level:
            stamp = self._stamp()
            log.info("{timestamp}{text}", timestamp=stamp, text=text, direction="note")
            self._print(f"{stamp}{text}")


#: Where each kind of command's reply time is counted in :class:`Trace`.
_TRACE_STAGE = {
    Kind.GREETING: "greeting",
    Kind.EHLO: "ehlo",
    Kind.HELO: "ehlo",
    Kind.STARTTLS: "tls",
    Kind.AUTH: "auth",
    Kind.AUTH_RESPONSE: "auth",
    Kind.MAIL: "envelope",
    Kind.RCPT: "envelope",
    Kind.DATA: "envelope",
    Kind.BDAT: "data",
    Kind.MESSAGE_END: "final",
    Kind.BDAT_LAST: "final",
    Kind.RSET: "command",
    Kind.QUIT: "command",
    Kind.COMMAND: "command",
}

transactions = Logger(namespace="txsmtpclient.transaction")


class Trace:
    """
    What one connection did since the last transaction event: seconds spent
    per stage, every reply (AUTH texts redacted), bytes written, and the TLS
    session.  Kept always, at the cost of a clock reading per command and
    per reply; turned into an event by :func:`log_transaction`.
    """

    __slots__ = (
        "bytes_sent",
        "carried",
        "ended",
        "last_reply_at",
        "peer_subject",
        "replies",
        "timings",
        "tls",
    )

    def __init__(self) -> None:
        self.timings: dict[str, float] = {}
        self.replies: list[Reply] = []
        self.bytes_sent = 0
        # Whether this transaction's message end is written (with a
        # pipelined successor): later bytes are the next transaction's.
        self.ended = False
        # Bytes of the next transaction written before this one ended.
        self.carried = 0
        self.last_reply_at = 0.0
        #: (version, cipher) once TLS is up.
        self.tls: tuple[str | None, str | None] | None = None
        self.peer_subject: str | None = None

    @staticmethod
    def stage(kind: Kind) -> str:
        """
        The stage whose time a command of ``kind`` counts towards.
        """
        return _TRACE_STAGE[kind]

    def add(self, stage: str, seconds: float) -> None:
        """
        Count ``seconds`` towards ``stage``.
        """
        self.timings[stage] = self.timings.get(stage, 0.0) + seconds

    def replied(self, replies: list[Reply], secret: bool) -> None:
        """
        Keep the replies to one send.
        """
        if secret:
            self.replies += [Reply(reply.code, REDACTED) for reply in replies]
        else:
            self.replies += replies

    def take(self) -> tuple[dict[str, float], list[Reply], int]:
        """
        The timings, replies and byte count so far, and start afresh.
        """
        taken = self.timings, self.replies, self.bytes_sent
        self.timings, self.replies, self.bytes_sent = {}, [], self.carried
        self.carried = 0
        self.ended = False
        return taken


def log_transaction(
    trace: Trace,
    relay: str,
    sender: str,
    recipients: int,
    result: Mapping[str, Reply] | None,
    error: BaseException | None,
) -> None:
    """
    Emit the one event that ends a transaction (``sendmail``), in the
    ``txsmtpclient.transaction`` namespace at debug level; README.rst's
    "Transaction events" lists its keys.
    """
    timings, replies, bytes_sent = trace.take()
    final: Reply | None = getattr(result, "final", None)
    code = final.code if final is not None else getattr(error, "smtp_code", None)
    if error is None:
        outcome = "sent"
    elif isinstance(error, SMTPAmbiguousDelivery):
        outcome = "ambiguous"
    else:
        outcome = "failed"
    version, cipher = trace.tls if trace.tls is not None else (None, None)
    # Logger.emit's own level check walks every LogLevel on each call; the
    # event is the same dict it would build, handed to the same observer.
    transactions.observer(
        dict(
            log_logger=transactions,
            log_level=LogLevel.debug,
            log_namespace=transactions.namespace,
            log_source=None,
            log_format="Transaction to {relay}: {outcome}, code {code}, queue id {queue_id}",
            log_time=time.time(),
            relay=relay,
            outcome=outcome,
            error=None if error is None else type(error).__name__,
            temporary=getattr(error, "temporary", None),
            code=code,
            queue_id=final.queue_id if final is not None else None,
            sender=sender,
            recipients=recipients,
            refused=len(result) if result is not None else None,
            timings=timings,
            duration=sum(timings.values()),
            tls_version=version,
            tls_cipher=cipher,
            peer_subject=trace.peer_subject,
            replies=tuple(replies),
            bytes_sent=bytes_sent,
        )
    )
