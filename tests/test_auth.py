"""
Tests for txsmtpclient.auth: SASL mechanisms as challenge -> response steps,
mechanism choice, base64 framing and transcript redaction.
"""

from __future__ import annotations

import base64
import smtplib
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from txsmtpclient.auth import (
    DEFAULT_MAX_SCRAM_ITERATIONS,
    CramMD5,
    Login,
    Plain,
    SASLError,
    SASLMechanism,
    ScramSHA256,
    XOAuth2,
    auth_command,
    choose_mechanism,
    decode_challenge,
    encode_initial_response,
    encode_response,
    mechanism_for,
    saslprep,
)
from txsmtpclient.errors import SMTPArgumentError, SMTPNotSupportedError

ROOT = Path(__file__).resolve().parents[1]

# RFC 7677 section 3: user "user", password "pencil".
RFC7677_NONCE = "rOprNGfwEbeRWgbNEkqO"
RFC7677_CLIENT_FIRST = b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO"
RFC7677_SERVER_FIRST = (
    b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
)
RFC7677_CLIENT_FINAL = (
    b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
    b"p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
)
RFC7677_SERVER_FINAL = b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="


def scram(
    password: str = "pencil", *, max_iterations: int = DEFAULT_MAX_SCRAM_ITERATIONS
) -> ScramSHA256:
    """
    A SCRAM-SHA-256 client with RFC 7677's user and client nonce.
    """
    return ScramSHA256(
        "user", password, nonce=lambda: RFC7677_NONCE, max_iterations=max_iterations
    )


def test_auth_module_imports_no_twisted() -> None:
    """
    Importing txsmtpclient.auth in a fresh interpreter leaves Twisted unloaded.

    The package is stubbed so that only this module's own imports count,
    whatever txsmtpclient/__init__.py imports for the public API.
    """
    code = (
        "import sys, types\n"
        "package = types.ModuleType('txsmtpclient')\n"
        f"package.__path__ = [{str(ROOT / 'txsmtpclient')!r}]\n"
        "sys.modules['txsmtpclient'] = package\n"
        "import txsmtpclient.auth\n"
        "print('twisted' in sys.modules)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert result.stdout.strip() == "False"


# -- base64 framing ------------------------------------------------------------


def test_empty_initial_response_is_equals_sign() -> None:
    """
    An empty initial response is sent as "=" (RFC 4954 section 4).
    """
    assert encode_initial_response(b"") == b"="
    assert encode_initial_response(b"\0u\0p") == b"AHUAcA=="


def test_empty_continuation_response_is_empty_line() -> None:
    """
    An empty answer to a 334 challenge is an empty line, not "=".
    """
    assert encode_response(b"") == b""


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (b"VXNlcm5hbWU6", b"Username:"),
        (b"  UGFzc3dvcmQ6 \r\n", b"Password:"),
        (b"", b""),
        (b"=", b""),
        # Missing padding is tolerated.
        (b"AHUAcA", b"\0u\0p"),
    ],
)
def test_decode_challenge(text: bytes, expected: bytes) -> None:
    """
    334 texts decode to the raw challenge.
    """
    assert decode_challenge(text) == expected


@pytest.mark.parametrize("text", [b"not base64!", b"abcde", b"2.7.0 Authentication"])
def test_decode_challenge_rejects_non_base64(text: bytes) -> None:
    """
    A 334 text that is not base64 raises SASLError, so the driver cancels.
    """
    with pytest.raises(SASLError, match="not base64"):
        decode_challenge(text)


@given(st.binary())
def test_response_base64_round_trip(data: bytes) -> None:
    """
    Every response survives encoding and decoding, initial or not.
    """
    assert decode_challenge(encode_response(data)) == data
    assert decode_challenge(encode_initial_response(data)) == data
    assert b"\r" not in encode_response(data) and b"\n" not in encode_response(data)


# -- PLAIN ---------------------------------------------------------------------


