"""
:class:`SMTPConnectionPool`: connections to one relay kept open and reused.

Setting up a session (TCP, greeting, EHLO, STARTTLS, AUTH) costs several
round trips; a pool pays it once per connection instead of once per message.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from email.message import Message
from typing import Any

from twisted.internet.defer import CancelledError, Deferred, DeferredList
from twisted.internet.interfaces import IDelayedCall, IReactorTime, IStreamClientEndpoint
from twisted.logger import Logger

from txsmtpclient._body import Body
from txsmtpclient.client import SMTP
from txsmtpclient.errors import SMTPException, SMTPServerDisconnected
from txsmtpclient.message import prepare_message
from txsmtpclient.reply import Reply

__all__ = ["SMTPConnectionPool"]


class _Connection:
    __slots__ = ("idle_since", "idle_timer", "messages", "smtp")

    def __init__(self, smtp: SMTP) -> None:
        self.smtp = smtp
        self.messages = 0
        self.idle_since = 0.0
        self.idle_timer: IDelayedCall | None = None


class SMTPConnectionPool:
    """
    Sends messages to one relay over at most ``max_connections`` sessions,
    each reused for up to ``max_messages`` messages.

    Sends that find every connection busy wait their turn, in order.  A
    connection idle for more than ``noop_after`` seconds is checked with
    NOOP before reuse; one idle for ``idle_timeout`` is closed with QUIT.
    A connection that fails (lost, timed out, a protocol error) is dropped;
    the next send opens a fresh one.  After a refused transaction the
    session has already been reset with RSET, so it stays in the pool.

    :param host: as for :meth:`SMTP.connect`.
    :param port: as for :meth:`SMTP.connect`.
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
            raise ValueError("max_connections and max_messages must be at least 1")
        if (username is None) != (password is None):
            raise TypeError("username and password go together")
        self._reactor: Any = reactor
        self._host = host
        self._port = port
        self.max_connections = max_connections
        self.max_messages = max_messages
        self.idle_timeout = idle_timeout
        self.noop_after = noop_after
        self._make_client = make_client or (lambda: SMTP(reactor=self._reactor))
        self._credentials = (username, password) if username is not None else None
        self._idle: list[_Connection] = []
        self._busy: set[_Connection] = set()
        self._opening = 0
        self._waiting: deque[Deferred[_Connection]] = deque()
        self._closing: list[Deferred[Any]] = []
        self._closed = False
        self._on_drained: Deferred[None] | None = None

    # -- public ---------------------------------------------------------------------

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

    def sendmail(
        self,
        from_addr: str,
        to_addrs: str | Sequence[str],
        msg: Body,
        mail_options: Sequence[str] = (),
        rcpt_options: Sequence[str] = (),
        **dsn: Any,
    ) -> Deferred[dict[str, Reply]]:
        """
        Send one message over a pooled connection, as :meth:`SMTP.sendmail`.

        :raises SMTPException: as :meth:`SMTP.sendmail`, or for the
            connection; :class:`SMTPServerDisconnected` once the pool is
            closed.
        """

        def send(smtp: SMTP) -> Deferred[dict[str, Reply]]:
            return smtp.sendmail(from_addr, to_addrs, msg, mail_options, rcpt_options, **dsn)

        return Deferred.fromCoroutine(self._with_connection(send))

    def send_message(
        self,
        msg: Message,
        from_addr: str | None = None,
        to_addrs: str | Sequence[str] | None = None,
        mail_options: Sequence[str] = (),
        rcpt_options: Sequence[str] = (),
    ) -> Deferred[dict[str, Reply]]:
        """
        Send an :class:`email.message.Message`, as :meth:`SMTP.send_message`.
        """
        prepared = prepare_message(msg, from_addr, to_addrs)
        return self.sendmail(
            prepared.sender,
            prepared.recipients,
            prepared.data,
            tuple(mail_options) + prepared.mail_options,
            rcpt_options,
        )

    def close(self) -> Deferred[None]:
        """
        Stop taking sends, fail those waiting, QUIT idle connections and the
        busy ones as they finish.

        :returns: a Deferred firing once every connection is closed.
        """
        self._closed = True
        while self._waiting:
            self._waiting.popleft().errback(SMTPServerDisconnected("the pool was closed"))
        for conn in self._idle:
            self._retire(conn)
        self._idle.clear()
        pending = list(self._closing)
        self._closing.clear()
        busy = [self._drained()] if self._busy or self._opening else []
        d: Deferred[Any] = DeferredList(pending + busy, consumeErrors=True)
        return d.addCallback(lambda _: None)

    # -- internals ------------------------------------------------------------------

    def _drained(self) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        self._on_drained = d
        return d

    async def _with_connection(
        self, send: Callable[[SMTP], Deferred[dict[str, Reply]]]
    ) -> dict[str, Reply]:
        conn = await self._acquire()
        healthy = False
        try:
            result = await send(conn.smtp)
            healthy = True
            return result
        except SMTPException:
            # A refusal leaves the session reset and usable; a lost or broken
            # connection does not.
            healthy = conn.smtp.sock is not None
            raise
        except CancelledError:
            raise
        finally:
            conn.messages += 1
            self._release(conn, healthy and conn.smtp.sock is not None)

    async def _acquire(self) -> _Connection:
        if self._closed:
            raise SMTPServerDisconnected("the pool was closed")
        while self._idle:
            conn = self._idle.pop()  # most recently used: warmest
            self._stop_idle_timer(conn)
            if self._reactor.seconds() - conn.idle_since > self.noop_after:
                try:
                    reply = await conn.smtp.noop()
                except SMTPException:
                    reply = None
                if reply is None or reply.code != 250:
                    self._retire(conn)
                    continue
            self._busy.add(conn)
            return conn
        if self.size < self.max_connections:
            return await self._open()
        waiter: Deferred[_Connection] = Deferred(lambda d: self._waiting.remove(d))
        self._waiting.append(waiter)
        return await waiter

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
            self._check_drained()
            raise
        self._opening -= 1
        conn = _Connection(smtp)
        self._busy.add(conn)
        return conn

    def _release(self, conn: _Connection, healthy: bool) -> None:
        self._busy.discard(conn)
        if not healthy or conn.messages >= self.max_messages or self._closed:
            self._retire(conn)
            if self._waiting and not self._closed:
                # A replacement for the connection just given up.
                waiter = self._waiting.popleft()
                Deferred.fromCoroutine(self._open()).chainDeferred(waiter)
            self._check_drained()
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
        smtp = conn.smtp
        if smtp.sock is None:
            d: Deferred[Any] = smtp.close()
        else:
            d = smtp.quit()
            d.addErrback(lambda _: smtp.close())
        d.addErrback(lambda _: None)
        self._closing.append(d)
        d.addBoth(lambda _: self._closing.remove(d) if d in self._closing else None)

    def _check_drained(self) -> None:
        waiter = self._on_drained
        if waiter is not None and not self._busy and not self._opening:
            self._on_drained = None
            pending = list(self._closing)
            DeferredList(pending, consumeErrors=True).addCallback(lambda _: waiter.callback(None))
