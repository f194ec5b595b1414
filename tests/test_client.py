"""
In-memory tests for :class:`txsmtpclient.SMTP`: a fake endpoint hands the
session a protocol on a :class:`StringTransport`, the test plays the server
by feeding ``dataReceived``, and every byte the client writes is checked.
Time is a :class:`MemoryReactorClock`; no reactor runs.
"""

from __future__ import annotations

import smtplib
from typing import Any

import pytest
from helpers import (
    EHLO_PIPELINING,
    EHLO_PLAIN,
    GREETING,
    FakeEndpoint,
    Session,
    assert_no_result,
    connected_session,
    failure_result_of,
    success_result_of,
)
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import ConnectionLost, ConnectionRefusedError
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import capturedLogs

from txsmtpclient import SMTP, Reply, Timeouts
from txsmtpclient.errors import (
    SMTPAmbiguousDelivery,
    SMTPArgumentError,
    SMTPConnectError,
    SMTPDataError,
    SMTPException,
    SMTPHeloError,
    SMTPNotSupportedError,
    SMTPProtocolError,
    SMTPRecipientsRefused,
    SMTPResponseException,
    SMTPSenderRefused,
    SMTPServerDisconnected,
    SMTPTimeoutError,
)

MSG = b"Subject: test\n\n.hidden dot\nbody\n"
MSG_WIRE = b"Subject: test\r\n\r\n..hidden dot\r\nbody\r\n.\r\n"


def _ehlo(s: Session, reply: bytes = EHLO_PLAIN) -> None:
    assert s.take() == b"EHLO client.example\r\n"
    s.feed(reply)


def _step(s: Session, expected: bytes, reply: bytes) -> None:
    """The client wrote exactly ``expected`` (in one write); the server answers."""
    assert s.transport.writes == [expected], s.transport.writes
    s.take()
    s.feed(reply)


def _quit(s: Session) -> None:
    d = s.smtp.quit()
    _step(s, b"QUIT\r\n", b"221 2.0.0 bye\r\n")
    assert s.transport.disconnecting
    assert_no_result(d)
    s.lose()
    assert success_result_of(d) == Reply(221, b"2.0.0 bye")


# -- the whole dialogue ------------------------------------------------------------


def test_sendmail_lock_step() -> None:
    """Without PIPELINING each command waits for its reply; the body and dot go in one write."""
    s = connected_session()
    assert s.transport.no_delay is True
    d = s.smtp.sendmail("a@x", ["b@x", "c@x"], MSG)
    _ehlo(s)
    assert s.transport.io.getvalue().startswith(b"MAIL FROM:<a@x> SIZE=")
    _step(s, s.transport.io.getvalue(), b"250 2.1.0 ok\r\n")
    _step(s, b"RCPT TO:<b@x>\r\n", b"250 2.1.5 ok\r\n")
    _step(s, b"RCPT TO:<c@x>\r\n", b"550 5.1.1 no such user\r\n")
    _step(s, b"DATA\r\n", b"354 go ahead\r\n")
    assert_no_result(d)
    _step(s, MSG_WIRE, b"250 2.0.0 queued\r\n")
    assert success_result_of(d) == {"c@x": (550, b"5.1.1 no such user")}
    assert s.smtp.has_option("SIZE") and s.smtp.has_option("8bitmime")
    assert s.smtp.esmtp_features["size"] == "1000000"
    assert s.smtp.does_esmtp
    _quit(s)


def test_declared_size() -> None:
    """RFC 1870 section 4: SIZE counts CRLF line ends but not stuffed dots or the end marker."""
    s = connected_session()
    s.smtp.sendmail("a@x", "b@x", MSG)
    _ehlo(s)
    # "Subject: test\r\n\r\n.hidden dot\r\nbody\r\n"
    assert s.take() == b"MAIL FROM:<a@x> SIZE=%d\r\n" % len(
        b"Subject: test\r\n\r\n.hidden dot\r\nbody\r\n"
    )


def test_sendmail_pipelined_in_one_write() -> None:
    """With PIPELINING, MAIL, every RCPT and DATA leave in one write (RFC 2920)."""
    s = connected_session()
    d = s.smtp.sendmail("a@x", ["b@x", "c@x"], b"hi\r\n")
    _ehlo(s, EHLO_PIPELINING)
    assert s.transport.writes == [
        b"MAIL FROM:<a@x> SIZE=4\r\nRCPT TO:<b@x>\r\nRCPT TO:<c@x>\r\nDATA\r\n"
    ]
    s.take()
    s.feed(b"250 ok\r\n250 ok\r\n")
    assert s.transport.writes == []  # nothing until DATA's reply
    s.feed(b"250 ok\r\n354 go\r\n")
    _step(s, b"hi\r\n.\r\n", b"250 queued\r\n")
    assert success_result_of(d) == {}


def test_sendmail_result_carries_the_final_reply() -> None:
    """The refused-recipients dict also holds the reply to the final dot (its queue id)."""
    s = connected_session()
    d = s.smtp.sendmail("a@x", ["b@x", "c@x"], b"hi\r\n")
    _ehlo(s, EHLO_PIPELINING)
    s.take()
    s.feed(b"250 ok\r\n550 5.1.1 no\r\n250 ok\r\n354 go\r\n")
    _step(s, b"hi\r\n.\r\n", b"250 2.0.0 Ok: queued as Q42\r\n")
    result = success_result_of(d)
    assert result == {"b@x": (550, b"5.1.1 no")}
    assert isinstance(result, dict)
    final = getattr(result, "final", None)
    assert final == (250, b"2.0.0 Ok: queued as Q42")
    assert getattr(result, "finals", None) == (final,)