def test_plain_exact_bytes() -> None:
    """
    PLAIN sends NUL authcid NUL password (RFC 4616 section 2) with AUTH.
    """
    mechanism = Plain("tim", "tanstaaftanstaaf")
    assert mechanism.initial_response() == b"\0tim\0tanstaaftanstaaf"
    assert auth_command(mechanism) == b"AUTH PLAIN AHRpbQB0YW5zdGFhZnRhbnN0YWFm"


def test_plain_with_authzid_and_utf8() -> None:
    """
    The authzid goes first, and every field is UTF-8.
    """
    mechanism = Plain("j\u00f6rg", "p\u00e4ss", authzid="admin")
    assert mechanism.initial_response() == b"admin\0j\xc3\xb6rg\0p\xc3\xa4ss"


@pytest.mark.parametrize(
    ("username", "password", "authzid"),
    [("u\0", "p", None), ("u", "p\0", None), ("u", "p", "a\0")],
)
def test_plain_rejects_nul(username: str, password: str, authzid: str | None) -> None:
    """
    NUL separates PLAIN's fields, so no field may contain one.
    """
    with pytest.raises(SMTPArgumentError, match="NUL"):
        Plain(username, password, authzid=authzid)


def test_plain_answers_empty_challenge_once() -> None:
    """
    Without an initial response the server sends an empty challenge and gets
    the message; any further challenge is an error.
    """
    mechanism = Plain("u", "p")
    assert mechanism.respond(b"") == b"\0u\0p"
    with pytest.raises(SASLError):
        mechanism.respond(b"")


def test_plain_rejects_non_empty_challenge() -> None:
    """
    PLAIN has no challenges with content.
    """
    with pytest.raises(SASLError, match="PLAIN"):
        Plain("u", "p").respond(b"what?")


# -- LOGIN ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("first", "second"),
    [
        (b"Username:", b"Password:"),
        (b"User Name\0", b"Password\0"),
        (b"", b""),
        (b"Benutzer:", b"Kennwort:"),
    ],
)
def test_login_answers_user_then_password(first: bytes, second: bytes) -> None:
    """
    LOGIN answers the first prompt with the user name and the second with
    the password, whatever the prompts say.
    """
    mechanism = Login("tim", "secret")
    assert mechanism.initial_response() is None
    assert auth_command(mechanism) == b"AUTH LOGIN"
    assert mechanism.respond(first) == b"tim"
    assert mechanism.respond(second) == b"secret"


def test_login_follows_prompt_text_over_order() -> None:
    """
    A prompt naming the password gets the password even when it comes first.
    """
    mechanism = Login("tim", "secret")
    assert mechanism.respond(b"Password:") == b"secret"
    assert mechanism.respond(b"Username:") == b"tim"


def test_login_with_username_as_initial_response() -> None:
    """
    With send_username_first (smtplib's way) the first prompt gets the
    password.
    """
    mechanism = Login("tim", "secret", send_username_first=True)
    assert auth_command(mechanism) == b"AUTH LOGIN dGlt"
    assert mechanism.respond(b"?") == b"secret"


def test_login_rejects_a_third_challenge() -> None:
    """
    After the user name and password there is nothing left to ask.
    """
    mechanism = Login("tim", "secret")
    mechanism.respond(b"Username:")
    mechanism.respond(b"Password:")
    with pytest.raises(SASLError, match="after the password"):
        mechanism.respond(b"Password:")


# -- CRAM-MD5 ------------------------------------------------------------------


def test_cram_md5_rfc2195_example() -> None:
    """
    RFC 2195 section 2's example, base64 framing included.
    """
    mechanism = CramMD5("tim", "tanstaaftanstaaf")
    assert mechanism.initial_response() is None
    challenge = decode_challenge(b"PDE4OTYuNjk3MTcwOTUyQHBvc3RvZmZpY2UucmVzdG9uLm1jaS5uZXQ+")
    assert challenge == b"<1896.697170952@postoffice.reston.mci.net>"
    response = mechanism.respond(challenge)
    assert response == b"tim b913a602c7eda7a495b4e6e7334d3890"
    assert encode_response(response) == b"dGltIGI5MTNhNjAyYzdlZGE3YTQ5NWI0ZTZlNzMzNGQzODkw"


