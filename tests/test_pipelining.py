"""
Cross-transaction pipelining (RFC 2920 section 3.1; issue 9, point 1): when
sends are queued on one :class:`SMTP`, the next transaction's MAIL, RCPT and
DATA go out in the same write as the previous message's final dot.

Every test plays the server in memory and checks the bytes of each write.
The pair of transactions can fail at each position: the first message's
end, the second's MAIL, RCPT, DATA and end, a 421 or a lost connection
between any two of them, a timeout.  Each reply stays with its own
transaction, a 421 or a lost connection fails exactly the transactions
without their final reply, and a message whose end was written with no
reply is ambiguous, never sent.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from helpers import (
    EHLO_PIPELINING,
    EHLO_PLAIN,
    Session,
    assert_no_result,
    connected_session,
    failure_result_of,
    success_result_of,
)
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionLost
from twisted.logger import capturedLogs

from txsmtpclient import Timeouts
from txsmtpclient.errors import (
    SMTPAmbiguousDelivery,
    SMTPDataError,
    SMTPProtocolError,
    SMTPRecipientsRefused,
    SMTPSenderRefused,
    SMTPServerDisconnected,
    SMTPTimeoutError,
)

ENVELOPE_1 = b"MAIL FROM:<a@x> SIZE=2\r\nRCPT TO:<b@x>\r\nDATA\r\n"
ENVELOPE_2 = b"MAIL FROM:<c@x> SIZE=2\r\nRCPT TO:<d@x>\r\nDATA\r\n"
END_1 = b"m1\r\n.\r\n"
END_2 = b"m2\r\n.\r\n"
ACCEPT_ENVELOPE = b"250 2.1.0 ok\r\n250 2.1.5 ok\r\n354 go\r\n"


def _writes(s: Session) -> list[bytes]:
    writes = list(s.transport.writes)
    s.take()
    return writes


def _pair(
    ehlo: bytes = EHLO_PIPELINING, **session: Any
) -> tuple[Session, Deferred[Any], Deferred[Any]]:
    """
    Two sends queued at once, up to the first message's end written with the
    second's envelope (checked), no reply to either yet.
    """
    s = connected_session(**session)
    d1 = s.smtp.sendmail("a@x", "b@x", b"m1")
    d2 = s.smtp.sendmail("c@x", "d@x", b"m2")
    assert _writes(s) == [b"EHLO client.example\r\n"]
    s.feed(ehlo)
    assert _writes(s) == [ENVELOPE_1]
    s.feed(ACCEPT_ENVELOPE)
    # One write: the end of message 1 and the whole envelope of message 2.
    assert _writes(s) == [END_1 + ENVELOPE_2]
    assert_no_result(d1)
    assert_no_result(d2)
    return s, d1, d2


def test_second_envelope_goes_with_first_end() -> None:
    """Both accepted: two writes after EHLO's, each reply with its message."""
    s, d1, d2 = _pair()
    s.feed(b"250 2.0.0 queued as ONE\r\n" + ACCEPT_ENVELOPE)
    assert success_result_of(d1).final.message == b"2.0.0 queued as ONE"
    assert_no_result(d2)
    assert _writes(s) == [END_2]
    s.feed(b"250 2.0.0 queued as TWO\r\n")
    assert success_result_of(d2).final.message == b"2.0.0 queued as TWO"
    assert _writes(s) == []


def test_replies_in_separate_segments() -> None:
    """Replies split anywhere (here, inside the envelope's) are still paired right."""
    s, d1, _ = _pair()
    s.feed(b"250 2.0.0 queued as ONE\r\n250 2.1")
    assert success_result_of(d1).final.message == b"2.0.0 queued as ONE"
    s.feed(b".0 ok\r\n250 2.1.5 ok\r\n")
    assert _writes(s) == []
    s.feed(b"354 go\r\n")
    assert _writes(s) == [END_2]


@pytest.mark.parametrize("code", [b"554 5.7.1 spam", b"451 4.3.0 later"])
def test_first_message_refused_second_sent(code: bytes) -> None:
    """A refused message 1 fails only itself; no RSET goes between them."""
    s, d1, d2 = _pair()
    s.feed(code + b"\r\n" + ACCEPT_ENVELOPE)
    error = failure_result_of(d1, SMTPDataError)
    assert error.smtp_code == int(code[:3])
    assert error.temporary is code.startswith(b"4")
    assert _writes(s) == [END_2]
    s.feed(b"250 ok\r\n")
    assert success_result_of(d2) == {}