def test_one_string_recipient() -> None:
    """to_addrs may be a single string."""
    s = connected_session()
    d = s.smtp.sendmail("a@x", "b@x", b"")
    _ehlo(s, b"250 mx\r\n")
    _step(s, b"MAIL FROM:<a@x>\r\n", b"250 ok\r\n")
    _step(s, b"RCPT TO:<b@x>\r\n", b"250 ok\r\n")
    _step(s, b"DATA\r\n", b"354 go\r\n")
    _step(s, b".\r\n", b"250 ok\r\n")
    assert success_result_of(d) == {}


def test_helo_fallback_suppresses_options() -> None:
    """EHLO refused: HELO, and no ESMTP option (not even SIZE) on MAIL or RCPT."""
    s = connected_session()
    d = s.smtp.sendmail("a@x", "b@x", b"hi", ["BODY=7BIT"], ["NOTIFY=NEVER"])
    _ehlo(s, b"502 5.5.1 EHLO not supported\r\n")
    _step(s, b"HELO client.example\r\n", b"250 mx.example\r\n")
    _step(s, b"MAIL FROM:<a@x>\r\n", b"250 ok\r\n")
    _step(s, b"RCPT TO:<b@x>\r\n", b"250 ok\r\n")
    _step(s, b"DATA\r\n", b"354 go\r\n")
    _step(s, b"hi\r\n.\r\n", b"250 ok\r\n")
    assert success_result_of(d) == {}
    assert not s.smtp.does_esmtp
    assert s.smtp.helo_resp == b"mx.example"
    assert s.smtp.ehlo_resp == b"5.5.1 EHLO not supported"
    assert not s.smtp.has_option("size")


def test_ehlo_and_helo_refused() -> None:
    """Both greetings refused: SMTPHeloError with HELO's reply, and nothing more sent."""
    s = connected_session()
    d = s.smtp.sendmail("a@x", "b@x", b"hi")
    _ehlo(s, b"502 no\r\n")
    _step(s, b"HELO client.example\r\n", b"501 5.5.4 go away\r\n")
    error = failure_result_of(d, SMTPHeloError)
    assert (error.smtp_code, error.smtp_error) == (501, b"5.5.4 go away")
    assert isinstance(error, smtplib.SMTPHeloError)
    assert s.transport.io.getvalue() == b""


def test_ehlo_features_only_from_250() -> None:
    """Keywords in a refused EHLO reply are never believed."""
    s = connected_session()
    d = s.smtp.ehlo()
    _ehlo(s, b"550-refused\r\n550 PIPELINING\r\n")
    assert success_result_of(d) == (550, b"refused\nPIPELINING")
    assert not s.smtp.has_option("pipelining")


# -- refusals -------------------------------------------------------------------------


def test_sender_refused_then_next_sendmail_works() -> None:
    """MAIL refused: SMTPSenderRefused, RSET, and the session serves the next message."""
    s = connected_session()
    d = s.smtp.sendmail("bad@x", "b@x", b"hi")
    _ehlo(s, b"250 mx\r\n")
    _step(s, b"MAIL FROM:<bad@x>\r\n", b"553 5.1.8 sender rejected\r\n")
    _step(s, b"RSET\r\n", b"250 ok\r\n")
    error = failure_result_of(d, SMTPSenderRefused)
    assert (error.smtp_code, error.smtp_error, error.sender) == (
        553,
        b"5.1.8 sender rejected",
        "bad@x",
    )
    assert isinstance(error, smtplib.SMTPSenderRefused)
    assert error.enhanced_code == "5.1.8"
    assert not error.temporary
    d = s.smtp.sendmail("good@x", "b@x", b"hi")
    _step(s, b"MAIL FROM:<good@x>\r\n", b"250 ok\r\n")  # no second EHLO
    _step(s, b"RCPT TO:<b@x>\r\n", b"250 ok\r\n")
    _step(s, b"DATA\r\n", b"354 go\r\n")
    _step(s, b"hi\r\n.\r\n", b"250 ok\r\n")
    assert success_result_of(d) == {}


def test_all_recipients_refused_lock_step() -> None:
    """Every RCPT refused: SMTPRecipientsRefused, RSET, no DATA; the next sendmail works."""
    s = connected_session()
    d = s.smtp.sendmail("a@x", ["b@x", "c@x"], b"hi")
    _ehlo(s, b"250 mx\r\n")
    _step(s, b"MAIL FROM:<a@x>\r\n", b"250 ok\r\n")
    _step(s, b"RCPT TO:<b@x>\r\n", b"550 5.1.1 no b\r\n")
    _step(s, b"RCPT TO:<c@x>\r\n", b"450 4.2.0 later\r\n")
    _step(s, b"RSET\r\n", b"250 ok\r\n")
    error = failure_result_of(d, SMTPRecipientsRefused)
    assert error.recipients == {"b@x": (550, b"5.1.1 no b"), "c@x": (450, b"4.2.0 later")}
    assert isinstance(error, smtplib.SMTPRecipientsRefused)
    assert not error.temporary
    d = s.smtp.sendmail("a@x", "d@x", b"hi")
    _step(s, b"MAIL FROM:<a@x>\r\n", b"250 ok\r\n")
    _step(s, b"RCPT TO:<d@x>\r\n", b"250 ok\r\n")
    _step(s, b"DATA\r\n", b"354 go\r\n")
    _step(s, b"hi\r\n.\r\n", b"250 ok\r\n")
    assert success_result_of(d) == {}


def test_all_recipients_refused_pipelined() -> None:
    """Pipelined: DATA is refused too (554); the client resets and reports the recipients."""
    s = connected_session()
    d = s.smtp.sendmail("a@x", ["b@x"], b"hi")
    _ehlo(s, EHLO_PIPELINING)
    s.take()
    s.feed(b"250 ok\r\n550 no\r\n554 5.5.1 no valid recipients\r\n")
    _step(s, b"RSET\r\n", b"250 ok\r\n")
    error = failure_result_of(d, SMTPRecipientsRefused)
    assert error.recipients == {"b@x": (550, b"no")}


