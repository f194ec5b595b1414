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

from txsmtpclient._body import Body, BodySource, body_source
from txsmtpclient._endpoints import parse_relay
from txsmtpclient._sendargs import envelope_for_call, message_for_call
from txsmtpclient._tls import TLSPolicy
from txsmtpclient.client import SMTP, SMTP_SSL
from txsmtpclient.errors import SMTPArgumentError, SMTPException
from txsmtpclient.pool import SMTPConnectionPool
from txsmtpclient.protocol import DEFAULT_TIMEOUTS, Timeouts
from txsmtpclient.reply import Reply
from txsmtpclient.transaction import Envelope

if TYPE_CHECKING:
    from txsmtpclient.dkim import DKIMSigner

__all__ = ["send_message", "sendmail"]


def sendmail(
    host: str | IStreamClientEndpoint,
    from_addr: str | None = None,
    to_addrs: str | Sequence[str] | None = None,
    msg: Body | None = None,
    mail_options: Sequence[str] = (),
    rcpt_options: Sequence[str] = (),
    *,
    dsn_ret: str | None = None,
    dsn_envid: str | None = None,
    dsn_notify: str | Sequence[str] | None = None,
    dsn_orcpt: bool = False,
    dkim: DKIMSigner | Sequence[DKIMSigner] | None = None,
    envelope: Envelope | None = None,
    port: int | None = None,
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
) -> Deferred[dict[str, Reply]]:
    """
    Connect to ``host``, send one message, and quit.

    After ``host``, the arguments up to ``envelope`` are
    :meth:`SMTP.sendmail <txsmtpclient.SMTP.sendmail>`'s; the rest are
    :class:`~txsmtpclient.SMTP`'s, ``implicit_tls`` connects with
    :class:`~txsmtpclient.SMTP_SSL` (port 465) instead, and ``username``
    with ``password`` log in first (over TLS unless
    ``allow_plaintext_auth``).  A failure of QUIT after the message was
    accepted does not fail the call: the message was sent.

    With ``pool``, the message goes over one of the pool's connections
    (reused, not closed), and ``host`` (with ``port``) must name the pool's
    relay, in any spelling; the connection options are then the pool's own.

    :returns: a Deferred firing with the refused recipients
        (``{address: reply}``).
    :raises SMTPArgumentError: (at once) for bad arguments, a malformed
        host, or a host that is not the pool's relay.
    :raises SMTPException: (through the Deferred) as ``SMTP.sendmail``, or
        for the connection (:class:`SMTPServerDisconnected`, temporary, when
        it is refused or the host is unknown).
    """
    # Check everything before connecting.
    checked = envelope_for_call(
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
    source = body_source(msg)  # type: ignore[arg-type]
    if (username is None) != (password is None):
        raise TypeError("username and password go together")
    if pool is not None:
        if not pool.serves(host, port):
            raise SMTPArgumentError(f"host {host!r} is not the pool's relay {str(pool.relay)!r}")
        # Checked once: the pool takes the checked values as they are.
        return pool._send(checked, source)
    parse_relay(host, port)  # a malformed host is refused now, not once connecting
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
    return Deferred.fromCoroutine(_one_shot(smtp, host, port, username, password, checked, source))


async def _one_shot(
    smtp: SMTP,
    host: str | IStreamClientEndpoint,
    port: int | None,
    username: str | None,
    password: str | None,
    envelope: Envelope,
    source: BodySource,
) -> dict[str, Reply]:
    await smtp.connect(host, port)
    try:
        if username is not None and password is not None:
            await smtp.login(username, password)
        refused = await smtp._send_checked(envelope, source)
    except BaseException:
        await smtp.close()
        raise
    try:
        await smtp.quit()
    except SMTPException:
        await smtp.close()
    return refused


def send_message(
    host: str | IStreamClientEndpoint,
    msg: Message,
    from_addr: str | None = None,
    to_addrs: str | Sequence[str] | None = None,
    mail_options: Sequence[str] = (),
    rcpt_options: Sequence[str] = (),
    *,
    dsn_ret: str | None = None,
    dsn_envid: str | None = None,
    dsn_notify: str | Sequence[str] | None = None,
    dsn_orcpt: bool = False,
    dkim: DKIMSigner | Sequence[DKIMSigner] | None = None,
    envelope: Envelope | None = None,
    port: int | None = None,
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
) -> Deferred[dict[str, Reply]]:
    """
    Connect to ``host``, send an :class:`email.message.Message` as
    :meth:`SMTP.send_message` does (sender and recipients from the headers
    unless given, ``Bcc`` stripped, SMTPUTF8 when needed), and quit.  The
    other arguments are those of :func:`sendmail`.

    :raises SMTPArgumentError: when no sender or recipient can be found.
    :raises ValueError: for more than one ``Resent-`` block.
    """
    checked, data = message_for_call(
        msg,
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
    return sendmail(
        host,
        msg=data,
        envelope=checked,
        port=port,
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
    )
