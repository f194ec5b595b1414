"""
Tests for txsmtpclient.message: envelopes from headers (Resent-* rules),
flattening with Bcc stripped, and the SMTPUTF8 / 8BITMIME checks, measured
against smtplib's own send_message.
"""

from __future__ import annotations

import copy
import smtplib
import subprocess
import sys
from collections.abc import Sequence
from email.message import EmailMessage, Message
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from txsmtpclient.errors import SMTPArgumentError
from txsmtpclient.message import (
    PreparedMessage,
    envelope_from_message,
    flatten_message,
    has_8bit,
    needs_smtputf8,
    prepare_message,
)

ROOT = Path(__file__).resolve().parents[1]


class _CapturingSMTP(smtplib.SMTP):
    """
    smtplib.SMTP with the network cut out: send_message's sendmail call is
    recorded instead of sent.
    """

    def __init__(self) -> None:
        # A local_hostname avoids smtplib's blocking getfqdn(); no host means
        # no connection.
        super().__init__(local_hostname="localhost")
        self.sent: tuple[str, list[str], bytes, tuple[str, ...]] | None = None

    def ehlo_or_helo_if_needed(self) -> None:
        pass

    def has_extn(self, opt: str) -> bool:
        return True

    def sendmail(  # type: ignore[override]
        self,
        from_addr: str,
        to_addrs: str | Sequence[str],
        msg: bytes,
        mail_options: Sequence[str] = (),
        rcpt_options: Sequence[str] = (),
    ) -> dict[str, Any]:
        recipients = [to_addrs] if isinstance(to_addrs, str) else list(to_addrs)
        self.sent = (from_addr, recipients, msg, tuple(mail_options))
        return {}


def smtplib_send_message(
    msg: Message, from_addr: str | None = None, to_addrs: Sequence[str] | None = None
) -> tuple[str, list[str], bytes, tuple[str, ...]]:
    """
    What smtplib's send_message would pass to sendmail for ``msg``.
    """
    client = _CapturingSMTP()
    client.send_message(msg, from_addr, to_addrs)
    assert client.sent is not None
    return client.sent


def simple_message() -> EmailMessage:
    """
    An ASCII EmailMessage with To, Cc and Bcc.
    """
    msg = EmailMessage()
    msg["From"] = "Alice <alice@example.com>"
    msg["To"] = "Bob <bob@example.com>, carol@example.com"
    msg["Cc"] = "dave@example.com"
    msg["Bcc"] = "Eve <eve@example.com>"
    msg["Subject"] = "Hello"
    msg.set_content("Hi all.\n")
    return msg