def test_all_refused_but_data_accepted_pipelined() -> None:
    """RFC 2920 section 3.1: a 354 after failed RCPTs is ended with an empty message, then RSET."""
    s = connected_session()
    d = s.smtp.sendmail("a@x", ["b@x"], b"secret")
    _ehlo(s, EHLO_PIPELINING)
    s.take()
    s.feed(b"250 ok\r\n550 no\r\n354 go\r\n")
    _step(s, b".\r\n", b"554 no recipients\r\n")
    _step(s, b"RSET\r\n", b"250 ok\r\n")
    failure_result_of(d, SMTPRecipientsRefused)


def test_data_command_refused() -> None:
    """DATA answered without 354: SMTPDataError, RSET, no body sent."""
    s = connected_session()
    d = s.smtp.sendmail("a@x", "b@x", b"hi")
    _ehlo(s, b"250 mx\r\n")
    _step(s, b"MAIL FROM:<a@x>\r\n", b"250 ok\r\n")
    _step(s, b"RCPT TO:<b@x>\r\n", b"250 ok\r\n")
    _step(s, b"DATA\r\n", b"451 4.3.0 try later\r\n")
    _step(s, b"RSET\r\n", b"250 ok\r\n")
    error = failure_result_of(d, SMTPDataError)
    assert (error.smtp_code, error.smtp_error) == (451, b"4.3.0 try later")
    assert error.temporary
    assert isinstance(error, smtplib.SMTPDataError)


def test_final_dot_refused() -> None:
    """
    The message refused after the dot: SMTPDataError with that reply, and no
    RSET (the final dot ended the transaction, RFC 5321 section 4.1.1.4).
    """
    s = connected_session()
    d = s.smtp.sendmail("a@x", "b@x", b"hi")
    _ehlo(s, EHLO_PIPELINING)
    s.take()
    s.feed(b"250 ok\r\n250 ok\r\n354 go\r\n")
    _step(s, b"hi\r\n.\r\n", b"554 5.7.1 spam\r\n")
    assert s.transport.writes == []
    error = failure_result_of(d, SMTPDataError)
    assert (error.smtp_code, error.smtp_error) == (554, b"5.7.1 spam")


def test_size_over_limit_refused_before_mail() -> None:
    """A message over the advertised SIZE: 552 SMTPSenderRefused, and MAIL never sent."""
    s = connected_session()
    d = s.smtp.sendmail("a@x", "b@x", b"x" * 2000)
    _ehlo(s, b"250-mx\r\n250 SIZE 1000\r\n")
    error = failure_result_of(d, SMTPSenderRefused)
    assert error.smtp_code == 552
    assert s.transport.io.getvalue() == b""


def test_eight_bit_without_8bitmime() -> None:
    """8-bit data for a server without 8BITMIME is refused before MAIL."""
    s = connected_session()
    d = s.smtp.sendmail("a@x", "b@x", b"caf\xc3\xa9")
    _ehlo(s, b"250 mx\r\n")
    failure_result_of(d, SMTPNotSupportedError)
    assert s.transport.io.getvalue() == b""


def test_eight_bit_declared() -> None:
    """8-bit data for a server with 8BITMIME is declared as BODY=8BITMIME."""
    s = connected_session()
    s.smtp.sendmail("a@x", "b@x", b"caf\xc3\xa9")
    _ehlo(s)
    assert s.take() == b"MAIL FROM:<a@x> SIZE=5 BODY=8BITMIME\r\n"


def test_non_ascii_address_without_smtputf8() -> None:
    """A non-ASCII address to a server without SMTPUTF8: refused, MAIL never sent."""
    s = connected_session()
    d = s.smtp.sendmail("a@x", "jos\u00e9@x", b"hi")
    _ehlo(s)
    failure_result_of(d, SMTPNotSupportedError)
    assert s.transport.io.getvalue() == b""


def test_smtputf8() -> None:
    """With SMTPUTF8, a non-ASCII address goes out as UTF-8 with the SMTPUTF8 parameter."""
    s = connected_session()
    s.smtp.sendmail("a@x", "jos\u00e9@x", b"hi")
    _ehlo(s, b"250-mx\r\n250 SMTPUTF8\r\n")
    assert s.take() == b"MAIL FROM:<a@x> SMTPUTF8\r\n"
    s.feed(b"250 ok\r\n")
    assert s.take() == "RCPT TO:<jos\u00e9@x>\r\n".encode()


# -- the exception family ------------------------------------------------------------


@pytest.mark.parametrize(
    ("ours", "theirs"),
    [
        (SMTPException, smtplib.SMTPException),
        (SMTPServerDisconnected, smtplib.SMTPServerDisconnected),
        (SMTPResponseException, smtplib.SMTPResponseException),
        (SMTPSenderRefused, smtplib.SMTPSenderRefused),
        (SMTPRecipientsRefused, smtplib.SMTPRecipientsRefused),
        (SMTPDataError, smtplib.SMTPDataError),
        (SMTPConnectError, smtplib.SMTPConnectError),
        (SMTPHeloError, smtplib.SMTPHeloError),
        (SMTPNotSupportedError, smtplib.SMTPNotSupportedError),
    ],
)
def test_subclasses_smtplib(ours: type[Exception], theirs: type[Exception]) -> None:
    """Each error is a subclass of smtplib's class of the same name."""
    assert issubclass(ours, theirs)
    assert ours.__name__ == theirs.__name__


