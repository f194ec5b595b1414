"""
Tests for :class:`txsmtpclient.protocol.SMTPClientProtocol` on a
:class:`StringTransport` and a :class:`Clock`: the FIFO of waiters, exact
bytes written, timeouts per stage, and how every kind of failure fails every
waiting Deferred.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import pytest
from helpers import (
    NoDelayTransport,
    assert_no_result,
    command,
    deliver,
    expect,
    failure_result_of,
    send_pipelined,
    success_result_of,
)
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IProtocol
from twisted.internet.task import Clock
from twisted.logger import LogEvent, capturedLogs
from twisted.python.failure import Failure

from txsmtpclient._log import Transcript
from txsmtpclient.errors import SMTPProtocolError, SMTPServerDisconnected, SMTPTimeoutError
from txsmtpclient.protocol import DEFAULT_TIMEOUTS, SMTPClientProtocol, Timeouts
from txsmtpclient.reply import Reply


def _connected(
    timeouts: Timeouts | None = None, transcript: Transcript | None = None
) -> tuple[SMTPClientProtocol, NoDelayTransport, Clock]:
    clock = Clock()
    proto = SMTPClientProtocol(clock=clock, timeouts=timeouts, transcript=transcript)
    transport = NoDelayTransport()
    cast(IProtocol, proto).makeConnection(transport)
    return proto, transport, clock


def _in_data(proto: SMTPClientProtocol) -> None:
    """Take the session to DATA's 354, where message data may follow."""
    proto.send(command(b"MAIL FROM:<a@x>\r\n", "mail"))
    deliver(proto, b"250 ok\r\n")
    proto.send(command(b"DATA\r\n", "data_init"))
    deliver(proto, b"354 go\r\n")
    cast(NoDelayTransport, proto.transport).take()


def _greeted(
    timeouts: Timeouts | None = None, transcript: Transcript | None = None
) -> tuple[SMTPClientProtocol, NoDelayTransport, Clock]:
    proto, transport, clock = _connected(timeouts, transcript)
    deliver(proto, b"220 hi\r\n")
    assert success_result_of(proto.greeting) == Reply(220, b"hi")
    return proto, transport, clock


def test_tcp_nodelay_set_on_connect() -> None:
    """TCP_NODELAY is switched on as soon as the connection is made."""
    _proto, transport, _clock = _connected()
    assert transport.no_delay is True


def test_send_writes_and_fires_in_order() -> None:
    """Each send writes its bytes at once; replies fire the sends in order."""
    proto, transport, _clock = _greeted()
    first = proto.send(command(b"NOOP\r\n"))
    second = proto.send(command(b"RSET\r\n"))
    assert transport.writes == [b"NOOP\r\n", b"RSET\r\n"]
    assert proto.pending == 2
    deliver(proto, b"250 one\r\n")
    assert success_result_of(first) == Reply(250, b"one")
    assert_no_result(second)
    deliver(proto, b"250 two\r\n")
    assert success_result_of(second) == Reply(250, b"two")
    assert proto.pending == 0


def test_pipelined_batch_is_one_write() -> None:
    """send_pipelined writes the whole batch at once and awaits one reply per stage."""
    proto, transport, _clock = _greeted()
    batch = b"MAIL FROM:<a@x>\r\nRCPT TO:<b@x>\r\nDATA\r\n"
    waiters = send_pipelined(proto, batch, ["mail", "rcpt", "data_init"])
    assert transport.writes == [batch]
    deliver(proto, b"250 a\r\n550 b\r\n354 c\r\n")
    assert [success_result_of(w) for w in waiters] == [(250, b"a"), (550, b"b"), (354, b"c")]


def test_unsolicited_421_closes_politely() -> None:
    """RFC 5321 section 3.8: an unsolicited 421 fails what comes next and closes."""
    proto, transport, _clock = _greeted()
    deliver(proto, b"421 4.4.2 shutting down\r\n")
    assert not proto.usable
    assert transport.disconnecting and not transport.disconnected
    failure = failure_result_of(proto.send(command(b"NOOP\r\n")), SMTPServerDisconnected)
    assert "shutting down" in str(failure)
    assert transport.io.getvalue() == b""


