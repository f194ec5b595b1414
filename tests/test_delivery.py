"""
Tests for :mod:`txsmtpclient.spool.delivery`: one claimed entry sent through a
scripted sender, recorded and moved on in a real spool folder; no reactor
(a :class:`Clock` and spool calls run in line).
"""

from __future__ import annotations

import email
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
from helpers import success_result_of
from twisted.internet.defer import Deferred, fail, maybeDeferred, succeed
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.logger import capturedLogs, formatEvent

from txsmtpclient.errors import (
    SMTPAmbiguousDelivery,
    SMTPArgumentError,
    SMTPDataError,
    SMTPRecipientsRefused,
    SMTPSenderRefused,
    SMTPServerDisconnected,
    SMTPTLSError,
)
from txsmtpclient.reply import Reply
from txsmtpclient.spool.delivery import (
    CONFIG_FAULT_LOG_INTERVAL,
    Deliverer,
    DeliveryAction,
    failure_notice,
)
from txsmtpclient.spool.envelope import (
    Entry,
    OutcomeKind,
    Recipient,
    RecipientState,
    ReplyRecord,
    State,
)
from txsmtpclient.spool.schedule import RetryPolicy
from txsmtpclient.spool.store import Spool, SpoolFull
from txsmtpclient.transaction import DSN, Envelope, Refused

T = TypeVar("T")

NOW = 1_800_000_000.0
MESSAGE = b"Subject: hi\r\nMessage-ID: <1@example.test>\r\n\r\nHello\r\n"
POLICY = RetryPolicy(initial=60.0, factor=2.0, maximum=3600.0, jitter=0.2, lifetime=3600.0)


def inline(f: Callable[..., T], /, *args: Any) -> Deferred[T]:
    """Run a spool call in line (the tests have no threads)."""
    return maybeDeferred(f, *args)


class ScriptedSender:
    """A sender answering each send with the next scripted result, recording the calls."""

    def __init__(self, *results: Any) -> None:
        self.results = list(results)
        self.calls: list[tuple[str, list[str], bytes, tuple[str, ...], DSN | None]] = []

    def sendmail(self, *, msg: Any, envelope: Envelope) -> Deferred[dict[str, Reply]]:
        self.calls.append(
            (envelope.sender, list(envelope.recipients), msg, envelope.mail_options, envelope.dsn)
        )
        result = self.results.pop(0)
        if isinstance(result, Deferred):
            return result
        if isinstance(result, BaseException):
            return fail(result)
        return succeed(result)


def accepted(refused: dict[str, Reply] | None = None, final: bytes = b"2.0.0 Ok") -> Any:
    return Refused.with_replies(refused or {}, [Reply(250, final)])


@pytest.fixture
def clock() -> Clock:
    c = Clock()
    c.advance(NOW)
    return c


@pytest.fixture
def spool(tmp_path: Path, clock: Clock) -> Spool:
    return Spool(tmp_path / "spool", clock=clock.seconds, fsync=False)


def make(
    spool: Spool, clock: Clock, sender: ScriptedSender, **kwargs: Any
) -> tuple[Deliverer, list[bool]]:
    full: list[bool] = []
    deliverer = Deliverer(
        spool,
        sender,
        relay="relay.test:25",
        clock=clock,
        blocking=inline,
        policy=kwargs.pop("policy", POLICY),
        jitter=random.Random(4),
        hostname="daemon.test",
        on_disk_full=full.append,
        **kwargs,
    )
    return deliverer, full


def claim(spool: Spool, *recipients: str, sender: str = "from@example.test", **kw: Any) -> Entry:
    entry_id = spool.enqueue(MESSAGE, sender, list(recipients), **kw)
    entry = spool.claim(entry_id)
    assert entry is not None
    return entry


