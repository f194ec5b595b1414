"""
Tests for :class:`txsmtpclient.pool.SMTPConnectionPool` (issue 5, point 2):
connections reused, the limits on connections, messages and idle time kept,
waiting sends served in order, broken connections dropped and replaced,
refused transactions keeping their connection, and :meth:`close` leaving no
Deferred unfired.

Most tests run in memory: :class:`FakeRelay` answers like a small ESMTP
server on fake connections, one turn of a :class:`MemoryReactorClock` after
each command, so several sends are in flight at once and time is the test's.
The end-to-end ones count connections at a real aiosmtpd server.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any

import pytest
import pytest_twisted
from helpers import assert_no_result, failure_result_of, success_result_of
from servers import AiosmtpdServer, ServerScript
from twisted.internet.address import IPv4Address
from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.interfaces import IProtocol, IProtocolFactory, IStreamClientEndpoint
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from zope.interface import implementer

from txsmtpclient import SMTP
from txsmtpclient.errors import (
    SMTPAmbiguousDelivery,
    SMTPArgumentError,
    SMTPRecipientsRefused,
    SMTPServerDisconnected,
)
from txsmtpclient.pool import SMTPConnectionPool
from txsmtpclient.protocol import SMTPClientProtocol

SENDER = "sender@example.test"
RECIPIENT = "rcpt@example.test"
REFUSED = "nobody@example.test"


# -- an in-memory relay ------------------------------------------------------------


@dataclass
class FakeSession:
    """
    What one connection to the :class:`FakeRelay` saw.

    :ivar commands: every command line, without CRLF.
    :ivar messages: each message's data, still dot-stuffed, without the final dot.
    :ivar closed: whether the connection is gone.
    """

    commands: list[bytes] = field(default_factory=list)
    messages: list[bytes] = field(default_factory=list)
    closed: bool = False

    def verbs(self) -> list[bytes]:
        return [c.split(b" ", 1)[0].split(b":", 1)[0].upper() for c in self.commands]


class FakeConnection(StringTransport):
    """
    The server side of one connection: reads what the client writes and
    answers a turn of the clock later; closing it loses the connection, as
    a real transport does, a turn later.
    """

    def __init__(self, relay: FakeRelay, proto: SMTPClientProtocol) -> None:
        super().__init__(  # type: ignore[no-untyped-call]
            hostAddress=IPv4Address("TCP", "127.0.0.1", 40000 + len(relay.sessions)),
            peerAddress=IPv4Address("TCP", "127.0.0.1", 25),
        )
        self.relay = relay
        self.proto = proto
        self.session = FakeSession()
        self.inbox = b""
        self.in_data = False
        self.lost = False
        #: each write, as the client made it.
        self.writes: list[bytes] = []

    def reply(self, data: bytes) -> None:
        def deliver() -> None:
            if not self.lost:
                self.proto.dataReceived(data)

        self.relay.clock.callLater(0, deliver)

    def write(self, data: bytes) -> None:
        super().write(data)  # type: ignore[no-untyped-call]
        self.writes.append(data)
        if self.relay.drop_on is not None and self.relay.drop_on in data:
            # Gone before this write is read: nothing more is answered.
            self.relay.drop_on = None
            self.lost = True
            self.relay.clock.callLater(0, self._lose)
            return
        if self.lost or self.disconnecting:
            return
        self.inbox += data
        while not self.lost:
            if self.in_data:
                # The data starts at a line start: an empty message is ".\r\n".
                end = (b"\r\n" + self.inbox).find(b"\r\n.\r\n")
                if end < 0:
                    return
                self.session.messages.append(self.inbox[:end])
                self.inbox = self.inbox[end + 3 :]
                self.in_data = False
                self.reply(b"250 2.0.0 queued\r\n")
                continue
            line, sep, rest = self.inbox.partition(b"\r\n")
            if not sep:
                return
            self.inbox = rest
            self.command(line)

    def command(self, line: bytes) -> None:
        relay = self.relay
        self.session.commands.append(line)
        verb = self.session.verbs()[-1]
        if verb == relay.drop_at:
            relay.drop_at = None
            self.drop()
        elif verb == relay.silent_at:
            relay.silent_at = None
        elif verb == b"EHLO":
            self.reply(b"250-mx.fake\r\n250-PIPELINING\r\n250 8BITMIME\r\n")
        elif verb == b"RCPT" and REFUSED.encode() in line:
            self.reply(b"550 5.1.1 no such user\r\n")
        elif verb == b"DATA":
            self.in_data = True
            self.reply(b"354 go ahead\r\n")
        elif verb == b"NOOP":
            self.reply(relay.noop_reply)
        elif verb == b"QUIT":
            self.reply(b"221 bye\r\n")
            self.relay.clock.callLater(0, self.drop)
        else:
            self.reply(b"250 ok\r\n")

    def drop(self) -> None:
        """
        The connection goes away.
        """
        if not self.lost:
            self.lost = True
            self._lose()

    def _lose(self) -> None:
        self.session.closed = True
        self.proto.connectionLost(Failure(ConnectionDone()))

    def loseConnection(self) -> None:
        super().loseConnection()  # type: ignore[no-untyped-call]
        self.relay.clock.callLater(0, self.drop)

    def abortConnection(self) -> None:
        super().abortConnection()  # type: ignore[no-untyped-call]
        self.relay.clock.callLater(0, self.drop)


@implementer(IStreamClientEndpoint)
class FakeRelay:
    """
    An endpoint to a fake ESMTP relay: each ``connect`` opens a new
    :class:`FakeConnection` greeted a turn later.

    :ivar noop_reply: the answer to NOOP.
    :ivar drop_at: a verb (``b"RCPT"``) at which the next session is cut.
    :ivar silent_at: a verb the relay will not answer, once.
    :ivar drop_on: bytes whose write cuts the connection unread, once.
    :ivar refuse_connections: fail every connection attempt.
    """

    def __init__(self) -> None:
        self.clock = MemoryReactorClock()
        self.connections: list[FakeConnection] = []
        self.noop_reply = b"250 ok\r\n"
        self.drop_at: bytes | None = None
        self.silent_at: bytes | None = None
        #: bytes whose write cuts the connection before it is read, once.
        self.drop_on: bytes | None = None
        self.refuse_connections = False

    @property
    def sessions(self) -> list[FakeSession]:
        return [c.session for c in self.connections]

    def open_sessions(self) -> int:
        return sum(not s.closed for s in self.sessions)

    def connect(self, factory: IProtocolFactory) -> Deferred[IProtocol]:
        if self.refuse_connections:
            return fail(ConnectionRefusedError("no"))
        proto = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 25))
        assert isinstance(proto, SMTPClientProtocol)
        conn = FakeConnection(self, proto)
        self.connections.append(conn)
        proto.makeConnection(conn)
        conn.reply(b"220 mx.fake ESMTP\r\n")
        return succeed(proto)

    def settle(self, limit: int = 10_000) -> None:
        """
        Run every call due now (replies, and what they set off) until none is left.
        """
        for _ in range(limit):
            now = self.clock.seconds()
            if not any(c.getTime() <= now for c in self.clock.getDelayedCalls()):
                return
            self.clock.advance(0)
        raise AssertionError("the dialogue never settled")

    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)
        self.settle()


def _pool(relay: FakeRelay, **kwargs: Any) -> SMTPConnectionPool:
    def make_client() -> SMTP:
        return SMTP(local_hostname="client.example", reactor=relay.clock, tls="never")

    return SMTPConnectionPool(relay, make_client=make_client, reactor=relay.clock, **kwargs)


def _send(pool: SMTPConnectionPool, n: int, to: str = RECIPIENT) -> Deferred[dict[str, Any]]:
    return pool.sendmail(f"s{n}@example.test", [to], b"Subject: %d\r\n\r\nbody %d\r\n" % (n, n))


def _senders(session: FakeSession) -> list[bytes]:
    return [c.split(b"<")[1].split(b">")[0] for c in session.commands if c.startswith(b"MAIL")]


def _close(relay: FakeRelay, pool: SMTPConnectionPool) -> None:
    d = pool.close()
    relay.settle()
    success_result_of(d)
    assert pool.size == 0
    assert relay.open_sessions() == 0
    # No idle timer or other call is left behind.
    assert relay.clock.getDelayedCalls() == []


# -- reuse --------------------------------------------------------------------------


def test_waiting_sends_pipelined_behind_the_busy_one() -> None:
    """
    Three sends for one connection: each waiting send's envelope goes out in
    the same write as the message end before it (RFC 2920 section 3.1), and
    each result is its own.
    """
    relay = FakeRelay()
    pool = _pool(relay, max_connections=1)
    sends = [_send(pool, n, to=REFUSED if n == 1 else RECIPIENT) for n in range(3)]
    relay.settle()
    assert success_result_of(sends[0]) == {}
    failure_result_of(sends[1], SMTPRecipientsRefused)
    assert success_result_of(sends[2]) == {}
    [conn] = relay.connections
    assert conn.writes[1:] == [
        b"MAIL FROM:<s0@example.test>\r\nRCPT TO:<rcpt@example.test>\r\nDATA\r\n",
        b"Subject: 0\r\n\r\nbody 0\r\n.\r\n"
        b"MAIL FROM:<s1@example.test>\r\nRCPT TO:<nobody@example.test>\r\nDATA\r\n",
        # Message 1's recipient was refused, but DATA got its 354 (RFC 2920
        # section 3.1): an empty message, RSET, then message 2 as usual.
        b".\r\n",
        b"RSET\r\n",
        b"MAIL FROM:<s2@example.test>\r\nRCPT TO:<rcpt@example.test>\r\nDATA\r\n",
        b"Subject: 2\r\n\r\nbody 2\r\n.\r\n",
    ]
    assert conn.session.messages == [
        b"Subject: 0\r\n\r\nbody 0\r\n",
        b"",
        b"Subject: 2\r\n\r\nbody 2\r\n",
    ]
    assert pool.size == 1 and pool.idle == 1
    _close(relay, pool)


def test_pipelined_send_lost_with_its_connection() -> None:
    """
    The connection drops after a message end went out with the next
    envelope, before any reply: the first send is ambiguous, the second a
    temporary failure (not ambiguous), and the pool opens a fresh
    connection for the third.
    """
    relay = FakeRelay()
    pool = _pool(relay, max_connections=1)
    sends = [_send(pool, n) for n in range(3)]
    relay.drop_on = b".\r\nMAIL"
    relay.settle()
    first = relay.connections[0]
    assert first.writes[-1] == (
        b"Subject: 0\r\n\r\nbody 0\r\n.\r\n"
        b"MAIL FROM:<s1@example.test>\r\nRCPT TO:<rcpt@example.test>\r\nDATA\r\n"
    )
    failure_result_of(sends[0], SMTPAmbiguousDelivery)
    error = failure_result_of(sends[1], SMTPServerDisconnected)
    assert not isinstance(error, SMTPAmbiguousDelivery) and error.temporary
    assert success_result_of(sends[2]) == {}
    messages = [c.session.messages for c in relay.connections]
    assert messages == [[], [b"Subject: 2\r\n\r\nbody 2\r\n"]]
    _close(relay, pool)


def test_messages_reuse_one_connection() -> None:
    """Five sends one after another: one connection, one EHLO, five MAILs, no RSET."""
    relay = FakeRelay()
    pool = _pool(relay)
    for n in range(5):
        d = _send(pool, n)
        relay.settle()
        assert success_result_of(d) == {}
    (session,) = relay.sessions
    assert session.verbs() == [b"EHLO"] + [b"MAIL", b"RCPT", b"DATA"] * 5
    assert [m.split(b"\r\n")[0] for m in session.messages] == [
        b"Subject: %d" % n for n in range(5)
    ]
    assert (pool.size, pool.idle) == (1, 1)
    _close(relay, pool)
    assert session.verbs()[-1] == b"QUIT"


def test_max_connections_is_respected_and_waiters_are_served_in_order() -> None:
    """Ten sends at once over at most three connections; every one delivered, in order."""
    relay = FakeRelay()
    pool = _pool(relay, max_connections=3)
    sends = [_send(pool, n) for n in range(10)]
    assert pool.size == 3 and pool.waiting == 7
    relay.settle()
    assert [success_result_of(d) for d in sends] == [{}] * 10
    assert len(relay.connections) == 3
    delivered = [s for session in relay.sessions for s in _senders(session)]
    assert sorted(delivered) == sorted(b"s%d@example.test" % n for n in range(10))
    _close(relay, pool)


def test_one_connection_serves_waiters_first_come_first_served() -> None:
    """With one connection, waiting sends go in the order they were made."""
    relay = FakeRelay()
    pool = _pool(relay, max_connections=1)
    sends = [_send(pool, n) for n in (3, 1, 4, 1, 5, 9, 2, 6)]
    relay.settle()
    assert all(success_result_of(d) == {} for d in sends)
    (session,) = relay.sessions
    assert _senders(session) == [b"s%d@example.test" % n for n in (3, 1, 4, 1, 5, 9, 2, 6)]
    _close(relay, pool)


def test_max_messages_rotates_connections() -> None:
    """After max_messages a connection is closed with QUIT and the next send opens another."""
    relay = FakeRelay()
    pool = _pool(relay, max_messages=2)
    for n in range(5):
        d = _send(pool, n)
        relay.settle()
        success_result_of(d)
    assert [len(s.messages) for s in relay.sessions] == [2, 2, 1]
    assert [s.closed for s in relay.sessions] == [True, True, False]
    assert relay.sessions[0].verbs()[-1] == b"QUIT"
    _close(relay, pool)


# -- idle connections ---------------------------------------------------------------


def test_idle_connection_is_checked_with_noop_after_noop_after() -> None:
    """Reused at once: no NOOP; reused after noop_after seconds: NOOP first, same connection."""
    relay = FakeRelay()
    pool = _pool(relay, noop_after=5.0, idle_timeout=60.0)
    for wait in (0.0, 4.0, 6.0):
        relay.advance(wait)
        d = _send(pool, 0)
        relay.settle()
        success_result_of(d)
    (session,) = relay.sessions
    assert session.verbs() == [b"EHLO"] + [b"MAIL", b"RCPT", b"DATA"] * 2 + [
        b"NOOP",
        b"MAIL",
        b"RCPT",
        b"DATA",
    ]
    _close(relay, pool)


@pytest.mark.parametrize("noop_reply", [b"421 4.3.2 shutting down\r\n", b"500 what\r\n"])
def test_failed_noop_replaces_the_connection(noop_reply: bytes) -> None:
    """A NOOP that is not 250 drops the connection; the send goes out on a new one."""
    relay = FakeRelay()
    pool = _pool(relay, noop_after=5.0)
    success_result_of(_settled(relay, _send(pool, 0)))
    relay.noop_reply = noop_reply
    relay.advance(10)
    d = _send(pool, 1)
    relay.settle()
    assert success_result_of(d) == {}
    first, second = relay.sessions
    assert first.closed and first.verbs()[4] == b"NOOP"
    assert _senders(second) == [b"s1@example.test"]
    assert pool.size == 1
    _close(relay, pool)


def test_noop_check_counts_against_the_limit() -> None:
    """While an idle connection is checked with NOOP, a second send waits: no second connection."""
    relay = FakeRelay()
    pool = _pool(relay, max_connections=1, noop_after=5.0)
    success_result_of(_settled(relay, _send(pool, 0)))
    relay.advance(10)
    first = _send(pool, 1)  # NOOP on its way
    second = _send(pool, 2)
    assert pool.size == 1 and pool.waiting == 1
    relay.settle()
    assert success_result_of(first) == {} and success_result_of(second) == {}
    assert len(relay.connections) == 1
    _close(relay, pool)


def test_idle_timeout_closes_with_quit() -> None:
    """A connection idle for idle_timeout is closed with QUIT; the next send opens a new one."""
    relay = FakeRelay()
    pool = _pool(relay, idle_timeout=30.0)
    success_result_of(_settled(relay, _send(pool, 0)))
    relay.advance(29)
    assert pool.idle == 1 and not relay.sessions[0].closed
    relay.advance(2)
    assert pool.size == 0
    assert relay.sessions[0].closed and relay.sessions[0].verbs()[-1] == b"QUIT"
    success_result_of(_settled(relay, _send(pool, 1)))
    assert len(relay.connections) == 2
    _close(relay, pool)


def test_connection_closed_by_the_server_while_idle_is_replaced() -> None:
    """An idle connection the server closed (421) is dropped without an error for the next send."""
    relay = FakeRelay()
    pool = _pool(relay)
    success_result_of(_settled(relay, _send(pool, 0)))
    relay.connections[0].reply(b"421 4.3.2 going down\r\n")
    relay.settle()
    assert relay.sessions[0].closed
    d = _send(pool, 1)
    relay.settle()
    assert success_result_of(d) == {}
    assert _senders(relay.sessions[1]) == [b"s1@example.test"]
    _close(relay, pool)


# -- failures -------------------------------------------------------------------------


def test_connection_broken_mid_send_is_dropped_and_the_next_send_opens_a_fresh_one() -> None:
    """The server hangs up after MAIL: that send fails; the next one gets a new connection."""
    relay = FakeRelay()
    pool = _pool(relay)
    success_result_of(_settled(relay, _send(pool, 0)))
    relay.drop_at = b"RCPT"
    broken = _send(pool, 1)
    relay.settle()
    failure_result_of(broken, SMTPServerDisconnected)
    assert pool.size == 0
    d = _send(pool, 2)
    relay.settle()
    assert success_result_of(d) == {}
    assert [_senders(s) for s in relay.sessions] == [
        [b"s0@example.test", b"s1@example.test"],
        [b"s2@example.test"],
    ]
    _close(relay, pool)


def test_refused_transaction_keeps_the_connection() -> None:
    """A 550 to the only recipient fails that send; the connection is reset and reused."""
    relay = FakeRelay()
    pool = _pool(relay)
    refused = _send(pool, 0, to=REFUSED)
    relay.settle()
    error = failure_result_of(refused, SMTPRecipientsRefused)
    assert error.recipients[REFUSED].code == 550
    d = _send(pool, 1)
    relay.settle()
    assert success_result_of(d) == {}
    (session,) = relay.sessions
    # RFC 2920 section 3.1: DATA was pipelined and got its 354, so the
    # client ends an empty message before RSET.
    assert session.verbs() == [
        b"EHLO",
        b"MAIL",
        b"RCPT",
        b"DATA",
        b"RSET",
        b"MAIL",
        b"RCPT",
        b"DATA",
    ]
    assert session.messages == [b"", b"Subject: 1\r\n\r\nbody 1\r\n"]
    _close(relay, pool)


def test_partly_refused_message_reports_and_keeps_the_connection() -> None:
    """One recipient of two refused: the send succeeds with the refusal; the connection stays."""
    relay = FakeRelay()
    pool = _pool(relay)
    d = pool.sendmail(SENDER, [RECIPIENT, REFUSED], b"hi\r\n")
    relay.settle()
    refused = success_result_of(d)
    assert list(refused) == [REFUSED]
    assert pool.idle == 1
    _close(relay, pool)


def test_unreachable_relay_fails_every_waiting_send() -> None:
    """When connections cannot be opened each send fails with the error; none waits for ever."""
    relay = FakeRelay()
    relay.refuse_connections = True
    pool = _pool(relay, max_connections=1)
    sends = [_send(pool, n) for n in range(4)]
    relay.settle()
    for d in sends:
        error = failure_result_of(d, SMTPServerDisconnected)
        assert isinstance(error.__cause__, ConnectionRefusedError)
    assert pool.size == 0 and pool.waiting == 0
    relay.refuse_connections = False
    success_result_of(_settled(relay, _send(pool, 9)))
    _close(relay, pool)


def test_replacement_for_a_broken_connection_serves_the_next_waiter() -> None:
    """A connection lost mid-send is replaced for the sends waiting behind it."""
    relay = FakeRelay()
    pool = _pool(relay, max_connections=1)
    relay.drop_at = b"DATA"
    sends = [_send(pool, n) for n in range(3)]
    relay.settle()
    failure_result_of(sends[0], SMTPServerDisconnected)
    assert success_result_of(sends[1]) == {} and success_result_of(sends[2]) == {}
    assert len(relay.connections) == 2
    _close(relay, pool)


def test_cancelled_waiter_leaves_the_queue() -> None:
    """A waiting send that is cancelled fails with CancelledError; the others still go."""
    relay = FakeRelay()
    pool = _pool(relay, max_connections=1)
    first, second, third = (_send(pool, n) for n in range(3))
    second.cancel()
    failure_result_of(second, CancelledError)
    relay.settle()
    assert success_result_of(first) == {} and success_result_of(third) == {}
    assert _senders(relay.sessions[0]) == [b"s0@example.test", b"s2@example.test"]
    _close(relay, pool)


def test_cancelled_send_aborts_its_connection_and_frees_the_slot() -> None:
    """Cancelling a send in progress aborts its connection; a waiting send gets a new one."""
    relay = FakeRelay()
    pool = _pool(relay, max_connections=1)
    relay.silent_at = b"DATA"
    first = _send(pool, 0)
    second = _send(pool, 1)
    relay.settle()
    assert_no_result(first)  # waiting for DATA's reply
    assert pool.waiting == 1
    first.cancel()
    failure_result_of(first, CancelledError)
    relay.settle()
    assert success_result_of(second) == {}
    assert len(relay.connections) == 2 and relay.sessions[0].closed
    _close(relay, pool)


def test_bad_arguments_raise_at_once_without_a_connection() -> None:
    """Misuse raises before any connection is taken."""
    relay = FakeRelay()
    pool = _pool(relay)
    with pytest.raises(SMTPArgumentError):
        pool.sendmail("a\r\nRCPT TO:<x@y>", [RECIPIENT], b"x")
    with pytest.raises(TypeError):
        pool.sendmail(SENDER, [RECIPIENT], 42)  # type: ignore[arg-type]
    with pytest.raises(SMTPArgumentError):
        pool.sendmail(SENDER, [RECIPIENT], b"x", dsn_ret="EVERYTHING")
    with pytest.raises(TypeError, match="dsn_bogus"):
        pool.sendmail(SENDER, [RECIPIENT], b"x", dsn_bogus=True)
    assert relay.connections == []
    _close(relay, pool)


def test_send_message_goes_through_the_pool() -> None:
    """send_message takes sender and recipients from the headers and leaves Bcc out."""
    relay = FakeRelay()
    pool = _pool(relay)
    msg = EmailMessage()
    msg["From"] = SENDER
    msg["To"] = RECIPIENT
    msg["Bcc"] = "hidden@example.test"
    msg["Subject"] = "pooled"
    msg.set_content("hello\n")
    d = pool.send_message(msg)
    relay.settle()
    assert success_result_of(d) == {}
    (session,) = relay.sessions
    assert [c for c in session.commands if c.startswith(b"RCPT")] == [
        b"RCPT TO:<rcpt@example.test>",
        b"RCPT TO:<hidden@example.test>",
    ]
    assert b"Bcc" not in session.messages[0] and b"Subject: pooled" in session.messages[0]
    _close(relay, pool)


# -- close ------------------------------------------------------------------------------


def test_close_quits_everything_and_fails_waiters() -> None:
    """close(): waiters fail, the busy send finishes, every connection QUITs, then it fires."""
    relay = FakeRelay()
    pool = _pool(relay, max_connections=2)
    idle = _send(pool, 0)
    relay.settle()
    success_result_of(idle)
    busy = [_send(pool, n) for n in (1, 2)]  # one reuses the idle connection, one opens
    waiting = _send(pool, 3)
    assert pool.waiting == 1
    closed = pool.close()
    failure_result_of(waiting, SMTPServerDisconnected)
    assert_no_result(closed)
    relay.settle()
    assert [success_result_of(d) for d in busy] == [{}, {}]
    success_result_of(closed)
    assert all(s.closed and s.verbs()[-1] == b"QUIT" for s in relay.sessions)
    assert pool.size == 0
    failure_result_of(_send(pool, 4), SMTPServerDisconnected)
    assert relay.clock.getDelayedCalls() == []


def test_close_of_an_unused_pool_fires_at_once() -> None:
    """Closing a pool that never connected fires at once."""
    relay = FakeRelay()
    pool = _pool(relay)
    success_result_of(pool.close())
    success_result_of(pool.close())


def _settled(relay: FakeRelay, d: Deferred[Any]) -> Deferred[Any]:
    relay.settle()
    return d


# -- end to end with aiosmtpd -----------------------------------------------------------


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


def _real_pool(server: AiosmtpdServer, **kwargs: Any) -> SMTPConnectionPool:
    reactor = _reactor()

    def make_client() -> SMTP:
        return SMTP(local_hostname="client.example", reactor=reactor, tls="never")

    return SMTPConnectionPool(
        server.host, server.port, make_client=make_client, reactor=reactor, **kwargs
    )


@pytest_twisted.ensureDeferred  # type: ignore[untyped-decorator]
async def test_end_to_end_reuse_one_connection(smtp_server: AiosmtpdServer) -> None:
    """N messages in turn reach aiosmtpd over one connection: one EHLO, N MAILs, then QUIT."""
    pool = _real_pool(smtp_server)
    for n in range(6):
        assert await pool.sendmail(SENDER, [RECIPIENT], b"Subject: %d\r\n\r\nhi\r\n" % n) == {}
    await pool.close()
    await smtp_server.when_connections_closed(reactor=_reactor())
    (connection,) = smtp_server.connections()
    lines = bytes(connection.received).split(b"\r\n")
    assert sum(line.startswith(b"EHLO") for line in lines) == 1
    assert sum(line.startswith(b"MAIL FROM:") for line in lines) == 6
    assert lines[-2] == b"QUIT"
    assert [m.content for m in smtp_server.messages] == [
        b"Subject: %d\r\n\r\nhi\r\n" % n for n in range(6)
    ]


@pytest_twisted.ensureDeferred  # type: ignore[untyped-decorator]
async def test_end_to_end_concurrent_sends_within_the_limit(smtp_server: AiosmtpdServer) -> None:
    """Twenty sends at once over at most four connections all arrive."""
    from twisted.internet.defer import gatherResults

    pool = _real_pool(smtp_server, max_connections=4)
    sends = [pool.sendmail(f"s{n}@example.test", [RECIPIENT], b"n=%d\r\n" % n) for n in range(20)]
    assert pool.size <= 4
    assert await gatherResults(sends) == [{}] * 20
    await pool.close()
    await smtp_server.when_connections_closed(reactor=_reactor())
    assert 1 <= len(smtp_server.connections()) <= 4
    assert sorted(m.mail_from for m in smtp_server.messages) == sorted(
        f"s{n}@example.test" for n in range(20)
    )


@pytest_twisted.ensureDeferred  # type: ignore[untyped-decorator]
async def test_end_to_end_max_messages_and_refusals(smtp_server_factory: Any) -> None:
    """Refused transactions keep the connection; max_messages rotates it."""
    server = smtp_server_factory(ServerScript(refuse_recipients={REFUSED: "550 5.1.1 no"}))
    pool = _real_pool(server, max_messages=3)
    with pytest.raises(SMTPRecipientsRefused):
        await pool.sendmail(SENDER, [REFUSED], b"x\r\n")
    for n in range(5):
        await pool.sendmail(SENDER, [RECIPIENT], b"%d\r\n" % n)
    await pool.close()
    await server.when_connections_closed(reactor=_reactor())
    connections = server.connections()
    # 6 transactions, 3 per connection: the refused one counted on the first.
    assert len(connections) == 2
    assert all(bytes(c.received).endswith(b"QUIT\r\n") for c in connections)
    assert b"RSET\r\n" in bytes(connections[0].received)
    assert len(server.messages) == 5


@pytest_twisted.ensureDeferred  # type: ignore[untyped-decorator]
async def test_one_shot_helpers_send_through_a_pool(smtp_server: AiosmtpdServer) -> None:
    """txsmtpclient.sendmail/send_message with pool= reuse its connection instead of their own."""
    from email.message import EmailMessage

    import txsmtpclient

    pool = _real_pool(smtp_server)
    for n in range(3):
        refused = await txsmtpclient.sendmail(
            str(pool.relay), SENDER, [RECIPIENT], b"n=%d\r\n" % n, pool=pool
        )
        assert refused == {}
    email = EmailMessage()
    email["From"], email["To"], email["Bcc"] = SENDER, RECIPIENT, "hidden@example.test"
    email.set_content("hello")
    assert await txsmtpclient.send_message(str(pool.relay), email, pool=pool) == {}
    with pytest.raises(ValueError, match="not the pool's relay"):
        txsmtpclient.sendmail("elsewhere.example", SENDER, [RECIPIENT], b"x", pool=pool)
    await pool.close()
    await smtp_server.when_connections_closed(reactor=_reactor())
    assert len(smtp_server.connections()) == 1
    assert [m.content for m in smtp_server.messages[:3]] == [b"n=%d\r\n" % n for n in range(3)]
    last = smtp_server.messages[3]
    assert sorted(last.rcpt_tos) == sorted([RECIPIENT, "hidden@example.test"])
    assert b"hidden@example.test" not in last.content
