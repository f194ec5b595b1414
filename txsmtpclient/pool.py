"""
:class:`SMTPConnectionPool`: connections to one relay kept open and reused.

Setting up a session (TCP, greeting, EHLO, STARTTLS, AUTH) costs several
round trips; a pool pays it once per connection instead of once per message.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from email.message import Message
from functools import partial
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime, IStreamClientEndpoint
from twisted.logger import Logger

from txsmtpclient._body import Body, BodySource, body_source
from txsmtpclient._endpoints import Relay, parse_relay
from txsmtpclient._sendargs import envelope_for_call, message_for_call
from txsmtpclient.client import SMTP
from txsmtpclient.errors import SMTPArgumentError, SMTPException, SMTPServerDisconnected
from txsmtpclient.reply import Reply
from txsmtpclient.transaction import Envelope

if TYPE_CHECKING:
    from txsmtpclient.dkim import DKIMSigner

__all__ = ["SMTPConnectionPool"]


class _Connection:
    __slots__ = ("idle_since", "idle_timer", "messages", "sends", "smtp")

    def __init__(self, smtp: SMTP) -> None:
        self.smtp = smtp
        self.messages = 0
        #: sends using it now: two while one is pipelined behind another.
        self.sends = 0
        self.idle_since = 0.0
        self.idle_timer: IDelayedCall | None = None


class SMTPConnectionPool:
    """
    Sends messages to one relay over at most ``max_connections`` sessions,
    each reused for up to ``max_messages`` messages.

    Sends that find every connection busy wait their turn, in order; when
    the relay offers PIPELINING, the oldest waiting send takes a connection
    as soon as that connection's message end is written, and its MAIL, RCPT
    and DATA go out in the same write (RFC 2920 section 3.1), so a busy pool
    pays no round trip between messages.  A
    connection idle for more than ``noop_after`` seconds is checked with
    NOOP before reuse; one idle for ``idle_timeout`` is closed with QUIT.
    A connection that fails (lost, timed out, a protocol error) is dropped;
    the next send opens a fresh one.  After a refused transaction the
    session has already been reset with RSET, so it stays in the pool.
    A send whose connection cannot be opened fails with that error; each
    waiting send gets its own attempt, so none waits for ever.

    :param host: as for :meth:`SMTP.connect`; any spelling (see
        :meth:`serves`).
    :param port: as for :meth:`SMTP.connect`.
    :raises SMTPArgumentError: for a malformed ``host`` or ``port``, or
        limits below 1.
    :param make_client: builds an unconnected :class:`SMTP` (or ``LMTP``,
        ``SMTP_SSL``) with the TLS policy, timeouts and reactor wanted; a
        plain ``SMTP(reactor=reactor)`` by default.
    :param username: with ``password``, log in on each new connection.
    :param password: see ``username``.
    :param reactor: the clock for idle timers; the global reactor when
        ``None``.
    """

    log = Logger(namespace="txsmtpclient.pool")

    def __init__(
        self,
        host: str | IStreamClientEndpoint,
        port: int | None = None,
        *,
        max_connections: int = 10,
        max_messages: int = 1000,
        idle_timeout: float = 60.0,
        noop_after: float = 5.0,
        make_client: Callable[[], SMTP] | None = None,
        username: str | None = None,
        password: str | None = None,
        reactor: IReactorTime | None = None,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as global_reactor

            reactor = global_reactor
        if max_connections < 1 or max_messages < 1:
            raise SMTPArgumentError("max_connections and max_messages must be at least 1")
        if (username is None) != (password is None):
            raise TypeError("username and password go together")
        self._reactor: Any = reactor
        # Read once: a malformed relay is refused here, not at each send.
        self._relay = parse_relay(host, port)
        self._host = host
        self._port = port
        self.max_connections = max_connections
        self.max_messages = max_messages
        self.idle_timeout = idle_timeout
        self.noop_after = noop_after
        self._make_client = make_client or (lambda: SMTP(reactor=self._reactor))
        self._credentials = (username, password) if username is not None else None
        self._idle: list[_Connection] = []
        # Lent to a send, or being checked with NOOP: counted against the limit.
        self._busy: set[_Connection] = set()
        self._opening = 0
        self._waiting: deque[Deferred[_Connection]] = deque()
        self._closing: list[Deferred[Any]] = []
        self._closed = False
        self._on_drained: list[Deferred[None]] = []

    # -- public ---------------------------------------------------------------------

    @property
    def host(self) -> str | IStreamClientEndpoint:
        """
        The relay this pool connects to.
        """
        return self._host

    @property
    def relay(self) -> Relay:
        """
        The relay, parsed (``str()`` of it is a spelling :meth:`serves`
        accepts).
        """
        return self._relay

    @property
    def size(self) -> int:
        """
        Connections open or being opened.
        """
        return len(self._idle) + len(self._busy) + self._opening

    @property
    def idle(self) -> int:
        """
        Connections open and waiting for work.
        """
        return len(self._idle)

    @property
    def waiting(self) -> int:
        """
        Sends waiting for a connection.
        """
        return len(self._waiting)

    def serves(self, host: str | IStreamClientEndpoint, port: int | None = None) -> bool:
        """
        Whether ``host`` (and ``port``) name this pool's relay, however
        spelled: ``SMTPConnectionPool("127.0.0.1", 8025)`` serves
        ``"127.0.0.1:8025"`` and ``"tcp:127.0.0.1:8025"``; a missing port
        is taken as 25.

        :raises SMTPArgumentError: for a malformed ``host`` or ``port``.
        """
        other = parse_relay(host, port).with_default_port(SMTP.default_port)
        return other == self._relay.with_default_port(SMTP.default_port)

    def sendmail(
        self,
        from_addr: str | None = None,
        to_addrs: str | Sequence[str] | None = None,
        msg: Body | None = None,
        mail_options: Sequence[str] = (),
        rcpt_options: Sequence[str] = (),
        *,
        dsn_ret: str | None = None,
        dsn_envid: str | None = None,
        dsn_notify: str | Sequence[str] | None = None,
        dsn_orcpt: bool = False,
        dkim: DKIMSigner | Sequence[DKIMSigner] | None = None,
        envelope: Envelope | None = None,
    ) -> Deferred[dict[str, Reply]]:
        """
        Send one message over a pooled connection; the arguments are
        :meth:`SMTP.sendmail`'s.

        :returns: a Deferred firing with the refused recipients
            (``{address: reply}``).
        :raises SMTPArgumentError: (at once) for bad arguments, before a
            connection is taken.
        :raises TypeError: (at once) for a value of the wrong type.
        :raises SMTPException: (through the Deferred) as
            :meth:`SMTP.sendmail`, or for the connection;
            :class:`SMTPServerDisconnected` once the pool is closed.
        """
        # Misuse raises here, not after a connection was opened for it.
        checked = envelope_for_call(
            from_addr,
            to_addrs,
            mail_options,
            rcpt_options,
            dsn_ret,
            dsn_envid,
            dsn_notify,
            dsn_orcpt,
            dkim,
            envelope,
        )
        return self._send(checked, body_source(msg))  # type: ignore[arg-type]

    def send_message(
        self,
        msg: Message,
        from_addr: str | None = None,
        to_addrs: str | Sequence[str] | None = None,
        mail_options: Sequence[str] = (),
        rcpt_options: Sequence[str] = (),
        *,
        dsn_ret: str | None = None,
        dsn_envid: str | None = None,
        dsn_notify: str | Sequence[str] | None = None,
        dsn_orcpt: bool = False,
        dkim: DKIMSigner | Sequence[DKIMSigner] | None = None,
        envelope: Envelope | None = None,
    ) -> Deferred[dict[str, Reply]]:
        """
        Send an :class:`email.message.Message`, as :meth:`SMTP.send_message`.

        :raises SMTPArgumentError: (at once) when no sender or recipient can
            be found.
        """
        checked, data = message_for_call(
            msg,
            from_addr,
            to_addrs,
            mail_options,
            rcpt_options,
            dsn_ret,
            dsn_envid,
            dsn_notify,
            dsn_orcpt,
            dkim,
            envelope,
        )
        return self._send(checked, body_source(data))

    def _send(self, envelope: Envelope, source: BodySource) -> Deferred[dict[str, Reply]]:
        def send(smtp: SMTP) -> Deferred[dict[str, Reply]]:
            return smtp._send_checked(envelope, source)

        return Deferred.fromCoroutine(self._with_connection(send))

    def close(self) -> Deferred[None]:
        """
        Stop taking sends, fail those waiting, QUIT idle connections and the
        busy ones as they finish.  Sends already started (their connection
        being opened, checked or used) run to their end.

        :returns: a Deferred firing once every connection is closed.
        """
        self._closed = True
        while self._waiting:
            self._waiting.popleft().errback(SMTPServerDisconnected("the pool was closed"))
        idle, self._idle = self._idle, []
        for conn in idle:
            self._retire(conn)
        done: Deferred[None] = Deferred()
        self._on_drained.append(done)
        self._check_drained()
        return done

    # -- internals ------------------------------------------------------------------

    async def _with_connection(
        self, send: Callable[[SMTP], Deferred[dict[str, Reply]]]
    ) -> dict[str, Reply]:
        conn = await self._acquire()
        conn.sends += 1
        try:
            return await send(conn.smtp)
        finally:
            conn.messages += 1
            conn.sends -= 1
            if not conn.sends:
                # A refusal leaves the session reset and usable; a lost,
                # timed out or aborted connection (a cancelled send, a body
                # that failed part way) has no sock left.
                self._release(conn, conn.smtp.sock is not None)

    def _offer(self, conn: _Connection) -> None:
        """
        ``conn``'s send has written its message's end and awaits the reply:
        hand it to the oldest waiting send, whose envelope then goes out in
        the same write (RFC 2920 section 3.1), rather than after a round
        trip.
        """
        if (
            self._waiting
            and not self._closed
            and conn.messages + conn.sends < self.max_messages
            and conn.smtp.sock is not None
        ):
            self._waiting.popleft().callback(conn)

    async def _acquire(self) -> _Connection:
        if self._closed:
            raise SMTPServerDisconnected("the pool was closed")
        while self._idle:
            conn = self._idle.pop()  # most recently used: warmest
            self._stop_idle_timer(conn)
            if conn.smtp.sock is None:
                # Closed while idle (a 421, a lost link): not worth a NOOP.
                self._retire(conn)
                continue
            # Counted as busy while checked, so the limit holds.
            self._busy.add(conn)
            if self._reactor.seconds() - conn.idle_since > self.noop_after:
                try:
                    reply = await conn.smtp.noop()
                except SMTPException:
                    reply = None
                except BaseException:
                    self._drop(conn)  # cancelled: the NOOP aborted it
                    raise
                if reply is None or reply.code != 250:
                    self._drop(conn)
                    continue
            return conn
        if self.size < self.max_connections and not self._waiting:
            return await self._open()
        waiter: Deferred[_Connection] = Deferred(self._cancel_waiter)
        self._waiting.append(waiter)
        # Room may have been made while this send checked idle connections.
        self._pump()
        return await waiter

    def _drop(self, conn: _Connection) -> None:
        """
        Give up a busy connection, and use the room it leaves.
        """
        self._busy.discard(conn)
        self._retire(conn)
        self._pump()
        self._check_drained()

    def _cancel_waiter(self, waiter: Deferred[_Connection]) -> None:
        # Still queued: just leave the queue.  Already given a connection
        # being opened: _serve hands that connection on when it comes.
        if waiter in self._waiting:
            self._waiting.remove(waiter)

    async def _open(self) -> _Connection:
        self._opening += 1
        smtp = self._make_client()
        try:
            await smtp.connect(self._host, self._port)
            await smtp.ehlo_or_helo_if_needed()
            if self._credentials is not None:
                user, password = self._credentials
                assert user is not None and password is not None
                await smtp.login(user, password)
        except BaseException:
            self._opening -= 1
            smtp.close()
            self._pump()
            self._check_drained()
            raise
        self._opening -= 1
        conn = _Connection(smtp)
        smtp._on_message_end = partial(self._offer, conn)
        self._busy.add(conn)
        return conn

    def _pump(self) -> None:
        """
        Open connections for waiting sends, oldest first, while the limit
        allows: after a connection was dropped, or one failed to open.
        """
        while self._waiting and not self._closed and self.size < self.max_connections:
            waiter = self._waiting.popleft()
            Deferred.fromCoroutine(self._serve(waiter))

    async def _serve(self, waiter: Deferred[_Connection]) -> None:
        try:
            conn = await self._open()
        except BaseException as e:
            if not waiter.called:
                waiter.errback(e)
            return
        if waiter.called:
            # Cancelled meanwhile: the next send may have it.
            self._release(conn, True)
        else:
            waiter.callback(conn)

    def _release(self, conn: _Connection, healthy: bool) -> None:
        self._busy.discard(conn)
        if not healthy or conn.messages >= self.max_messages or self._closed:
            self._busy.add(conn)
            self._drop(conn)
            return
        if self._waiting:
            self._busy.add(conn)
            self._waiting.popleft().callback(conn)
            return
        conn.idle_since = self._reactor.seconds()
        conn.idle_timer = self._reactor.callLater(self.idle_timeout, self._expire, conn)
        self._idle.append(conn)
        self._check_drained()

    def _expire(self, conn: _Connection) -> None:
        conn.idle_timer = None
        if conn in self._idle:
            self._idle.remove(conn)
            self._retire(conn)

    def _stop_idle_timer(self, conn: _Connection) -> None:
        if conn.idle_timer is not None and conn.idle_timer.active():
            conn.idle_timer.cancel()
        conn.idle_timer = None

    def _retire(self, conn: _Connection) -> None:
        self._stop_idle_timer(conn)
        self.log.debug(
            "Closing a pooled connection after {messages} message(s)", messages=conn.messages
        )
        smtp = conn.smtp
        d: Deferred[Any]
        if smtp.sock is None:
            d = smtp.close()
        else:
            d = smtp.quit()
            d.addErrback(lambda _: smtp.close())
        d.addErrback(lambda _: None)
        if not d.called:
            self._closing.append(d)

            def forget(result: object) -> object:
                self._closing.remove(d)
                self._check_drained()
                return result

            d.addBoth(forget)

    def _check_drained(self) -> None:
        """
        Fire :meth:`close`'s Deferreds once nothing is busy, being opened or
        being closed.
        """
        if self._on_drained and not (self._busy or self._opening or self._closing):
            waiters, self._on_drained = self._on_drained, []
            for waiter in waiters:
                waiter.callback(None)
