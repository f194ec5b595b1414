"""
Command bytes: argument checks, address quoting, ESMTP parameters, xtext,
and the DATA encoder (CRLF line endings and dot-stuffing, chunk by chunk).

Sans-IO: values in, bytes or exceptions out; nothing here imports Twisted.
"""

from __future__ import annotations

import email.utils
import re
from collections.abc import Iterable

from txsmtpclient import _checks
from txsmtpclient._checks import ArgumentError
from txsmtpclient.errors import SMTPArgumentError

__all__ = [
    "CRLF",
    "DataEncoder",
    "check_argument",
    "encode_command",
    "encode_message",
    "extension_for_option",
    "plain_addresses",
    "quote_address",
    "quote_checked_address",
    "xtext_encode",
]

CRLF = b"\r\n"


def check_argument(value: str, what: str) -> str:
    """
    :func:`txsmtpclient._checks.check_argument` (``value`` unchanged, or
    ``TypeError`` for a non-``str``) raising the client's error.

    :raises SMTPArgumentError: if ``value`` holds a control character.
    """
    try:
        return _checks.check_argument(value, what)
    except ArgumentError as e:
        raise SMTPArgumentError(*e.args) from None


# local@domain with nothing parseaddr would change: no spaces, quotes,
# comments, angle brackets, commas or group syntax.
_PLAIN_ADDRESS = re.compile(r"[^\s<>()\[\]\\,;:\"@]+@[^\s<>()\[\]\\,;:\"@]+")


# What is left of a list of plain addresses joined with spaces once every
# other byte is deleted: "@ @ ... @".  Anything quote_checked_address would
# treat otherwise (a control character, a space, a bracket, a quote, a comma,
# a missing or second "@") survives the deletion and spoils the pattern.
_SKELETON_BYTES = b' @<>()[]\\,;:"' + bytes(range(0x20)) + b"\x7f"
_NOT_SKELETON = bytes(b for b in range(256) if b not in _SKELETON_BYTES)


def plain_addresses(addresses: tuple[object, ...]) -> bool:
    """
    Whether every address is a ``str`` of printable ASCII that
    :func:`check_argument` accepts and that :func:`quote_checked_address`
    would quote as ``"<" + address + ">"`` (a plain ``local@domain``).

    A thousand recipients are checked with a few C-level passes over them
    all, instead of a thousand regular-expression calls; when this says
    ``False`` the caller checks them one by one, which names the culprit.
    """
    try:
        joined = " ".join(addresses)  # type: ignore[arg-type]
    except TypeError:
        return False
    if not addresses or not joined.isascii():
        return False
    raw = joined.encode("ascii")
    return (
        raw.translate(None, _NOT_SKELETON) == b"@ " * (len(addresses) - 1) + b"@"
        # Each side of each "@" is non-empty.
        and b" @" not in raw
        and b"@ " not in raw
        and raw[0] != 0x40
        and raw[-1] != 0x40
    )


def quote_address(address: str) -> str:
    """
    Quote an address for ``MAIL FROM:`` or ``RCPT TO:``, as smtplib does:
    ``"Name <a@b>"`` and ``"a@b"`` both become ``"<a@b>"``; ``""`` and
    ``"<>"`` become the null reverse-path ``"<>"``.

    :raises TypeError: if ``address`` is not a ``str``.
    :raises SMTPArgumentError: if it holds a control character.
    """
    return quote_checked_address(check_argument(address, "address"))


def quote_checked_address(address: str) -> str:
    """
    :func:`quote_address` for an address already passed through
    :func:`check_argument` (a transaction's recipients are checked once,
    when ``sendmail`` is called, not again for every command built).
    """
    if _PLAIN_ADDRESS.fullmatch(address):
        # The common case, without email.utils' full RFC 5322 parser: it
        # costs more than the rest of building a command.
        return f"<{address}>"
    stripped = address.strip()
    if stripped in ("", "<>"):
        return "<>"
    _name, parsed = email.utils.parseaddr(stripped)
    if not parsed:
        # parseaddr gave up (unusual but legal local parts): send it as given.
        parsed = (
            stripped[1:-1] if stripped.startswith("<") and stripped.endswith(">") else stripped
        )
    return f"<{parsed}>"


