"""
Tests for :mod:`txsmtpclient.extensions`: EHLO replies parsed into
:class:`Extensions`, compared with what smtplib makes of the same reply.
"""

from __future__ import annotations

import dataclasses
import smtplib

import pytest

from txsmtpclient.extensions import Extensions

POSTFIX_EHLO = (
    b"mx.example.test\nPIPELINING\nSIZE 10240000\nVRFY\nETRN\nSTARTTLS\n"
    b"AUTH PLAIN LOGIN\nAUTH=PLAIN LOGIN\nENHANCEDSTATUSCODES\n8BITMIME\nDSN\n"
    b"SMTPUTF8\nCHUNKING"
)


def _smtplib_features(message: bytes) -> dict[str, str]:
    """
    What smtplib's ehlo() stores in esmtp_features for the same reply, with
    the stray spaces its AUTH concatenation leaves squeezed out.
    """
    client = smtplib.SMTP()
    client.putcmd = lambda *a, **k: None  # type: ignore[method-assign]
    client.getreply = lambda: (250, message)  # type: ignore[method-assign]
    client.ehlo("client.example")
    return {k: " ".join(v.split()) for k, v in client.esmtp_features.items()}


def test_postfix_reply() -> None:
    """A typical reply: keywords lower-cased, parameters kept, domain read."""
    ext = Extensions.from_ehlo(POSTFIX_EHLO)
    assert ext.domain == "mx.example.test"
    assert dict(ext) == {
        "pipelining": "",
        "size": "10240000",
        "vrfy": "",
        "etrn": "",
        "starttls": "",
        "auth": "PLAIN LOGIN PLAIN LOGIN",
        "enhancedstatuscodes": "",
        "8bitmime": "",
        "dsn": "",
        "smtputf8": "",
        "chunking": "",
    }
    assert dict(ext) == _smtplib_features(POSTFIX_EHLO)
    assert ext.size_limit == 10240000
    assert ext.auth_mechanisms == frozenset({"PLAIN", "LOGIN"})


@pytest.mark.parametrize(
    "message",
    [
        b"mx\nAUTH=LOGIN",
        b"mx\nAUTH=LOGIN PLAIN\nAUTH CRAM-MD5",
        b"mx\nAUTH CRAM-MD5\nAUTH=LOGIN",
        b"mx\nauth=login",
        b"mx\nX-EXPS GSSAPI NTLM\nXFOO=bar",
        b"mx\n  leading space is not a keyword\n-dash either\nOK",
        b"mx",
        b"",
    ],
)
def test_same_as_smtplib(message: bytes) -> None:
    """Old "AUTH=" lines, odd lines and empty replies parse as smtplib does."""
    assert dict(Extensions.from_ehlo(message)) == _smtplib_features(message)


def test_old_auth_form_alone() -> None:
    """A server that only sends the obsolete AUTH= form still offers AUTH."""
    ext = Extensions.from_ehlo(b"mx\nAUTH=LOGIN PLAIN")
    assert ext.has("auth")
    assert ext.auth_mechanisms == frozenset({"LOGIN", "PLAIN"})


def test_case_is_ignored() -> None:
    """Lookups, has() and ``in`` ignore case; iteration gives lower case."""
    ext = Extensions.from_ehlo(b"mx\nSize 100\n8BitMIME\nStartTLS")
    assert list(ext) == ["size", "8bitmime", "starttls"]
    assert ext["SIZE"] == "100"
    assert ext.has("8bitmime") and ext.has("8BITMIME")
    assert "StartTls" in ext
    assert 8 not in ext  # type: ignore[comparison-overlap]
    assert not ext.has("pipelining")
    assert len(ext) == 3
    with pytest.raises(KeyError):
        ext["pipelining"]


@pytest.mark.parametrize(
    ("line", "limit"),
    [
        (b"SIZE 35882577", 35882577),
        (b"SIZE", None),
        (b"SIZE 0", None),
        (b"SIZE junk", None),
        (b"SIZE 100 extra", 100),
    ],
)
def test_size_limit(line: bytes, limit: int | None) -> None:
    """RFC 1870: a number is a limit; none, 0 or junk means no limit."""
    ext = Extensions.from_ehlo(b"mx\n" + line)
    assert ext.has("size")
    assert ext.size_limit == limit


def test_no_size() -> None:
    """Without SIZE there is no limit."""
    assert Extensions.from_ehlo(b"mx\n8BITMIME").size_limit is None


def test_empty_default() -> None:
    """Extensions() is the state before EHLO: nothing advertised."""
    ext = Extensions()
    assert not ext.has("size")
    assert len(ext) == 0
    assert ext.auth_mechanisms == frozenset()


def test_frozen() -> None:
    """An Extensions cannot be changed after parsing."""
    ext = Extensions.from_ehlo(b"mx\nSIZE 1")
    with pytest.raises(dataclasses.FrozenInstanceError):
        ext.domain = "other"  # type: ignore[misc]


def test_non_utf8_bytes_do_not_break_parsing() -> None:
    """Junk bytes in a line are replaced, not fatal."""
    ext = Extensions.from_ehlo(b"mx \xff\nSIZE 5\nX\xff")
    assert ext.size_limit == 5
    assert ext.domain == "mx"
