"""
:class:`SMTPClientProtocol`: carries commands to the server and replies back.

The protocol keeps a FIFO of waiters, one per expected reply, each with its
own Deferred and its stage's timeout.  Lines go through
:class:`~txsmtpclient.reply.ReplyParser`; each complete reply fires the
oldest waiter.  It knows nothing of what the commands mean: the dialogue
lives in :mod:`txsmtpclient.client`.

Once the connection is unusable (lost, timed out, a malformed or unsolicited
reply, a 421) every waiting Deferred fails with the same clear exception,
and so does every later :meth:`~SMTPClientProtocol.send`.
"""

from __future__ import annotations

import contextlib
import sys
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

from twisted.internet import tcp
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import (
    IDelayedCall,
    IHandshakeListener,
    IOpenSSLClientConnectionCreator,
    IReactorTime,
    ISSLTransport,
)
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure
from zope.interface import implementer

from txsmtpclient._log import REDACTED, Transcript, redact
from txsmtpclient.errors import (
    SMTPException,
    SMTPProtocolError,
    SMTPServerDisconnected,
    SMTPTimeoutError,
    SMTPTLSError,
)
from txsmtpclient.reply import (
    DEFAULT_MAX_LINE_LENGTH,
    DEFAULT_MAX_REPLY_LENGTH,
    MalformedReply,
    Reply,
    ReplyParser,
)

__all__ = ["DEFAULT_TIMEOUTS", "SMTPClientProtocol", "Timeouts"]


def _is_tls_failure(reason: Failure) -> bool:
    """
    Whether a connection was lost to a TLS error (pyOpenSSL's, which
    Twisted's TLS layer reports), without importing pyOpenSSL when TLS was
    never used.
    """
    ssl = sys.modules.get("OpenSSL.SSL")
    return ssl is not None and reason.check(ssl.Error) is not None


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


class _Waiter:
    """
    One entry of the FIFO: a Deferred awaiting one reply, or (``stages``
    given) all the replies to a pipelined batch, collected into one list so
    that a thousand RCPT replies cost one Deferred, not a thousand.
    """

    __slots__ = ("deferred", "replies", "secret", "stage", "stages", "timeout")

    def __init__(
        self,
        deferred: Deferred[Any],
        stage: str,
        timeout: float | None,
        secret: bool,
        stages: Sequence[str] | None = None,
    ) -> None:
        self.deferred = deferred
        self.stage = stage
        self.timeout = timeout
        self.secret = secret
        self.stages = stages
        self.replies: list[Reply] = []