def test_exception_attributes() -> None:
    """smtplib's attributes, bytes messages, str messages encoded, and temporary."""
    error = SMTPResponseException(451, "4.7.1 greylisted")
    assert (error.smtp_code, error.smtp_error) == (451, b"4.7.1 greylisted")
    assert error.args == (451, b"4.7.1 greylisted")
    assert error.reply == Reply(451, b"4.7.1 greylisted")
    assert error.enhanced_code == "4.7.1"
    assert error.temporary
    assert "451" in str(error) and "greylisted" in str(error)
    refused = SMTPSenderRefused(550, b"no", "a@x")
    assert refused.args == (550, b"no", "a@x")
    assert not refused.temporary
    assert SMTPServerDisconnected("x").temporary
    assert isinstance(SMTPServerDisconnected("x"), ConnectionError)
    timeout = SMTPTimeoutError("slow", "rcpt")
    assert isinstance(timeout, TimeoutError) and timeout.stage == "rcpt" and timeout.temporary
    assert isinstance(SMTPProtocolError("x"), SMTPServerDisconnected)
    assert not SMTPArgumentError("x").temporary
    assert isinstance(SMTPArgumentError("x"), ValueError)
    recipients = SMTPRecipientsRefused({"a@x": (450, b"later")})
    assert recipients.recipients == {"a@x": (450, b"later")}
    assert recipients.args == ({"a@x": (450, b"later")},)
    assert recipients.temporary


# -- the connection going away ---------------------------------------------------------

#: The server's replies to a lock-step sendmail, one per stage.
SCRIPT = [
    (b"", GREETING),
    (b"EHLO client.example\r\n", b"250 mx\r\n"),
    (b"MAIL FROM:<a@x>\r\n", b"250 ok\r\n"),
    (b"RCPT TO:<b@x>\r\n", b"250 ok\r\n"),
    (b"DATA\r\n", b"354 go\r\n"),
    (b"hi\r\n.\r\n", b"250 ok\r\n"),
]
STAGE_NAMES = ["greeting", "ehlo", "mail", "rcpt", "data", "body"]


def _scripted(
    answered: int, timeout: Timeouts | None = None
) -> tuple[Session, list[Deferred[Any]]]:
    """
    A session created with its host, with sendmail and quit queued at once;
    the server has answered the first ``answered`` stages.
    """
    clock = MemoryReactorClock()
    endpoint = FakeEndpoint()
    kwargs: dict[str, Any] = {} if timeout is None else {"timeout": timeout}
    smtp = SMTP(endpoint, local_hostname="client.example", reactor=clock, **kwargs)
    s = Session(smtp, clock, endpoint)
    calls: list[Deferred[Any]] = [smtp.sendmail("a@x", "b@x", b"hi"), smtp.quit()]
    for expected, reply in SCRIPT[:answered]:
        assert s.take() == expected
        s.feed(reply)
    assert s.take() == SCRIPT[answered][0]
    return s, calls


@pytest.mark.parametrize("answered", range(len(SCRIPT)), ids=STAGE_NAMES)
def test_server_disconnects_at_each_stage(answered: int) -> None:
    """A hang-up at any stage fails sendmail and the quit queued after it; none stays unfired."""
    s, (sendmail, quit) = _scripted(answered)
    assert_no_result(sendmail)
    s.lose(ConnectionLost("gone"))
    error = failure_result_of(sendmail, SMTPServerDisconnected)
    assert "gone" in str(error)
    # Only a hang-up after the final dot leaves the outcome unknown.
    assert isinstance(error, SMTPAmbiguousDelivery) == (STAGE_NAMES[answered] == "body")
    failure_result_of(quit, SMTPServerDisconnected)
    failure_result_of(s.smtp.noop(), SMTPServerDisconnected)
    assert s.transport.io.getvalue() == b""
    assert not s.clock.getDelayedCalls()


TIMEOUTS = Timeouts(
    connect=10, greeting=11, command=12, mail=13, rcpt=14, data_init=15, data_block=16, data_end=17
)
STAGE_TIMEOUTS = [
    ("greeting", 11),
    ("command", 12),
    ("mail", 13),
    ("rcpt", 14),
    ("data_init", 15),
    ("data_end", 17),
]


@pytest.mark.parametrize("answered", range(len(SCRIPT)), ids=STAGE_NAMES)
def test_server_silent_at_each_stage(answered: int) -> None:
    """No reply within the stage's own timeout: SMTPTimeoutError and an aborted connection."""
    s, (sendmail, quit) = _scripted(answered, TIMEOUTS)
    stage, seconds = STAGE_TIMEOUTS[answered]
    s.clock.advance(seconds - 0.5)
    assert_no_result(sendmail)
    s.clock.advance(0.5)
    if stage == "greeting":
        # connect() is the call that timed out; the queued sendmail names it.
        error = failure_result_of(sendmail, SMTPServerDisconnected)
        assert "stage 'greeting' within 11 seconds" in str(error)
    elif stage == "data_end":
        # The final dot went out: the message may be at the server.
        ambiguous = failure_result_of(sendmail, SMTPAmbiguousDelivery)
        assert isinstance(ambiguous.__cause__, SMTPTimeoutError)
        assert ambiguous.__cause__.stage == stage
    else:
        timeout = failure_result_of(sendmail, SMTPTimeoutError)
        assert timeout.stage == stage
    assert s.transport.disconnected  # aborted
    failure_result_of(quit, SMTPServerDisconnected)
    assert not s.clock.getDelayedCalls()


def test_unsolicited_421_while_idle() -> None:
    """The server announcing shutdown between calls: the next call fails naming it."""
    s = connected_session()
    s.feed(b"421 4.3.2 shutting down\r\n")
    assert s.transport.disconnecting
    error = failure_result_of(s.smtp.noop(), SMTPServerDisconnected)
    assert "shutting down" in str(error)
    assert s.transport.io.getvalue() == b""
    assert s.smtp.sock is None


