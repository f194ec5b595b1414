"""
:class:`SMTPClientProtocol`: the transport glue around the sans-IO
:class:`~txsmtpclient.session.Session`.

It carries bytes from the transport into the session and the session's
bytes to the transport, turns the session's events into fired Deferreds,
runs the timer of the reply awaited, starts TLS when the session says so,
and tells the transport about flow control.  What a command or a reply
means, and what may follow what, is the session's business.

Once the connection is unusable (lost, timed out, a malformed or unsolicited
reply, a 421) every waiting Deferred fails with the same clear exception,
and so does every later :meth:`~SMTPClientProtocol.send`.
"""

from __future__ import annotations

import contextlib
import sys
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet import main, tcp
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import (
    IDelayedCall,
    IHandshakeListener,
    IOpenSSLClientConnectionCreator,
    IReactorTime,
    ISSLTransport,
)
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

from txsmtpclient._log import Trace, Transcript
from txsmtpclient.errors import (
    SMTPException,
    SMTPServerDisconnected,
    SMTPTimeoutError,
    SMTPTLSError,
)
from txsmtpclient.reply import DEFAULT_MAX_LINE_LENGTH, DEFAULT_MAX_REPLY_LENGTH, Reply
from txsmtpclient.session import (
    DEFAULT_TIMEOUTS,
    Command,
    ConnectionFailed,
    Event,
    Kind,
    Replied,
    Session,
    State,
    Timeouts,
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


class _Waiter:
    """
    The session's tag for one send: the Deferred to fire with its reply
    (or, for a batch, the list of them).
    """

    __slots__ = ("batch", "deferred", "secret", "sent_at", "stage")

    def __init__(
        self, deferred: Deferred[Any], batch: bool, secret: bool, stage: str = "greeting"
    ) -> None:
        self.deferred = deferred
        self.batch = batch
        self.secret = secret
        #: the :class:`Trace` stage its reply time counts towards.
        self.stage = stage
        self.sent_at = 0.0


@implementer(IHandshakeListener)
class SMTPClientProtocol(Protocol):
    """
    The client side of one SMTP connection.

    :param clock: schedules the timeouts; the global reactor when ``None``.
    :param timeouts: the timeout of each stage.
    :param max_line_length: the longest reply line accepted.
    :param max_reply_length: the most text one (multi-line) reply may hold.

    :ivar greeting: fires with the server's greeting :class:`Reply` (any
        code: the caller decides), or fails if none arrives.
    :ivar closed: fires with ``None`` once the connection is gone.
    :ivar transcript: the connection's debug logger.
    :ivar session: the sans-IO session this glue drives.
    """

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
        self.timeouts = timeouts if timeouts is not None else DEFAULT_TIMEOUTS
        self.transcript = transcript if transcript is not None else Transcript()
        self.greeting: Deferred[Reply] = Deferred(self._cancelled)
        self._greeting = _Waiter(self.greeting, False, False)
        self.session = Session(
            self.timeouts, max_line_length, max_reply_length, greeting_tag=self._greeting
        )
        #: timings, replies and bytes for the transaction event, when the
        #: client asks for them (``None``: nothing is kept).
        self.trace: Trace | None = None
        self._timer: IDelayedCall | None = None
        self._deadline: float | None = None
        self._failure: SMTPException | None = None
        self.connected_ = False
        self.closed: Deferred[None] = Deferred()
        #: whether TLS is up (a TLS handshake completed on this connection).
        self.tls = False
        self._tls_options: IOpenSSLClientConnectionCreator | None = None
        self._tls_started = False
        self._handshake: Deferred[None] | None = None
        # Events waiting to be handled, when data arrives from a callback.
        self._events: deque[Event] = deque()
        self._handling = False
        # Whether everything written so far has been answered, so that the
        # transport holds nothing and bytes may go to the socket at once.
        self._flushed = True
        #: called once, right after the next message end (final dot) is
        #: written and before those bytes reach the transport: what it writes
        #: goes out in the same write (cross-transaction pipelining, RFC 2920
        #: section 3.1).  Cleared when called.
        self.after_message_end: Callable[[], None] | None = None
        # Bytes held back while after_message_end runs, to go in one write.
        self._cork: list[bytes] | None = None

    # -- the public surface used by the client ---------------------------------

    @property
    def usable(self) -> bool:
        """
        Whether commands can still be sent.
        """
        return self._failure is None and self.session.error is None

    @property
    def failure(self) -> SMTPException | None:
        """
        Why the connection became unusable, once it has.
        """
        return self._failure or self.session.error

    @property
    def pending(self) -> int:
        """
        How many sends await their replies.
        """
        return self.session.pending

    def send(self, command: Command) -> Deferred[Reply]:
        """
        Write one command and await its reply.

        :returns: a Deferred firing with the reply; it fails with the
            connection's :class:`SMTPServerDisconnected` (or subclass) if the
            connection is or becomes unusable first.
        :raises SMTPLocalProtocolError: when the session's state does not
            allow the command.
        """
        deferred: Deferred[Reply] = Deferred(self._cancelled)
        waiter = _Waiter(deferred, False, command.secret, Trace.stage(command.kind))
        return self._send((command,), waiter, deferred)

    def send_batch(self, commands: Sequence[Command]) -> Deferred[list[Reply]]:
        """
        Write ``commands`` in one write (RFC 2920 pipelining, or LMTP's end
        of message) and await all their replies with a single waiter, so
        that a thousand RCPT replies cost one Deferred.

        :returns: a Deferred firing with the replies in order once the last
            has arrived; it fails with the connection's error if the
            connection becomes unusable before that.
        :raises SMTPLocalProtocolError: as :meth:`send`.
        """
        deferred: Deferred[list[Reply]] = Deferred(self._cancelled)
        waiter = _Waiter(deferred, True, False, Trace.stage(commands[0].kind))
        return self._send(commands, waiter, deferred)

    def _send(
        self, commands: Sequence[Command], waiter: _Waiter, deferred: Deferred[Any]
    ) -> Deferred[Any]:
        session = self.session
        failure = self._failure or session.error
        if failure is not None:
            return fail(failure)
        try:
            if len(commands) == 1:
                data = session.send(commands[0], waiter)
            else:
                data = session.send_batch(commands, waiter)
        except SMTPServerDisconnected as e:
            # The server broke the session (bytes before the command).
            self._fatal(e, abort=True)
            return fail(e)
        trace = self.trace
        if trace is not None:
            waiter.sent_at = now = self._clock.seconds()
            if waiter.stage == "final" and trace.last_reply_at:
                # Writing the message: from DATA's 354 (or the envelope's
                # replies, for BDAT) to its end.
                trace.add("data", now - trace.last_reply_at)
        if session.pending == 1 and self.connected_:
            self._arm_timer()
        if self.transcript.level:
            for command in commands:
                self.transcript.sent_command(command)
        hook = self.after_message_end
        if hook is not None and commands[-1].kind is Kind.MESSAGE_END:
            self.after_message_end = None
            self._write_with(data, hook)
        elif data:
            self._write(data)
        return deferred

    def _write_with(self, data: bytes, hook: Callable[[], None]) -> None:
        """
        Write ``data`` together with whatever ``hook`` writes, in one write.
        """
        assert self._cork is None, "message ends do not nest"
        cork = self._cork = [data]
        try:
            hook()
        finally:
            self._cork = None
            joined = b"".join(cork) if len(cork) > 1 else data
            trace = self.trace
            if trace is not None:
                # This transaction's bytes end with its dot; whatever is
                # written after it, now or before its reply, is the next's.
                trace.bytes_sent += len(data)
                trace.ended = True
                trace.carried += len(joined) - len(data)
            self._write(joined, counted=True)

    def write_data(self, data: bytes) -> None:
        """
        Write message data (after DATA's 354) that expects no reply of its
        own.
        """
        if self.usable and self.transport is not None:
            self._write(self.session.send_data(data))
            if self.transcript.level:
                self.transcript.sent_command(Command(Kind.MESSAGE_END, data))

    def starttls(self, options: IOpenSSLClientConnectionCreator) -> Deferred[Reply]:
        """
        Send ``STARTTLS``; on its 220 start TLS with ``options`` at once,
        throwing away anything the server sent after the 220 (RFC 3207
        section 4.2).  :meth:`wait_for_handshake` then fires when TLS is up.
        """
        self._tls_options = options
        return self.send(Command(Kind.STARTTLS, b"STARTTLS\r\n"))

    def handshakeCompleted(self) -> None:
        """
        Called by Twisted's TLS layer (``IHandshakeListener``).
        """
        self.tls = True
        if self.session.state is State.TLS:
            self.session.tls_established()
            if self.trace is not None:
                self.trace.add("tls", self._clock.seconds() - self.trace.last_reply_at)
        if self.trace is not None:
            self._note_tls_session(self.trace)
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
        failure = self.failure
        if failure is not None:
            return fail(failure)
        if self._handshake is None:
            self._handshake = Deferred()
        return self._handshake

    def _note_tls_session(self, trace: Trace) -> None:
        """
        Keep the TLS version, cipher and peer certificate subject for the
        transaction event, from pyOpenSSL's connection (the transport's
        handle for implicit TLS, its protocol's after STARTTLS).
        """
        handle: Any = None
        for holder in (self.transport, getattr(self.transport, "protocol", None)):
            handle = getattr(holder, "getHandle", lambda: None)()
            if hasattr(handle, "get_cipher_name"):
                break
        else:
            return
        trace.tls = (handle.get_protocol_version_name(), handle.get_cipher_name())
        certificate = handle.get_peer_certificate()
        if certificate is not None:
            trace.peer_subject = ", ".join(
                f"{key.decode()}={value.decode('utf-8', 'replace')}"
                for key, value in certificate.get_subject().get_components()
            )

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

    # -- Protocol --------------------------------------------------------------

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
        self._greeting.sent_at = self._clock.seconds()
        self._arm_timer()
        self._read_waiting()

    def _read_waiting(self) -> None:
        """
        Read what a plain TCP connection already holds when it completes.

        A server near by has often sent its greeting by the time the
        connection is reported; Twisted would read it only at the reactor's
        next turn (one more poll and dispatch per connection).  Reading it
        now lets EHLO go out in this turn.  Nothing there (the usual case
        for a distant server), an end of file or an error: the reactor finds
        it on its next poll as before.
        """
        transport: Any = self.transport
        if type(transport) is not tcp.Client or self.tls:
            return
        try:
            data = transport.getHandle().recv(transport.bufferSize)
        except OSError:
            return
        if data:
            self.dataReceived(data)

    def dataReceived(self, data: bytes) -> None:
        session = self.session
        received = session.received
        events = session.receive_data(data)
        if session.received != received and session.pending:
            # The next reply is timed from this one.
            self._arm_timer()
        if not events:
            return
        if self._handling:
            # Data fed from a callback: its events wait their turn.
            self._events.extend(events)
            return
        self._handling = True
        try:
            for event in events:
                self._handle(event)
            while self._events:
                self._handle(self._events.popleft())
        finally:
            self._handling = False
        if not session.pending:
            # Stopped only now: the callback usually sends the next command
            # at once, and its waiter then moves this timer's deadline
            # instead of paying a callLater and a cancel per command.
            self._arm_timer()

    def _handle(self, event: Event) -> None:
        if type(event) is Replied:
            waiter: _Waiter = event.tag  # type: ignore[assignment]
            replies = event.replies
            trace = self.trace
            if trace is not None:
                trace.last_reply_at = now = self._clock.seconds()
                trace.add(waiter.stage, now - waiter.sent_at)
                trace.replied(replies, waiter.secret)
            if not self.session.pending:
                # Everything written was answered: the transport is empty.
                self._flushed = True
            if self.transcript.level:
                for reply in replies:
                    self.transcript.received(reply, secret=waiter.secret)
            if not waiter.deferred.called:
                waiter.deferred.callback(replies if waiter.batch else replies[0])
        elif type(event) is ConnectionFailed:
            if self._failure is None:
                self._failure = event.error
            if self.transcript.level:
                self.transcript.note(f"session ended: {event.error}")
            self._fatal(event.error, event.abort, list(event.unanswered))
        else:  # StartTLS
            self._start_tls()

    def _start_tls(self) -> None:
        # The session has already thrown away what came after the 220 (RFC
        # 3207 section 4.2); from here the transport speaks TLS.
        self._tls_started = True
        assert self.transport is not None and self._tls_options is not None
        self.transport.startTLS(self._tls_options)  # type: ignore[attr-defined]
        self.transcript.note("TLS started")

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.connected_ = False
        if self.failure is None:
            if reason is not None and _is_tls_failure(reason):
                # A failed handshake (implicit TLS, or after STARTTLS) or a
                # broken TLS record: say so, not just "closed".
                self._failure = SMTPTLSError(f"TLS failed: {reason.getErrorMessage()}")
            else:
                self._failure = SMTPServerDisconnected(
                    "connection unexpectedly closed"
                    + (f": {reason.getErrorMessage()}" if reason is not None else "")
                )
        failure = self.failure
        assert failure is not None
        self._cancel_timer()
        self._fail_waiters(failure, self.session.fail())
        handshake, self._handshake = self._handshake, None
        if handshake is not None and not handshake.called:
            handshake.errback(Failure(failure))
        self.transcript.note("connection closed")
        if not self.closed.called:
            self.closed.callback(None)

    # -- internals -------------------------------------------------------------

    def _write(self, data: bytes, counted: bool = False) -> None:
        """
        Write to the transport; on a plain TCP connection whose earlier
        writes have all been answered, hand the bytes to the socket at once.

        Twisted's ``write`` only buffers and waits for the next reactor turn
        to send, which costs a poll and two epoll changes per command: on a
        fast server that is most of a round trip.  Once every byte written
        has been answered the transport's buffer is empty, so a direct send
        cannot overtake anything; what the socket does not take now goes
        through ``write`` as before, so order and flow control are kept.
        """
        if self._cork is not None:
            self._cork.append(data)
            return
        transport: Any = self.transport
        trace = self.trace
        if trace is not None and not counted:
            if trace.ended:
                trace.carried += len(data)
            else:
                trace.bytes_sent += len(data)
        if (
            self._flushed
            and type(transport) is tcp.Client
            and not self._tls_started
            and transport.connected
            and not transport.disconnecting
        ):
            try:
                sent = transport.getHandle().send(data)
            except OSError:
                # Full, or broken: the transport finds out and reports it.
                sent = 0
            if sent == len(data):
                return
            data = data[sent:]
        self._flushed = False
        transport.write(data)

    def _arm_timer(self) -> None:
        """
        Time the reply awaited: each reply gets its own stage's timeout,
        counted from when the reply before it arrived.

        Only a deadline is moved per reply; one timer checks it when it
        fires and, if replies arrived meanwhile, sleeps again until the new
        deadline (cheaper than rescheduling a timer for every reply).
        """
        timeout = self.session.timeout
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
        if self._deadline is None or not self.session.pending:
            return
        remaining = self._deadline - self._clock.seconds()
        # Within a microsecond is due: float rounding must not postpone it.
        if remaining > 1e-6:
            self._timer = self._clock.callLater(remaining, self._check_deadline)
            return
        kind = self.session.waiting_for
        assert kind is not None
        self._fatal(
            SMTPTimeoutError(
                f"no reply from the server at stage {kind.stage!r} "
                f"within {self.session.timeout:g} seconds",
                kind.stage,
            ),
            abort=True,
        )

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _cancelled(self, deferred: Deferred[Any]) -> None:
        # The cancelled Deferred fails with CancelledError; the rest with this.
        self._fatal(
            SMTPServerDisconnected("connection aborted because a call was cancelled"),
            abort=True,
            skip=deferred,
        )

    @staticmethod
    def _fail_waiters(
        reason: SMTPException, waiters: Sequence[object], skip: Deferred[Any] | None = None
    ) -> None:
        for waiter in waiters:
            assert isinstance(waiter, _Waiter)
            deferred = waiter.deferred
            if deferred is not skip and not deferred.called:
                deferred.errback(Failure(reason))

    def _fatal(
        self,
        reason: SMTPException,
        abort: bool,
        unanswered: Sequence[object] | None = None,
        skip: Deferred[Any] | None = None,
    ) -> None:
        if self._failure is None:
            self._failure = reason
        self._cancel_timer()
        if unanswered is None:
            unanswered = self.session.fail()
        self._fail_waiters(reason, unanswered, skip)
        if self.transport is not None and self.connected_:
            if abort:
                self.transport.abortConnection()  # type: ignore[attr-defined]
            elif not self._close_at_once():
                self.transport.loseConnection()

    def _close_at_once(self) -> bool:
        """
        Close a plain TCP connection now when nothing written waits in the
        transport (every write went straight to the socket, or was
        answered): ``loseConnection`` would wait a reactor turn for the
        socket to be writable only to flush an empty buffer.  Twisted closes
        a connection whose write side is already shut the same way.

        :returns: whether the connection was closed.
        """
        transport: Any = self.transport
        if not (
            self._flushed
            and type(transport) is tcp.Client
            and not self._tls_started
            and transport.connected
            and not transport.disconnecting
            and transport.producer is None
        ):
            return False
        transport.stopReading()
        transport.stopWriting()
        # As Twisted's abortConnection does: the reactor may be about to
        # call these for an event it polled in this turn.
        done: Any = transport
        done.doRead = done.doWrite = lambda *args: None
        done.connectionLost(Failure(main.CONNECTION_DONE))
        return True