def test_accepted_message_is_done_with_queue_id(spool: Spool, clock: Clock) -> None:
    """A 250 to the final dot moves the entry to done, recording the reply and queue id."""
    sender = ScriptedSender(accepted(final=b"2.0.0 Ok: queued as ABC123"))
    deliverer, _ = make(spool, clock, sender)
    entry = claim(spool, "a@example.test", "b@example.test")
    with capturedLogs() as events:
        report = success_result_of(deliverer.deliver(entry))
    assert report.action is DeliveryAction.DELIVERED
    done = spool.get(entry.id)
    assert done.state is State.DONE
    assert done.delivered == ("a@example.test", "b@example.test")
    attempt = done.attempts[-1]
    assert (attempt.code, attempt.queue_id, attempt.relay) == (250, "ABC123", "relay.test:25")
    assert done.outcome is not None and done.outcome.queue_id == "ABC123"
    assert sender.calls[0][:3] == (
        "from@example.test",
        ["a@example.test", "b@example.test"],
        MESSAGE,
    )
    attempts = [e for e in events if e.get("action") == "delivered"]
    assert len(attempts) == 1
    assert attempts[0]["id"] == entry.id
    assert attempts[0]["relay"] == "relay.test:25"
    assert attempts[0]["code"] == 250
    assert attempts[0]["reply"] == "2.0.0 Ok: queued as ABC123"
    assert attempts[0]["duration"] >= 0


def test_partial_refusal_retries_only_temporary_recipients(spool: Spool, clock: Clock) -> None:
    """2xx recipients are done, 5xx failed, 4xx retried alone after a backoff."""
    sender = ScriptedSender(
        accepted(
            {
                "later@example.test": Reply(450, b"4.2.1 Mailbox busy"),
                "never@example.test": Reply(550, b"5.1.1 No such user"),
            }
        ),
        accepted(),
    )
    deliverer, _ = make(spool, clock, sender)
    entry = claim(spool, "ok@example.test", "later@example.test", "never@example.test")
    report = success_result_of(deliverer.deliver(entry))
    assert report.action is DeliveryAction.RESCHEDULED
    queued = spool.get(entry.id)
    assert queued.state is State.QUEUED
    assert queued.delivered == ("ok@example.test",)
    assert queued.failed == ("never@example.test",)
    assert queued.pending == ("later@example.test",)
    # The first retry waits the initial backoff, give or take the jitter.
    assert NOW + 60 * 0.8 <= queued.due <= NOW + 60 * 1.2
    clock.advance(queued.due - NOW)
    again = spool.claim(entry.id)
    assert again is not None
    report = success_result_of(deliverer.deliver(again))
    assert report.action is DeliveryAction.DELIVERED
    assert sender.calls[1][1] == ["later@example.test"]
    done = spool.get(entry.id)
    assert done.state is State.DONE
    assert done.failed == ("never@example.test",)
    assert len(done.attempts) == 2


def test_permanent_refusal_fails_at_once(spool: Spool, clock: Clock) -> None:
    """A 5xx to MAIL fails the message and every recipient at once."""
    sender = ScriptedSender(SMTPSenderRefused(550, b"5.7.1 Sender rejected", "from@example.test"))
    deliverer, _ = make(spool, clock, sender)
    entry = claim(spool, "a@example.test")
    report = success_result_of(deliverer.deliver(entry))
    assert report.action is DeliveryAction.FAILED
    failed = spool.get(entry.id)
    assert failed.state is State.FAILED
    assert failed.failed == ("a@example.test",)
    assert failed.outcome is not None
    assert (failed.outcome.kind, failed.outcome.code) == (OutcomeKind.FAILED, 550)


def test_all_recipients_refused_mixed(spool: Spool, clock: Clock) -> None:
    """Every recipient refused, some 4xx: the 5xx fail, the 4xx are retried."""
    sender = ScriptedSender(
        SMTPRecipientsRefused(
            {"t@example.test": (451, b"try later"), "p@example.test": (550, b"no")}
        )
    )
    deliverer, _ = make(spool, clock, sender)
    entry = claim(spool, "t@example.test", "p@example.test")
    report = success_result_of(deliverer.deliver(entry))
    assert report.action is DeliveryAction.RESCHEDULED
    queued = spool.get(entry.id)
    assert queued.pending == ("t@example.test",)
    assert queued.failed == ("p@example.test",)


@pytest.mark.parametrize(
    "error",
    [
        ConnectionRefusedError("refused"),
        SMTPServerDisconnected("lost"),
        SMTPDataError(451, b"4.3.0 try again"),
        SMTPSenderRefused(421, b"4.7.0 busy", "from@example.test"),
    ],
    ids=["refused-connection", "disconnect", "data-451", "mail-421"],
)
def test_temporary_failure_reschedules(spool: Spool, clock: Clock, error: Exception) -> None:
    """A temporary failure of the whole transaction leaves every recipient pending."""
    sender = ScriptedSender(error)
    deliverer, _ = make(spool, clock, sender)
    entry = claim(spool, "a@example.test")
    report = success_result_of(deliverer.deliver(entry))
    assert report.action is DeliveryAction.RESCHEDULED
    queued = spool.get(entry.id)
    assert queued.state is State.QUEUED
    assert queued.pending == ("a@example.test",)
    assert queued.attempts[-1].temporary is True
    assert queued.due > NOW


