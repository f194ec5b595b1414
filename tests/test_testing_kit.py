"""
The testing kit (:mod:`txsmtpclient.testing`) as users meet it: the client
sends to a scripted server in memory (bytes moved with ``flush``, time with
``advance``) or on loopback (STARTTLS, implicit TLS, AUTH), every fault the
script can inject, and the pytest fixtures the plugin registers.
"""

from __future__ import annotations

import pytest
import pytest_twisted
from helpers import assert_no_result, failure_result_of, success_result_of

from txsmtpclient import LMTP, SMTP, SMTP_SSL, Reply, Timeouts
from txsmtpclient.errors import (
    SMTPAmbiguousDelivery,
    SMTPAuthenticationError,
    SMTPDataError,
    SMTPProtocolError,
    SMTPSenderRefused,
    SMTPServerDisconnected,
    SMTPTimeoutError,
)
from txsmtpclient.testing import (
    CONNECT,
    DATA_END,
    LoopbackServer,
    MemoryServer,
    ReceivedMessage,
    Script,
)

MSG = b"Subject: kit\n\n.leading dot\nbody\n"
CONTENT = b"Subject: kit\r\n\r\n.leading dot\r\nbody\r\n"


def _client(server: MemoryServer, **kwargs: object) -> SMTP:
    return SMTP(
        server.endpoint(),
        local_hostname="client.example",
        reactor=server.clock,
        **kwargs,  # type: ignore[arg-type]
    )


# -- in memory -------------------------------------------------------------------------


def test_memory_server_records_the_session_byte_exact() -> None:
    """What the client wrote and what arrived are recorded exactly, dot-unstuffed content too."""
    server = MemoryServer()
    smtp = _client(server)
    d = smtp.sendmail("a@x.test", ["b@x.test", "c@x.test"], MSG)
    server.flush()
    assert success_result_of(d) == {}
    quit = smtp.quit()
    server.flush()
    assert success_result_of(quit).code == 221
    [session] = server.sessions
    assert bytes(session.received) == (
        b"EHLO client.example\r\nMAIL FROM:<a@x.test> SIZE=36\r\n"
        b"RCPT TO:<b@x.test>\r\nRCPT TO:<c@x.test>\r\nDATA\r\n"
        b"Subject: kit\r\n\r\n..leading dot\r\nbody\r\n.\r\nQUIT\r\n"
    )
    assert session.closed
    assert server.messages == [
        ReceivedMessage(
            mail_from="a@x.test",
            mail_args="FROM:<a@x.test> SIZE=36",
            rcpt_tos=("b@x.test", "c@x.test"),
            rcpt_args=("TO:<b@x.test>", "TO:<c@x.test>"),
            content=CONTENT,
            via="DATA",
            helo="client.example",
            tls=False,
            auth_user=None,
        )
    ]


def test_queued_sends_pipelined_across_transactions() -> None:
    """
    The kit's server reads a message's final dot and the next envelope from
    one write (RFC 2920 section 3.1), as the client sends queued messages;
    a refusal of the second message stays with it.
    """
    script = Script()
    script.on("MAIL", "451 4.3.0 try later", match="<second@x.test>")
    server = MemoryServer(script)
    smtp = _client(server)
    sends = [
        smtp.sendmail(sender, "b@x.test", MSG)
        for sender in ("first@x.test", "second@x.test", "third@x.test")
    ]
    server.flush()
    assert success_result_of(sends[0]) == {}
    assert failure_result_of(sends[1], SMTPSenderRefused).smtp_code == 451
    assert success_result_of(sends[2]) == {}
    [session] = server.sessions
    assert b"body\r\n.\r\nMAIL FROM:<second@x.test>" in bytes(session.received)
    assert [m.mail_from for m in server.messages] == ["first@x.test", "third@x.test"]


def test_script_refuses_one_recipient() -> None:
    """A rule matching one address refuses only it; smtplib's refused dict names it."""
    script = Script()
    script.on("RCPT", "550 5.1.1 no such user", match="<c@x.test>")
    server = MemoryServer(script)
    d = _client(server).sendmail("a@x.test", ["b@x.test", "c@x.test"], MSG)
    server.flush()
    assert success_result_of(d) == {"c@x.test": Reply(550, b"5.1.1 no such user")}
    assert server.messages[0].rcpt_tos == ("b@x.test",)


def test_multiline_final_reply_with_enhanced_codes() -> None:
    """A multi-line reply to the final dot reaches the caller whole, enhanced code and all."""
    script = Script()
    script.on(DATA_END, "250-2.0.0 first line\n250 2.0.0 Ok: queued as ABC123")
    server = MemoryServer(script)
    d = _client(server).sendmail("a@x.test", "b@x.test", MSG)
    server.flush()
    final = success_result_of(d).final
    assert final is not None
    assert final.message == b"2.0.0 first line\n2.0.0 Ok: queued as ABC123"
    assert final.enhanced_code == "2.0.0"