@pytest.mark.parametrize(
    ("replies", "error", "code"),
    [
        # MAIL refused; its RCPT and DATA then 503.
        (
            b"550 5.7.1 sender\r\n503 5.5.1 no MAIL\r\n503 5.5.1 no MAIL\r\n",
            SMTPSenderRefused,
            550,
        ),
        # Every RCPT refused; DATA 503.
        (b"250 ok\r\n550 5.1.1 no user\r\n503 5.5.1 no RCPT\r\n", SMTPRecipientsRefused, 550),
        # DATA refused.
        (b"250 ok\r\n250 ok\r\n451 4.3.0 no\r\n", SMTPDataError, 451),
    ],
    ids=["MAIL", "RCPT", "DATA"],
)
def test_second_envelope_refused_first_sent(
    replies: bytes, error: type[Exception], code: int
) -> None:
    """
    Message 2's MAIL, RCPT or DATA refused: message 1 is sent, message 2
    fails with that refusal, and RSET ends message 2's transaction.
    """
    s, d1, d2 = _pair()
    s.feed(b"250 ok\r\n" + replies)
    assert success_result_of(d1) == {}
    assert _writes(s) == [b"RSET\r\n"]
    s.feed(b"250 ok\r\n")
    refusal = failure_result_of(d2, error)
    if isinstance(refusal, SMTPRecipientsRefused):
        assert refusal.recipients["d@x"][0] == code
    else:
        assert getattr(refusal, "smtp_code", None) == code


def test_second_message_refused_first_sent() -> None:
    """Message 2 refused after its dot: only it fails."""
    s, d1, d2 = _pair()
    s.feed(b"250 ok\r\n" + ACCEPT_ENVELOPE)
    assert success_result_of(d1) == {}
    assert _writes(s) == [END_2]
    s.feed(b"554 5.7.1 spam\r\n")
    assert failure_result_of(d2, SMTPDataError).smtp_code == 554
    assert _writes(s) == []


def test_421_to_first_end() -> None:
    """
    A 421 answering message 1's end: message 1 was answered (refused,
    temporarily); message 2 got no reply and fails as a lost connection,
    not ambiguous (its end was never written).
    """
    s, d1, d2 = _pair()
    s.feed(b"421 4.3.2 shutting down\r\n")
    assert failure_result_of(d1, SMTPDataError).smtp_code == 421
    error = failure_result_of(d2, SMTPServerDisconnected)
    assert not isinstance(error, SMTPAmbiguousDelivery)
    assert error.temporary
    assert _writes(s) == []
    assert s.transport.disconnecting


def test_421_to_second_mail() -> None:
    """Message 1 sent; a 421 answering message 2's MAIL fails message 2 alone."""
    s, d1, d2 = _pair()
    s.feed(b"250 ok\r\n421 4.3.2 shutting down\r\n")
    assert success_result_of(d1) == {}
    error = failure_result_of(d2, SMTPServerDisconnected)
    assert not isinstance(error, SMTPAmbiguousDelivery)
    assert error.temporary


@pytest.mark.parametrize(
    "received",
    [b"", b"25", b"250 ok\r\n", b"250 ok\r\n250 ok\r\n", b"250 ok\r\n" + ACCEPT_ENVELOPE[:-5]],
)
def test_lost_before_second_end(received: bytes) -> None:
    """
    The connection lost at each point before message 2's end was written:
    message 1 is ambiguous unless its reply came; message 2 is a plain
    temporary failure, never ambiguous and never sent.
    """
    s, d1, d2 = _pair()
    s.feed(received)
    s.lose(ConnectionLost())
    if received.startswith(b"250 ok\r\n"):
        assert success_result_of(d1) == {}
    else:
        failure_result_of(d1, SMTPAmbiguousDelivery)
    error = failure_result_of(d2, SMTPServerDisconnected)
    assert not isinstance(error, SMTPAmbiguousDelivery)
    assert error.temporary


def test_lost_after_second_end() -> None:
    """Message 1 sent, message 2's end written, then the connection goes: message 2 ambiguous."""
    s, d1, d2 = _pair()
    s.feed(b"250 ok\r\n" + ACCEPT_ENVELOPE)
    assert _writes(s) == [END_2]
    s.lose(ConnectionLost())
    assert success_result_of(d1) == {}
    failure_result_of(d2, SMTPAmbiguousDelivery)


