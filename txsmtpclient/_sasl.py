"""
The SASL framework under :mod:`txsmtpclient.auth` (RFC 4954): the
:class:`SASLMechanism` base, the base64 framing of challenges and responses,
the ``AUTH`` command line, and SASLprep (RFC 4013).

Sans-IO: nothing here imports Twisted.
"""

from __future__ import annotations

import abc
import base64
import binascii
import stringprep
import unicodedata
from collections.abc import Callable
from typing import ClassVar

from txsmtpclient.errors import SMTPArgumentError, SMTPException

__all__ = [
    "CANCEL",
    "SASLError",
    "SASLMechanism",
    "auth_command",
    "decode_challenge",
    "encode_initial_response",
    "encode_response",
    "saslprep",
    "utf8",
]

#: The line a client sends instead of a response to abandon the exchange; the
#: server answers 501 (RFC 4954 section 4).
CANCEL = b"*"

# RFC 5321 section 4.5.3.1.4: a command line, CRLF included.
_MAX_COMMAND_LINE = 512


class SASLError(SMTPException):
    """
    The server's side of a SASL exchange was wrong: a challenge that is not
    base64, a challenge the mechanism did not expect, a SCRAM nonce that does
    not extend ours, a server signature that does not match, or a SCRAM
    ``e=`` error.  The driver should cancel the exchange and fail the login.
    """


# -- base64 framing (RFC 4954 section 4) -------------------------------------


def encode_initial_response(data: bytes) -> bytes:
    """
    Encode the initial response sent as the ``AUTH`` command's argument.

    :param data: the mechanism's raw initial response.
    :returns: its base64, or ``b"="`` for an empty response, which RFC 4954
        section 4 requires so that "empty" differs from "absent".
    """
    if not data:
        return b"="
    return base64.b64encode(data)


def encode_response(data: bytes) -> bytes:
    """
    Encode a response to a 334 challenge, sent as a line on its own.

    :param data: the mechanism's raw response.
    :returns: its base64; an empty response is an empty line.
    """
    return base64.b64encode(data)


def decode_challenge(text: bytes) -> bytes:
    """
    Decode the text of a 334 reply into the raw server challenge.

    Missing ``=`` padding is tolerated; anything else that is not base64 is
    refused, as RFC 4954 section 4 has the client cancel then.

    :param text: the reply text after ``334 `` (surrounding whitespace is
        ignored).  A lone ``=`` decodes to an empty challenge.
    :returns: the decoded challenge.
    :raises SASLError: when ``text`` is not base64.
    """
    text = text.strip()
    if text == b"=":
        return b""
    padded = text + b"=" * (-len(text) % 4)
    try:
        return base64.b64decode(padded, validate=True)
    except binascii.Error:
        raise SASLError(f"server challenge is not base64: {text[:64]!r}") from None


def auth_command(mechanism: SASLMechanism, *, max_length: int | None = _MAX_COMMAND_LINE) -> bytes:
    """
    Build the ``AUTH`` command line (without CRLF) that starts an exchange.

    The initial response is included when the mechanism has one and the
    line, CRLF included, fits in ``max_length``; otherwise it is left off
    and the mechanism sends it in answer to the server's empty challenge
    (RFC 4954 section 4, RFC 4422 section 5.1).

    :param mechanism: the mechanism to start.
    :param max_length: the longest command line, CRLF included; ``None`` for
        no limit.  RFC 5321 section 4.5.3.1.4 allows 512 octets.
    :returns: ``b"AUTH NAME"`` or ``b"AUTH NAME <base64>"``.
    """
    command = b"AUTH " + mechanism.name.encode("ascii")
    initial = mechanism.initial_response()
    if initial is None:
        return command
    with_initial = command + b" " + encode_initial_response(initial)
    if max_length is not None and len(with_initial) + 2 > max_length:
        return command
    return with_initial


# -- SASLprep (RFC 4013) -----------------------------------------------------