def test_withheld_pipelining_makes_the_client_go_lock_step() -> None:
    """Withholding PIPELINING is seen on the wire: MAIL waits for the EHLO reply's successor."""
    script = Script()
    script.withhold("PIPELINING")
    server = MemoryServer(script)
    smtp = _client(server)
    d = smtp.sendmail("a@x.test", "b@x.test", MSG)
    server.flush()
    success_result_of(d)
    assert not script.advertises("PIPELINING")
    assert b"PIPELINING" not in bytes(server.sessions[0].sent)


def test_rule_times_limits_a_fault_to_the_first_use() -> None:
    """A rule with times=1 refuses the first MAIL only; the second transaction goes through."""
    script = Script()
    rule = script.on("MAIL", "451 4.3.0 try later", times=1)
    server = MemoryServer(script)
    smtp = _client(server)
    first = smtp.sendmail("a@x.test", "b@x.test", MSG)
    second = smtp.sendmail("a@x.test", "b@x.test", MSG)
    server.flush()
    error = failure_result_of(first, SMTPSenderRefused)
    assert error.smtp_code == 451 and error.temporary
    assert success_result_of(second) == {}
    assert rule.used == 1
    assert len(server.messages) == 1


def test_delay_runs_on_the_clock_and_can_time_the_client_out() -> None:
    """A delayed reply waits for advance(); past the client's timeout it is SMTPTimeoutError."""
    script = Script()
    script.on("MAIL", delay=30)
    server = MemoryServer(script)
    smtp = _client(server, timeout=Timeouts(mail=10))
    d = smtp.sendmail("a@x.test", "b@x.test", MSG)
    server.flush()
    assert_no_result(d)
    server.advance(9)
    assert_no_result(d)
    server.advance(1)
    assert failure_result_of(d, SMTPTimeoutError).stage == "mail"


def test_delay_shorter_than_the_timeout_is_waited_for() -> None:
    """A slow but timely reply is simply late: the send succeeds once the clock moves."""
    script = Script()
    script.on(DATA_END, delay=5)
    server = MemoryServer(script)
    d = _client(server).sendmail("a@x.test", "b@x.test", MSG)
    server.flush()
    assert_no_result(d)
    server.advance(5)
    assert success_result_of(d) == {}


def test_disconnect_after_the_final_dot_is_ambiguous() -> None:
    """Dropping the connection after the final dot, before replying, is reported as ambiguous."""
    script = Script()
    script.on(DATA_END, disconnect=True)
    server = MemoryServer(script)
    d = _client(server).sendmail("a@x.test", "b@x.test", MSG)
    server.flush()
    failure_result_of(d, SMTPAmbiguousDelivery)
    assert server.messages == []
    assert server.sessions[0].closed


def test_disconnect_at_data_is_not_ambiguous() -> None:
    """A hang-up before the message was ended is a plain disconnect: nothing can have arrived."""
    script = Script()
    script.on("DATA", disconnect=True)
    server = MemoryServer(script)
    d = _client(server).sendmail("a@x.test", "b@x.test", MSG)
    server.flush()
    error = failure_result_of(d, SMTPServerDisconnected)
    assert not isinstance(error, SMTPAmbiguousDelivery)


def test_421_closes_the_connection() -> None:
    """A scripted 421 is followed by the server closing, as RFC 5321 section 3.8 says."""
    script = Script()
    script.on("MAIL", "421 4.3.2 shutting down")
    server = MemoryServer(script)
    smtp = _client(server)
    d = smtp.sendmail("a@x.test", "b@x.test", MSG)
    server.flush()
    assert failure_result_of(d, SMTPServerDisconnected).temporary
    assert server.sessions[0].closed


def test_data_refused_after_the_final_dot() -> None:
    """A 554 to the final dot is SMTPDataError and nothing is recorded as accepted."""
    script = Script()
    script.on(DATA_END, "554 5.6.0 content rejected")
    server = MemoryServer(script)
    d = _client(server).sendmail("a@x.test", "b@x.test", MSG)
    server.flush()
    assert failure_result_of(d, SMTPDataError).smtp_code == 554
    assert server.messages == []


def test_unsolicited_reply_while_idle() -> None:
    """Bytes the test pushes while the client waits for nothing fail the client's next call."""
    server = MemoryServer()
    smtp = _client(server)
    noop = smtp.noop()
    server.flush()
    assert success_result_of(noop).code == 250
    server.send_unsolicited(b"250 nobody asked\r\n")
    server.flush()
    failure_result_of(smtp.noop(), SMTPServerDisconnected)


