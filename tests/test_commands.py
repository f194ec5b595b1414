"""
Tests for :mod:`txsmtpclient.commands`: argument checks, address quoting,
xtext, command lines, and the DATA encoder, whose output must not depend on
where the message is cut into chunks.
"""

from __future__ import annotations

import re
import smtplib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from txsmtpclient.commands import (
    DataEncoder,
    check_argument,
    check_options,
    encode_command,
    encode_message,
    extension_for_option,
    message_bytes,
    quote_address,
    xtext_encode,
)
from txsmtpclient.errors import SMTPArgumentError

CONTROLS = [chr(c) for c in range(0x20)] + ["\x7f"]


# -- argument checks -------------------------------------------------------------


@pytest.mark.parametrize("control", CONTROLS, ids=[f"{ord(c):#04x}" for c in CONTROLS])
def test_every_control_character_refused(control: str) -> None:
    """Every C0 control and DEL is refused, at the start, middle and end."""
    for value in (control + "a@b", "a" + control + "@b", "a@b" + control):
        with pytest.raises(SMTPArgumentError, match="control character"):
            check_argument(value, "address")


@pytest.mark.parametrize("value", ["a@b", "", "josé@exemple.fr", "~!#$%&'*+-/=?^_`{|}", " "])
def test_printable_arguments_pass(value: str) -> None:
    """Printable text (non-ASCII included: SMTPUTF8 is decided later) passes unchanged."""
    assert check_argument(value, "address") is value


@pytest.mark.parametrize("value", [b"a@b", 1, None, ["a@b"]])
def test_argument_must_be_str(value: object) -> None:
    """Anything but str is a TypeError naming the argument and the type given."""
    with pytest.raises(TypeError, match=rf"address must be str, not {type(value).__name__}"):
        check_argument(value, "address")  # type: ignore[arg-type]


def test_error_names_offset_and_character() -> None:
    """The error says which character and where, so the caller can find it."""
    with pytest.raises(SMTPArgumentError, match=r"'\\r' at offset 3"):
        check_argument("a@b\r\nRCPT TO:<x@y>", "recipient address")


def test_argument_error_is_value_error() -> None:
    """SMTPArgumentError is both an SMTPException and a ValueError."""
    with pytest.raises(ValueError):
        check_argument("\n", "x")
    with pytest.raises(smtplib.SMTPException):
        check_argument("\n", "x")


# -- addresses -------------------------------------------------------------------

QUOTE_CASES = [
    ("a@b", "<a@b>"),
    ("<a@b>", "<a@b>"),
    ("Name <a@b>", "<a@b>"),
    ('"Last, First" <a@b>', "<a@b>"),
    ("  a@b  ", "<a@b>"),
    ("", "<>"),
    ("<>", "<>"),
    ("  <>  ", "<>"),
    ('"quoted local"@b', '<"quoted local"@b>'),
    ("josé@exemple.fr", "<josé@exemple.fr>"),
    ("postmaster", "<postmaster>"),
    ("<a@b> NOTIFY=NEVER", "<a@b>"),
    ("x <a@b> SIZE=1", "<a@b>"),
]


@pytest.mark.parametrize(("address", "quoted"), QUOTE_CASES)
def test_quote_address(address: str, quoted: str) -> None:
    """Addresses are reduced to one angle-bracketed path, as smtplib.quoteaddr."""
    assert quote_address(address) == quoted
    if address != "  <>  ":  # smtplib sends that one as it is, spaces and all
        assert smtplib.quoteaddr(address) == quoted


@pytest.mark.parametrize("address", ["a@b\r\nDATA", "a@b\x00", "<a@b>\n"])
def test_quote_address_refuses_controls(address: str) -> None:
    """An address cannot smuggle a second command."""
    with pytest.raises(SMTPArgumentError):
        quote_address(address)