def test_unsolicited_reply_is_a_protocol_error() -> None:
    """Any other reply nobody asked for is never paired with a later command."""
    proto, transport, _clock = _greeted()
    deliver(proto, b"250 surprise\r\n")
    assert transport.disconnected
    failure_result_of(proto.send(command(b"NOOP\r\n")), SMTPProtocolError)
    assert transport.io.getvalue() == b""


def test_421_reply_to_a_command() -> None:
    """A 421 answering a command is that command's reply; the session then ends."""
    proto, transport, _clock = _greeted()
    noop = proto.send(command(b"NOOP\r\n"))
    after = proto.send(command(b"RSET\r\n"))
    deliver(proto, b"421 closing\r\n")
    assert success_result_of(noop) == Reply(421, b"closing")
    failure_result_of(after, SMTPServerDisconnected)
    assert transport.disconnecting
    assert not proto.usable


def test_421_to_quit_is_not_fatal_noise() -> None:
    """A 421 answering QUIT is just the reply to QUIT."""
    proto, _transport, _clock = _greeted()
    quit = proto.send(command(b"QUIT\r\n", "quit"))
    deliver(proto, b"421 bye\r\n")
    assert success_result_of(quit) == Reply(421, b"bye")
    assert proto.usable


@pytest.mark.parametrize("terminator", [b"\r\n", b"\n"])
def test_line_too_long(terminator: bytes) -> None:
    """A reply line over the limit fails the waiter and aborts the connection."""
    proto, transport, _clock = _connected()
    deliver(proto, b"220 " + b"x" * 9000 + terminator)
    failure = failure_result_of(proto.greeting, SMTPProtocolError)
    assert "exceeds the limit" in str(failure)
    assert transport.disconnected


def test_endless_line_without_terminator() -> None:
    """A line that never ends is refused once it passes the limit, not buffered for ever."""
    proto, transport, _clock = _connected()
    for _ in range(100):
        deliver(proto, b"x" * 1000)
    failure_result_of(proto.greeting, SMTPProtocolError)
    assert transport.disconnected


def test_malformed_reply_fails_every_waiter() -> None:
    """One bad line fails every pending Deferred with SMTPProtocolError."""
    proto, transport, _clock = _greeted()
    waiters = send_pipelined(proto, b"MAIL FROM:<a@x>\r\nRCPT TO:<b@x>\r\n", ["mail", "rcpt"])
    deliver(proto, b"250 ok\r\nbogus\r\n")
    assert success_result_of(waiters[0]) == Reply(250, b"ok")
    failure = failure_result_of(waiters[1], SMTPProtocolError)
    assert "malformed reply" in str(failure)
    assert failure.temporary
    assert transport.disconnected


def test_connection_lost_fails_everything() -> None:
    """A lost connection fails every waiter and every later send; closed fires."""
    proto, _transport, _clock = _greeted()
    waiters = [proto.send(command(b"NOOP\r\n")), expect(proto, "mail"), expect(proto, "rcpt")]
    assert_no_result(proto.closed)
    proto.connectionLost(Failure(ConnectionDone("bye")))
    for waiter in waiters:
        failure = failure_result_of(waiter, SMTPServerDisconnected)
        assert "connection unexpectedly closed" in str(failure)
    failure_result_of(proto.send(command(b"NOOP\r\n")), SMTPServerDisconnected)
    assert send_pipelined(proto, b"x", ["command", "command"])[1].called
    assert success_result_of(proto.closed) is None
    assert not proto.usable
    assert isinstance(proto.failure, SMTPServerDisconnected)


def test_greeting_lost() -> None:
    """A server that hangs up before greeting fails the greeting Deferred."""
    proto, _transport, _clock = _connected()
    proto.connectionLost(Failure(ConnectionDone()))
    failure_result_of(proto.greeting, SMTPServerDisconnected)


