"""
One-shot helpers: connect, send one message, quit.
"""

from __future__ import annotations

from collections.abc import Sequence
from email.message import Message
from typing import TYPE_CHECKING

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IOpenSSLClientConnectionCreator,
    IReactorTime,
    IStreamClientEndpoint,
)

from txsmtpclient._body import Body, body_source
from txsmtpclient._tls import TLSPolicy
from txsmtpclient.client import SMTP, SMTP_SSL
from txsmtpclient.errors import SMTPException
from txsmtpclient.message import prepare_message
from txsmtpclient.pool import SMTPConnectionPool
from txsmtpclient.protocol import DEFAULT_TIMEOUTS, Timeouts
from txsmtpclient.reply import Reply
from txsmtpclient.transaction import Envelope

if TYPE_CHECKING:
    from txsmtpclient.dkim import DKIMSigner

__all__ = ["send_message", "sendmail"]


def sendmail(
    host: str | IStreamClientEndpoint,
    from_addr: str,
    to_addrs: str | Sequence[str],
    msg: Body,
    *,
    port: int | None = None,
    mail_options: Sequence[str] = (),
    rcpt_options: Sequence[str] = (),
    local_hostname: str | None = None,
    timeout: Timeouts | float | None = DEFAULT_TIMEOUTS,
    reactor: IReactorTime | None = None,
    tls: TLSPolicy = "opportunistic",
    tls_options: IOpenSSLClientConnectionCreator | None = None,
    implicit_tls: bool = False,
    username: str | None = None,
    password: str | None = None,
    allow_plaintext_auth: bool = False,
    pool: SMTPConnectionPool | None = None,
    dkim: DKIMSigner | Sequence[DKIMSigner] | None = None,
) -> Deferred[dict[str, Reply]]:
    """
    Connect to ``host``, send one message, and quit.

    The arguments are those of :class:`~txsmtpclient.SMTP` and its
    :meth:`~txsmtpclient.SMTP.sendmail`; ``implicit_tls`` connects with
    :class:`~txsmtpclient.SMTP_SSL` (port 465) instead, and ``username`` with
    ``password`` log in first (over TLS unless ``allow_plaintext_auth``).
    A failure of QUIT after the message was accepted does not fail the
    call: the message was sent.

    With ``pool``, the message goes over one of the pool's connections
    (reused, not closed), and ``host`` must be the pool's relay; the
    connection options are then the pool's own.  ``dkim`` signs the
    message as it is sent (see :mod:`txsmtpclient.dkim`).

    :returns: a Deferred firing with the refused recipients
        (``{address: reply}``).
    :raises SMTPArgumentError: (at once) for bad arguments.
    :raises SMTPException: (through the Deferred) as ``SMTP.sendmail``, or
        for the connection.
    """
    # Check everything before connecting.
    Envelope.check(from_addr, to_addrs, mail_options, rcpt_options, dkim=dkim)
    body_source(msg)  # type check only: the client wraps it again
    if (username is None) != (password is None):
        raise TypeError("username and password go together")
    if pool is not None:
        if host != pool.host:
            raise ValueError(f"host {host!r} is not the pool's relay {pool.host!r}")
        return pool.sendmail(from_addr, to_addrs, msg, mail_options, rcpt_options, dkim=dkim)
    smtp: SMTP
    if implicit_tls:
        smtp = SMTP_SSL(
            local_hostname=local_hostname,
            timeout=timeout,
            reactor=reactor,
            context=tls_options,
            allow_plaintext_auth=allow_plaintext_auth,
        )
    else:
        smtp = SMTP(
            local_hostname=local_hostname,
            timeout=timeout,
            reactor=reactor,
            tls=tls,
            tls_options=tls_options,
            allow_plaintext_auth=allow_plaintext_auth,
        )

    async def run() -> dict[str, Reply]:
        await smtp.connect(host, port)
        try:
            if username is not None and password is not None:
                await smtp.login(username, password)
            refused = await smtp.sendmail(
                from_addr, to_addrs, msg, mail_options, rcpt_options, dkim=dkim
            )
        except BaseException:
            await smtp.close()
            raise
        try:
            await smtp.quit()
        except SMTPException:
            await smtp.close()
        return refused

    return Deferred.fromCoroutine(run())


def send_message(
    host: str | IStreamClientEndpoint,
    msg: Message,
    from_addr: str | None = None,
    to_addrs: str | Sequence[str] | None = None,
    *,
    port: int | None = None,
    mail_options: Sequence[str] = (),
    rcpt_options: Sequence[str] = (),
    local_hostname: str | None = None,
    timeout: Timeouts | float | None = DEFAULT_TIMEOUTS,
    reactor: IReactorTime | None = None,
    tls: TLSPolicy = "opportunistic",
    tls_options: IOpenSSLClientConnectionCreator | None = None,
    implicit_tls: bool = False,
    username: str | None = None,
    password: str | None = None,
    allow_plaintext_auth: bool = False,
    pool: SMTPConnectionPool | None = None,
    dkim: DKIMSigner | Sequence[DKIMSigner] | None = None,
) -> Deferred[dict[str, Reply]]:
    """
    Connect to ``host``, send an :class:`email.message.Message` as
    :meth:`SMTP.send_message` does (sender and recipients from the headers
    unless given, ``Bcc`` stripped, SMTPUTF8 when needed), and quit.  The
    keyword arguments are those of :func:`sendmail`.

    :raises SMTPArgumentError: when no sender or recipient can be found.
    :raises ValueError: for more than one ``Resent-`` block.
    """
    prepared = prepare_message(msg, from_addr, to_addrs)
    return sendmail(
        host,
        prepared.sender,
        prepared.recipients,
        prepared.data,
        port=port,
        mail_options=prepared.options_with(mail_options),
        rcpt_options=rcpt_options,
        local_hostname=local_hostname,
        timeout=timeout,
        reactor=reactor,
        tls=tls,
        tls_options=tls_options,
        implicit_tls=implicit_tls,
        username=username,
        password=password,
        allow_plaintext_auth=allow_plaintext_auth,
        pool=pool,
        dkim=dkim,
    )