def test_timeout_waiting_for_first_end() -> None:
    """No reply to message 1's end in time: message 1 ambiguous, message 2 not."""
    s, d1, d2 = _pair(timeout=Timeouts.every(30))
    s.clock.advance(31)
    assert isinstance(failure_result_of(d1, SMTPAmbiguousDelivery).__cause__, SMTPTimeoutError)
    error = failure_result_of(d2, SMTPServerDisconnected)
    assert not isinstance(error, SMTPAmbiguousDelivery)


def test_malformed_reply_to_first_end() -> None:
    """A broken reply to message 1's end: message 1 ambiguous, message 2 a protocol error."""
    s, d1, d2 = _pair()
    s.feed(b"2x0 what\r\n")
    failure_result_of(d1, SMTPAmbiguousDelivery)
    error = failure_result_of(d2, SMTPProtocolError)
    assert not isinstance(error, SMTPAmbiguousDelivery)
    assert s.transport.disconnecting


def test_three_in_a_row() -> None:
    """Each message's end carries the next envelope, for as long as sends are queued."""
    s, d1, d2 = _pair()
    d3 = s.smtp.sendmail("e@x", "f@x", b"m3")
    s.feed(b"250 ok\r\n" + ACCEPT_ENVELOPE)
    assert _writes(s) == [END_2 + b"MAIL FROM:<e@x> SIZE=2\r\nRCPT TO:<f@x>\r\nDATA\r\n"]
    s.feed(b"250 ok\r\n" + ACCEPT_ENVELOPE)
    assert _writes(s) == [b"m3\r\n.\r\n"]
    s.feed(b"250 ok\r\n")
    assert [success_result_of(d) for d in (d1, d2, d3)] == [{}, {}, {}]


def test_other_calls_wait_for_the_reply() -> None:
    """Only sends are pipelined: a queued QUIT waits for the message's reply."""
    s = connected_session()
    d1 = s.smtp.sendmail("a@x", "b@x", b"m1")
    quit_ = s.smtp.quit()
    s.take()
    s.feed(EHLO_PIPELINING)
    s.take()
    s.feed(ACCEPT_ENVELOPE)
    assert _writes(s) == [END_1]
    s.feed(b"250 ok\r\n")
    assert success_result_of(d1) == {}
    assert _writes(s) == [b"QUIT\r\n"]
    s.feed(b"221 bye\r\n")
    s.lose()
    success_result_of(quit_)


def test_no_pipelining_without_the_extension() -> None:
    """A server without PIPELINING: message 2's MAIL waits for message 1's reply."""
    s = connected_session()
    d1 = s.smtp.sendmail("a@x", "b@x", b"m1")
    d2 = s.smtp.sendmail("c@x", "d@x", b"m2")
    s.take()
    s.feed(EHLO_PLAIN)
    for line in (b"MAIL FROM:<a@x> SIZE=2\r\n", b"RCPT TO:<b@x>\r\n"):
        assert _writes(s) == [line]
        s.feed(b"250 ok\r\n")
    assert _writes(s) == [b"DATA\r\n"]
    s.feed(b"354 go\r\n")
    assert _writes(s) == [END_1]
    s.feed(b"250 ok\r\n")
    assert success_result_of(d1) == {}
    assert _writes(s) == [b"MAIL FROM:<c@x> SIZE=2\r\n"]
    assert_no_result(d2)


def test_not_after_bdat() -> None:
    """After BDAT LAST the next MAIL waits for its reply (a refused chunk needs RSET)."""
    s = connected_session()
    s.smtp.bdat_threshold = 0
    d1 = s.smtp.sendmail("a@x", "b@x", b"m1")
    d2 = s.smtp.sendmail("c@x", "d@x", b"m2")
    s.take()
    s.feed(b"250-mx\r\n250-PIPELINING\r\n250 CHUNKING\r\n")
    assert _writes(s) == [b"MAIL FROM:<a@x>\r\nRCPT TO:<b@x>\r\n"]
    s.feed(b"250 ok\r\n250 ok\r\n")
    assert _writes(s) == [b"BDAT 2 LAST\r\nm1"]
    s.feed(b"250 ok\r\n")
    assert success_result_of(d1) == {}
    assert _writes(s) == [b"MAIL FROM:<c@x>\r\nRCPT TO:<d@x>\r\n"]
    assert_no_result(d2)