def test_cram_md5_rejects_empty_and_second_challenge() -> None:
    """
    An empty challenge would make the answer replayable; a second one is
    not part of the mechanism.
    """
    with pytest.raises(SASLError, match="empty"):
        CramMD5("tim", "x").respond(b"")
    mechanism = CramMD5("tim", "x")
    mechanism.respond(b"<1@host>")
    with pytest.raises(SASLError, match="second"):
        mechanism.respond(b"<2@host>")


# -- SCRAM-SHA-256 -------------------------------------------------------------


def test_scram_rfc7677_example_with_final_334() -> None:
    """
    RFC 7677 section 3's exchange, byte for byte, with the server signature
    arriving as a last 334 challenge answered by an empty response.
    """
    mechanism = scram()
    assert mechanism.name == "SCRAM-SHA-256"
    assert mechanism.initial_response() == RFC7677_CLIENT_FIRST
    assert mechanism.respond(RFC7677_SERVER_FIRST) == RFC7677_CLIENT_FINAL
    assert mechanism.respond(RFC7677_SERVER_FINAL) == b""
    mechanism.verify_success(b"")


def test_scram_rfc7677_example_with_success_data() -> None:
    """
    The server signature may also come as the 235 reply's additional data.
    """
    mechanism = scram()
    assert mechanism.respond(RFC7677_SERVER_FIRST) == RFC7677_CLIENT_FINAL
    mechanism.verify_success(RFC7677_SERVER_FINAL)


def test_scram_answers_empty_first_challenge_with_client_first() -> None:
    """
    When AUTH went without the initial response, the empty challenge gets
    the client-first-message (RFC 4422 section 5.1).
    """
    mechanism = scram()
    assert mechanism.respond(b"") == RFC7677_CLIENT_FIRST
    assert mechanism.respond(RFC7677_SERVER_FIRST) == RFC7677_CLIENT_FINAL


def test_scram_password_is_saslprepped() -> None:
    """
    SASLprep maps a soft hyphen to nothing, so "pen<SHY>cil" gives the
    same proof as "pencil" (RFC 5802 section 2.2, RFC 4013 section 2.1).
    """
    mechanism = scram(password="pen\u00adcil")
    assert mechanism.respond(RFC7677_SERVER_FIRST) == RFC7677_CLIENT_FINAL


def test_scram_rejects_wrong_server_signature() -> None:
    """
    A server that cannot prove it knows the password is refused.
    """
    mechanism = scram()
    mechanism.respond(RFC7677_SERVER_FIRST)
    forged = b"v=" + base64.b64encode(b"\0" * 32)
    with pytest.raises(SASLError, match="signature does not match"):
        mechanism.respond(forged)
    with pytest.raises(SASLError, match="without proving"):
        mechanism.verify_success(b"")


def test_scram_rejects_success_without_signature() -> None:
    """
    A 235 with no server-final-message at all is refused.
    """
    mechanism = scram()
    mechanism.respond(RFC7677_SERVER_FIRST)
    with pytest.raises(SASLError, match="without proving"):
        mechanism.verify_success(b"")


def test_scram_rejects_success_before_server_first() -> None:
    """
    Success data before the exchange even started is refused.
    """
    with pytest.raises(SASLError, match="before the server-first"):
        scram().verify_success(RFC7677_SERVER_FINAL)


def test_scram_server_error_attribute() -> None:
    """
    A server-final-message with e= becomes SASLError naming the error.
    """
    mechanism = scram()
    mechanism.respond(RFC7677_SERVER_FIRST)
    with pytest.raises(SASLError, match="invalid-proof"):
        mechanism.respond(b"e=invalid-proof")