def test_unsolicited_reply_while_idle() -> None:
    """A stray reply is a protocol error: the connection is aborted."""
    s = connected_session()
    s.feed(b"250 hello?\r\n")
    assert s.transport.disconnected
    failure_result_of(s.smtp.noop(), SMTPServerDisconnected)


def test_malformed_reply_fails_call_and_queue() -> None:
    """A malformed EHLO reply: SMTPProtocolError, aborted, and the queued quit fails too."""
    s = connected_session()
    d = s.smtp.sendmail("a@x", "b@x", b"hi")
    q = s.smtp.quit()
    _ehlo(s, b"250-mx\r\n251 odd\r\n")
    error = failure_result_of(d, SMTPProtocolError)
    assert "disagrees" in str(error)
    assert s.transport.disconnected
    failure_result_of(q, SMTPServerDisconnected)
    assert s.transport.io.getvalue() == b""


def test_line_too_long() -> None:
    """An over-long reply line fails the call and aborts the connection."""
    s = connected_session()
    d = s.smtp.noop()
    s.take()
    s.feed(b"250 " + b"x" * 20000 + b"\r\n")
    failure_result_of(d, SMTPProtocolError)
    assert s.transport.disconnected


# -- chaining, connecting, cancelling --------------------------------------------------------


def test_calls_chained_before_the_greeting() -> None:
    """s = SMTP(host); s.sendmail(...); s.quit(): nothing is written before the greeting."""
    clock = MemoryReactorClock()
    endpoint = FakeEndpoint()
    smtp = SMTP(endpoint, local_hostname="client.example", reactor=clock)
    s = Session(smtp, clock, endpoint)
    d = smtp.sendmail("a@x", "b@x", b"hi")
    q = smtp.quit()
    assert s.transport.io.getvalue() == b""
    for expected, reply in SCRIPT:
        assert s.take() == expected
        s.feed(reply)
    assert success_result_of(d) == {}
    _step(s, b"QUIT\r\n", b"221 bye\r\n")
    s.lose()
    assert success_result_of(q) == (221, b"bye")


def test_failed_connect_fails_later_calls_naming_the_cause() -> None:
    """A refused connection: connect fails with it; later calls fail naming it."""
    clock = MemoryReactorClock()
    endpoint = FakeEndpoint(deferred=True)
    smtp = SMTP(local_hostname="client.example", reactor=clock)
    c = smtp.connect(endpoint)
    d = smtp.sendmail("a@x", "b@x", b"hi")
    endpoint.attempts[0].errback(ConnectionRefusedError("nobody home"))
    # Issue 8 defect 4: an SMTPException (temporary), not Twisted's own error.
    refused = failure_result_of(c, SMTPServerDisconnected)
    assert refused.temporary and isinstance(refused.__cause__, ConnectionRefusedError)
    error = failure_result_of(d, SMTPServerDisconnected)
    assert "connect() failed" in str(error)
    assert "nobody home" in str(error)


def test_failed_connect_from_constructor() -> None:
    """SMTP(host) whose connection fails: the first call reports why."""
    clock = MemoryReactorClock()
    endpoint = FakeEndpoint(deferred=True)
    smtp = SMTP(endpoint, local_hostname="client.example", reactor=clock)
    d = smtp.noop()
    endpoint.attempts[0].errback(ConnectionRefusedError("nobody home"))
    assert "nobody home" in str(failure_result_of(d, SMTPServerDisconnected))


def test_connect_timeout() -> None:
    """A connection attempt that hangs is cancelled after the connect timeout."""
    clock = MemoryReactorClock()
    endpoint = FakeEndpoint(deferred=True)
    smtp = SMTP(local_hostname="client.example", reactor=clock, timeout=TIMEOUTS)
    c = smtp.connect(endpoint)
    clock.advance(9.9)
    assert_no_result(c)
    clock.advance(0.1)
    error = failure_result_of(c, SMTPTimeoutError)
    assert error.stage == "connect"
    assert endpoint.cancelled


def test_greeting_not_220() -> None:
    """A 554 greeting: SMTPConnectError with it, and the connection closed."""
    s = connected_session(greet=False)
    s.feed(b"554 5.3.2 not accepting mail\r\n")
    error = failure_result_of(s.connected, SMTPConnectError)
    assert (error.smtp_code, error.smtp_error) == (554, b"5.3.2 not accepting mail")
    assert isinstance(error, smtplib.SMTPConnectError)
    assert s.transport.disconnecting
    failure_result_of(s.smtp.noop(), SMTPServerDisconnected)


def test_connect_twice_refused() -> None:
    """connect() on a live session is a mistake, reported through the Deferred."""
    s = connected_session()
    failure_result_of(s.smtp.connect(FakeEndpoint()), SMTPException)
    assert s.smtp.sock is s.proto


def test_cancel_running_call() -> None:
    """Cancelling the running call aborts the connection and fails the calls after it."""
    s = connected_session()
    d = s.smtp.sendmail("a@x", "b@x", b"hi")
    q = s.smtp.quit()
    assert s.take() == b"EHLO client.example\r\n"
    d.cancel()
    failure_result_of(d, CancelledError)
    assert s.transport.disconnected
    failure_result_of(q, SMTPServerDisconnected)
    assert s.transport.io.getvalue() == b""


def test_cancel_queued_call() -> None:
    """Cancelling a call still queued just drops it: nothing is sent for it."""
    s = connected_session()
    first = s.smtp.noop()
    second = s.smtp.rset()
    third = s.smtp.noop()
    second.cancel()
    failure_result_of(second, CancelledError)
    _step(s, b"NOOP\r\n", b"250 one\r\n")
    assert success_result_of(first) == (250, b"one")
    _step(s, b"NOOP\r\n", b"250 two\r\n")
    assert success_result_of(third) == (250, b"two")
    assert not s.transport.disconnecting


