"""
Tests for :mod:`txsmtpclient.transaction`: envelope checks, the MAIL and
RCPT lines planned for what the server advertised, and the judgement of the
replies (smtplib's ``sendmail`` rules).
"""

from __future__ import annotations

import smtplib

import pytest

from txsmtpclient.errors import (
    SMTPArgumentError,
    SMTPNotSupportedError,
    SMTPRecipientsRefused,
    SMTPSenderRefused,
)
from txsmtpclient.extensions import Extensions
from txsmtpclient.reply import Reply
from txsmtpclient.transaction import Envelope, judge_recipients, plan_transaction, sender_error

ALL = Extensions.from_ehlo(
    b"mx\nPIPELINING\nSIZE 1000\n8BITMIME\nSMTPUTF8\nDSN\nDELIVERBY\nREQUIRETLS"
)
BARE = Extensions.from_ehlo(b"mx\nPIPELINING")


def _env(
    sender: str = "a@example.com",
    recipients: str | list[str] = "b@example.com",
    mail: tuple[str, ...] = (),
    rcpt: tuple[str, ...] = (),
) -> Envelope:
    return Envelope.check(sender, recipients, mail, rcpt)


# -- envelope checks -------------------------------------------------------------


def test_one_string_is_one_recipient() -> None:
    """to_addrs may be one string, as in smtplib."""
    assert _env(recipients="b@example.com").recipients == ("b@example.com",)
    assert _env(recipients=["b@x", "c@x"]).recipients == ("b@x", "c@x")


@pytest.mark.parametrize(
    ("sender", "recipients", "error"),
    [
        ("a@x", [], SMTPArgumentError),
        ("a@x", (), SMTPArgumentError),
        ("a@x", [""], SMTPArgumentError),
        ("a@x", ["<>"], SMTPArgumentError),
        ("a@x\r\n", ["b@x"], SMTPArgumentError),
        ("a@x", ["b@x", "c@x\nRSET"], SMTPArgumentError),
        ("a@x", ["b@x\x00"], SMTPArgumentError),
        (b"a@x", ["b@x"], TypeError),
        ("a@x", b"b@x", TypeError),
        ("a@x", [b"b@x"], TypeError),
        ("a@x", {"b@x"}, TypeError),
        ("a@x", 5, TypeError),
    ],
)
def test_bad_envelopes(sender: object, recipients: object, error: type[Exception]) -> None:
    """Empty, control-laden or wrongly typed envelopes are refused at once."""
    with pytest.raises(error):
        Envelope.check(sender, recipients)  # type: ignore[arg-type]


def test_bad_options() -> None:
    """Options must be a sequence of words, not one string."""
    with pytest.raises(TypeError):
        _env(mail="SMTPUTF8")  # type: ignore[arg-type]
    with pytest.raises(SMTPArgumentError):
        _env(rcpt=("NOTIFY=NEVER\r\nRSET",))


def test_null_sender_allowed() -> None:
    """The null reverse-path (bounces) is a valid sender."""
    plan = plan_transaction(_env(sender=""), BARE, None, False)
    assert plan.mail == b"MAIL FROM:<>\r\n"


def test_needs_smtputf8() -> None:
    """Any non-ASCII address asks for SMTPUTF8."""
    assert not _env().needs_smtputf8
    assert _env(sender="jos\u00e9@x").needs_smtputf8
    assert _env(recipients=["b@x", "\u00fc@x"]).needs_smtputf8


# -- planning ------------------------------------------------------------------------


def test_plain_plan() -> None:
    """No options, no SIZE advertised: bare MAIL and one RCPT per recipient."""
    plan = plan_transaction(_env(recipients=["b@x", "Name <c@x>"]), BARE, 10, False)
    assert plan.mail == b"MAIL FROM:<a@example.com>\r\n"
    assert plan.rcpts == (b"RCPT TO:<b@x>\r\n", b"RCPT TO:<c@x>\r\n")
    assert plan.dropped == ()