def test_scram_rejects_challenge_after_verification() -> None:
    """
    Nothing may follow the verified server-final-message.
    """
    mechanism = scram()
    mechanism.respond(RFC7677_SERVER_FIRST)
    mechanism.respond(RFC7677_SERVER_FINAL)
    with pytest.raises(SASLError, match="after the exchange ended"):
        mechanism.respond(RFC7677_SERVER_FINAL)


@pytest.mark.parametrize(
    ("server_first", "match"),
    [
        (b"r=someoneElsesNonce123,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096", "client nonce"),
        (b"r=rOprNGfwEbeRWgbNEkqOxyz,s=not-base64!,i=4096", "salt"),
        (b"r=rOprNGfwEbeRWgbNEkqOxyz,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=0", "iteration count"),
        (b"r=rOprNGfwEbeRWgbNEkqOxyz,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=-1", "iteration count"),
        (b"r=rOprNGfwEbeRWgbNEkqOxyz,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=x", "iteration count"),
        (b"r=rOprNGfwEbeRWgbNEkqOxyz,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=99999999", "more than"),
        (b"r=rOprNGfwEbeRWgbNEkqOxyz,i=4096", "lacks 's'"),
        (b"m=ext,r=rOprNGfwEbeRWgbNEkqOxyz,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096", "extension"),
        (b"garbage", "malformed"),
        (b"r=rOprNGfwEbeRWgbNEkqO\xff,s=AA==,i=1", "UTF-8"),
    ],
)
def test_scram_rejects_bad_server_first(server_first: bytes, match: str) -> None:
    """
    A server-first-message that is malformed, does not extend our nonce, or
    asks for absurd work is refused before any proof is sent.
    """
    with pytest.raises(SASLError, match=match):
        scram().respond(server_first)


def test_scram_iteration_ceiling_is_configurable() -> None:
    """
    max_iterations moves the ceiling on PBKDF2 rounds.
    """
    server_first = b"r=rOprNGfwEbeRWgbNEkqOxyz,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
    with pytest.raises(SASLError, match="more than the 4095"):
        scram(max_iterations=4095).respond(server_first)
    assert DEFAULT_MAX_SCRAM_ITERATIONS >= 4096


def test_scram_escapes_names_and_sends_authzid() -> None:
    """
    "=" and "," in names are escaped (RFC 5802 section 5.1), the authzid
    goes in the gs2 header, and the channel binding repeats that header.
    """
    mechanism = ScramSHA256("a=b,c", "pencil", authzid="ad,min", nonce=lambda: "abc")
    assert mechanism.initial_response() == b"n,a=ad=2Cmin,n=a=3Db=2Cc,r=abc"
    final = mechanism.respond(b"r=abcdef,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=1")
    channel_binding = base64.b64encode(b"n,a=ad=2Cmin,")
    assert final.startswith(b"c=" + channel_binding + b",r=abcdef,p=")


@pytest.mark.parametrize("nonce", ["has,comma", "", "sp ace", "n\u00f6n"])
def test_scram_rejects_bad_client_nonce(nonce: str) -> None:
    """
    The injected nonce must be printable ASCII without commas.
    """
    with pytest.raises(SMTPArgumentError, match="nonce"):
        ScramSHA256("user", "pencil", nonce=lambda: nonce)


def test_scram_default_nonce_is_fresh_and_valid() -> None:
    """
    Two exchanges never share a client nonce.
    """
    first = ScramSHA256("user", "pencil").initial_response()
    second = ScramSHA256("user", "pencil").initial_response()
    assert first != second
    assert first.startswith(b"n,,n=user,r=") and b"," not in first[len(b"n,,n=user,r=") :]


