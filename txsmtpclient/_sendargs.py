"""
What a send call's arguments become: the one place where ``sendmail`` and
``send_message`` (of :class:`~txsmtpclient.SMTP`, the pool and the one-shot
helpers) turn smtplib-style arguments, or ``envelope=``, into an
:class:`~txsmtpclient.transaction.Envelope`.

Sans-IO; nothing here imports Twisted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from email.message import Message
from typing import TYPE_CHECKING

from txsmtpclient.commands import check_options
from txsmtpclient.errors import SMTPArgumentError
from txsmtpclient.message import prepare_message
from txsmtpclient.transaction import DSN, Envelope

if TYPE_CHECKING:
    from txsmtpclient.dkim import DKIMSigner

__all__ = ["envelope_for_call", "message_for_call"]


def envelope_for_call(
    from_addr: str | None,
    to_addrs: str | Sequence[str] | None,
    mail_options: Sequence[str],
    rcpt_options: Sequence[str],
    dsn_ret: str | None,
    dsn_envid: str | None,
    dsn_notify: str | Sequence[str] | None,
    dsn_orcpt: bool,
    dkim: DKIMSigner | Sequence[DKIMSigner] | None,
    envelope: Envelope | None,
) -> Envelope:
    """
    The envelope a ``sendmail`` call asks for, from its arguments (the one
    place every send path turns them into an :class:`Envelope`).

    :raises TypeError: when neither ``envelope`` nor ``from_addr`` and
        ``to_addrs`` are given, or for values of the wrong type.
    :raises SMTPArgumentError: for bad values, or ``envelope`` given together
        with the arguments it replaces.
    """
    if envelope is None:
        if from_addr is None or to_addrs is None:
            raise TypeError("sendmail() needs from_addr and to_addrs, or envelope=")
        dsn = DSN.check(dsn_ret, dsn_envid, dsn_notify, dsn_orcpt)
        # As Envelope.check, one call less: this runs for every message.
        return Envelope(from_addr, to_addrs, mail_options, rcpt_options, dsn, dkim)  # type: ignore[arg-type]
    if not isinstance(envelope, Envelope):
        raise TypeError(f"envelope must be an Envelope, not {type(envelope).__name__}")
    if (
        from_addr is not None
        or to_addrs is not None
        or mail_options
        or rcpt_options
        or dsn_ret is not None
        or dsn_envid is not None
        or dsn_notify
        or dsn_orcpt
        or dkim
    ):
        raise SMTPArgumentError(
            "envelope= holds the sender, recipients, options, DSN requests and DKIM "
            "signers: give it alone, without from_addr, to_addrs, mail_options, "
            "rcpt_options, dsn_* or dkim"
        )
    return envelope


def message_for_call(
    msg: Message,
    from_addr: str | None,
    to_addrs: str | Sequence[str] | None,
    mail_options: Sequence[str],
    rcpt_options: Sequence[str],
    dsn_ret: str | None,
    dsn_envid: str | None,
    dsn_notify: str | Sequence[str] | None,
    dsn_orcpt: bool,
    dkim: DKIMSigner | Sequence[DKIMSigner] | None,
    envelope: Envelope | None,
) -> tuple[Envelope, bytes]:
    """
    What a ``send_message`` call sends: the envelope (sender and recipients
    from the headers unless given, see
    :func:`~txsmtpclient.message.prepare_message`, with the MAIL parameters
    the message needs added) and the message's bytes (``Bcc`` stripped).

    :raises SMTPArgumentError: as :func:`envelope_for_call`, or when no
        sender or recipient can be found.
    :raises ValueError: for more than one ``Resent-`` block.
    """
    if envelope is not None:
        given = envelope_for_call(
            from_addr,
            to_addrs,
            mail_options,
            rcpt_options,
            dsn_ret,
            dsn_envid,
            dsn_notify,
            dsn_orcpt,
            dkim,
            envelope,
        )
        prepared = prepare_message(msg, given.sender, given.recipients)
        options = prepared.options_with(given.mail_options)
        return replace(given, mail_options=options), prepared.data
    prepared = prepare_message(msg, from_addr, to_addrs)
    options = prepared.options_with(check_options(mail_options, "mail option"))
    checked = envelope_for_call(
        prepared.sender,
        prepared.recipients,
        options,
        rcpt_options,
        dsn_ret,
        dsn_envid,
        dsn_notify,
        dsn_orcpt,
        dkim,
        None,
    )
    return checked, prepared.data