def test_size_added_when_advertised() -> None:
    """RFC 1870: SIZE=n goes first on MAIL when the server lists SIZE."""
    plan = plan_transaction(_env(mail=("BODY=8BITMIME",)), ALL, 123, False)
    assert plan.mail == b"MAIL FROM:<a@example.com> SIZE=123 BODY=8BITMIME\r\n"


def test_size_at_limit_passes() -> None:
    """A message exactly at the limit is allowed."""
    plan = plan_transaction(_env(), ALL, 1000, False)
    assert plan.mail == b"MAIL FROM:<a@example.com> SIZE=1000\r\n"


def test_size_over_limit_refused_before_mail() -> None:
    """RFC 1870 section 6.1: over the limit is a 552 sender refusal, no MAIL sent."""
    with pytest.raises(SMTPSenderRefused) as info:
        plan_transaction(_env(), ALL, 1001, False)
    error = info.value
    assert error.smtp_code == 552
    assert error.sender == "a@example.com"
    assert b"1001" in error.smtp_error and b"1000" in error.smtp_error
    assert error.enhanced_code == "5.3.4"
    assert not error.temporary
    assert isinstance(error, smtplib.SMTPSenderRefused)


def test_size_without_limit() -> None:
    """SIZE with no number: declare the size, never refuse."""
    ext = Extensions.from_ehlo(b"mx\nSIZE")
    plan = plan_transaction(_env(), ext, 10**9, False)
    assert plan.mail == b"MAIL FROM:<a@example.com> SIZE=1000000000\r\n"


def test_options_dropped_when_not_advertised() -> None:
    """Each option goes out only when its extension is advertised."""
    env = _env(mail=("BODY=8BITMIME", "RET=HDRS", "XFOO"), rcpt=("NOTIFY=NEVER",))
    plan = plan_transaction(env, BARE, None, False)
    assert plan.mail == b"MAIL FROM:<a@example.com>\r\n"
    assert plan.rcpts == (b"RCPT TO:<b@example.com>\r\n",)
    assert plan.dropped == ("BODY=8BITMIME", "RET=HDRS", "XFOO", "NOTIFY=NEVER")


def test_options_kept_when_advertised() -> None:
    """Advertised options are passed as given, RCPT options on every RCPT."""
    env = _env(recipients=["b@x", "c@x"], mail=("RET=HDRS",), rcpt=("NOTIFY=NEVER",))
    plan = plan_transaction(env, ALL, None, False)
    assert plan.mail == b"MAIL FROM:<a@example.com> RET=HDRS\r\n"
    assert plan.rcpts == (
        b"RCPT TO:<b@x> NOTIFY=NEVER\r\n",
        b"RCPT TO:<c@x> NOTIFY=NEVER\r\n",
    )


def test_helo_suppresses_every_option() -> None:
    """After HELO (features None) no ESMTP option at all, SIZE included."""
    env = _env(mail=("BODY=8BITMIME", "SIZE=5"), rcpt=("NOTIFY=NEVER",))
    plan = plan_transaction(env, None, 100, False)
    assert plan.mail == b"MAIL FROM:<a@example.com>\r\n"
    assert plan.rcpts == (b"RCPT TO:<b@example.com>\r\n",)
    assert set(plan.dropped) == {"BODY=8BITMIME", "SIZE=5", "NOTIFY=NEVER"}


def test_smtputf8_added_for_non_ascii_address() -> None:
    """RFC 6531: a non-ASCII address adds SMTPUTF8 and is sent as UTF-8."""
    env = _env(sender="jos\u00e9@exemple.fr", recipients="\u00fc@x")
    plan = plan_transaction(env, ALL, None, False)
    assert plan.mail == "MAIL FROM:<jos\u00e9@exemple.fr> SMTPUTF8\r\n".encode()
    assert plan.rcpts == ("RCPT TO:<\u00fc@x>\r\n".encode(),)