def test_results_fire_in_call_order() -> None:
    """
    A send that fails before writing anything (its stream breaks) while the
    one before it awaits its reply: its result still fires second, and the
    send after it is pipelined behind message 1.
    """

    async def broken() -> AsyncIterator[bytes]:
        raise OSError("disk gone")
        yield b""  # pragma: no cover

    s = connected_session()
    order: list[int] = []
    d1 = s.smtp.sendmail("a@x", "b@x", b"m1")
    d2 = s.smtp.sendmail("c@x", "d@x", broken())
    d3 = s.smtp.sendmail("e@x", "f@x", b"m3")
    for n, d in enumerate((d1, d2, d3), 1):
        d.addBoth(lambda result, n=n: order.append(n) or result)
    s.take()
    s.feed(EHLO_PIPELINING)
    s.take()
    s.feed(ACCEPT_ENVELOPE)
    assert _writes(s) == [END_1 + b"MAIL FROM:<e@x> SIZE=2\r\nRCPT TO:<f@x>\r\nDATA\r\n"]
    assert order == []
    s.feed(b"250 ok\r\n" + ACCEPT_ENVELOPE)
    assert order == [1, 2]
    assert success_result_of(d1) == {}
    failure_result_of(d2, OSError)
    s.feed(b"250 ok\r\n")
    assert order == [1, 2, 3]


def test_transaction_events_keep_their_own_replies_and_bytes() -> None:
    """
    With transaction events on, each pipelined transaction's event has its
    own replies and its own bytes, although message 2's envelope went out
    in message 1's last write.
    """
    s = connected_session()
    s.smtp.transaction_events = True
    with capturedLogs() as events:
        d1 = s.smtp.sendmail("a@x", "b@x", b"m1")
        d2 = s.smtp.sendmail("c@x", "d@x", b"m2")
        s.take()
        s.feed(EHLO_PIPELINING)
        s.take()
        s.feed(ACCEPT_ENVELOPE)
        s.take()
        s.feed(b"250 2.0.0 queued as ONE\r\n" + ACCEPT_ENVELOPE)
        s.take()
        s.feed(b"554 5.7.1 no\r\n")
    success_result_of(d1)
    failure_result_of(d2, SMTPDataError)
    first, second = [e for e in events if e.get("log_namespace") == "txsmtpclient.transaction"]
    assert [r.code for r in first["replies"]] == [250, 250, 250, 354, 250]  # EHLO's too
    assert first["queue_id"] == "ONE"
    assert first["bytes_sent"] == len(b"EHLO client.example\r\n" + ENVELOPE_1 + END_1)
    assert (second["outcome"], [r.code for r in second["replies"]]) == (
        "failed",
        [250, 250, 354, 554],
    )
    assert second["bytes_sent"] == len(ENVELOPE_2 + END_2)


def test_cancelling_the_pipelined_send_aborts_both() -> None:
    """
    Cancelling message 2 once its envelope is written aborts the connection:
    message 1, whose end was written with no reply yet, is ambiguous.
    """
    from twisted.internet.defer import CancelledError

    s, d1, d2 = _pair()
    d2.cancel()
    failure_result_of(d2, CancelledError)
    failure_result_of(d1, SMTPAmbiguousDelivery)
    assert s.transport.disconnecting


def test_cancelling_a_queued_send_before_it_starts_sends_nothing() -> None:
    """A send cancelled while it waits behind a message being written is dropped."""
    from twisted.internet.defer import CancelledError

    s = connected_session()
    d1 = s.smtp.sendmail("a@x", "b@x", b"m1")
    d2 = s.smtp.sendmail("c@x", "d@x", b"m2")
    s.take()
    s.feed(EHLO_PIPELINING)
    d2.cancel()
    failure_result_of(d2, CancelledError)
    assert _writes(s) == [ENVELOPE_1]
    s.feed(ACCEPT_ENVELOPE)
    assert _writes(s) == [END_1]
    s.feed(b"250 ok\r\n")
    assert success_result_of(d1) == {}