def encode_command(verb: str, argument: str = "", *, utf8: bool = False) -> bytes:
    """
    Build one command line, CRLF included.

    :param verb: the command (``"MAIL"``, ``"XFOO"``).
    :param argument: appended after one space when not empty.
    :param utf8: allow non-ASCII characters, encoded as UTF-8 (the SMTPUTF8
        extension, RFC 6531); without it they are refused.
    :raises SMTPArgumentError: for control characters anywhere, or non-ASCII
        characters without ``utf8``.
    """
    check_argument(verb, "command")
    check_argument(argument, "command argument")
    line = f"{verb} {argument}" if argument else verb
    if not utf8 and not line.isascii():
        raise SMTPArgumentError(
            f"non-ASCII characters in {line!r} need the server's SMTPUTF8 extension"
        )
    return line.encode("utf-8") + CRLF


# ESMTP MAIL/RCPT parameters and the EHLO keyword that must be advertised
# before each may be sent (RFC 5321 section 2.2.1; each extension's RFC).
_OPTION_EXTENSIONS = {
    "SIZE": "size",
    "BODY": "8bitmime",
    "SMTPUTF8": "smtputf8",
    "RET": "dsn",
    "ENVID": "dsn",
    "NOTIFY": "dsn",
    "ORCPT": "dsn",
    "AUTH": "auth",
    "BY": "deliverby",
    "MT-PRIORITY": "mt-priority",
    "REQUIRETLS": "requiretls",
    "HOLDFOR": "futurerelease",
    "HOLDUNTIL": "futurerelease",
}


def extension_for_option(option: str) -> str:
    """
    The EHLO keyword (lower case) a server must advertise before the
    MAIL/RCPT parameter ``option`` (``"BODY=8BITMIME"``, ``"SMTPUTF8"``) may
    be sent; unknown parameters are taken to be named after their extension.
    """
    keyword = option.split("=", 1)[0].strip().upper()
    if keyword == "BODY" and option.upper().endswith("=BINARYMIME"):
        return "binarymime"
    return _OPTION_EXTENSIONS.get(keyword, keyword.lower())


def xtext_encode(value: str) -> str:
    """
    Encode a value as RFC 3461 section 4 xtext: ``+``, ``=``, controls,
    space and non-ASCII become ``+XX`` (UTF-8 octets in upper-case hex).
    """
    out = []
    for byte in value.encode("utf-8"):
        if 33 <= byte <= 126 and byte not in (0x2B, 0x3D):
            out.append(chr(byte))
        else:
            out.append(f"+{byte:02X}")
    return "".join(out)


def check_options(options: Iterable[str], what: str) -> tuple[str, ...]:
    """
    Check a sequence of ESMTP parameters given by the caller (the shared
    check, see :func:`txsmtpclient._checks.check_options`).

    :raises TypeError: if ``options`` is a bare string or holds non-strings.
    :raises SMTPArgumentError: if one holds a control character or a space.
    """
    try:
        return _checks.check_options(options, what)
    except ArgumentError as e:
        raise SMTPArgumentError(*e.args) from None


#: Every byte but CR and LF, for ``bytes.translate(None, delete)``.
#: Translation tables that turn a chunk into a mask of its CRs, or of its LFs
#: (1 where the byte is one, 0 elsewhere), each in one C-level pass.
_CR_MASK = bytes(1 if b == 0x0D else 0 for b in range(256))
_LF_MASK = bytes(1 if b == 0x0A else 0 for b in range(256))