def test_backoff_grows_until_lifetime_then_expires(spool: Spool, clock: Clock) -> None:
    """Retries back off exponentially; past the maximum lifetime the message expires."""
    policy = RetryPolicy(initial=100.0, factor=2.0, maximum=1000.0, jitter=0.0, lifetime=700.0)
    sender = ScriptedSender(*[SMTPDataError(451, b"later")] * 10)
    deliverer, _ = make(spool, clock, sender, policy=policy)
    entry_id = spool.enqueue(MESSAGE, "from@example.test", ["a@example.test"])
    delays = []
    while True:
        entry = spool.claim(entry_id)
        assert entry is not None
        report = success_result_of(deliverer.deliver(entry))
        if report.action is not DeliveryAction.RESCHEDULED:
            break
        assert report.next_due is not None
        delays.append(round(report.next_due - clock.seconds()))
        clock.advance(report.next_due - clock.seconds())
    # 100, 200, 400, then the last retry is moved to the expiry moment.
    assert delays == [100, 200, 400]
    assert report.action is DeliveryAction.EXPIRED
    expired = spool.get(entry_id)
    assert expired.state is State.FAILED
    assert expired.outcome is not None and expired.outcome.kind is OutcomeKind.EXPIRED


def test_failure_notice_is_queued_to_sender(spool: Spool, clock: Clock) -> None:
    """With notify_sender, a permanent refusal queues a DSN from the null sender."""
    sender = ScriptedSender(SMTPRecipientsRefused({"a@example.test": (550, b"5.1.1 unknown")}))
    deliverer, _ = make(spool, clock, sender, notify_sender=True)
    entry = claim(spool, "a@example.test", sender="author@example.test")
    success_result_of(deliverer.deliver(entry))
    notices = [e for e in spool.list(State.QUEUED)]
    assert len(notices) == 1
    notice = notices[0]
    assert notice.sender == ""
    assert notice.pending == ("author@example.test",)
    parsed = email.message_from_bytes(spool.read_message(notice.id))
    assert parsed.get_content_type() == "multipart/report"
    assert "Status: 5.1.1" in spool.read_message(notice.id).decode()
    assert "Message-ID: <1@example.test>" in spool.read_message(notice.id).decode()