def test_failed_call_does_not_stop_the_queue() -> None:
    """A refusal fails only its own call; the next one runs."""
    s = connected_session()
    d = s.smtp.data(b"hi")
    n = s.smtp.noop()
    _step(s, b"DATA\r\n", b"503 5.5.1 need RCPT\r\n")
    failure_result_of(d, SMTPDataError)
    _step(s, b"NOOP\r\n", b"250 ok\r\n")
    assert success_result_of(n) == (250, b"ok")


# -- bad input --------------------------------------------------------------------------------

BAD_CALLS: list[tuple[str, Any, type[Exception]]] = [
    ("sendmail CR in sender", lambda s: s.sendmail("a@x\r\nRSET", "b@x", b""), SMTPArgumentError),
    ("sendmail LF in recipient", lambda s: s.sendmail("a@x", ["b@x\n"], b""), SMTPArgumentError),
    ("sendmail NUL in recipient", lambda s: s.sendmail("a@x", "b\x00@x", b""), SMTPArgumentError),
    ("sendmail no recipients", lambda s: s.sendmail("a@x", [], b""), SMTPArgumentError),
    ("sendmail non-ASCII str", lambda s: s.sendmail("a@x", "b@x", "caf\u00e9"), SMTPArgumentError),
    ("sendmail int message", lambda s: s.sendmail("a@x", "b@x", 5), TypeError),
    ("sendmail bytes sender", lambda s: s.sendmail(b"a@x", "b@x", b""), TypeError),
    ("sendmail bytes recipients", lambda s: s.sendmail("a@x", b"b@x", b""), TypeError),
    ("sendmail option string", lambda s: s.sendmail("a@x", "b@x", b"", "SMTPUTF8"), TypeError),
    (
        "sendmail CR in option",
        lambda s: s.sendmail("a@x", "b@x", b"", ["X\r\n"]),
        SMTPArgumentError,
    ),
    ("mail CR", lambda s: s.mail("a@x\r\nRSET"), SMTPArgumentError),
    ("mail bad option", lambda s: s.mail("a@x", ["A B"]), SMTPArgumentError),
    ("rcpt LF", lambda s: s.rcpt("b@x\nDATA"), SMTPArgumentError),
    ("verify NUL", lambda s: s.verify("a\x00"), SMTPArgumentError),
    ("expn CR", lambda s: s.expn("list\r"), SMTPArgumentError),
    ("docmd LF", lambda s: s.docmd("NOOP\nRSET"), SMTPArgumentError),
    ("docmd arg DEL", lambda s: s.docmd("XFOO", "a\x7f"), SMTPArgumentError),
    ("helo CR", lambda s: s.helo("x\r\n"), SMTPArgumentError),
    ("ehlo bytes", lambda s: s.ehlo(b"x"), TypeError),
    ("help LF", lambda s: s.help("x\n"), SMTPArgumentError),
    ("data non-ASCII str", lambda s: s.data("\u00e9"), SMTPArgumentError),
]


@pytest.mark.parametrize(("name", "call", "error"), BAD_CALLS, ids=[b[0] for b in BAD_CALLS])
def test_bad_input_raises_before_writing(name: str, call: Any, error: type[Exception]) -> None:
    """Misuse raises at once, a typed error, and not a byte is written."""
    s = connected_session()
    with pytest.raises(error):
        call(s.smtp)
    assert s.transport.io.getvalue() == b""
    # The session is unharmed.
    d = s.smtp.noop()
    _step(s, b"NOOP\r\n", b"250 ok\r\n")
    assert success_result_of(d) == (250, b"ok")


def test_bad_local_hostname() -> None:
    """A local_hostname with CR/LF is refused when the SMTP is made."""
    with pytest.raises(SMTPArgumentError):
        SMTP(local_hostname="a\r\nb", reactor=MemoryReactorClock())


# -- the other smtplib commands -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "line", "reply", "result"),
    [
        (lambda s: s.noop(), b"NOOP\r\n", b"250 ok\r\n", (250, b"ok")),
        (lambda s: s.rset(), b"RSET\r\n", b"250 ok\r\n", (250, b"ok")),
        (lambda s: s.verify("Name <a@x>"), b"VRFY a@x\r\n", b"252 maybe\r\n", (252, b"maybe")),
        (lambda s: s.expn("list"), b"EXPN list\r\n", b"250-a\r\n250 b\r\n", (250, b"a\nb")),
        (lambda s: s.help(), b"HELP\r\n", b"214 read the RFC\r\n", b"read the RFC"),
        (lambda s: s.help("MAIL"), b"HELP MAIL\r\n", b"214 x\r\n", b"x"),
        (lambda s: s.docmd("XFOO"), b"XFOO\r\n", b"500 what\r\n", (500, b"what")),
        (lambda s: s.docmd("XFOO", "a b"), b"XFOO a b\r\n", b"250 ok\r\n", (250, b"ok")),
        (lambda s: s.helo("me.example"), b"HELO me.example\r\n", b"250 hi\r\n", (250, b"hi")),
        (lambda s: s.helo(), b"HELO client.example\r\n", b"250 hi\r\n", (250, b"hi")),
        (lambda s: s.mail("a@x"), b"MAIL FROM:<a@x>\r\n", b"250 ok\r\n", (250, b"ok")),
        (lambda s: s.rcpt("Name <b@x>"), b"RCPT TO:<b@x>\r\n", b"550 no\r\n", (550, b"no")),
    ],
)
def test_simple_commands(call: Any, line: bytes, reply: bytes, result: object) -> None:
    """Each smtplib command writes its exact line and fires with the reply."""
    s = connected_session()
    d = call(s.smtp)
    _step(s, line, reply)
    assert success_result_of(d) == result