class DataEncoder:
    """
    Encodes a message body for the ``DATA`` command, chunk by chunk.

    Line endings (CRLF, LF, bare CR) become CRLF; a line starting with "."
    gets another "." (RFC 5321 section 4.5.2); :meth:`finish` adds the final
    ``CRLF.CRLF``.  State is carried across chunks, so a "." or a CR/LF pair
    split at any chunk boundary is handled the same as in one piece.  Each
    chunk costs a few bulk ``bytes`` operations, no per-byte loop in Python.
    """

    __slots__ = ("_at_line_start", "_held_cr", "dot_stuff")

    def __init__(self, dot_stuff: bool = True) -> None:
        #: False for BDAT (RFC 3030): line endings only, no dots, no end marker.
        self.dot_stuff = dot_stuff
        self._at_line_start = True
        self._held_cr = False

    def encode(self, chunk: bytes) -> bytes:
        """
        Encode the next chunk of the message.

        :returns: the bytes to send for it (possibly empty: a trailing CR is
            held back until the next chunk shows whether an LF follows).
        """
        if self._held_cr:
            chunk = b"\r" + chunk
            self._held_cr = False
        if chunk.endswith(b"\r"):
            self._held_cr = True
            chunk = chunk[:-1]
        if not chunk:
            return b""
        if b"\r" not in chunk:
            # LF text (or none at all): one search (memchr) and one replace.
            chunk = chunk.replace(b"\n", CRLF)
        elif (
            chunk[0] == 0x0A
            or chunk[-1] == 0x0D
            # CRLF throughout iff the CRs, moved one byte on, are exactly the
            # LFs: two table passes and a compare, where counting the CRLF
            # pairs took a slower two-byte search.
            or chunk.translate(_CR_MASK)[:-1] != chunk[1:].translate(_LF_MASK)
        ):
            chunk = chunk.replace(CRLF, b"\n").replace(b"\r", b"\n").replace(b"\n", CRLF)
        # else: already CRLF throughout (the usual case): rewriting it would
        # copy it twice.
        if self.dot_stuff:
            # Every LF now ends a CRLF, and the longer pattern is found faster.
            # split and join copy the chunk once; replace also counts first.
            lines = chunk.split(b"\r\n.")
            if len(lines) > 1:
                chunk = b"\r\n..".join(lines)
            if self._at_line_start and chunk[0] == 0x2E:
                chunk = b"." + chunk
        self._at_line_start = chunk[-1] == 0x0A
        return chunk

    def finish(self) -> bytes:
        """
        End the message.

        :returns: the last bytes to send: a held CR's line ending, a CRLF if
            the message did not end with one, and ``.CRLF``.
        """
        out = b""
        if self._held_cr:
            self._held_cr = False
            out = CRLF
            self._at_line_start = True
        if not self.dot_stuff:
            return out
        if not self._at_line_start:
            out += CRLF
        out += b"." + CRLF
        self._at_line_start = True
        return out


def encode_message(message: bytes) -> bytes:
    """
    Encode a whole message for ``DATA``, final ``CRLF.CRLF`` included.
    """
    encoder = DataEncoder()
    return encoder.encode(message) + encoder.finish()


def message_bytes(message: str | bytes | bytearray | memoryview) -> bytes:
    """
    Turn a caller's message into bytes.

    :raises TypeError: if it is neither ``str`` nor ``bytes``-like.
    :raises SMTPArgumentError: if a ``str`` message holds non-ASCII
        characters (as smtplib, which cannot guess their encoding).
    """
    if isinstance(message, str):
        if not message.isascii():
            position = next(i for i, c in enumerate(message) if ord(c) > 127)
            raise SMTPArgumentError(
                f"a str message must be ASCII; {message[position]!r} at offset {position} "
                "is not: encode the message to bytes yourself"
            )
        return message.encode("ascii")
    if isinstance(message, (bytes, bytearray, memoryview)):
        return bytes(message)
    raise TypeError(f"message must be str or bytes, not {type(message).__name__}")