def test_failure_notice_reuses_the_message_read_for_sending(
    spool: Spool, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A refused message is read from the spool once, for both the send and its notice."""
    reads: list[str] = []
    real_read = spool.read_message

    def counting_read(entry_id: str) -> bytes:
        reads.append(entry_id)
        return real_read(entry_id)

    monkeypatch.setattr(spool, "read_message", counting_read)
    sender = ScriptedSender(SMTPRecipientsRefused({"a@example.test": (550, b"5.1.1 unknown")}))
    deliverer, _ = make(spool, clock, sender, notify_sender=True)
    entry = claim(spool, "a@example.test", sender="author@example.test")
    success_result_of(deliverer.deliver(entry))
    assert reads == [entry.id]
    [notice] = spool.list(State.QUEUED)
    assert "Message-ID: <1@example.test>" in real_read(notice.id).decode()


def test_no_failure_notice_for_a_bounce(spool: Spool, clock: Clock) -> None:
    """A message from the null sender never gets a notice (RFC 5321 section 4.5.5)."""
    sender = ScriptedSender(SMTPRecipientsRefused({"a@example.test": (550, b"unknown")}))
    deliverer, _ = make(spool, clock, sender, notify_sender=True)
    entry = claim(spool, "a@example.test", sender="")
    success_result_of(deliverer.deliver(entry))
    assert spool.list(State.QUEUED) == []


def test_failure_notice_off_by_default(spool: Spool, clock: Clock) -> None:
    """Without notify_sender nothing is queued for a failure."""
    sender = ScriptedSender(SMTPRecipientsRefused({"a@example.test": (550, b"unknown")}))
    deliverer, _ = make(spool, clock, sender)
    success_result_of(deliverer.deliver(claim(spool, "a@example.test")))
    assert spool.list(State.QUEUED) == []


def test_failure_notice_format() -> None:
    """The notice is a multipart/report naming each failed recipient and its reply."""
    entry = Entry("1-2-deadbeef", "a@example.test", (Recipient("b@example.test"),), 0.0, 0.0)
    notice = failure_notice(
        entry,
        {"b@example.test": ReplyRecord(550, "no such user")},
        MESSAGE,
        hostname="h.test",
        now=NOW,
    )
    parsed = email.message_from_bytes(notice)
    assert parsed["To"] == "<a@example.test>"
    assert parsed["Auto-Submitted"] == "auto-replied"
    types = [p.get_content_type() for p in parsed.walk()]
    assert types[0] == "multipart/report" and "text/rfc822-headers" in types
    text = notice.decode()
    assert "Final-Recipient: rfc822; b@example.test" in text
    assert "Status: 5.0.0" in text
    assert "Diagnostic-Code: smtp; 550 no such user" in text


def test_cancelled_send_is_released_unchanged(spool: Spool, clock: Clock) -> None:
    """cancel_all() (stopping) puts the entry back in the queue without an attempt."""
    sender = ScriptedSender(Deferred())
    deliverer, _ = make(spool, clock, sender)
    entry = claim(spool, "a@example.test")
    d = deliverer.deliver(entry)
    assert not d.called
    deliverer.cancel_all()
    report = success_result_of(d)
    assert report.action is DeliveryAction.RELEASED
    queued = spool.get(entry.id)
    assert queued.state is State.QUEUED
    assert queued.attempts == ()


def test_stop_with_two_sends_pipelined_on_one_connection(spool: Spool, clock: Clock) -> None:
    """
    Stopping while one connection carries two messages (the first's final
    dot written with no reply yet, the second's envelope pipelined behind
    it): the first is recorded as ambiguous (it may have been delivered),
    the second goes back to the queue unchanged, without a failed attempt.
    """
    from txsmtpclient import SMTP
    from txsmtpclient.pool import SMTPConnectionPool
    from txsmtpclient.testing import DATA_END, MemoryServer, Script

    script = Script()
    script.on(DATA_END, delay=1000, times=1)
    server = MemoryServer(script)
    pool = SMTPConnectionPool(
        server.endpoint(),
        make_client=lambda: SMTP(local_hostname="c.test", reactor=server.clock, tls="never"),
        reactor=server.clock,
        max_connections=1,
    )
    deliverer, _ = make(spool, clock, pool)  # type: ignore[arg-type]
    first, second = claim(spool, "a@example.test"), claim(spool, "b@example.test")
    sends = [deliverer.deliver(first), deliverer.deliver(second)]
    server.flush()
    [session] = server.sessions
    assert b".\r\nMAIL FROM:<from@example.test>" in bytes(session.received)
    deliverer.cancel_all()
    server.flush()
    reports = [success_result_of(d) for d in sends]
    assert reports[1].action is DeliveryAction.RELEASED
    assert spool.get(second.id).attempts == ()
    [attempt] = spool.get(first.id).attempts
    assert attempt.ambiguous


def test_requiretls_refusal_bounces_as_5_7_30(spool: Spool, clock: Clock) -> None:
    """
    A REQUIRETLS message the relay cannot take (it lacks the extension) fails
    for good, and its failure notice says 5.7.30 (RFC 8689 section 5).
    """
    from txsmtpclient.errors import SMTPNotSupportedError
    from txsmtpclient.mailparams import Travel, travel_options

    with pytest.raises(SMTPNotSupportedError) as refusal:
        travel_options(Travel(require_tls=True), None, tls=True)
    sender = ScriptedSender(refusal.value)
    deliverer, _ = make(spool, clock, sender, notify_sender=True)
    entry = claim(spool, "b@example.test", mail_options=["REQUIRETLS"])
    report = success_result_of(deliverer.deliver(entry))
    assert report.action is DeliveryAction.FAILED
    [record] = spool.get(entry.id).recipients
    assert record.reply is not None and record.reply.text.startswith("5.7.30 ")
    [bounce] = spool.list(State.QUEUED)
    notice = Path(spool.message_path(bounce.id)).read_bytes()
    assert b"Status: 5.7.30" in notice


def test_missing_message_is_set_aside(spool: Spool, clock: Clock) -> None:
    """An entry whose message file is gone is set aside, not retried for ever."""
    deliverer, _ = make(spool, clock, ScriptedSender())
    entry = claim(spool, "a@example.test")
    Path(spool.message_path(entry.id)).unlink()
    report = success_result_of(deliverer.deliver(entry))
    assert report.action is DeliveryAction.SET_ASIDE
    assert spool.counts()["corrupt"] == 1
    assert "message unreadable" in spool.corrupt()[0][1]


def test_unsendable_envelope_is_set_aside(spool: Spool, clock: Clock) -> None:
    """An envelope the client refuses before sending is set aside with the reason."""
    sender = ScriptedSender(SMTPArgumentError("bad address"))
    deliverer, _ = make(spool, clock, sender)
    report = success_result_of(deliverer.deliver(claim(spool, "a@example.test")))
    assert report.action is DeliveryAction.SET_ASIDE
    assert "bad envelope" in spool.corrupt()[0][1]


def test_dsn_requests_are_passed_to_the_client(spool: Spool, clock: Clock) -> None:
    """The entry's DSN requests go to the client in the envelope."""
    from txsmtpclient.spool.envelope import Dsn

    sender = ScriptedSender(accepted())
    deliverer, _ = make(spool, clock, sender)
    entry = claim(spool, "a@example.test", dsn=Dsn("HDRS", "env1", ("FAILURE",)))
    success_result_of(deliverer.deliver(entry))
    assert sender.calls[0][4] == DSN("HDRS", "env1", ("FAILURE",))


class FullOnce:
    """A spool whose first complete fails with a full disk."""

    def __init__(self, spool: Spool) -> None:
        self.spool = spool
        self.failures = 1

    def __getattr__(self, name: str) -> Any:
        return getattr(self.spool, name)

    def complete(self, entry_id: str, outcome: Any = None, *, attempt: Any = None) -> Entry:
        if self.failures:
            self.failures -= 1
            raise SpoolFull(28, "disk full")
        return self.spool.complete(entry_id, outcome, attempt=attempt)


def test_disk_full_is_reported_and_retried(spool: Spool, clock: Clock) -> None:
    """A full disk while recording is reported, then retried until it has room."""
    sender = ScriptedSender(accepted())
    full_spool = FullOnce(spool)
    deliverer = Deliverer(
        full_spool,
        sender,
        relay="r",
        clock=clock,
        blocking=inline,
        store_retry=5.0,
    )
    states: list[bool] = []
    deliverer.on_disk_full = states.append
    entry = claim(spool, "a@example.test")
    with capturedLogs() as events:
        d = deliverer.deliver(entry)
        assert not d.called
        clock.advance(5.0)
    report = success_result_of(d)
    assert report.action is DeliveryAction.DELIVERED
    assert states == [True, False]
    assert spool.get(entry.id).state is State.DONE
    assert any("disk full" in str(e.get("log_format", "")) for e in events)


def test_gives_up_when_stopping_with_disk_full(spool: Spool, clock: Clock) -> None:
    """A stopping daemon leaves the entry claimed rather than waiting for room."""
    full_spool = FullOnce(spool)
    deliverer = Deliverer(
        full_spool,
        ScriptedSender(accepted()),
        relay="r",
        clock=clock,
        blocking=inline,
        is_stopping=lambda: True,
    )
    entry = claim(spool, "a@example.test")
    report = success_result_of(deliverer.deliver(entry))
    assert report.action is DeliveryAction.STUCK
    assert spool.counts()["sending"] == 1


def test_unexpected_error_is_retried_not_lost(spool: Spool, clock: Clock) -> None:
    """A non-SMTP error (a bug) is logged and treated as temporary."""
    sender = ScriptedSender(RuntimeError("boom"))
    deliverer, _ = make(spool, clock, sender)
    with capturedLogs() as events:
        report = success_result_of(deliverer.deliver(claim(spool, "a@example.test")))
    assert report.action is DeliveryAction.RESCHEDULED
    assert any("log_failure" in e for e in events)


def test_recipient_state_after_claim(spool: Spool) -> None:
    """Sanity: a claimed entry's recipients start pending."""
    entry = claim(spool, "a@example.test")
    assert entry.recipients[0].state is RecipientState.PENDING


def _ambiguous() -> SMTPAmbiguousDelivery:
    error = SMTPAmbiguousDelivery("connection lost after the end of the message")
    error.__cause__ = SMTPServerDisconnected("lost")
    return error


def test_ambiguous_attempt_is_recorded_and_resent(spool: Spool, clock: Clock) -> None:
    """
    A hang-up after the final dot is an attempt recorded as ambiguous,
    logged and counted; by default the entry is sent again after the backoff.
    """
    sender = ScriptedSender(_ambiguous(), accepted())
    deliverer, _ = make(spool, clock, sender)
    entry = claim(spool, "a@example.test")
    with capturedLogs() as events:
        report = success_result_of(deliverer.deliver(entry))
    assert report.action is DeliveryAction.RESCHEDULED
    queued = spool.get(entry.id)
    assert queued.state is State.QUEUED
    assert [(a.ambiguous, a.temporary, a.code) for a in queued.attempts] == [(True, True, None)]
    assert deliverer.events["ambiguous"] == 1
    warnings = [e for e in events if e.get("ambiguous")]
    assert len(warnings) == 1 and warnings[0]["policy"] == "resend"
    assert warnings[0]["log_level"].name == "warn"
    clock.advance(queued.due - NOW)
    again = spool.claim(entry.id)
    assert again is not None
    assert success_result_of(deliverer.deliver(again)).action is DeliveryAction.DELIVERED
    done = spool.get(entry.id)
    assert [a.ambiguous for a in done.attempts] == [True, False]


def test_ambiguous_attempt_is_held_when_asked(spool: Spool, clock: Clock) -> None:
    """
    With on_ambiguous="hold" the entry goes to the held state, which the
    daemon never sends from; a plain disconnect is still retried.
    """
    sender = ScriptedSender(_ambiguous(), SMTPServerDisconnected("lost"))
    deliverer, _ = make(spool, clock, sender, on_ambiguous="hold")
    entry = claim(spool, "a@example.test")
    report = success_result_of(deliverer.deliver(entry))
    assert report.action is DeliveryAction.HELD
    held = spool.get(entry.id)
    assert held.state is State.HELD
    assert held.attempts[-1].ambiguous is True
    clock.advance(10 * 86400)
    assert spool.due(clock.seconds(), 10) == []
    other = claim(spool, "b@example.test")
    assert success_result_of(deliverer.deliver(other)).action is DeliveryAction.RESCHEDULED
    assert spool.get(other.id).attempts[-1].ambiguous is False


def test_unknown_ambiguous_policy_is_refused(spool: Spool, clock: Clock) -> None:
    """on_ambiguous other than resend or hold is a ValueError naming both."""
    with pytest.raises(ValueError, match="resend, hold"):
        make(spool, clock, ScriptedSender(), on_ambiguous="drop")


def test_retry_log_names_no_reply_instead_of_none(spool: Spool, clock: Clock) -> None:
    """A retry after a lost connection is logged with "no reply", never "None"."""
    deliverer, _ = make(spool, clock, ScriptedSender(ConnectionRefusedError("refused")))
    with capturedLogs() as events:
        success_result_of(deliverer.deliver(claim(spool, "a@example.test")))
    [event] = [e for e in events if e.get("action") == "rescheduled"]
    text = formatEvent(event)
    assert "no reply" in text and "None" not in text
    assert event["code"] is None


def test_config_fault_logged_at_error_once_per_relay_interval(spool: Spool, clock: Clock) -> None:
    """
    tls="required" against a relay without STARTTLS is logged at error level
    once per interval (by the injected clock), and retried every time.
    """
    fault = SMTPTLSError('tls="required" but the server does not offer STARTTLS')
    deliverer, _ = make(spool, clock, ScriptedSender(*[fault] * 3))
    logged = []
    for step in (0.0, 60.0, CONFIG_FAULT_LOG_INTERVAL):
        clock.advance(step)
        with capturedLogs() as events:
            report = success_result_of(deliverer.deliver(claim(spool, "a@example.test")))
        assert report.action is DeliveryAction.RESCHEDULED
        logged.append([e for e in events if e["log_level"].name == "error"])
    assert [len(errors) for errors in logged] == [1, 0, 1]
    assert "STARTTLS" in formatEvent(logged[0][0])
    assert deliverer.events["config_fault"] == 3