# -- SASLprep ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # RFC 4013 section 3's examples.
        ("I\u00adX", "IX"),
        ("user", "user"),
        ("USER", "USER"),
        ("\u00aa", "a"),
        ("\u2168", "IX"),
        # Non-ASCII space maps to space.
        ("a\u00a0b", "a b"),
    ],
)
def test_saslprep_maps(text: str, expected: str) -> None:
    """
    SASLprep maps and normalises as RFC 4013 section 3 shows.
    """
    assert saslprep(text) == expected


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("\u0007", "prohibited"),
        ("pass\ue000", "prohibited"),
        ("\u0627\u0031", "right-to-left"),
        ("\u0627a\u0627", "mixes"),
        ("\U0001f600", "unassigned"),
    ],
)
def test_saslprep_refuses(text: str, match: str) -> None:
    """
    RFC 4013 section 3's refused examples: prohibited characters, bad
    bidirectional text, unassigned code points (stored strings).
    """
    with pytest.raises(SMTPArgumentError, match=match) as raised:
        saslprep(text)
    # The text is usually a password: the error must not repeat it.
    assert text not in str(raised.value)


def test_saslprep_allows_unassigned_for_queries() -> None:
    """
    allow_unassigned accepts code points new since Unicode 3.2.
    """
    assert saslprep("\U0001f600", allow_unassigned=True) == "\U0001f600"


# -- XOAUTH2 -------------------------------------------------------------------


def test_xoauth2_exact_bytes() -> None:
    """
    XOAUTH2's initial response is Google's documented format.
    """
    mechanism = XOAuth2("someuser@example.com", "ya29.vF9dft4qmTc2Nvb3RlckBhdHRhdmlzdGEuY29tCg")
    assert mechanism.initial_response() == (
        b"user=someuser@example.com\x01auth=Bearer "
        b"ya29.vF9dft4qmTc2Nvb3RlckBhdHRhdmlzdGEuY29tCg\x01\x01"
    )
    # Google's example encoding of the same string.
    assert auth_command(mechanism) == (
        b"AUTH XOAUTH2 dXNlcj1zb21ldXNlckBleGFtcGxlLmNvbQFhdXRoPUJlYXJlciB5YTI5LnZGOWRmdDRxbVRjMk"
        b"52YjNSbGNrQmhkSFJoZG1semRHRXVZMjl0Q2cBAQ=="
    )


def test_xoauth2_error_challenge_gets_empty_response() -> None:
    """
    On a bad token the server's JSON challenge is answered with an empty
    response and kept for the caller; nothing else may follow.
    """
    mechanism = XOAuth2("u@example.com", "token")
    error = b'{"status":"401","schemes":"bearer","scope":"https://mail.google.com/"}'
    assert mechanism.respond(error) == b""
    assert mechanism.error == error
    with pytest.raises(SASLError):
        mechanism.respond(b"again")


def test_xoauth2_empty_challenge_without_initial_response() -> None:
    """
    When AUTH went without the initial response, the empty challenge gets it.
    """
    mechanism = XOAuth2("u@example.com", "token")
    assert mechanism.respond(b"") == b"user=u@example.com\x01auth=Bearer token\x01\x01"
    assert mechanism.error is None


def test_xoauth2_rejects_separator_in_fields() -> None:
    """
    \\x01 separates XOAUTH2's fields.
    """
    with pytest.raises(SMTPArgumentError):
        XOAuth2("u\x01", "token")


# -- AUTH command --------------------------------------------------------------


def test_auth_command_leaves_off_long_initial_response() -> None:
    """
    An initial response that would push the line past 512 octets is left
    off (RFC 4954 section 4); the mechanism then answers the empty challenge.
    """
    mechanism = XOAuth2("u@example.com", "t" * 600)
    assert auth_command(mechanism) == b"AUTH XOAUTH2"
    assert auth_command(mechanism, max_length=None).startswith(b"AUTH XOAUTH2 dXNlcj1")
    assert mechanism.respond(b"") == mechanism.initial_response()


