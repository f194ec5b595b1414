"""
The SMTP client session as a state machine, without I/O: commands in,
bytes to write out; bytes received in, events out (in the manner of h11's
``Connection``).  Nothing here imports Twisted; :mod:`txsmtpclient.protocol`
carries the bytes and runs the timers.

Everything that decides what may be sent or what a reply means lives here:

* one :class:`~txsmtpclient.states.State` enum and one transition table
  (in :mod:`txsmtpclient.states`: ``SEND_TRANSITIONS`` for commands written,
  ``REPLY_TRANSITIONS`` for replies read), applied here;
* which reply codes can answer which command (``states.ANSWERS``): anything
  else is :class:`~txsmtpclient.errors.SMTPProtocolError`;
* pairing replies with commands, one at a time or in pipelined batches
  (RFC 2920), where bytes received before a command was written are never
  its reply;
* 421 at any stage (RFC 5321 section 3.8): nothing more is written;
* the STARTTLS rule (RFC 3207 section 4.2): nothing received before the
  handshake survives it, and EHLO must be said again after it;
* which timeout applies to the reply awaited.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from functools import lru_cache
from typing import NamedTuple

from txsmtpclient.errors import (
    SMTPLocalProtocolError,
    SMTPProtocolError,
    SMTPServerDisconnected,
)
from txsmtpclient.reply import (
    DEFAULT_MAX_LINE_LENGTH,
    DEFAULT_MAX_REPLY_LENGTH,
    MalformedReply,
    Reply,
    ReplyParser,
)
from txsmtpclient.states import (
    ANSWERS,
    ANSWERS_DEFAULT,
    FAST,
    REPLY_TRANSITIONS,
    SEND_TRANSITIONS,
    Kind,
    State,
)

__all__ = [
    "DEFAULT_TIMEOUTS",
    "Command",
    "ConnectionFailed",
    "Event",
    "Kind",
    "Replied",
    "Session",
    "StartTLS",
    "State",
    "Timeouts",
]


@dataclass(frozen=True, slots=True)
class Timeouts:
    """
    Seconds to wait at each stage; the defaults are RFC 5321 section
    4.5.3.2's minimums.  ``None`` waits for ever.

    :ivar connect: for the TCP (and implicit TLS) connection.
    :ivar greeting: for the 220 greeting (4.5.3.2.1: 5 minutes).
    :ivar command: for EHLO, HELO, RSET, NOOP, VRFY, AUTH, QUIT and others.
    :ivar mail: for the reply to MAIL (4.5.3.2.2: 5 minutes).
    :ivar rcpt: for each reply to RCPT (4.5.3.2.3: 5 minutes).
    :ivar data_init: for the 354 reply to DATA (4.5.3.2.4: 2 minutes).
    :ivar data_block: between writes of message data (4.5.3.2.5: 3 minutes).
    :ivar data_end: for the reply to the final dot (4.5.3.2.6: 10 minutes).
    """

    connect: float | None = 60.0
    greeting: float | None = 300.0
    command: float | None = 300.0
    mail: float | None = 300.0
    rcpt: float | None = 300.0
    data_init: float | None = 120.0
    data_block: float | None = 180.0
    data_end: float | None = 600.0

    @classmethod
    def every(cls, seconds: float | None) -> Timeouts:
        """
        The same timeout at every stage, as smtplib's single ``timeout``.
        """
        return cls(**{f.name: seconds for f in fields(cls)})

    def for_stage(self, stage: str) -> float | None:
        """
        The timeout of a stage named as one of the fields (``"rcpt"``); any
        other name is an ordinary command.
        """
        value: float | None = getattr(self, stage, self.command)
        return value

    def with_(self, **changes: float | None) -> Timeouts:
        """
        A copy with some stages changed.
        """
        return replace(self, **changes)


#: RFC 5321's timeouts, the default everywhere.
DEFAULT_TIMEOUTS = Timeouts()


class Command(NamedTuple):
    """
    One command to write, already encoded (:mod:`txsmtpclient.commands`).

    :ivar kind: what the command is.
    :ivar data: its bytes, CRLF included (with message data for BDAT and
        :attr:`Kind.MESSAGE_END`).
    :ivar replies: how many replies it gets: several for that many RCPT lines
        joined in one value, or for LMTP's one reply per recipient after
        the final dot.
    :ivar secret: neither it nor its replies may be logged (AUTH).
    """

    kind: Kind
    data: bytes
    replies: int = 1
    secret: bool = False


class Replied(NamedTuple):
    """
    Every reply to one :meth:`Session.send` (one command, or a pipelined
    batch), in order.

    :ivar tag: what the caller gave to :meth:`Session.send`.
    """

    tag: object
    replies: list[Reply]


class StartTLS(NamedTuple):
    """
    STARTTLS got its 220: start the TLS handshake now, before anything else
    is read.  Whatever was received after the 220 has been thrown away.
    """


class ConnectionFailed(NamedTuple):
    """
    The session is over: the server said 421, or broke the protocol.

    :ivar error: what to fail every unanswered call with.
    :ivar abort: drop the connection at once (a broken server) rather than
        close it politely (a 421).
    :ivar unanswered: the tags of the sends that will get no reply.
    """

    error: SMTPServerDisconnected
    abort: bool
    unanswered: tuple[object, ...]


Event = Replied | StartTLS | ConnectionFailed


#: ANSWERS and REPLY_TRANSITIONS by kind, for one lookup per reply: the
#: codes and classes that can answer, and the states replies lead to by
#: exact code or by class (codes are 200 and up, classes 2 to 5).
_RULES: dict[Kind, tuple[frozenset[int], frozenset[int], dict[int, State]]] = {
    kind: (
        *ANSWERS.get(kind, ANSWERS_DEFAULT),
        {key: state for (k, key), state in REPLY_TRANSITIONS.items() if k is kind},
    )
    for kind in Kind
}


@lru_cache(maxsize=32)
def _by_kind(timeouts: Timeouts) -> dict[Kind, float | None]:
    """
    Each kind's timeout, built once per :class:`Timeouts` value (a new
    connection per message would otherwise rebuild it every time); read only.
    """
    return {kind: timeouts.for_stage(kind.stage) for kind in Kind}


#: The most distinct one-line replies remembered per session (replies
#: naming a queue id differ every time; those past the limit are parsed).
_SEEN_LIMIT = 64


class _Exchange:
    """
    One send awaiting its replies.
    """

    __slots__ = ("kinds", "replies", "tag")

    def __init__(self, kinds: list[Kind], tag: object) -> None:
        self.kinds = kinds
        self.tag = tag
        self.replies: list[Reply] = []


def _closing(reply: Reply) -> SMTPServerDisconnected:
    return SMTPServerDisconnected(
        f"the server is closing the connection: {reply.code} {reply.text}"
    )


class Session:
    """
    One SMTP client session, without I/O.

    :param timeouts: the timeout of each stage, read by :attr:`timeout`.
    :param max_line_length: the longest reply line accepted.
    :param max_reply_length: the most text one (multi-line) reply may hold.
    :param greeting_tag: the tag of the greeting's :class:`Replied`.

    :ivar state: the :class:`State`.
    :ivar error: why the session ended, once it has.
    """

    def __init__(
        self,
        timeouts: Timeouts = DEFAULT_TIMEOUTS,
        max_line_length: int = DEFAULT_MAX_LINE_LENGTH,
        max_reply_length: int = DEFAULT_MAX_REPLY_LENGTH,
        greeting_tag: object = None,
    ) -> None:
        self.state = State.GREETING
        self.error: SMTPServerDisconnected | None = None
        self._parser = ReplyParser(max_line_length, max_reply_length)
        self.max_line_length = max_line_length
        self._timeouts = _by_kind(timeouts)
        self._pending: deque[_Exchange] = deque([_Exchange([Kind.GREETING], greeting_tag)])
        self._buffer = b""
        # One-line replies already parsed, by line.
        self._seen: dict[bytes, Reply] = {}
        # Bytes sit in the buffer that arrived while no reply was awaited.
        self._stray = False
        #: how many replies have been read (the glue restarts its timer when
        #: this moves).
        self.received = 0

    # -- what the glue asks ------------------------------------------------------

    @property
    def pending(self) -> int:
        """
        How many sends await replies.
        """
        return len(self._pending)

    @property
    def waiting_for(self) -> Kind | None:
        """
        The kind of command whose reply is awaited next, if any.
        """
        if not self._pending:
            return None
        exchange = self._pending[0]
        return exchange.kinds[len(exchange.replies)]

    @property
    def timeout(self) -> float | None:
        """
        Seconds the next reply may take (counted from the last reply, or
        from the write when none was awaited); ``None`` when no reply is
        awaited or the stage waits for ever.
        """
        kind = self.waiting_for
        return None if kind is None else self._timeouts[kind]

    # -- sending -------------------------------------------------------------------

    def _check_send(self, kind: Kind) -> None:
        if self.state is State.CLOSED and self.error is not None:
            raise self.error
        after = SEND_TRANSITIONS.get((self.state, kind))
        if after is None:
            raise SMTPLocalProtocolError(f"cannot send {kind.name} in state {self.state.name}")
        self.state = after

    def send(self, command: Command, tag: object = None) -> bytes:
        """
        Write one command (or ``command.replies`` of one kind).

        :param tag: handed back in the :class:`Replied` for it.
        :returns: the bytes to write.
        :raises SMTPLocalProtocolError: when the state does not allow it.
        :raises SMTPProtocolError: when the server sent bytes before this
            command was written (they cannot be its reply); the session is
            over, nothing is to be written.
        :raises SMTPServerDisconnected: when the session is already over.
        """
        self._check_send(command.kind)
        self._open([command.kind] * command.replies, tag)
        return command.data

    def send_batch(self, commands: Sequence[Command], tag: object = None) -> bytes:
        """
        Write several commands at once (RFC 2920 pipelining); their replies
        come back together in one :class:`Replied`.

        :returns: the bytes to write, in one write.
        :raises: as :meth:`send`.
        """
        kinds: list[Kind] = []
        for command in commands:
            self._check_send(command.kind)
            if command.replies == 1:
                kinds.append(command.kind)
            else:
                kinds += [command.kind] * command.replies
        self._open(kinds, tag)
        return b"".join([command.data for command in commands])

    def _open(self, kinds: list[Kind], tag: object) -> None:
        if self._stray:
            error = SMTPProtocolError(
                "the server sent data before the command it would answer was written: "
                f"{self._buffer[:80]!r}"
            )
            self._fail(error)
            raise error
        self._pending.append(_Exchange(kinds, tag))

    def send_data(self, data: bytes) -> bytes:
        """
        Message data after DATA's 354, that expects no reply of its own.

        :raises SMTPLocalProtocolError: outside :attr:`State.DATA`.
        """
        if self.state is not State.DATA:
            raise SMTPLocalProtocolError(f"cannot send message data in state {self.state.name}")
        return data

    def tls_established(self) -> None:
        """
        The TLS handshake STARTTLS began is done: EHLO is due again.

        :raises SMTPLocalProtocolError: when no STARTTLS was accepted.
        """
        if self.state is not State.TLS:
            raise SMTPLocalProtocolError(f"no TLS handshake was due in state {self.state.name}")
        self.state = State.HELLO

    def fail(self) -> list[object]:
        """
        End the session from this side (a timeout, a lost connection, a
        close): nothing more is sent or read.

        :returns: the tags of the sends that will get no reply.
        """
        self.state = State.CLOSED
        unanswered = [exchange.tag for exchange in self._pending]
        self._pending.clear()
        return unanswered

    def _fail(self, error: SMTPServerDisconnected, abort: bool = True) -> ConnectionFailed:
        self.error = error
        self._buffer = b""
        self._parser.reset()
        return ConnectionFailed(error, abort, tuple(self.fail()))

    # -- receiving -------------------------------------------------------------------

    def receive_data(self, data: bytes) -> list[Event]:
        """
        Take bytes from the server.

        :returns: the events they complete, in order; a
            :class:`ConnectionFailed` is always the last.
        """
        if self.state is State.CLOSED or not data:
            return []
        buffer = self._buffer + data if self._buffer else data
        if b"\n" not in buffer:
            self._buffer = buffer
            if not self._pending:
                self._stray = True
            if len(buffer) > self.max_line_length + 1:
                return [self._too_long()]
            return []
        lines = buffer.split(b"\n")
        self._buffer = lines.pop()
        events: list[Event] = []
        if not self._lines(lines, events):
            return events
        if self._buffer:
            if not self._pending:
                self._stray = True
            if len(self._buffer) > self.max_line_length + 1:
                events.append(self._too_long())
        return events

    def _too_long(self) -> ConnectionFailed:
        return self._fail(
            SMTPProtocolError(
                f"reply line from the server exceeds the limit of {self.max_line_length} bytes"
            )
        )

    def _lines(self, lines: list[bytes], events: list[Event]) -> bool:
        """
        Apply complete lines.

        :returns: whether what is left in the buffer is still to be read.
        """
        parser = self._parser
        seen = self._seen
        limit = self.max_line_length + 1
        index, end = 0, len(lines)
        while index < end:
            pending = self._pending
            # The fast path pays off from a handful of replies on (a small
            # batch, MAIL RCPT DATA, is quicker line by line).
            if (
                pending
                and len(pending[0].kinds) - len(pending[0].replies) > 4
                and not parser.in_reply
            ):
                index = self._take_fast(pending[0], lines, index)
                if index == end:
                    return True
            line = lines[index]
            index += 1
            if len(line) > limit:
                events.append(self._too_long())
                return False
            if line.endswith(b"\r"):
                line = line[:-1]
            # A server repeats its one-line replies ("250 2.1.5 Ok") for
            # every message: each is parsed once per session.
            reply = None if parser.in_reply else seen.get(line)
            if reply is None:
                fresh = not parser.in_reply
                try:
                    reply = parser.feed(line)
                except MalformedReply as e:
                    events.append(
                        self._fail(SMTPProtocolError(f"malformed reply from the server: {e}"))
                    )
                    return False
                if fresh and reply is not None and len(seen) < _SEEN_LIMIT:
                    seen[line] = reply
            if reply is None:
                if not pending:
                    self._stray = True
                continue
            if not pending:
                # RFC 5321 section 3.8: an unsolicited 421 means the server is
                # closing; anything else is a broken server.  Never pair it
                # with the reply to the next command.
                if reply.code == 421:
                    events.append(self._fail(_closing(reply), abort=False))
                else:
                    events.append(
                        self._fail(
                            SMTPProtocolError(
                                f"reply nobody asked for: {reply.code} {reply.text!r}"
                            )
                        )
                    )
                return False
            if not self._reply(pending[0], reply, events):
                return False
            if self.state is State.TLS:
                # RFC 3207 section 4.2: what came in the clear after the 220
                # may be an attacker's; none of it is read.
                self._buffer = b""
                parser.reset()
                return False
        return True

    def _reply(self, exchange: _Exchange, reply: Reply, events: list[Event]) -> bool:
        """
        Apply one complete reply to the exchange it answers.

        :returns: whether the session goes on.
        """
        kind = exchange.kinds[len(exchange.replies)]
        code = reply.code
        klass = code // 100
        exact, classes, moves = _RULES[kind]
        if code not in exact and klass not in classes and code != 421:
            events.append(
                self._fail(
                    SMTPProtocolError(
                        f"reply {code} {reply.text!r} cannot answer {kind.name} "
                        f"(RFC 5321 section 4.3.2)"
                    )
                )
            )
            return False
        after = (moves.get(code) or moves.get(klass)) if moves else None
        if after is not None and self.state is not State.CLOSING:
            self.state = after
        exchange.replies.append(reply)
        self.received += 1
        if len(exchange.replies) == len(exchange.kinds):
            self._pending.popleft()
            if after is State.TLS:
                events.append(StartTLS())
            events.append(Replied(exchange.tag, exchange.replies))
        if code == 421 and kind is not Kind.QUIT:
            # RFC 5321 section 3.8: the server is closing.  The session ends
            # before the caller sees the reply, so nothing it does in answer
            # (HELO, RSET, the next RCPT) is written.
            events.append(self._fail(_closing(reply), abort=False))
            return False
        return True

    def _take_fast(self, exchange: _Exchange, lines: list[bytes], index: int) -> int:
        """
        The fast path of a pipelined batch: take plain one-line 2xx replies
        to kinds that change no state straight into the exchange.  It stops
        at anything else and before the batch's last reply, so that
        completing a batch and every error keep one path.

        :returns: the index of the first line not taken.
        """
        kinds = exchange.kinds
        replies = exchange.replies
        last = len(kinds) - 1
        end = len(lines)
        while index < end and len(replies) < last:
            position = len(replies)
            kind = kinds[position]
            if kind not in FAST:
                break
            # The lines that may be taken for this kind: up to the next kind
            # (found by C-level list operations: in a batch the kind changes
            # twice, after MAIL and before DATA).
            count = min(end - index, last - position)
            run = kinds[position : position + count]
            if run.count(kind) != count:
                count = next(i for i, k in enumerate(run) if k is not kind)
            taken = self._take_plain(lines, index, count, replies)
            self.received += taken
            index += taken
            if taken < count:
                break
        return index

    def _take_plain(self, lines: list[bytes], index: int, count: int, replies: list[Reply]) -> int:
        segment = lines[index : index + count]
        first = segment[0]
        if segment.count(first) == count:
            # All alike (a thousand "250 2.1.5 Ok"): one check, one Reply
            # (immutable, so it may be shared).
            reply = self._plain_reply(first)
            if reply is None:
                return 0
            replies.extend([reply] * count)
            return count
        seen: dict[bytes, Reply] = {}
        for taken, line in enumerate(segment):
            reply = seen.get(line)
            if reply is None:
                reply = self._plain_reply(line)
                if reply is None:
                    return taken
                seen[line] = reply
            replies.append(reply)
        return count

    def _plain_reply(self, line: bytes) -> Reply | None:
        """
        The reply on ``line`` (CR and all) when it is a whole one-line 2xx
        reply within the length limits; ``None`` otherwise.
        """
        if line.endswith(b"\r"):
            line = line[:-1]
        return self._parser.one_line(line) if line[:1] == b"2" else None