# -- xtext ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "encoded"),
    [
        ("", ""),
        ("abc", "abc"),
        ("a+b", "a+2Bb"),
        ("a=b", "a+3Db"),
        ("a b", "a+20b"),
        ("!~", "!~"),
        ("\t", "+09"),
        ("\x7f", "+7F"),
        ("é", "+C3+A9"),
        ("<a@b>", "<a@b>"),
        ("+2B", "+2B2B"),
    ],
)
def test_xtext_encode(value: str, encoded: str) -> None:
    """RFC 3461 section 4: "+", "=", controls, space and non-ASCII become +XX."""
    assert xtext_encode(value) == encoded


def _xtext_decode(value: str) -> str:
    return bytes(_xtext_octets(value)).decode("utf-8")


def _xtext_octets(value: str) -> list[int]:
    out: list[int] = []
    i = 0
    while i < len(value):
        if value[i] == "+":
            out.append(int(value[i + 1 : i + 3], 16))
            i += 3
        else:
            out.append(ord(value[i]))
            i += 1
    return out


@given(st.text())
def test_xtext_round_trip(value: str) -> None:
    """Encoded xtext is printable ASCII without "=" and decodes to the input."""
    encoded = xtext_encode(value)
    assert all(33 <= ord(c) <= 126 and c != "=" for c in encoded)
    assert re.fullmatch(r"(?:[^+]|\+[0-9A-F]{2})*", encoded)
    assert _xtext_decode(encoded) == value


# -- command lines ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("verb", "argument", "utf8", "line"),
    [
        ("NOOP", "", False, b"NOOP\r\n"),
        ("MAIL", "FROM:<a@b>", False, b"MAIL FROM:<a@b>\r\n"),
        ("MAIL", "FROM:<a@b> SIZE=10", False, b"MAIL FROM:<a@b> SIZE=10\r\n"),
        ("XFOO", "bar baz", False, b"XFOO bar baz\r\n"),
        ("RCPT", "TO:<josé@exemple.fr>", True, "RCPT TO:<josé@exemple.fr>\r\n".encode()),
        ("VRFY", "ascii", True, b"VRFY ascii\r\n"),
    ],
)
def test_encode_command(verb: str, argument: str, utf8: bool, line: bytes) -> None:
    """A verb, one space, the argument and CRLF; UTF-8 only when allowed."""
    assert encode_command(verb, argument, utf8=utf8) == line


def test_encode_command_refuses_non_ascii_without_utf8() -> None:
    """Non-ASCII needs SMTPUTF8, and the error says so."""
    with pytest.raises(SMTPArgumentError, match="SMTPUTF8"):
        encode_command("RCPT", "TO:<josé@exemple.fr>")


@pytest.mark.parametrize(
    ("verb", "argument"),
    [
        ("NOOP\r\nQUIT", ""),
        ("MAIL", "FROM:<a@b>\r\nRCPT TO:<c@d>"),
        ("HELO", "x\x00"),
        ("HELO", "x\x7f"),
        ("EHLO", "x\ty"),
    ],
)
def test_encode_command_refuses_controls(verb: str, argument: str) -> None:
    """CR, LF, NUL, DEL or TAB in the verb or the argument: refused."""
    with pytest.raises(SMTPArgumentError):
        encode_command(verb, argument, utf8=True)


@pytest.mark.parametrize(
    ("option", "extension"),
    [
        ("SIZE=100", "size"),
        ("BODY=8BITMIME", "8bitmime"),
        ("body=8bitmime", "8bitmime"),
        ("BODY=BINARYMIME", "binarymime"),
        ("SMTPUTF8", "smtputf8"),
        ("RET=HDRS", "dsn"),
        ("ENVID=x", "dsn"),
        ("NOTIFY=SUCCESS,FAILURE", "dsn"),
        ("ORCPT=rfc822;a@b", "dsn"),
        ("AUTH=<>", "auth"),
        ("REQUIRETLS", "requiretls"),
        ("XFOO=1", "xfoo"),
    ],
)
def test_extension_for_option(option: str, extension: str) -> None:
    """Each MAIL/RCPT parameter maps to the EHLO keyword that allows it."""
    assert extension_for_option(option) == extension