def test_auth_command_length_boundary() -> None:
    """
    The initial response stays while the line with CRLF fits max_length and
    goes once it would not.
    """
    # NUL "u" NUL and 372 octets of password: 375 octets, 500 in base64, so
    # "AUTH PLAIN " + 500 + CRLF is 513 octets.
    mechanism = Plain("u", "p" * 372)
    assert len(auth_command(mechanism, max_length=None)) == 511
    assert auth_command(mechanism, max_length=513) == auth_command(mechanism, max_length=None)
    assert auth_command(mechanism, max_length=512) == b"AUTH PLAIN"
    assert auth_command(mechanism) == b"AUTH PLAIN"


# -- choosing a mechanism ------------------------------------------------------


@pytest.mark.parametrize(
    ("server", "available", "expected"),
    [
        (["LOGIN", "PLAIN", "CRAM-MD5", "SCRAM-SHA-256"], None, "SCRAM-SHA-256"),
        (["login", "plain", "cram-md5"], None, "CRAM-MD5"),
        (["LOGIN", "PLAIN"], None, "PLAIN"),
        (["LOGIN", "XOAUTH2"], None, "LOGIN"),
        (["LOGIN", "PLAIN", "XOAUTH2"], ["xoauth2"], "XOAUTH2"),
        (["PLAIN", "XOAUTH2"], ["XOAUTH2", "PLAIN"], "XOAUTH2"),
        (["SCRAM-SHA-256", "PLAIN"], ["PLAIN", "LOGIN"], "PLAIN"),
        (["GSSAPI", "SCRAM-SHA-1", "LOGIN"], None, "LOGIN"),
    ],
)
def test_choose_mechanism(server: list[str], available: list[str] | None, expected: str) -> None:
    """
    The strongest shared mechanism wins; XOAUTH2 only when asked for.
    """
    assert choose_mechanism(server, available) == expected


def test_choose_mechanism_none_in_common() -> None:
    """
    No shared mechanism raises SMTPNotSupportedError (smtplib's class too),
    naming both sides.
    """
    with pytest.raises(SMTPNotSupportedError, match="GSSAPI") as raised:
        choose_mechanism(["GSSAPI", "XOAUTH2"])
    assert isinstance(raised.value, smtplib.SMTPNotSupportedError)
    with pytest.raises(SMTPNotSupportedError, match="none"):
        choose_mechanism([], ["PLAIN"])


def test_choose_mechanism_rejects_unknown_available() -> None:
    """
    Asking for a mechanism txsmtpclient lacks is the caller's mistake.
    """
    with pytest.raises(SMTPArgumentError, match="NTLM"):
        choose_mechanism(["NTLM"], ["NTLM"])


@pytest.mark.parametrize(
    ("name", "cls"),
    [
        ("PLAIN", Plain),
        ("login", Login),
        ("Cram-MD5", CramMD5),
        ("scram-sha-256", ScramSHA256),
        ("XOAUTH2", XOAuth2),
    ],
)
def test_mechanism_for(name: str, cls: type[SASLMechanism]) -> None:
    """
    The factory builds the named mechanism, any case.
    """
    mechanism = mechanism_for(name, "user", "secret")
    assert isinstance(mechanism, cls)
    assert mechanism.name == name.upper()


def test_mechanism_for_passes_options() -> None:
    """
    authzid and the nonce source reach the mechanisms that use them.
    """
    plain = mechanism_for("PLAIN", "u", "p", authzid="boss")
    assert plain.initial_response() == b"boss\0u\0p"
    scram_mechanism = mechanism_for("SCRAM-SHA-256", "user", "pencil", nonce=lambda: RFC7677_NONCE)
    assert scram_mechanism.initial_response() == RFC7677_CLIENT_FIRST


@pytest.mark.parametrize(
    ("name", "authzid", "match"), [("NTLM", None, "unsupported"), ("LOGIN", "x", "authorization")]
)
def test_mechanism_for_rejects(name: str, authzid: str | None, match: str) -> None:
    """
    Unknown mechanisms and an authzid the mechanism cannot carry are refused.
    """
    with pytest.raises(SMTPArgumentError, match=match):
        mechanism_for(name, "u", "p", authzid=authzid)