def test_mail_options_only_after_ehlo() -> None:
    """mail() passes options after a successful EHLO and drops them otherwise (smtplib)."""
    s = connected_session()
    d = s.smtp.mail("a@x", ["BODY=8BITMIME"])
    _step(s, b"MAIL FROM:<a@x>\r\n", b"250 ok\r\n")
    success_result_of(d)
    s.smtp.ehlo()
    _ehlo(s)
    s.smtp.mail("a@x", ["BODY=8BITMIME"])
    assert s.take() == b"MAIL FROM:<a@x> BODY=8BITMIME\r\n"


def test_data_command() -> None:
    """data(): DATA, then the encoded message and the dot in one write."""
    s = connected_session()
    d = s.smtp.data(MSG)
    _step(s, b"DATA\r\n", b"354 go\r\n")
    _step(s, MSG_WIRE, b"250 queued\r\n")
    assert success_result_of(d) == (250, b"queued")


def test_close_without_quit() -> None:
    """close() drops the connection without QUIT; later calls fail."""
    s = connected_session()
    c = s.smtp.close()
    assert s.transport.io.getvalue() == b""
    assert s.transport.disconnecting
    s.lose()
    assert success_result_of(c) is None
    failure_result_of(s.smtp.noop(), SMTPServerDisconnected)


def test_quit_then_reconnect() -> None:
    """After quit() the same SMTP can connect again and starts a new session."""
    s = connected_session()
    s.smtp.ehlo()
    _ehlo(s)
    _quit(s)
    assert not s.smtp.has_option("size")
    s.connected = s.smtp.connect(s.endpoint)
    s.feed(GREETING)
    success_result_of(s.connected)
    s.smtp.sendmail("a@x", "b@x", b"")
    assert s.take() == b"EHLO client.example\r\n"


# -- logging ------------------------------------------------------------------------------------


def test_debuglevel_logs_dialogue() -> None:
    """set_debuglevel(1): commands and replies as events in namespace "txsmtpclient"."""
    s = connected_session()
    s.smtp.set_debuglevel(1)
    with capturedLogs() as events:
        s.smtp.noop()
        _step(s, b"NOOP\r\n", b"250 fine\r\n")
    ours = [e for e in events if e["log_namespace"] == "txsmtpclient"]
    assert [e.get("data") for e in ours if e.get("direction") == "send"] == [b"NOOP\r\n"]
    assert [(e["code"], e["message"]) for e in ours if e.get("direction") == "reply"] == [
        (250, b"fine")
    ]
    assert all(e["timestamp"] == "" for e in ours)


def test_debuglevel_2_timestamps() -> None:
    """set_debuglevel(2) adds a timestamp to each event."""
    s = connected_session()
    s.smtp.set_debuglevel(2)
    with capturedLogs() as events:
        s.smtp.noop()
        _step(s, b"NOOP\r\n", b"250 fine\r\n")
    ours = [e for e in events if e["log_namespace"] == "txsmtpclient"]
    assert len(ours) == 2 and all(e["timestamp"] for e in ours)


def test_debuglevel_0_silent() -> None:
    """By default nothing is logged."""
    s = connected_session()
    with capturedLogs() as events:
        s.smtp.noop()
        _step(s, b"NOOP\r\n", b"250 fine\r\n")
    assert [e for e in events if e["log_namespace"] == "txsmtpclient"] == []


def test_auth_line_logged_redacted() -> None:
    """An AUTH line's initial response never reaches the log."""
    s = connected_session()
    s.smtp.set_debuglevel(1)
    with capturedLogs() as events:
        s.smtp.docmd("AUTH", "PLAIN AHVzZXIAaHVudGVyMg==")
        _step(s, b"AUTH PLAIN AHVzZXIAaHVudGVyMg==\r\n", b"235 ok\r\n")
    assert "AHVzZXIAaHVudGVyMg" not in repr([dict(e) for e in events])
    sent = [e["data"] for e in events if e.get("direction") == "send"]
    assert sent == [b"AUTH PLAIN <redacted>\r\n"]


# -- issue 8, defects 1 to 3: each failed on main before the session engine ------------------


def test_replies_sent_before_any_command_are_never_paired() -> None:
    """
    Issue 8, defect 1: replies in the greeting's segment, before EHLO was
    written, are unsolicited: SMTPProtocolError, aborted, nothing written.
    """
    clock = MemoryReactorClock()
    endpoint = FakeEndpoint()
    smtp = SMTP(endpoint, local_hostname="client.example", reactor=clock)
    s = Session(smtp, clock, endpoint)
    d = smtp.sendmail("a@x", ["b@x"], b"hi\r\n")
    s.feed(GREETING + b"250 Sender OK\r\n250 Recipient OK\r\n354 go ahead\r\n")
    error = failure_result_of(d, SMTPProtocolError)
    assert "250" in str(error) and error.temporary
    assert s.transport.io.getvalue() == b""
    assert s.transport.disconnected


def test_421_right_after_the_ehlo_reply_stops_the_client() -> None:
    """
    Issue 8, defect 2: a 421 in the EHLO reply's segment: no MAIL is
    written and sendmail fails with SMTPServerDisconnected naming the 421.
    """
    s = connected_session()
    d = s.smtp.sendmail("a@x", ["b@x"], b"hi\r\n")
    assert s.take() == b"EHLO client.example\r\n"
    s.feed(EHLO_PLAIN + b"421 4.3.2 shutting down\r\n")
    error = failure_result_of(d, SMTPServerDisconnected)
    assert type(error) is SMTPServerDisconnected
    assert "421 4.3.2 shutting down" in str(error)
    assert error.temporary
    assert s.transport.io.getvalue() == b""
    assert s.transport.disconnecting