def test_premature_bytes_after_the_greeting() -> None:
    """Bytes sent with the greeting before any command are never taken as EHLO's reply."""
    script = Script()
    script.on(CONNECT, after=b"250 early\r\n")
    server = MemoryServer(script)
    smtp = _client(server)
    d = smtp.ehlo()
    server.flush()
    failure_result_of(d, SMTPProtocolError)


def test_bdat_when_chunking_is_offered() -> None:
    """A message over the client's BDAT threshold goes as BDAT chunks and is joined exactly."""
    server = MemoryServer()
    smtp = _client(server)
    body = b"Subject: big\r\n\r\n" + b"x" * 100 + b"\r\n"
    smtp.bdat_threshold = 10
    d = smtp.sendmail("a@x.test", "b@x.test", body)
    server.flush()
    assert success_result_of(d) == {}
    [message] = server.messages
    assert message.via == "BDAT"
    assert message.content == body


def test_lmtp_gives_one_reply_per_recipient() -> None:
    """In LMTP mode each accepted recipient gets its own reply to the final dot."""
    script = Script(lmtp=True)
    script.on(DATA_END, "452 4.2.2 mailbox full", times=1)
    server = MemoryServer(script)
    lmtp = LMTP(server.endpoint(), local_hostname="client.example", reactor=server.clock)
    d = lmtp.sendmail("a@x.test", ["b@x.test", "c@x.test"], MSG)
    server.flush()
    assert success_result_of(d) == {"b@x.test": Reply(452, b"4.2.2 mailbox full")}
    assert server.sessions[0].commands[0] == b"LHLO client.example"


def test_rule_rejects_a_reply_without_a_code() -> None:
    """A script mistake is a ValueError when the rule is made, not a confusing test failure."""
    with pytest.raises(ValueError, match="3-digit code"):
        Script().on("MAIL", "ok thanks")
    with pytest.raises(ValueError, match="negative"):
        Script().on("MAIL", delay=-1)


def test_memory_fixture(txsmtp_memory_server: MemoryServer, txsmtp_script: Script) -> None:
    """The plugin's in-memory fixture follows the script fixture."""
    txsmtp_script.on("RCPT", "550 5.1.1 nobody")
    d = _client(txsmtp_memory_server).sendmail("a@x.test", "b@x.test", MSG)
    txsmtp_memory_server.flush()
    failure_result_of(d, Exception)
    assert txsmtp_memory_server.script is txsmtp_script


# -- on loopback ---------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_loopback_fixture_receives_a_message(txsmtp_server: LoopbackServer) -> None:
    """The plugin's loopback fixture is a real listening server; what arrives is exact."""
    from twisted.internet import reactor

    refused = await SMTP(
        txsmtp_server.address, local_hostname="client.example", reactor=reactor
    ).sendmail("a@x.test", "b@x.test", MSG)
    assert refused == {}
    [message] = await txsmtp_server.when_messages(1).addTimeout(10, reactor)
    assert message.content == CONTENT


@pytest_twisted.ensureDeferred
async def test_loopback_starttls_and_auth() -> None:
    """STARTTLS on the generated certificate, then AUTH with test credentials, end to end."""
    from twisted.internet import reactor

    script = Script(credentials={"user": "s3cret"})
    server = LoopbackServer(script, tls=True).start()
    try:
        smtp = SMTP(
            server.address,
            local_hostname="client.example",
            reactor=reactor,
            tls="required",
            tls_options=server.client_tls_options(),
        )
        await smtp.login("user", "s3cret")
        await smtp.sendmail("a@x.test", "b@x.test", MSG)
        await smtp.quit()
        [message] = server.messages
        assert message.tls and message.auth_user == "user"
        session = server.sessions[0]
        # Nothing of the message went in the clear: the first commands before TLS.
        assert session.commands[:2] == [b"EHLO client.example", b"STARTTLS"]
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_loopback_wrong_password() -> None:
    """Wrong credentials are refused with 535: SMTPAuthenticationError."""
    from twisted.internet import reactor

    server = LoopbackServer(Script(credentials={"user": "right"}), tls=True).start()
    try:
        smtp = SMTP(
            server.address,
            local_hostname="client.example",
            reactor=reactor,
            tls_options=server.client_tls_options(),
        )
        with pytest.raises(SMTPAuthenticationError) as info:
            await smtp.login("user", "wrong")
        assert info.value.smtp_code == 535
        await smtp.close()
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_loopback_implicit_tls() -> None:
    """SMTP_SSL reaches a server speaking TLS from the first byte, certificate verified."""
    from twisted.internet import reactor

    server = LoopbackServer(implicit_tls=True).start()
    try:
        smtp = SMTP_SSL(
            server.address,
            local_hostname="client.example",
            reactor=reactor,
            context=server.client_tls_options(),
        )
        await smtp.sendmail("a@x.test", "b@x.test", MSG)
        await smtp.quit()
        assert server.messages[0].content == CONTENT
        assert server.messages[0].tls
    finally:
        await server.stop()