def test_message_module_imports_no_twisted() -> None:
    """
    Importing txsmtpclient.message in a fresh interpreter leaves Twisted
    unloaded (the package is stubbed so only this module's imports count).
    """
    code = (
        "import sys, types\n"
        "package = types.ModuleType('txsmtpclient')\n"
        f"package.__path__ = [{str(ROOT / 'txsmtpclient')!r}]\n"
        "sys.modules['txsmtpclient'] = package\n"
        "import txsmtpclient.message\n"
        "print('twisted' in sys.modules)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert result.stdout.strip() == "False"


# -- envelopes -----------------------------------------------------------------


def test_envelope_from_headers_in_smtplib_order() -> None:
    """
    The sender is From's address; recipients come from To, Bcc, Cc in
    smtplib's order.
    """
    msg = simple_message()
    expected = (
        "alice@example.com",
        ["bob@example.com", "carol@example.com", "eve@example.com", "dave@example.com"],
    )
    assert envelope_from_message(msg) == expected
    assert smtplib_send_message(msg)[:2] == expected


def test_sender_header_wins_over_from() -> None:
    """
    Sender, when present, is the envelope sender (RFC 5322 section 3.6.2).
    """
    msg = simple_message()
    msg["Sender"] = "Secretary <sec@example.com>"
    assert envelope_from_message(msg)[0] == "sec@example.com"
    assert smtplib_send_message(msg)[0] == "sec@example.com"


def test_explicit_envelope_overrides_headers() -> None:
    """
    from_addr and to_addrs replace what the headers say; a str is one
    recipient and "" is the null reverse-path.
    """
    msg = simple_message()
    assert envelope_from_message(msg, "", ["x@example.com"]) == ("", ["x@example.com"])
    assert envelope_from_message(msg, to_addrs="y@example.com") == (
        "alice@example.com",
        ["y@example.com"],
    )


def test_resent_block_is_used() -> None:
    """
    With one Resent block, the Resent- fields give the envelope and the
    original To/Cc/Bcc are ignored.
    """
    msg = simple_message()
    msg["Resent-Date"] = "Mon, 1 Jan 2024 00:00:00 +0000"
    msg["Resent-From"] = "Forwarder <fwd@example.com>"
    msg["Resent-To"] = "new@example.com"
    msg["Resent-Cc"] = "newcc@example.com"
    msg["Resent-Bcc"] = "hidden@example.com"
    expected = (
        "fwd@example.com",
        ["new@example.com", "hidden@example.com", "newcc@example.com"],
    )
    assert envelope_from_message(msg) == expected
    assert smtplib_send_message(msg)[:2] == expected


def test_resent_sender_wins_over_resent_from() -> None:
    """
    Resent-Sender plays Sender's part in a Resent block; the original
    Sender does not count.
    """
    msg = simple_message()
    msg["Sender"] = "orig-sender@example.com"
    msg["Resent-Date"] = "Mon, 1 Jan 2024 00:00:00 +0000"
    msg["Resent-From"] = "fwd@example.com"
    msg["Resent-Sender"] = "fwd-sec@example.com"
    msg["Resent-To"] = "new@example.com"
    assert envelope_from_message(msg) == ("fwd-sec@example.com", ["new@example.com"])


def test_more_than_one_resent_block_raises_value_error() -> None:
    """
    Two Resent-Date headers make the newest block ambiguous: ValueError,
    as smtplib, even with an explicit envelope.
    """
    msg = simple_message()
    msg["Resent-Date"] = "Mon, 1 Jan 2024 00:00:00 +0000"
    msg["Resent-Date"] = "Tue, 2 Jan 2024 00:00:00 +0000"
    with pytest.raises(ValueError, match="more than one 'Resent-'") as raised:
        envelope_from_message(msg, "a@example.com", ["b@example.com"])
    assert isinstance(raised.value, SMTPArgumentError)
    with pytest.raises(ValueError, match="more than one 'Resent-'"):
        smtplib_send_message(msg)


def test_missing_from_raises() -> None:
    """
    A message without From or Sender needs an explicit from_addr (smtplib
    would send MAIL FROM:<None>).
    """
    msg = EmailMessage()
    msg["To"] = "bob@example.com"
    with pytest.raises(SMTPArgumentError, match="no From address"):
        envelope_from_message(msg)
    assert envelope_from_message(msg, "a@example.com")[0] == "a@example.com"


def test_empty_group_recipients_are_dropped() -> None:
    """
    "undisclosed-recipients:;" names nobody, so it adds no empty recipient.
    """
    msg = Message()
    msg["From"] = "a@example.com"
    msg["To"] = "undisclosed-recipients:;"
    msg["Bcc"] = "b@example.com"
    assert envelope_from_message(msg) == ("a@example.com", ["b@example.com"])


# -- flattening ----------------------------------------------------------------


def test_bcc_stripped_byte_exact() -> None:
    """
    Bcc is left out of the data, which has CRLF endings, and the result is
    what smtplib sends.
    """
    msg = simple_message()
    data = flatten_message(msg, smtputf8=False)
    assert data == (
        b"From: Alice <alice@example.com>\r\n"
        b"To: Bob <bob@example.com>, carol@example.com\r\n"
        b"Cc: dave@example.com\r\n"
        b"Subject: Hello\r\n"
        b'Content-Type: text/plain; charset="utf-8"\r\n'
        b"Content-Transfer-Encoding: 7bit\r\n"
        b"MIME-Version: 1.0\r\n"
        b"\r\n"
        b"Hi all.\r\n"
    )
    assert smtplib_send_message(msg)[2] == data


def test_resent_bcc_stripped_and_caller_message_untouched() -> None:
    """
    Resent-Bcc is stripped too, and the caller's message still has both.
    """
    msg = simple_message()
    msg["Resent-Date"] = "Mon, 1 Jan 2024 00:00:00 +0000"
    msg["Resent-From"] = "fwd@example.com"
    msg["Resent-Bcc"] = "hidden@example.com"
    before = copy.deepcopy(msg).as_bytes()
    data = flatten_message(msg, smtputf8=False)
    assert b"Bcc" not in data
    assert b"hidden@example.com" not in data and b"eve@example.com" not in data
    assert b"Resent-From: fwd@example.com\r\n" in data
    assert msg["Bcc"] == "Eve <eve@example.com>"
    assert msg["Resent-Bcc"] == "hidden@example.com"
    assert msg.as_bytes() == before
    assert smtplib_send_message(msg)[2] == data


def test_utf8_addresses() -> None:
    """
    A non-ASCII address needs SMTPUTF8; the data then carries raw UTF-8
    headers, exactly as smtplib produces, with SMTPUTF8 and BODY=8BITMIME.
    """
    msg = EmailMessage()
    msg["From"] = "J\u00f6rg <j\u00f6rg@ex\u00e4mple.de>"
    msg["To"] = "\u7528\u6237@\u4f8b\u5b50.\u5e7f\u544a"
    msg["Subject"] = "Gr\u00fc\u00dfe"
    msg.set_content("Hallo\n")
    prepared = prepare_message(msg)
    assert prepared.sender == "j\u00f6rg@ex\u00e4mple.de"
    assert prepared.recipients == ("\u7528\u6237@\u4f8b\u5b50.\u5e7f\u544a",)
    assert prepared.smtputf8 and prepared.eight_bit
    assert prepared.mail_options == ("SMTPUTF8", "BODY=8BITMIME")
    assert prepared.data.startswith(
        "From: J\u00f6rg <j\u00f6rg@ex\u00e4mple.de>\r\n"
        "To: \u7528\u6237@\u4f8b\u5b50.\u5e7f\u544a\r\n"
        "Subject: Gr\u00fc\u00dfe\r\n".encode()
    )
    sender, recipients, data, options = smtplib_send_message(msg)
    assert (sender, tuple(recipients), data) == (
        prepared.sender,
        prepared.recipients,
        prepared.data,
    )
    assert options == prepared.mail_options


def test_non_ascii_headers_encoded_without_smtputf8() -> None:
    """
    Without SMTPUTF8, non-ASCII header text is RFC 2047 encoded, so only the
    body can make the data 8-bit.
    """
    msg = simple_message()
    del msg["Subject"]
    msg["Subject"] = "Gr\u00fc\u00dfe"
    prepared = prepare_message(msg)
    assert not prepared.smtputf8 and not prepared.eight_bit
    assert prepared.mail_options == ()
    assert b"Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\r\n" in prepared.data


def test_email_message_with_non_ascii_body() -> None:
    """
    An EmailMessage whose body set_content made 8bit gives 8-bit data that
    needs BODY=8BITMIME but not SMTPUTF8.
    """
    msg = EmailMessage()
    msg["From"] = "a@example.com"
    msg["To"] = "b@example.com"
    msg.set_content("Gr\u00fc\u00dfe aus K\u00f6ln\n")
    assert msg["Content-Transfer-Encoding"] == "8bit"
    prepared = prepare_message(msg)
    assert prepared.data.endswith("\r\n\r\nGr\u00fc\u00dfe aus K\u00f6ln\r\n".encode())
    assert prepared.eight_bit and not prepared.smtputf8
    assert prepared.mail_options == ("BODY=8BITMIME",)
    assert smtplib_send_message(msg)[2] == prepared.data


def test_compat32_message_matches_smtplib() -> None:
    """
    A compat32 Message flattens as smtplib flattens it.
    """
    msg = Message()
    msg["From"] = "a@example.com"
    msg["To"] = "b@example.com"
    msg["Bcc"] = "c@example.com"
    msg["Subject"] = "Caf\u00e9"
    msg.set_payload("caf\u00e9\n", "utf-8")
    data = flatten_message(msg, smtputf8=False)
    assert data == (
        b"From: a@example.com\r\n"
        b"To: b@example.com\r\n"
        b"Subject: =?utf-8?b?Q2Fmw6k=?=\r\n"
        b"MIME-Version: 1.0\r\n"
        b'Content-Type: text/plain; charset="utf-8"\r\n'
        b"Content-Transfer-Encoding: base64\r\n"
        b"\r\n"
        b"Y2Fmw6kK\r\n"
    )
    assert smtplib_send_message(msg)[2] == data
    assert envelope_from_message(msg) == ("a@example.com", ["b@example.com", "c@example.com"])


def test_compat32_message_with_utf8_address() -> None:
    """
    A compat32 Message to a UTF-8 address gets raw UTF-8 headers where
    smtplib raises TypeError (compat32 has no utf8 setting).
    """
    msg = Message()
    msg["From"] = "J\u00f6rg <j\u00f6rg@ex\u00e4mple.de>"
    msg["To"] = "b@example.com"
    msg.set_payload("hi\n")
    prepared = prepare_message(msg)
    assert prepared.smtputf8
    assert prepared.data == (
        "From: J\u00f6rg <j\u00f6rg@ex\u00e4mple.de>\r\nTo: b@example.com\r\n\r\nhi\r\n".encode()
    )
    with pytest.raises(TypeError, match="utf8"):
        smtplib_send_message(msg)


def test_from_line_escaping_follows_policy() -> None:
    """
    Body lines starting with "From " are escaped only when the message's
    policy says so: compat32 yes, the default policy no.
    """
    old = Message()
    old["From"] = "a@example.com"
    old.set_payload("From here\n")
    assert flatten_message(old, smtputf8=False).endswith(b"\r\n\r\n>From here\r\n")
    new = EmailMessage()
    new["From"] = "a@example.com"
    new.set_content("From here\n")
    assert flatten_message(new, smtputf8=False).endswith(b"\r\n\r\nFrom here\r\n")


# -- 8-bit and UTF-8 checks ----------------------------------------------------


@pytest.mark.parametrize(
    ("sender", "recipients", "expected"),
    [
        ("a@example.com", ["b@example.com"], False),
        ("", [], False),
        ("j\u00f6rg@example.com", ["b@example.com"], True),
        ("a@example.com", ["b@example.com", "\u7528\u6237@example.com"], True),
        ("a@ex\u00e4mple.de", [], True),
    ],
)
def test_needs_smtputf8(sender: str, recipients: list[str], expected: bool) -> None:
    """
    Any non-ASCII envelope address needs SMTPUTF8.
    """
    assert needs_smtputf8(sender, recipients) is expected


@pytest.mark.parametrize(
    ("data", "expected"),
    [(b"", False), (b"plain\r\n", False), (b"\x7f\x00", False), (b"caf\xc3\xa9", True)],
)
def test_has_8bit(data: bytes, expected: bool) -> None:
    """
    Data is 8-bit exactly when a byte is 0x80 or more.
    """
    assert has_8bit(data) is expected


@given(st.binary())
def test_has_8bit_matches_byte_scan(data: bytes) -> None:
    """
    The fast check agrees with a byte-by-byte scan.
    """
    assert has_8bit(data) == any(byte >= 0x80 for byte in data)


def test_prepared_message_is_frozen() -> None:
    """
    PreparedMessage is an immutable value.
    """
    prepared = prepare_message(simple_message())
    assert isinstance(prepared, PreparedMessage)
    with pytest.raises(AttributeError):
        prepared.sender = "x"  # type: ignore[misc]


def test_header_block_stops_at_the_blank_line() -> None:
    """The header section with its last line end; no body, whichever line ends."""
    from txsmtpclient.message import header_block

    assert header_block(b"A: 1\r\nB: 2\r\n\r\nbody\r\n\r\nmore") == b"A: 1\r\nB: 2\r\n"
    assert header_block(b"A: 1\n\nbody") == b"A: 1\n"
    assert header_block(b"A: 1\r\n") == b"A: 1\r\n"


def test_tls_required_no_counts_only_in_the_header() -> None:
    """RFC 8689's ``TLS-Required: No`` is a header field: the same in the body means nothing."""
    from txsmtpclient.direct._deliver import _tls_not_required

    assert _tls_not_required(b"Subject: x\r\nTLS-Required: No\r\n\r\nbody\r\n")
    assert not _tls_not_required(b"Subject: x\r\n\r\nTLS-Required: No\r\n")