def test_check_options() -> None:
    """Options are a sequence of single words; a bare string is a mistake."""
    assert check_options(["SIZE=1", "BODY=8BITMIME"], "mail option") == (
        "SIZE=1",
        "BODY=8BITMIME",
    )
    assert check_options((), "mail option") == ()
    with pytest.raises(TypeError, match="single str"):
        check_options("SMTPUTF8", "mail option")
    with pytest.raises(TypeError):
        check_options([b"SIZE=1"], "mail option")  # type: ignore[list-item]
    for bad in (["A B"], [""], ["SIZE=1\r\nRSET"]):
        with pytest.raises(SMTPArgumentError):
            check_options(bad, "mail option")


# -- messages -------------------------------------------------------------------------


def test_message_bytes() -> None:
    """ASCII str and bytes-likes become bytes; other things are refused."""
    assert message_bytes("Subject: x\n\nhi") == b"Subject: x\n\nhi"
    assert message_bytes(b"\xff") == b"\xff"
    assert message_bytes(bytearray(b"ab")) == b"ab"
    assert message_bytes(memoryview(b"ab")) == b"ab"
    with pytest.raises(SMTPArgumentError, match=r"'é' at offset 9"):
        message_bytes("Subject: é")
    with pytest.raises(TypeError, match="not int"):
        message_bytes(1)  # type: ignore[arg-type]


ENCODE_CASES = [
    (b"", b".\r\n"),
    (b"a", b"a\r\n.\r\n"),
    (b"a\r\n", b"a\r\n.\r\n"),
    (b"a\n", b"a\r\n.\r\n"),
    (b"a\r", b"a\r\n.\r\n"),
    (b"a\nb", b"a\r\nb\r\n.\r\n"),
    (b"a\rb\r\nc\nd", b"a\r\nb\r\nc\r\nd\r\n.\r\n"),
    (b"\r\n", b"\r\n.\r\n"),
    (b"\n", b"\r\n.\r\n"),
    (b"\r", b"\r\n.\r\n"),
    (b"\n\r", b"\r\n\r\n.\r\n"),
    (b"\r\r\n", b"\r\n\r\n.\r\n"),
    (b"\n\n", b"\r\n\r\n.\r\n"),
    (b".", b"..\r\n.\r\n"),
    (b".\r\n", b"..\r\n.\r\n"),
    (b"..", b"...\r\n.\r\n"),
    (b".a\n.b\r\n.c\r.d", b"..a\r\n..b\r\n..c\r\n..d\r\n.\r\n"),
    (b"a\n.\nb", b"a\r\n..\r\nb\r\n.\r\n"),
    (b"a\r\n.\r\n", b"a\r\n..\r\n.\r\n"),
    (b"a.b\n a\n", b"a.b\r\n a\r\n.\r\n"),
    (b"\xff\x00\n", b"\xff\x00\r\n.\r\n"),
]


@pytest.mark.parametrize(("message", "encoded"), ENCODE_CASES)
def test_encode_message(message: bytes, encoded: bytes) -> None:
    """CRLF/LF/bare CR become CRLF, leading dots doubled, CRLF.CRLF added."""
    assert encode_message(message) == encoded
    assert _reference(message) == encoded


@pytest.mark.parametrize(("message", "encoded"), ENCODE_CASES)
def test_encode_message_bytewise(message: bytes, encoded: bytes) -> None:
    """The same bytes come out when the message is fed one byte at a time."""
    assert _chunked(message, 1) == encoded