def test_smtputf8_not_doubled() -> None:
    """An explicit SMTPUTF8 option is not added twice."""
    plan = plan_transaction(_env(recipients="\u00fc@x", mail=("SMTPUTF8",)), ALL, None, False)
    assert plan.mail.count(b"SMTPUTF8") == 1


@pytest.mark.parametrize("features", [BARE, None], ids=["ehlo", "helo"])
def test_non_ascii_address_without_smtputf8(features: Extensions | None) -> None:
    """Without SMTPUTF8 a non-ASCII address is refused, never mangled."""
    with pytest.raises(SMTPNotSupportedError, match="SMTPUTF8"):
        plan_transaction(_env(recipients="\u00fc@x"), features, None, False)


def test_eight_bit_adds_body() -> None:
    """RFC 6152: 8-bit data adds BODY=8BITMIME when the server has 8BITMIME."""
    plan = plan_transaction(_env(), ALL, 10, True)
    assert plan.mail == b"MAIL FROM:<a@example.com> SIZE=10 BODY=8BITMIME\r\n"


def test_eight_bit_keeps_callers_body() -> None:
    """A BODY= given by the caller is not overridden nor doubled."""
    plan = plan_transaction(_env(mail=("BODY=8BITMIME",)), ALL, None, True)
    assert plan.mail.count(b"BODY=") == 1


@pytest.mark.parametrize("features", [BARE, None], ids=["ehlo", "helo"])
def test_eight_bit_without_8bitmime(features: Extensions | None) -> None:
    """8-bit data to a 7-bit server is refused rather than sent corrupted."""
    with pytest.raises(SMTPNotSupportedError, match="8BITMIME"):
        plan_transaction(_env(), features, None, True)


# -- judging replies --------------------------------------------------------------------


def test_judge_partial_refusal() -> None:
    """Refused recipients are returned with their replies; 251 is accepted."""
    refused, error = judge_recipients(
        ["a@x", "b@x", "c@x"],
        [Reply(250, b"ok"), Reply(550, b"5.1.1 no"), Reply(251, b"forwarded")],
    )
    assert refused == {"b@x": (550, b"5.1.1 no")}
    assert error is None


def test_judge_total_refusal() -> None:
    """Every recipient refused: SMTPRecipientsRefused carrying all of them."""
    refused, error = judge_recipients(["a@x", "b@x"], [Reply(550, b"no"), Reply(450, b"later")])
    assert refused == {"a@x": (550, b"no"), "b@x": (450, b"later")}
    assert isinstance(error, SMTPRecipientsRefused)
    assert isinstance(error, smtplib.SMTPRecipientsRefused)
    assert error.recipients == refused
    assert not error.temporary  # one of them is permanent


def test_judge_total_temporary_refusal() -> None:
    """When every refusal is 4xx the error is temporary."""
    _refused, error = judge_recipients(["a@x"], [Reply(451, b"greylisted")])
    assert error is not None and error.temporary


def test_judge_lengths_must_match() -> None:
    """One reply per recipient, or it is our bug."""
    with pytest.raises(ValueError):
        judge_recipients(["a@x", "b@x"], [Reply(250, b"ok")])


@pytest.mark.parametrize(
    ("reply", "refused"),
    [
        (Reply(250, b"ok"), False),
        (Reply(251, b"?"), True),
        (Reply(451, b"later"), True),
        (Reply(553, b"bad"), True),
    ],
)
def test_sender_error(reply: Reply, refused: bool) -> None:
    """Only 250 accepts MAIL; anything else is SMTPSenderRefused with the sender."""
    error = sender_error("a@x", reply)
    if not refused:
        assert error is None
    else:
        assert isinstance(error, SMTPSenderRefused)
        assert (error.smtp_code, error.smtp_error, error.sender) == (
            reply.code,
            reply.message,
            "a@x",
        )
        assert error.temporary == reply.is_transient