@pytest.mark.parametrize("pipelining", [False, True], ids=["lock-step", "pipelined"])
def test_2xx_to_data_is_a_protocol_error(pipelining: bool) -> None:
    """
    Issue 8, defect 3: 250 instead of 354 to DATA: SMTPProtocolError,
    temporary, the connection aborted and no message data written.
    """
    s = connected_session()
    d = s.smtp.sendmail("a@x", ["b@x"], b"hi\r\n")
    assert s.take() == b"EHLO client.example\r\n"
    s.feed(EHLO_PIPELINING if pipelining else EHLO_PLAIN)
    if pipelining:
        assert s.take() == b"MAIL FROM:<a@x> SIZE=4\r\nRCPT TO:<b@x>\r\nDATA\r\n"
        s.feed(b"250 ok\r\n250 ok\r\n250 ok\r\n")
    else:
        for command, reply in [
            (b"MAIL FROM:<a@x> SIZE=4\r\n", b"250 ok\r\n"),
            (b"RCPT TO:<b@x>\r\n", b"250 ok\r\n"),
            (b"DATA\r\n", b"250 ok\r\n"),
        ]:
            assert s.take() == command
            s.feed(reply)
    error = failure_result_of(d, SMTPProtocolError)
    assert error.temporary and "DATA" in str(error)
    assert s.transport.io.getvalue() == b""
    assert s.transport.disconnected


# -- the transaction event (issue 8, item 6) ---------------------------------------------------


def _transaction_events(events: list[Any]) -> list[Any]:
    return [e for e in events if e["log_namespace"] == "txsmtpclient.transaction"]


def test_transaction_event_carries_timings_replies_bytes_and_queue_id(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One event per sendmail: per-stage seconds, every reply, bytes written, the queue id."""
    monkeypatch.setattr(SMTP, "transaction_events", True)
    with capturedLogs() as events:
        clock = MemoryReactorClock()
        endpoint = FakeEndpoint()
        smtp = SMTP(endpoint, local_hostname="client.example", reactor=clock)
        s = Session(smtp, clock, endpoint)
        d = smtp.sendmail("a@x", ["b@x", "c@x"], b"hi\r\n")
        clock.advance(1)
        s.feed(GREETING)
        written = s.take()
        clock.advance(2)
        s.feed(EHLO_PIPELINING)
        written += s.take()
        clock.advance(3)
        s.feed(b"250 2.1.0 ok\r\n250 2.1.5 ok\r\n550 5.1.1 no such user\r\n354 go\r\n")
        written += s.take()
        clock.advance(4)
        s.feed(b"250 2.0.0 Ok: queued as 4F3A2B1C0D\r\n")
    refused = success_result_of(d)
    assert list(refused) == ["c@x"]
    (event,) = _transaction_events(events)
    assert event["outcome"] == "sent" and event["error"] is None
    assert (event["code"], event["queue_id"]) == (250, "4F3A2B1C0D")
    assert (event["sender"], event["recipients"], event["refused"]) == ("a@x", 2, 1)
    assert event["timings"] == {
        "connect": 0.0,
        "greeting": 1.0,
        "ehlo": 2.0,
        "envelope": 3.0,
        "data": 0.0,
        "final": 4.0,
    }
    assert event["duration"] == 10.0
    assert [(r.code, r.enhanced_code) for r in event["replies"]] == [
        (220, None),
        (250, None),
        (250, "2.1.0"),
        (250, "2.1.5"),
        (550, "5.1.1"),
        (354, None),
        (250, "2.0.0"),
    ]
    assert event["bytes_sent"] == len(written)
    assert event["tls_version"] is None and event["peer_subject"] is None
    assert event["log_level"].name == "debug"


def test_transaction_event_on_failure_and_per_transaction() -> None:
    """A refused transaction has its event too; the next counts only its own replies."""
    s = connected_session()
    s.smtp.transaction_events = True
    with capturedLogs() as events:
        first = s.smtp.sendmail("a@x", ["b@x"], b"hi\r\n")
        s.take()
        s.feed(EHLO_PLAIN)
        s.take()
        s.feed(b"451 4.3.0 try later\r\n")
        assert s.take() == b"RSET\r\n"
        s.feed(b"250 ok\r\n")
        failure_result_of(first, SMTPSenderRefused)
        second = s.smtp.sendmail("a@x", ["b@x"], b"hi\r\n")
        for reply in (b"250 ok\r\n", b"250 ok\r\n", b"354 go\r\n", b"250 done\r\n"):
            s.take()
            s.feed(reply)
        success_result_of(second)
    failed, sent = _transaction_events(events)
    assert (failed["outcome"], failed["error"], failed["code"]) == (
        "failed",
        "SMTPSenderRefused",
        451,
    )
    assert failed["temporary"] is True
    assert [r.code for r in failed["replies"]] == [250, 451, 250]
    assert (sent["outcome"], [r.code for r in sent["replies"]]) == ("sent", [250, 250, 354, 250])
    assert sent["queue_id"] is None


def test_no_transaction_event_unless_asked() -> None:
    """At debug level 0, without transaction_events, nothing is kept or logged."""
    s = connected_session()
    with capturedLogs() as events:
        d = s.smtp.sendmail("a@x", ["b@x"], b"hi\r\n")
        for reply in (EHLO_PLAIN, b"250 ok\r\n", b"250 ok\r\n", b"354 go\r\n", b"250 ok\r\n"):
            s.take()
            s.feed(reply)
        success_result_of(d)
    assert _transaction_events(events) == []
    assert s.proto.trace is None