def _reference(message: bytes) -> bytes:
    """A slow, obviously correct encoder: split into lines, stuff, rejoin."""
    lines = re.sub(rb"\r\n|\r|\n", b"\n", message).split(b"\n")
    last = lines.pop()
    if last:
        lines.append(last)
    return b"".join((b"." if line[:1] == b"." else b"") + line + b"\r\n" for line in lines) + (
        b".\r\n"
    )


def _chunked(message: bytes, size: int) -> bytes:
    encoder = DataEncoder()
    out = [encoder.encode(message[i : i + size]) for i in range(0, len(message), size)]
    return b"".join(out) + encoder.finish()


# Each pattern is placed with its start at every offset from 4 bytes before
# to 4 bytes after a chunk boundary.
PATTERNS = [
    b"\n.\n",
    b"\r\n.\r\n",
    b"\r.\r",
    b"\n..\n",
    b"\r\n..\r\n",
    b"\r",
    b"\n",
    b"\r\n",
    b".",
]
CHUNK_SIZES = [1, 2, 3, 5, 64, 16 * 1024]


@pytest.mark.parametrize("size", CHUNK_SIZES)
@pytest.mark.parametrize("pattern", PATTERNS)
def test_chunk_boundaries(pattern: bytes, size: int) -> None:
    """
    A lone "." line, a ".." line, CR, LF or CRLF at and around every chunk
    boundary encodes exactly as the whole message in one piece.
    """
    checked = 0
    for boundary in (size, 2 * size, 3 * size):
        for shift in range(-4, 5):
            start = boundary + shift
            if start < 0:
                continue
            # Filler lines so that the pattern sits mid-message and a "."
            # after the pattern is a line start too.
            head = (b"abcdefg\n" * (start // 8 + 1))[:start]
            message = head + pattern + b"tail" + pattern + b".x\n"
            whole = encode_message(message)
            assert whole == _reference(message), (pattern, start)
            assert _chunked(message, size) == whole, (pattern, size, start)
            checked += 1
    assert checked >= 20


def test_lone_dot_starting_a_16k_chunk() -> None:
    """
    Twisted's own client sent a "." that began a 16 KiB chunk unstuffed,
    ending DATA early; here it is doubled.
    """
    size = 16 * 1024
    message = b"x" * (size - 1) + b"\n" + b".\nQUIT\n"
    encoder = DataEncoder()
    first = encoder.encode(message[:size])
    second = encoder.encode(message[size:])
    assert first.endswith(b"x\r\n")
    assert second == b"..\r\nQUIT\r\n"
    assert encoder.finish() == b".\r\n"


def test_held_cr_across_empty_chunks() -> None:
    """A trailing CR is held back through empty chunks until LF shows up."""
    encoder = DataEncoder()
    assert encoder.encode(b"a\r") == b"a"
    assert encoder.encode(b"") == b""
    assert encoder.encode(b"\r") == b"\r\n"  # the held CR was bare
    assert encoder.encode(b"\n.") == b"\r\n.."
    assert encoder.finish() == b"\r\n.\r\n"


@settings(max_examples=300)
@given(
    st.lists(st.sampled_from([b".", b"\r", b"\n", b"a", b"\r\n", b".."]), max_size=60).map(
        b"".join
    ),
    st.lists(st.integers(min_value=0, max_value=80), max_size=8),
)
def test_random_splits(message: bytes, cuts: list[int]) -> None:
    """Any split of any message of dots, CRs and LFs encodes as the reference."""
    points = sorted({min(c, len(message)) for c in cuts})
    pieces = [message[a:b] for a, b in zip([0, *points], [*points, len(message)], strict=True)]
    encoder = DataEncoder()
    out = b"".join(encoder.encode(p) for p in pieces) + encoder.finish()
    assert out == _reference(message)
    # The output never holds a premature end of data, nor a bare CR or LF.
    body = out[: -len(b".\r\n")]
    assert b"\r\n.\r\n" not in b"\r\n" + body
    assert re.search(rb"\r(?!\n)|(?<!\r)\n", out) is None
