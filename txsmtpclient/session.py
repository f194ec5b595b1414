"""
The SMTP client session as a state machine, without I/O: commands in,
bytes to write out; bytes received in, events out (in the manner of h11's
``Connection``).  Nothing here imports Twisted; :mod:`txsmtpclient.protocol`
carries the bytes and runs the timers.

Everything that decides what may be sent or what a reply means lives here:

* one :class:`State` enum and one transition table (:data:`SEND_TRANSITIONS`
  for commands written, :data:`REPLY_TRANSITIONS` for replies read);
* which reply codes can answer which command (:data:`ANSWERS`): anything
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

import enum
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace

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

__all__ = [
    "ANSWERS",
    "DEFAULT_TIMEOUTS",
    "REPLY_TRANSITIONS",
    "SEND_TRANSITIONS",
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


class Kind(enum.Enum):
    """
    What a command is, as far as the session cares: its place in the
    dialogue, the replies that can answer it and its timeout.
    """

    GREETING = "greeting"  # not sent: the reply awaited on connecting
    EHLO = "ehlo"  # EHLO or LHLO
    HELO = "helo"
    STARTTLS = "starttls"
    AUTH = "auth"
    AUTH_RESPONSE = "auth_response"  # a line answering a 334 challenge
    MAIL = "mail"
    RCPT = "rcpt"
    DATA = "data_init"
    MESSAGE_END = "data_end"  # the last of the message data and its final dot
    BDAT = "data_block"  # BDAT with its chunk, not the last
    BDAT_LAST = "bdat_last"
    RSET = "rset"
    QUIT = "quit"
    COMMAND = "command"  # NOOP, VRFY, EXPN, HELP, docmd(): any reply goes

    @property
    def stage(self) -> str:
        """
        The stage named in :class:`~txsmtpclient.errors.SMTPTimeoutError`
        and looked up in :class:`Timeouts` (``"command"`` for EHLO).
        """
        return _STAGE.get(self, self.value)


_STAGE = {
    Kind.EHLO: "command",
    Kind.HELO: "command",
    Kind.AUTH: "command",
    Kind.AUTH_RESPONSE: "command",
    Kind.RSET: "command",
    Kind.BDAT_LAST: "data_end",
}


class State(enum.Enum):
    """
    Where the dialogue is, as seen from the commands written so far and the
    replies read.
    """

    GREETING = "greeting"  # connected; the greeting not yet read
    READY = "ready"  # greeted: any command
    HELLO = "hello"  # TLS just came up: EHLO (or HELO) again before the rest
    MAIL = "mail"  # MAIL written: a transaction is open
    DATA = "data"  # DATA got its 354: message data, then its end
    AUTH = "auth"  # a 334 challenge awaits its response
    TLS = "tls"  # STARTTLS got its 220: nothing until the handshake is done
    CLOSING = "closing"  # QUIT written: nothing more
    CLOSED = "closed"  # failed or closed: nothing more, in or out


S, K = State, Kind

#: The one transition table for commands: ``(state, kind) -> state``.  A
#: command missing here is refused with
#: :class:`~txsmtpclient.errors.SMTPLocalProtocolError`, before anything is
#: written.  Out-of-order commands the server itself refuses with 503 (RCPT or
#: DATA without MAIL) are let through: smtplib's API lets a caller see that
#: reply.
SEND_TRANSITIONS: dict[tuple[State, Kind], State] = {
    # Greeted: the session's ordinary commands.
    (S.READY, K.EHLO): S.READY,
    (S.READY, K.HELO): S.READY,
    (S.READY, K.STARTTLS): S.READY,  # its 220 moves on to TLS
    (S.READY, K.AUTH): S.READY,  # a 334 moves on to AUTH
    (S.READY, K.MAIL): S.MAIL,
    (S.READY, K.RCPT): S.READY,  # the server says 503
    (S.READY, K.DATA): S.READY,  # the server says 503
    (S.READY, K.RSET): S.READY,
    (S.READY, K.COMMAND): S.READY,
    (S.READY, K.QUIT): S.CLOSING,
    # After TLS (RFC 3207 section 4.2): EHLO again before anything that
    # depends on the extensions.
    (S.HELLO, K.EHLO): S.READY,
    (S.HELLO, K.HELO): S.READY,
    (S.HELLO, K.RSET): S.HELLO,
    (S.HELLO, K.COMMAND): S.HELLO,
    (S.HELLO, K.QUIT): S.CLOSING,
    # A transaction (RFC 5321 section 3.3; pipelined per RFC 2920, so
    # these are written before MAIL's reply is read).
    (S.MAIL, K.RCPT): S.MAIL,
    (S.MAIL, K.DATA): S.MAIL,  # its 354 moves on to DATA
    (S.MAIL, K.BDAT): S.MAIL,
    (S.MAIL, K.BDAT_LAST): S.MAIL,  # its reply ends the transaction
    (S.MAIL, K.RSET): S.READY,
    (S.MAIL, K.MAIL): S.MAIL,  # the server says 503
    (S.MAIL, K.EHLO): S.READY,  # EHLO ends a transaction (RFC 5321 4.1.4)
    (S.MAIL, K.HELO): S.READY,
    (S.MAIL, K.COMMAND): S.MAIL,
    (S.MAIL, K.QUIT): S.CLOSING,
    # Message data (sent with send_data) and its end: nothing else, or it
    # would be taken as part of the message.
    (S.DATA, K.MESSAGE_END): S.DATA,  # its reply ends the transaction
    # SASL (RFC 4954 section 4): a response to each challenge, or "*".
    (S.AUTH, K.AUTH_RESPONSE): S.AUTH,
}

#: The one transition table for replies: ``(kind, code) -> state`` or, when
#: the exact code is not listed, ``(kind, code // 100) -> state``.  Replies
#: not listed leave the state as it is.  A 421 (other than to QUIT) always
#: closes the session, whatever it answers.
REPLY_TRANSITIONS: dict[tuple[Kind, int], State] = {
    (K.GREETING, 2): S.READY,
    # A 554 greeting: the client may only QUIT (RFC 5321 section 3.1).
    (K.GREETING, 5): S.READY,
    (K.GREETING, 4): S.READY,
    (K.STARTTLS, 220): S.TLS,
    (K.AUTH, 334): S.AUTH,
    (K.AUTH, 2): S.READY,
    (K.AUTH, 4): S.READY,
    (K.AUTH, 5): S.READY,
    (K.AUTH_RESPONSE, 334): S.AUTH,
    (K.AUTH_RESPONSE, 2): S.READY,
    (K.AUTH_RESPONSE, 4): S.READY,
    (K.AUTH_RESPONSE, 5): S.READY,
    (K.MAIL, 4): S.READY,
    (K.MAIL, 5): S.READY,
    (K.DATA, 354): S.DATA,
    (K.MESSAGE_END, 2): S.READY,
    (K.MESSAGE_END, 4): S.READY,
    (K.MESSAGE_END, 5): S.READY,
    (K.BDAT_LAST, 2): S.READY,
    (K.BDAT_LAST, 4): S.READY,
    (K.BDAT_LAST, 5): S.READY,
}

del S, K

#: The replies that can answer each kind of command: exact codes, then
#: whole classes (RFC 5321 section 4.3.2, RFC 3207, RFC 4954, RFC 3030).
#: Anything else (a 250 to DATA, a 354 to RCPT) is a protocol violation.
ANSWERS: dict[Kind, tuple[frozenset[int], frozenset[int]]] = {
    Kind.GREETING: (frozenset(), frozenset({2, 4, 5})),
    Kind.STARTTLS: (frozenset({220}), frozenset({4, 5})),
    Kind.AUTH: (frozenset({334}), frozenset({2, 4, 5})),
    Kind.AUTH_RESPONSE: (frozenset({334}), frozenset({2, 4, 5})),
    Kind.DATA: (frozenset({354}), frozenset({4, 5})),
    Kind.COMMAND: (frozenset(), frozenset({2, 3, 4, 5})),
}
_ANSWERS_DEFAULT = (frozenset[int](), frozenset({2, 4, 5}))

#: Kinds whose plain 2xx replies change no state: a pipelined batch takes
#: them on the fast path (a thousand RCPT replies in one segment).
_FAST = frozenset({Kind.MAIL, Kind.RCPT, Kind.BDAT, Kind.MESSAGE_END})


@dataclass(frozen=True, slots=True)
class Command:
    """
    One command to write, already encoded (:mod:`txsmtpclient.commands`).

    :ivar kind: what the command is.
    :ivar data: its bytes, CRLF included (with message data for BDAT and
        :attr:`Kind.MESSAGE_END`).
    :ivar count: how many replies it gets: several for ``count`` RCPT lines
        joined in one value, or for LMTP's one reply per recipient after
        the final dot.
    :ivar secret: neither it nor its replies may be logged (AUTH).
    """

    kind: Kind
    data: bytes
    count: int = 1
    secret: bool = False


@dataclass(frozen=True, slots=True)
class Replied:
    """
    Every reply to one :meth:`Session.send` (one command, or a pipelined
    batch), in order.

    :ivar tag: what the caller gave to :meth:`Session.send`.
    """

    tag: object
    replies: list[Reply]


@dataclass(frozen=True, slots=True)
class StartTLS:
    """
    STARTTLS got its 220: start the TLS handshake now, before anything else
    is read.  Whatever was received after the 220 has been thrown away.
    """


@dataclass(frozen=True, slots=True)
class ConnectionFailed:
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
        self._timeouts = {kind: timeouts.for_stage(kind.stage) for kind in Kind}
        self._pending: deque[_Exchange] = deque([_Exchange([Kind.GREETING], greeting_tag)])
        self._buffer = b""
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
        Write one command (or ``command.count`` of one kind).

        :param tag: handed back in the :class:`Replied` for it.
        :returns: the bytes to write.
        :raises SMTPLocalProtocolError: when the state does not allow it.
        :raises SMTPProtocolError: when the server sent bytes before this
            command was written (they cannot be its reply); the session is
            over, nothing is to be written.
        :raises SMTPServerDisconnected: when the session is already over.
        """
        self._check_send(command.kind)
        self._open([command.kind] * command.count, tag)
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
            if command.count == 1:
                kinds.append(command.kind)
            else:
                kinds += [command.kind] * command.count
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
        limit = self.max_line_length + 1
        index, end = 0, len(lines)
        while index < end:
            pending = self._pending
            if pending and len(pending[0].kinds) > 1 and not parser.in_reply:
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
            try:
                reply = parser.feed(line)
            except MalformedReply as e:
                events.append(
                    self._fail(SMTPProtocolError(f"malformed reply from the server: {e}"))
                )
                return False
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
        exact, classes = ANSWERS.get(kind, _ANSWERS_DEFAULT)
        if code not in exact and code // 100 not in classes and code != 421:
            events.append(
                self._fail(
                    SMTPProtocolError(
                        f"reply {code} {reply.text!r} cannot answer {kind.name} "
                        f"(RFC 5321 section 4.3.2)"
                    )
                )
            )
            return False
        after = REPLY_TRANSITIONS.get((kind, code)) or REPLY_TRANSITIONS.get((kind, code // 100))
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
            if kind not in _FAST:
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
        parser = self._parser
        if (
            line[3:4] == b" "
            and line[0] == 0x32
            and len(line) <= parser.max_line_length
            and len(line) <= parser.max_reply_length + 3
            and line[1:3].isdigit()
        ):
            return Reply(int(line[:3]), line[4:])
        return None
