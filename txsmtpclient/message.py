"""
From :mod:`email.message` objects to what is sent, as smtplib's
``send_message`` does it: the envelope sender and recipients read from the
headers (RFC 5322 section 3.6.6's Resent-* rules), the message flattened with
CRLF line endings and Bcc / Resent-Bcc left out, and the checks that decide
``SMTPUTF8`` (RFC 6531) and ``BODY=8BITMIME`` (RFC 6152).

Sans-IO: messages in, bytes and addresses out; nothing here imports Twisted.
"""

from __future__ import annotations

import copy
import email.generator
import email.policy
import email.utils
import io
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from email.message import Message

from txsmtpclient.errors import SMTPArgumentError

__all__ = [
    "PreparedMessage",
    "envelope_from_message",
    "flatten_message",
    "has_8bit",
    "header_block",
    "needs_smtputf8",
    "prepare_message",
]


def header_block(message: bytes) -> bytes:
    """
    A message's header section with its last line end, without the blank
    line and body after it (the whole message when it has no body), so that
    a header parser never decodes a body that may be megabytes long.
    """
    end = message.find(b"\r\n\r\n")
    if end >= 0:
        return message[: end + 2]
    end = message.find(b"\n\n")
    return message if end < 0 else message[: end + 1]


def _resent_prefix(msg: Message) -> str:
    # RFC 5322 section 3.6.6: Resent-Date is mandatory in every resent block,
    # so it counts the blocks.  With more than one there is no reliable way
    # to tell which is the newest, so like smtplib we refuse to guess.
    resent = msg.get_all("Resent-Date")
    if resent is None:
        return ""
    if len(resent) == 1:
        return "Resent-"
    raise SMTPArgumentError("message has more than one 'Resent-' header block")


def envelope_from_message(
    msg: Message,
    from_addr: str | None = None,
    to_addrs: str | Sequence[str] | None = None,
) -> tuple[str, list[str]]:
    """
    Find the envelope sender and recipients of a message, as smtplib's
    ``send_message`` does.

    When the message was resent (one ``Resent-Date`` header), the
    ``Resent-`` fields are used instead of the originals.  The sender is the
    first address of ``Sender`` if present (RFC 5322 section 3.6.2), else of
    ``From``; the recipients are every address in ``To``, ``Bcc`` and ``Cc``
    (smtplib's order), with empty entries such as a bare group
    (``undisclosed-recipients:;``) dropped.

    :param msg: the message (``Message`` or ``EmailMessage``, any policy).
    :param from_addr: the envelope sender, overriding the headers; ``""`` is
        the null reverse-path.
    :param to_addrs: the recipients, overriding the headers; a ``str`` is one
        recipient.
    :returns: ``(sender, recipients)``.
    :raises SMTPArgumentError: (a :class:`ValueError`) when the message has
        more than one Resent- block, or no sender can be found in it.
    """
    prefix = _resent_prefix(msg)
    if from_addr is None:
        field = prefix + "Sender" if prefix + "Sender" in msg else prefix + "From"
        value = msg[field]
        addresses = email.utils.getaddresses([str(value)]) if value is not None else []
        if not addresses:
            raise SMTPArgumentError(f"no from_addr given and the message has no {field} address")
        from_addr = addresses[0][1]
    if to_addrs is None:
        fields = [
            str(value)
            for value in (msg[prefix + "To"], msg[prefix + "Bcc"], msg[prefix + "Cc"])
            if value is not None
        ]
        recipients = [address for _, address in email.utils.getaddresses(fields) if address]
    elif isinstance(to_addrs, str):
        recipients = [to_addrs]
    else:
        recipients = list(to_addrs)
    return from_addr, recipients


def _policy(msg: Message, smtputf8: bool) -> email.policy.Policy:
    policy = msg.policy
    if not smtputf8:
        return policy
    if isinstance(policy, email.policy.EmailPolicy):
        # RFC 6532: with SMTPUTF8, headers carry raw UTF-8 rather than
        # RFC 2047 encoded words.
        return policy.clone(utf8=True)
    # Compat32 has no utf8 switch (smtplib fails here with TypeError).  Its
    # RFC 2047 encoding would wrap whole addresses in encoded words, which
    # RFC 2047 section 5 forbids, so use the SMTPUTF8 policy while keeping
    # the message's "From " escaping.
    return email.policy.SMTPUTF8.clone(mangle_from_=policy.mangle_from_)