def test_close_fails_waiters_and_closes_politely() -> None:
    """close() fails what is waiting and loses the connection without aborting."""
    proto, transport, _clock = _greeted()
    waiter = proto.send(command(b"NOOP\r\n"))
    proto.close()
    failure = failure_result_of(waiter, SMTPServerDisconnected)
    assert "closed by the client" in str(failure)
    assert transport.disconnecting and not transport.disconnected


STAGES = ["greeting", "command", "mail", "rcpt", "data_init", "data_end", "quit"]
TIMEOUTS = Timeouts(
    connect=1, greeting=11, command=12, mail=13, rcpt=14, data_init=15, data_block=16, data_end=17
)


@pytest.mark.parametrize("stage", STAGES)
def test_timeout_per_stage(stage: str) -> None:
    """Each stage waits exactly its own timeout, then aborts with SMTPTimeoutError."""
    proto, transport, clock = _connected(TIMEOUTS)
    if stage == "greeting":
        waiter = proto.greeting
    else:
        deliver(proto, b"220 hi\r\n")
        if stage == "data_end":
            _in_data(proto)
        waiter = proto.send(command(b"X\r\n", stage))
    seconds = TIMEOUTS.for_stage(stage)
    assert seconds is not None
    clock.advance(seconds - 0.01)
    assert_no_result(waiter)
    assert not transport.disconnecting
    clock.advance(0.01)
    failure = failure_result_of(waiter, SMTPTimeoutError)
    assert failure.stage == stage
    assert f"{seconds:g} seconds" in str(failure)
    assert isinstance(failure, TimeoutError)
    assert failure.temporary
    assert transport.disconnected
    assert not clock.getDelayedCalls()


def test_timer_restarts_with_each_reply() -> None:
    """Each reply is timed from the one before it, with its own stage's timeout."""
    proto, _transport, clock = _greeted(TIMEOUTS)
    mail, rcpt = send_pipelined(proto, b"MAIL\r\nRCPT\r\n", ["mail", "rcpt"])
    clock.advance(12.0)
    deliver(proto, b"250 ok\r\n")
    assert success_result_of(mail) == Reply(250, b"ok")
    clock.advance(13.99)  # rcpt's 14 s count from the MAIL reply
    assert_no_result(rcpt)
    clock.advance(0.01)
    assert failure_result_of(rcpt, SMTPTimeoutError).stage == "rcpt"


def test_no_timer_while_idle() -> None:
    """With nothing awaited no timer runs; a long idle spell is fine."""
    proto, _transport, clock = _greeted(TIMEOUTS)
    assert not clock.getDelayedCalls()
    clock.advance(10_000)
    assert proto.usable
    waiter = proto.send(command(b"NOOP\r\n"))
    assert len(clock.getDelayedCalls()) == 1
    deliver(proto, b"250 ok\r\n")
    success_result_of(waiter)
    assert not clock.getDelayedCalls()


def test_none_waits_for_ever() -> None:
    """A stage whose timeout is None never times out."""
    proto, _transport, clock = _greeted(Timeouts.every(None))
    waiter = proto.send(command(b"NOOP\r\n"))
    clock.advance(10**9)
    assert_no_result(waiter)
    assert not clock.getDelayedCalls()


def test_timeouts_values() -> None:
    """The defaults are RFC 5321 section 4.5.3.2's; every() and with_() derive copies."""
    assert (DEFAULT_TIMEOUTS.greeting, DEFAULT_TIMEOUTS.mail, DEFAULT_TIMEOUTS.rcpt) == (
        300,
        300,
        300,
    )
    assert (DEFAULT_TIMEOUTS.data_init, DEFAULT_TIMEOUTS.data_block) == (120, 180)
    assert DEFAULT_TIMEOUTS.data_end == 600
    assert Timeouts.every(5).rcpt == 5 and Timeouts.every(5).connect == 5
    assert DEFAULT_TIMEOUTS.with_(rcpt=1).rcpt == 1
    assert DEFAULT_TIMEOUTS.for_stage("no such stage") == DEFAULT_TIMEOUTS.command


