"""
One-shot helpers: connect, send one message, quit.
"""

from __future__ import annotations

from collections.abc import Sequence

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime, IStreamClientEndpoint

from txsmtpclient.client import SMTP
from txsmtpclient.commands import message_bytes
from txsmtpclient.errors import SMTPException
from txsmtpclient.protocol import DEFAULT_TIMEOUTS, Timeouts
from txsmtpclient.reply import Reply
from txsmtpclient.transaction import Envelope

__all__ = ["sendmail"]


def sendmail(
    host: str | IStreamClientEndpoint,
    from_addr: str,
    to_addrs: str | Sequence[str],
    msg: str | bytes,
    *,
    port: int | None = None,
    mail_options: Sequence[str] = (),
    rcpt_options: Sequence[str] = (),
    local_hostname: str | None = None,
    timeout: Timeouts | float | None = DEFAULT_TIMEOUTS,
    reactor: IReactorTime | None = None,
) -> Deferred[dict[str, Reply]]:
    """
    Connect to ``host``, send one message, and quit.

    The arguments are those of :class:`~txsmtpclient.SMTP` and its
    :meth:`~txsmtpclient.SMTP.sendmail`.  A failure of QUIT after the
    message was accepted does not fail the call: the message was sent.

    :returns: a Deferred firing with the refused recipients
        (``{address: reply}``).
    :raises SMTPArgumentError: (at once) for bad arguments.
    :raises SMTPException: (through the Deferred) as ``SMTP.sendmail``, or
        for the connection.
    """
    # Check everything before connecting.
    Envelope.check(from_addr, to_addrs, mail_options, rcpt_options)
    message_bytes(msg)
    smtp = SMTP(local_hostname=local_hostname, timeout=timeout, reactor=reactor)

    async def run() -> dict[str, Reply]:
        await smtp.connect(host, port)
        try:
            refused = await smtp.sendmail(from_addr, to_addrs, msg, mail_options, rcpt_options)
        except BaseException:
            await smtp.close()
            raise
        try:
            await smtp.quit()
        except SMTPException:
            await smtp.close()
        return refused

    return Deferred.fromCoroutine(run())