def flatten_message(msg: Message, *, smtputf8: bool) -> bytes:
    """
    Turn a message into the bytes sent after ``DATA``, without ``Bcc`` and
    ``Resent-Bcc`` and with CRLF line endings.

    The caller's message is not changed.  It is generated with
    :class:`email.generator.BytesGenerator` under the message's own policy,
    cloned with ``utf8=True`` for SMTPUTF8 as smtplib does (a compat32
    message gets :data:`email.policy.SMTPUTF8` there instead, where smtplib
    raises ``TypeError``).  One difference from smtplib: on the ASCII path
    smtplib escapes body lines starting with ``From `` whatever the policy;
    here the policy's ``mangle_from_`` decides (compat32 escapes, the
    ``email.policy.default`` family does not).

    :param msg: the message.
    :param smtputf8: whether the message goes out under SMTPUTF8 (see
        :func:`needs_smtputf8`): headers then carry raw UTF-8.
    :returns: the message bytes, not yet dot-stuffed.
    """
    # A shallow copy suffices: deleting a header rebinds the copy's header
    # list rather than changing the shared one.
    stripped = copy.copy(msg)
    del stripped["Bcc"]
    del stripped["Resent-Bcc"]
    with io.BytesIO() as buffer:
        generator = email.generator.BytesGenerator(buffer, policy=_policy(msg, smtputf8))
        generator.flatten(stripped, linesep="\r\n")
        return buffer.getvalue()


def needs_smtputf8(sender: str, recipients: Iterable[str]) -> bool:
    """
    Whether any envelope address is non-ASCII, so that the transaction needs
    the SMTPUTF8 extension (RFC 6531 section 3.4).

    :param sender: the envelope sender.
    :param recipients: the envelope recipients.
    """
    return not (sender.isascii() and all(address.isascii() for address in recipients))


def has_8bit(data: bytes) -> bool:
    """
    Whether message data holds a byte of 0x80 or more, so that it needs
    ``BODY=8BITMIME`` (RFC 6152) and must not go to a server without it.

    :param data: the message bytes.
    """
    return not data.isascii()


@dataclass(frozen=True, slots=True)
class PreparedMessage:
    """
    A message ready for a mail transaction.

    :ivar sender: the envelope sender.
    :ivar recipients: the envelope recipients.
    :ivar data: the flattened message (Bcc stripped, CRLF line endings).
    :ivar smtputf8: an address is non-ASCII: the transaction needs SMTPUTF8.
    :ivar eight_bit: the data has 8-bit bytes: it needs 8BITMIME.
    """

    sender: str
    recipients: tuple[str, ...]
    data: bytes
    smtputf8: bool
    eight_bit: bool

    @property
    def mail_options(self) -> tuple[str, ...]:
        """
        The ``MAIL`` parameters the message needs: ``SMTPUTF8`` and
        ``BODY=8BITMIME`` for a UTF-8 address (as smtplib adds them; RFC 6531
        section 3.4 lets SMTPUTF8 imply 8-bit data), ``BODY=8BITMIME`` alone
        for 8-bit data.  The client checks that the server offers them.
        """
        if self.smtputf8:
            return ("SMTPUTF8", "BODY=8BITMIME")
        if self.eight_bit:
            return ("BODY=8BITMIME",)
        return ()

    def options_with(self, mail_options: Sequence[str]) -> tuple[str, ...]:
        """
        The caller's MAIL parameters, then those the message needs that the
        caller did not already give (compared case-insensitively).
        """
        given = {o.upper() for o in mail_options}
        return tuple(mail_options) + tuple(o for o in self.mail_options if o.upper() not in given)


def prepare_message(
    msg: Message,
    from_addr: str | None = None,
    to_addrs: str | Sequence[str] | None = None,
) -> PreparedMessage:
    """
    Everything ``send_message`` needs from a message: the envelope
    (:func:`envelope_from_message`), the data (:func:`flatten_message`,
    under SMTPUTF8 when an address needs it) and what the data requires.

    :param msg: the message.
    :param from_addr: the envelope sender, overriding the headers.
    :param to_addrs: the recipients, overriding the headers.
    :returns: the prepared message.
    :raises SMTPArgumentError: as :func:`envelope_from_message`.
    """
    sender, recipients = envelope_from_message(msg, from_addr, to_addrs)
    smtputf8 = needs_smtputf8(sender, recipients)
    data = flatten_message(msg, smtputf8=smtputf8)
    return PreparedMessage(
        sender=sender,
        recipients=tuple(recipients),
        data=data,
        smtputf8=smtputf8,
        eight_bit=has_8bit(data),
    )