def test_cancel_a_waiter_aborts() -> None:
    """Cancelling a waiting Deferred aborts the connection and fails the others."""
    proto, transport, clock = _greeted(TIMEOUTS)
    first = proto.send(command(b"NOOP\r\n"))
    second = proto.send(command(b"RSET\r\n"))
    first.cancel()
    failure_result_of(first, CancelledError)
    failure = failure_result_of(second, SMTPServerDisconnected)
    assert "cancelled" in str(failure)
    assert transport.disconnected
    assert not clock.getDelayedCalls()


def _events(events: Sequence[LogEvent], direction: str) -> list[LogEvent]:
    return [e for e in events if e.get("direction") == direction]


def test_transcript_level_1() -> None:
    """At level 1 each command line and each reply is one event in "txsmtpclient"."""
    with capturedLogs() as events:
        proto, _transport, _clock = _connected(transcript=Transcript(1))
        deliver(proto, b"220 hi\r\n")
        send_pipelined(proto, b"MAIL FROM:<a@x>\r\nRCPT TO:<b@x>\r\n", ["mail", "rcpt"])
        deliver(proto, b"250 ok\r\n250 ok\r\n")
    assert all(e["log_namespace"] == "txsmtpclient" for e in events)
    assert [e["data"] for e in _events(events, "send")] == [
        b"MAIL FROM:<a@x>\r\n",
        b"RCPT TO:<b@x>\r\n",
    ]
    assert [(e["code"], e["message"]) for e in _events(events, "reply")] == [
        (220, b"hi"),
        (250, b"ok"),
        (250, b"ok"),
    ]
    assert all(e["timestamp"] == "" for e in events)


def test_transcript_level_0_is_silent() -> None:
    """At level 0 nothing is logged."""
    with capturedLogs() as events:
        proto, _transport, _clock = _greeted()
        proto.send(command(b"NOOP\r\n"))
        deliver(proto, b"250 ok\r\n")
    assert [e for e in events if e["log_namespace"] == "txsmtpclient"] == []


def test_transcript_level_2_has_timestamps() -> None:
    """At level 2 every event carries a timestamp."""
    with capturedLogs() as events:
        proto, _transport, _clock = _greeted(transcript=Transcript(2))
        proto.send(command(b"NOOP\r\n"))
        deliver(proto, b"250 ok\r\n")
    assert events and all(e["timestamp"] for e in events)


def test_transcript_redacts_secrets() -> None:
    """AUTH's initial response and secret steps never reach an event."""
    with capturedLogs() as events:
        proto, _transport, _clock = _greeted(transcript=Transcript(1))
        proto.send(command(b"AUTH PLAIN AHVzZXIAc2VjcmV0\r\n"))
        deliver(proto, b"334 \r\n")
        proto.send(command(b"c2VjcmV0\r\n", secret=True))
        deliver(proto, b"235 2.7.0 c2VjcmV0 ok\r\n")
    text = repr([dict(e) for e in events])
    assert "AHVzZXIAc2VjcmV0" not in text
    assert "c2VjcmV0" not in text
    sent = [e["data"] for e in _events(events, "send")]
    assert sent[0] == b"AUTH PLAIN <redacted>\r\n"
    assert b"<redacted>" in sent[1]


def test_message_data_is_summarised() -> None:
    """Message data is logged as a byte count, not its content."""
    with capturedLogs() as events:
        proto, _transport, _clock = _greeted(transcript=Transcript(1))
        _in_data(proto)
        proto.send(command(b"secret body\r\n.\r\n", "data_end"))
    sent = [e["data"] for e in _events(events, "send")]
    assert sent[-1] == b"<16 bytes of message data>"
    assert not any(b"secret" in data for data in sent)


def test_lines_after_a_fatal_error_do_not_fire_anything() -> None:
    """Once the connection failed, later lines in the same segment change nothing."""
    proto, _transport, _clock = _greeted()
    waiter: Deferred[Reply] = proto.send(command(b"NOOP\r\n"))
    deliver(proto, b"bad\r\n250 late\r\n")
    failure_result_of(waiter, SMTPProtocolError)
    assert isinstance(proto.failure, SMTPProtocolError)