def test_cancelled_after_its_end_was_written_is_ambiguous() -> None:
    """
    A send cancelled once its final dot was written (a daemon stopping past
    its grace) fails as SMTPAmbiguousDelivery, not a plain CancelledError:
    whoever retries it must know it may arrive twice.  Message 2, whose end
    was never written, is cancelled plainly.
    """
    from twisted.internet.defer import CancelledError

    s, d1, d2 = _pair()
    d1.cancel()
    error = failure_result_of(d1, SMTPAmbiguousDelivery)
    assert isinstance(error.__cause__, CancelledError)
    failure = failure_result_of(d2, SMTPServerDisconnected)
    assert not isinstance(failure, SMTPAmbiguousDelivery)
    assert s.transport.disconnecting
    d2.cancel()  # already failed: nothing happens


def test_cancelling_a_finished_send_waiting_for_the_one_before() -> None:
    """
    A send that failed early (its stream broke) waits to report until the
    send before it does; cancelling it then leaves the queue running: the
    QUIT queued behind is still written and answered.
    """
    from twisted.internet.defer import CancelledError

    async def broken() -> AsyncIterator[bytes]:
        raise OSError("disk gone")
        yield b""  # pragma: no cover

    s = connected_session()
    d1 = s.smtp.sendmail("a@x", "b@x", b"m1")
    d2 = s.smtp.sendmail("c@x", "d@x", broken())
    quit_ = s.smtp.quit()
    s.take()
    s.feed(EHLO_PIPELINING)
    s.take()
    s.feed(ACCEPT_ENVELOPE)
    assert _writes(s) == [END_1]
    d2.cancel()
    failure_result_of(d2, CancelledError)
    s.feed(b"250 ok\r\n")
    assert success_result_of(d1) == {}
    assert _writes(s) == [b"QUIT\r\n"]
    s.feed(b"221 bye\r\n")
    s.lose()
    assert success_result_of(quit_).code == 221


def test_transaction_bytes_when_the_next_send_writes_after_the_dot() -> None:
    """
    Message 2's body is a stream read before its MAIL, so its envelope goes
    out after message 1's dot but before that dot's reply: each event still
    counts its own bytes.
    """
    gate: Deferred[None] = Deferred()

    async def body() -> AsyncIterator[bytes]:
        await gate
        yield b"m2"

    s = connected_session()
    s.smtp.transaction_events = True
    with capturedLogs() as events:
        d1 = s.smtp.sendmail("a@x", "b@x", b"m1")
        d2 = s.smtp.sendmail("c@x", "d@x", body())
        s.take()
        s.feed(EHLO_PIPELINING)
        s.take()
        s.feed(ACCEPT_ENVELOPE)
        assert _writes(s) == [END_1]
        gate.callback(None)
        envelope_2 = b"MAIL FROM:<c@x> BODY=8BITMIME\r\nRCPT TO:<d@x>\r\nDATA\r\n"
        assert _writes(s) == [envelope_2]
        s.feed(b"250 ok\r\n" + ACCEPT_ENVELOPE)
        assert _writes(s) == [END_2]
        s.feed(b"250 ok\r\n")
    success_result_of(d1)
    success_result_of(d2)
    first, second = [e for e in events if e.get("log_namespace") == "txsmtpclient.transaction"]
    assert first["bytes_sent"] == len(b"EHLO client.example\r\n" + ENVELOPE_1 + END_1)
    assert second["bytes_sent"] == len(envelope_2 + END_2)


def test_cancelling_the_call_that_held_back_a_send_lets_it_start() -> None:
    """
    A NOOP queued between two sends holds the second back until the first
    is answered; cancelling the NOOP lets the second start behind the first
    message's dot at once.
    """
    from twisted.internet.defer import CancelledError

    s = connected_session()
    d1 = s.smtp.sendmail("a@x", "b@x", b"m1")
    noop = s.smtp.noop()
    d2 = s.smtp.sendmail("c@x", "d@x", b"m2")
    s.take()
    s.feed(EHLO_PIPELINING)
    s.take()
    s.feed(ACCEPT_ENVELOPE)
    assert _writes(s) == [END_1]
    noop.cancel()
    failure_result_of(noop, CancelledError)
    assert _writes(s) == [ENVELOPE_2]
    s.feed(b"250 ok\r\n" + ACCEPT_ENVELOPE)
    assert _writes(s) == [END_2]
    s.feed(b"250 ok\r\n")
    assert [success_result_of(d1), success_result_of(d2)] == [{}, {}]