@implementer(IHandshakeListener)
class SMTPClientProtocol(LineReceiver):
    """
    The client side of one SMTP connection, as a line receiver.

    :param clock: schedules the timeouts; the global reactor when ``None``.
    :param timeouts: the timeout of each stage.
    :param max_line_length: the longest reply line accepted.
    :param max_reply_length: the most text one (multi-line) reply may hold.

    :ivar greeting: fires with the server's greeting :class:`Reply` (any
        code: the caller decides), or fails if none arrives.
    :ivar closed: fires with ``None`` once the connection is gone.
    :ivar transcript: the connection's debug logger.
    """

    # Tolerate servers that end lines with a bare LF: split on LF and drop a
    # trailing CR in lineReceived.
    delimiter = b"\n"

    def __init__(
        self,
        clock: IReactorTime | None = None,
        timeouts: Timeouts | None = None,
        max_line_length: int = DEFAULT_MAX_LINE_LENGTH,
        max_reply_length: int = DEFAULT_MAX_REPLY_LENGTH,
        transcript: Transcript | None = None,
    ) -> None:
        if clock is None:
            from twisted.internet import reactor

            clock = reactor
        assert clock is not None
        self._clock: IReactorTime = clock
        self.timeouts = timeouts if timeouts is not None else Timeouts()
        self._parser = ReplyParser(max_line_length, max_reply_length)
        # LineReceiver's own limit: the parser's plus the CR we strip.
        self.MAX_LENGTH = max_line_length + 1
        self.transcript = transcript if transcript is not None else Transcript()
        self._waiters: deque[_Waiter] = deque()
        self._timer: IDelayedCall | None = None
        self._deadline: float | None = None
        self._failure: SMTPException | None = None
        self.connected_ = False
        self.closed: Deferred[None] = Deferred()
        self.greeting: Deferred[Reply] = self._add_waiter("greeting", secret=False)
        #: whether TLS is up (a TLS handshake completed on this connection).
        self.tls = False
        self._tls_options: IOpenSSLClientConnectionCreator | None = None
        self._handshake: Deferred[None] | None = None

    # -- the public surface used by the client ---------------------------------

    @property
    def usable(self) -> bool:
        """
        Whether commands can still be sent.
        """
        return self._failure is None

    @property
    def failure(self) -> SMTPException | None:
        """
        Why the connection became unusable, once it has.
        """
        return self._failure

    @property
    def pending(self) -> int:
        """
        How many replies are awaited.
        """
        return len(self._waiters)

    def send(
        self, payload: bytes, stage: str = "command", *, secret: bool = False
    ) -> Deferred[Reply]:
        """
        Write ``payload`` (one command line, or encoded message data) and
        await one reply.

        :param stage: names the timeout (see :class:`Timeouts`).
        :param secret: log neither the payload nor the reply (AUTH steps).
        :returns: a Deferred firing with the reply; it fails with the
            connection's :class:`SMTPServerDisconnected` (or subclass) if the
            connection is or becomes unusable first.
        """
        if self._failure is not None:
            return fail(self._failure)
        waiter = self._add_waiter(stage, secret)
        if stage == "data_end":
            # Message data is summarised, not logged: it may be huge.
            self._write_data(payload)
        else:
            self._write(payload, secret)
        return waiter

    def send_pipelined(self, payload: bytes, stages: Sequence[str]) -> list[Deferred[Reply]]:
        """
        Write several commands at once (RFC 2920) and await one reply for
        each stage in ``stages``, in order.  The payload goes out in one write.
        """
        if self._failure is not None:
            return [fail(self._failure) for _ in stages]
        waiters = [self._add_waiter(stage, False) for stage in stages]
        self._write(payload, False)
        return waiters

    def send_batch(
        self, payload: bytes, stages: Sequence[str], *, data: bool = False
    ) -> Deferred[list[Reply]]:
        """
        Write ``payload`` in one write and await one reply per stage in
        ``stages``, all collected by a single waiter: the cheap form of
        :meth:`send_pipelined` (RFC 2920) and :meth:`send_final`.

        :param data: the payload ends message data: summarise it in the
            transcript instead of logging it.
        :returns: a Deferred firing with the replies in order once the last
            has arrived; it fails with the connection's error if the
            connection becomes unusable before that.
        """
        if self._failure is not None:
            return fail(self._failure)
        deferred: Deferred[list[Reply]] = Deferred(self._cancelled)
        self._append(_Waiter(deferred, stages[0], self._timeout(stages[0]), False, stages))
        if data:
            self._write_data(payload)
        else:
            self._write(payload, False)
        return deferred

    def send_final(
        self, payload: bytes, replies: int = 1, stage: str = "data_end"
    ) -> list[Deferred[Reply]]:
        """
        Write the last of a message (its final dot, or ``BDAT ... LAST``)
        and await ``replies`` replies: one for SMTP, one per accepted
        recipient for LMTP.  Every waiter is in place before the write, so
        replies arriving together are never unsolicited.
        """
        if self._failure is not None:
            return [fail(self._failure) for _ in range(replies)]
        waiters = [self._add_waiter(stage, False) for _ in range(replies)]
        self._write_data(payload)
        return waiters

    def starttls(self, options: IOpenSSLClientConnectionCreator) -> Deferred[Reply]:
        """
        Send ``STARTTLS``; on its 220 start TLS with ``options`` at once,
        throwing away anything the server sent after the 220 (RFC 3207
        section 4.2).  :attr:`handshake` then fires when TLS is up.
        """
        self._tls_options = options
        return self.send(b"STARTTLS\r\n", "starttls")

    def handshakeCompleted(self) -> None:
        """
        Called by Twisted's TLS layer (``IHandshakeListener``).
        """
        self.tls = True
        handshake, self._handshake = self._handshake, None
        if handshake is not None and not handshake.called:
            handshake.callback(None)

    def wait_for_handshake(self) -> Deferred[None]:
        """
        Fires when the TLS handshake is done; fails with the connection's
        error when it fails.
        """
        if self.tls:
            return succeed(None)
        if self._failure is not None:
            return fail(self._failure)
        if self._handshake is None:
            self._handshake = Deferred()
        return self._handshake

    def expect(self, stage: str) -> Deferred[Reply]:
        """
        Await one more reply without writing anything (LMTP sends one reply
        per recipient after the final dot).
        """
        if self._failure is not None:
            return fail(self._failure)
        return self._add_waiter(stage, False)

    def write_data(self, data: bytes) -> None:
        """
        Write message data that expects no reply of its own.
        """
        if self._failure is None and self.transport is not None:
            self._write_data(data)

    def _write_data(self, data: bytes) -> None:
        self._transport_write(data)
        if self.transcript.level:
            self.transcript.sent(b"<%d bytes of message data>" % len(data))

    def abort(self, reason: SMTPException) -> None:
        """
        Make the connection unusable with ``reason``, fail what is waiting,
        and drop the connection at once.
        """
        self._fatal(reason, abort=True)

    def close(self) -> None:
        """
        Close the connection after anything already written is sent; waiting
        calls fail with :class:`SMTPServerDisconnected`.
        """
        self._fatal(SMTPServerDisconnected("connection closed by the client"), abort=False)

    def discard_buffered_input(self) -> None:
        """
        Throw away whatever the server sent that was not yet read, and any
        partly collected reply (RFC 3207 section 4.2: nothing received before
        the TLS handshake may be trusted after it).
        """
        self.clearLineBuffer()
        self._parser.reset()

    # -- LineReceiver ----------------------------------------------------------

    def connectionMade(self) -> None:
        self.connected_ = True
        if ISSLTransport.providedBy(self.transport):
            self.tls = True  # implicit TLS: nothing is read before the handshake
        # A message's last bytes must not wait for a delayed ACK (Nagle).
        set_no_delay = getattr(self.transport, "setTcpNoDelay", None)
        if set_no_delay is not None:
            # Not TCP (a Unix socket, a test transport): nothing to do.
            with contextlib.suppress(OSError, AttributeError):
                set_no_delay(True)
        self._arm_timer()

    # The lines of the segment being handled, and the next one's index.
    _batch: list[bytes] = []  # replaced, never changed in place
    _batch_next = 0

    def dataReceived(self, data: bytes) -> None:
        """
        Split what arrived into lines all at once.  ``LineReceiver``
        re-splits its whole buffer for each line, which is quadratic in a
        burst of pipelined replies (a thousand RCPT replies in one segment);
        its rules are kept: ``MAX_LENGTH`` with :meth:`lineLengthExceeded`,
        :meth:`clearLineBuffer` from within :meth:`lineReceived` discarding
        the rest of the segment (STARTTLS), and no more lines once the
        transport is disconnecting.
        """
        if self._busyReceiving:
            self._buffer += data
            return
        self._busyReceiving = True
        try:
            self._buffer += data
            while not self.paused:
                lines = self._buffer.split(self.delimiter)
                if len(lines) == 1:
                    break
                self._buffer = lines.pop()
                self._batch, self._batch_next = lines, 0
                while self._batch_next < len(self._batch):
                    waiters = self._waiters
                    if waiters and waiters[0].stages is not None and not self.transcript.level:
                        self._batch_next = self._collect(self._batch, self._batch_next)
                        if self._batch_next == len(self._batch):
                            break
                    line = self._batch[self._batch_next]
                    self._batch_next += 1
                    if len(line) > self.MAX_LENGTH:
                        exceeded = self._unread(line)
                        self._buffer = b""
                        self.lineLengthExceeded(exceeded)
                        return
                    self.lineReceived(line)
                    if self.paused or getattr(self.transport, "disconnecting", False):
                        # Keep what was not read, as LineReceiver does.
                        self._buffer = self._unread(b"")
                        return
                self._batch = []
            if len(self._buffer) >= self.MAX_LENGTH + len(self.delimiter):
                exceeded, self._buffer = self._buffer, b""
                self.lineLengthExceeded(exceeded)
        finally:
            self._batch = []
            self._busyReceiving = False

    def _collect(self, lines: list[bytes], index: int) -> int:
        """
        The fast path for a pipelined batch (a thousand RCPT replies): take
        plain one-line 2xx/3xx replies from ``lines`` straight into the
        batch waiter at the head of the queue, without the per-line work of
        :meth:`lineReceived`.  It stops, leaving the rest to
        :meth:`lineReceived`, at anything else (a multi-line, 4xx or 5xx, or
        malformed reply) and before the batch's last reply, so that
        completing a batch and every error keep one path.

        :returns: the index of the first line not taken.
        """
        if self._parser.in_reply:
            return index
        waiter = self._waiters[0]
        stages = waiter.stages
        assert stages is not None
        replies = waiter.replies
        last = len(stages) - 1
        start = index
        end = len(lines)
        while index < end and len(replies) < last:
            position = len(replies)
            stage = stages[position]
            # The lines that may be taken for this stage: up to the next
            # stage (found by C-level list operations: in a batch the stage
            # changes twice, after MAIL and before DATA).
            count = min(end - index, last - position)
            run = stages[position : position + count]
            if run.count(stage) != count:
                count = next(i for i, s in enumerate(run) if s != stage)
            taken = self._take_plain(lines, index, count, replies)
            index += taken
            if taken < count:
                break
        if index != start:
            next_stage = stages[len(replies)]
            if next_stage != waiter.stage:
                waiter.stage = next_stage
                waiter.timeout = self._timeout(next_stage)
            self._arm_timer()
        return index

    def _take_plain(self, lines: list[bytes], index: int, count: int, replies: list[Reply]) -> int:
        """
        Append to ``replies`` the replies of ``lines[index:index + count]``
        while each is a plain one-line 2xx/3xx reply.

        :returns: how many lines were taken.
        """
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
        The reply on ``line`` (CR and all) when it is a whole one-line
        2xx/3xx reply within the length limits; ``None`` otherwise.
        """
        if line.endswith(b"\r"):
            line = line[:-1]
        parser = self._parser
        if (
            line[3:4] == b" "
            and len(line) <= parser.max_line_length
            and len(line) <= parser.max_reply_length + 3
            and line[:3].isdigit()
            and 0x32 <= line[0] <= 0x33
        ):
            return Reply(int(line[:3]), line[4:])
        return None

    def _unread(self, first: bytes) -> bytes:
        """
        ``first`` and whatever of the segment has not been handed to
        :meth:`lineReceived`, as received; the batch is emptied.
        """
        rest = self._batch[self._batch_next :]
        self._batch = []
        delimiter = self.delimiter
        head = first + delimiter if first else b""
        return head + b"".join(line + delimiter for line in rest) + self._buffer

    def clearLineBuffer(self) -> bytes:
        """
        Throw away everything received and not yet handed to
        :meth:`lineReceived`, including the rest of the segment being read.

        :returns: what was thrown away.
        """
        cleared = self._unread(b"")
        self._buffer = b""
        return cleared

    def lineReceived(self, line: bytes) -> None:
        if line.endswith(b"\r"):
            line = line[:-1]
        try:
            reply = self._parser.feed(line)
        except MalformedReply as e:
            self._fatal(SMTPProtocolError(f"malformed reply from the server: {e}"), abort=True)
            return
        if reply is None:
            return
        if not self._waiters:
            # RFC 5321 section 3.8: an unsolicited 421 means the server is
            # closing; anything else is a broken server.  Never pair it with
            # the reply to the next command.
            self.transcript.received(reply)
            if reply.code == 421:
                self._fatal(
                    SMTPServerDisconnected(f"the server is closing the connection: {reply.text}"),
                    abort=False,
                )
            else:
                self._fatal(
                    SMTPProtocolError(f"reply nobody asked for: {reply.code} {reply.text!r}"),
                    abort=True,
                )
            return
        waiter = self._waiters[0]
        stage = waiter.stage
        stages = waiter.stages
        done = stages is None
        if done:
            self._waiters.popleft()
        else:
            assert stages is not None
            # A batch: collect, and move its timeout on to the next stage.
            waiter.replies.append(reply)
            collected = len(waiter.replies)
            if collected == len(stages):
                done = True
                self._waiters.popleft()
            elif stages[collected] != stage:
                waiter.stage = stages[collected]
                waiter.timeout = self._timeout(waiter.stage)
        if stage == "starttls" and reply.code == 220:
            self._switch_to_tls()
        if self.transcript.level:
            self.transcript.received(Reply(reply.code, REDACTED) if waiter.secret else reply)
        if self._waiters:
            # The next reply is timed from this one.
            self._arm_timer()
        if reply.code == 421 and stage != "quit":
            # RFC 5321 section 3.8: the server is closing.  The connection is
            # made unusable before the caller sees the reply, so that nothing
            # it does in answer (HELO, RSET, the next RCPT) is written.
            self._fatal(
                SMTPServerDisconnected(f"the server is closing the connection: {reply.text}"),
                abort=False,
            )
        if done:
            waiter.deferred.callback(reply if stages is None else waiter.replies)
        if not self._waiters:
            # Stopped only now: the callback usually sends the next command
            # at once, and its waiter then moves this timer's deadline
            # instead of paying a callLater and a cancel per command.
            self._arm_timer()

    def _switch_to_tls(self) -> None:
        # Before anything else is read: lines already buffered came in the
        # clear after the 220 and may be an attacker's (RFC 3207 section 4.2).
        self.discard_buffered_input()
        assert self.transport is not None and self._tls_options is not None
        self.transport.startTLS(self._tls_options)  # type: ignore[attr-defined]
        self.transcript.note("TLS started")

    def lineLengthExceeded(self, line: bytes) -> None:
        self._fatal(
            SMTPProtocolError(
                f"reply line from the server exceeds the limit of {self.MAX_LENGTH - 1} bytes"
            ),
            abort=True,
        )

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.connected_ = False
        if self._failure is None:
            if reason is not None and _is_tls_failure(reason):
                # A failed handshake (implicit TLS, or after STARTTLS) or a
                # broken TLS record: say so, not just "closed".
                self._failure = SMTPTLSError(f"TLS failed: {reason.getErrorMessage()}")
            else:
                self._failure = SMTPServerDisconnected(
                    "connection unexpectedly closed"
                    + (f": {reason.getErrorMessage()}" if reason is not None else "")
                )
        self._cancel_timer()
        self._fail_waiters(self._failure)
        handshake, self._handshake = self._handshake, None
        if handshake is not None and not handshake.called:
            handshake.errback(Failure(self._failure))
        self.transcript.note("connection closed")
        if not self.closed.called:
            self.closed.callback(None)

    # -- internals -------------------------------------------------------------

    def _timeout(self, stage: str) -> float | None:
        return self.timeouts.for_stage(stage)

    def _add_waiter(self, stage: str, secret: bool) -> Deferred[Reply]:
        deferred: Deferred[Reply] = Deferred(self._cancelled)
        self._append(_Waiter(deferred, stage, self._timeout(stage), secret))
        return deferred

    def _append(self, waiter: _Waiter) -> None:
        self._waiters.append(waiter)
        if len(self._waiters) == 1 and self.connected_:
            self._arm_timer()

    def _write(self, payload: bytes, secret: bool) -> None:
        self._transport_write(payload)
        if self.transcript.level:
            if secret:
                self.transcript.sent(
                    redact(payload) if payload[:5].upper() == b"AUTH " else REDACTED
                )
            else:
                for line in payload.splitlines(keepends=True):
                    self.transcript.sent(redact(line))

    def _transport_write(self, data: bytes) -> None:
        """
        Write to the transport; on a plain TCP connection with nothing
        buffered, hand the bytes to the socket at once.

        Twisted's ``write`` only buffers and waits for the next reactor turn
        to send, which costs a poll and two epoll changes per command: on a
        fast server that is most of a round trip.  What the socket does not
        take now (or an error, which the transport then reports as it always
        does) goes through ``write`` as before, so order and flow control are
        unchanged.
        """
        transport = self.transport
        assert transport is not None
        if (
            type(transport) is tcp.Client
            and not transport.TLS
            and transport.connected
            and not transport.disconnecting
            and not transport.dataBuffer
            and not transport._tempDataLen
        ):
            sent = transport.writeSomeData(data)
            if isinstance(sent, int) and sent > 0:
                if sent == len(data):
                    return
                data = data[sent:]
        transport.write(data)

    def _arm_timer(self) -> None:
        """
        Time the oldest waiter: each reply gets its own stage's timeout,
        counted from when the reply before it arrived.

        Only a deadline is moved per reply; one timer checks it when it
        fires and, if replies arrived meanwhile, sleeps again until the new
        deadline (cheaper than rescheduling a timer for every reply).
        """
        timeout = self._waiters[0].timeout if self._waiters else None
        if timeout is None:
            self._deadline = None
            self._cancel_timer()
            return
        now = self._clock.seconds()
        self._deadline = now + timeout
        timer = self._timer
        if timer is None or not timer.active():
            self._timer = self._clock.callLater(timeout, self._check_deadline)
        elif timer.getTime() > self._deadline:
            # A shorter stage after a longer one: wake up sooner.
            timer.reset(timeout)

    def _check_deadline(self) -> None:
        self._timer = None
        if self._deadline is None or not self._waiters:
            return
        remaining = self._deadline - self._clock.seconds()
        # Within a microsecond is due: float rounding must not postpone it.
        if remaining > 1e-6:
            self._timer = self._clock.callLater(remaining, self._check_deadline)
            return
        self._timed_out()

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _timed_out(self) -> None:
        self._timer = None
        if not self._waiters:
            return
        waiter = self._waiters[0]
        self._fatal(
            SMTPTimeoutError(
                f"no reply from the server at stage {waiter.stage!r} "
                f"within {waiter.timeout:g} seconds",
                waiter.stage,
            ),
            abort=True,
        )

    def _cancelled(self, deferred: Deferred[Any]) -> None:
        # The cancelled Deferred fails with CancelledError; the rest with this.
        self._waiters = deque(w for w in self._waiters if w.deferred is not deferred)
        self._fatal(
            SMTPServerDisconnected("connection aborted because a call was cancelled"), abort=True
        )

    def _fail_waiters(self, reason: SMTPException) -> None:
        while self._waiters:
            self._waiters.popleft().deferred.errback(Failure(reason))

    def _fatal(self, reason: SMTPException, abort: bool) -> None:
        if self._failure is None:
            self._failure = reason
        self._cancel_timer()
        self._fail_waiters(reason)
        if self.transport is not None and self.connected_:
            if abort:
                self.transport.abortConnection()  # type: ignore[attr-defined]
            else:
                self.transport.loseConnection()
