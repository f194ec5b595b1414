"""
Tests for :mod:`txsmtpclient._log`: the one redaction function, and a whole
SCRAM exchange through a connection's transcript leaving no secret in any
log event.
"""

from __future__ import annotations

import base64
from typing import cast

import pytest
from helpers import NoDelayTransport, deliver, success_result_of
from hypothesis import given
from hypothesis import strategies as st
from test_auth import RFC7677_SERVER_FINAL, RFC7677_SERVER_FIRST, scram
from twisted.internet.interfaces import IProtocol
from twisted.internet.task import Clock
from twisted.logger import capturedLogs

from txsmtpclient._log import Transcript, redact
from txsmtpclient.auth import CANCEL, auth_command, decode_challenge, encode_response
from txsmtpclient.protocol import SMTPClientProtocol
from txsmtpclient.session import Command, Kind


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (b"AUTH PLAIN AHUAcA==\r\n", b"AUTH PLAIN <redacted>\r\n"),
        (b"auth plain AHUAcA==", b"auth plain <redacted>"),
        (b"AUTH LOGIN dGlt\r\n", b"AUTH LOGIN <redacted>\r\n"),
        (b"AUTH XOAUTH2 abc def\r\n", b"AUTH XOAUTH2 <redacted>\r\n"),
        (b"AUTH\tPLAIN\tabc\r\n", b"AUTH\tPLAIN <redacted>\r\n"),
        (b"AUTH PLAIN =\r\n", b"AUTH PLAIN <redacted>\r\n"),
        (b"AUTH LOGIN\r\n", b"AUTH LOGIN\r\n"),
        (b"AUTH CRAM-MD5", b"AUTH CRAM-MD5"),
        (b"MAIL FROM:<a@b> AUTH=<>\r\n", b"MAIL FROM:<a@b> AUTH=<>\r\n"),
        (b"AUTHX PLAIN abc", b"AUTHX PLAIN abc"),
        (b"EHLO example.com\r\n", b"EHLO example.com\r\n"),
    ],
)
def test_redact(line: bytes, expected: bytes) -> None:
    """Only the AUTH command's initial response is hidden."""
    assert redact(line) == expected


@given(st.binary().filter(lambda b: b.strip(b" \t\r\n") and not set(b) & set(b"\r\n")))
def test_redact_never_leaks(secret: bytes) -> None:
    """Whatever follows the mechanism name never survives redaction."""
    assert redact(b"AUTH PLAIN " + secret + b"\r\n") == b"AUTH PLAIN <redacted>\r\n"


def _transcribed() -> SMTPClientProtocol:
    proto = SMTPClientProtocol(clock=Clock(), transcript=Transcript(1))
    cast(IProtocol, proto).makeConnection(NoDelayTransport())
    deliver(proto, b"220 hi\r\n")
    return proto


def test_scram_exchange_leaves_no_secret_in_the_transcript() -> None:
    """A whole SCRAM exchange logs no initial response, challenge or response."""
    mechanism = scram()
    secrets: list[bytes] = []
    with capturedLogs() as events:
        proto = _transcribed()
        command = auth_command(mechanism)
        secrets.append(command[len(b"AUTH SCRAM-SHA-256 ") :])
        reply = proto.send(Command(Kind.AUTH, command + b"\r\n", secret=True))
        for challenge in (RFC7677_SERVER_FIRST, RFC7677_SERVER_FINAL):
            line = base64.b64encode(challenge)
            secrets.append(line)
            deliver(proto, b"334 " + line + b"\r\n")
            assert success_result_of(reply).code == 334
            response = encode_response(mechanism.respond(decode_challenge(line)))
            if response:
                secrets.append(response)
            reply = proto.send(Command(Kind.AUTH_RESPONSE, response + b"\r\n", secret=True))
        deliver(proto, b"235 2.7.0 Authentication successful\r\n")
        mechanism.verify_success()
    logged = [e.get("data", b"") for e in events] + [e.get("message", b"") for e in events]
    assert b"AUTH SCRAM-SHA-256 <redacted>\r\n" in logged
    joined = b"".join(x for x in logged if isinstance(x, bytes))
    assert all(secret not in joined for secret in secrets)
    assert [e["code"] for e in events if e.get("direction") == "reply"] == [220, 334, 334, 235]


def test_cancel_is_hidden() -> None:
    """The "*" that cancels an exchange is logged as redacted."""
    with capturedLogs() as events:
        proto = _transcribed()
        proto.send(Command(Kind.AUTH, b"AUTH LOGIN\r\n", secret=True))
        deliver(proto, b"334 VXNlcm5hbWU6\r\n")
        proto.send(Command(Kind.AUTH_RESPONSE, CANCEL + b"\r\n", secret=True))
        deliver(proto, b"501 5.7.0 cancelled\r\n")
    sent = [e["data"] for e in events if e.get("direction") == "send"]
    assert sent == [b"AUTH LOGIN\r\n", b"<redacted>"]
    replies = [e["message"] for e in events if e.get("direction") == "reply"]
    assert replies == [b"hi", b"<redacted>", b"<redacted>"]