_PROHIBITED: tuple[Callable[[str], bool], ...] = (
    stringprep.in_table_c12,  # non-ASCII space
    stringprep.in_table_c21_c22,  # control characters
    stringprep.in_table_c3,  # private use
    stringprep.in_table_c4,  # non-character code points
    stringprep.in_table_c5,  # surrogates
    stringprep.in_table_c6,  # inappropriate for plain text
    stringprep.in_table_c7,  # inappropriate for canonical representation
    stringprep.in_table_c8,  # change display properties / deprecated
    stringprep.in_table_c9,  # tagging characters
)


def saslprep(text: str, *, allow_unassigned: bool = False) -> str:
    """
    Prepare a user name or password with the SASLprep profile of stringprep
    (RFC 4013, RFC 3454).

    The error messages name the rule broken and the position, never the
    character, since the text is usually a password.

    :param text: the string to prepare.
    :param allow_unassigned: accept code points unassigned in Unicode 3.2
        ("queries"); by default they are refused, as RFC 5802 section 2.2
        treats the SCRAM password as a "stored string".
    :returns: the prepared string.
    :raises SMTPArgumentError: when ``text`` holds a prohibited character,
        breaks the bidirectional rules, or (by default) holds an unassigned
        code point.
    """
    if text.isascii() and text.isprintable():
        # Printable ASCII maps to itself and is never prohibited.
        return text
    # RFC 4013 section 2.1 (mapping) and 2.2 (NFKC).
    mapped = "".join(
        " " if stringprep.in_table_c12(c) else c for c in text if not stringprep.in_table_b1(c)
    )
    prepared = unicodedata.ucd_3_2_0.normalize("NFKC", mapped)
    for position, char in enumerate(prepared):
        if any(table(char) for table in _PROHIBITED):
            raise SMTPArgumentError(f"SASLprep: prohibited character at position {position}")
        if not allow_unassigned and stringprep.in_table_a1(char):
            raise SMTPArgumentError(f"SASLprep: unassigned code point at position {position}")
    # RFC 3454 section 6: right-to-left text must not mix in left-to-right
    # characters and must start and end with a right-to-left character.
    if any(stringprep.in_table_d1(c) for c in prepared):
        if any(stringprep.in_table_d2(c) for c in prepared):
            raise SMTPArgumentError("SASLprep: mixes right-to-left and left-to-right text")
        if not (stringprep.in_table_d1(prepared[0]) and stringprep.in_table_d1(prepared[-1])):
            raise SMTPArgumentError("SASLprep: right-to-left text must start and end with it")
    return prepared


# -- mechanisms --------------------------------------------------------------


class SASLMechanism(abc.ABC):
    """
    One SASL mechanism's client side, as challenge -> response steps.

    An object serves one exchange.  Every mechanism accepts an empty first
    challenge in place of sending its initial response with ``AUTH``, as
    RFC 4422 section 5.1 allows, and answers it with that initial response.

    :cvar name: the mechanism's registered name, as in ``AUTH`` and EHLO.
    """

    name: ClassVar[str]

    def initial_response(self) -> bytes | None:
        """
        The raw initial response to send with the ``AUTH`` command.

        Calling it does not advance the exchange; :func:`auth_command` may
        still leave it off.

        :returns: the bytes to base64-encode, or ``None`` when the mechanism
            waits for the server's first challenge.
        """
        return None

    @abc.abstractmethod
    def respond(self, challenge: bytes) -> bytes:
        """
        Answer one server challenge (the decoded text of a 334 reply).

        :param challenge: the decoded challenge.
        :returns: the raw response, to base64-encode and send.
        :raises SASLError: when the challenge is not what the mechanism
            expects at this step.
        """

    def verify_success(self, data: bytes = b"") -> None:
        """
        Check the server's part of a successful exchange on its 235 reply.

        Mechanisms that do not authenticate the server accept anything.

        :param data: the decoded additional data that came with success
            (RFC 4422 section 5), ``b""`` when there was none.
        :raises SASLError: when the server failed to prove itself.
        """
        return None


def utf8(value: str, what: str) -> bytes:
    if "\0" in value:
        raise SMTPArgumentError(f"{what} must not contain NUL")
    return value.encode("utf-8")
