"""
:class:`LMTP`: the Local Mail Transfer Protocol client (RFC 2033).
"""

from __future__ import annotations

from typing import ClassVar

from twisted.internet.defer import Deferred, fail
from twisted.internet.endpoints import UNIXClientEndpoint
from twisted.internet.interfaces import (
    IStreamClientEndpoint,
)

from txsmtpclient.client import SMTP
from txsmtpclient.commands import check_argument
from txsmtpclient.errors import SMTPNotSupportedError, SMTPRecipientsRefused
from txsmtpclient.reply import Reply
from txsmtpclient.transaction import Refused

__all__ = ["LMTP"]


class LMTP(SMTP):
    """
    A Local Mail Transfer Protocol client (RFC 2033): LHLO instead of EHLO,
    and after the message one reply per accepted recipient, so each
    recipient's delivery is reported on its own.

    ``connect`` also takes a Unix socket path (a host starting with "/"),
    as smtplib's LMTP does.  :meth:`sendmail` fires with the recipients
    refused at RCPT or at delivery, and fails with
    :class:`SMTPRecipientsRefused` when none was delivered.
    """

    default_port: ClassVar[int] = 2003
    ehlo_msg: ClassVar[str] = "LHLO"

    def connect(
        self, host: str | IStreamClientEndpoint = "localhost", port: int | None = None
    ) -> Deferred[Reply]:
        """
        As :meth:`SMTP.connect`; a host starting with "/" is a Unix socket.
        """
        if isinstance(host, str) and host.startswith("/"):
            check_argument(host, "host")
            host = UNIXClientEndpoint(self._reactor, host)
        return super().connect(host, port)

    def helo(self, name: str | None = None) -> Deferred[Reply]:
        """
        LMTP has no HELO (RFC 2033 section 4.1): fails with
        :class:`SMTPNotSupportedError`.
        """
        return fail(SMTPNotSupportedError("LMTP has no HELO; use ehlo(), which says LHLO"))

    def _final_reply_count(self, accepted: int) -> int:
        return accepted

    async def _judge_final(
        self, accepted: list[str], refused: dict[str, Reply], finals: list[Reply]
    ) -> Refused:
        refused = dict(refused)
        for recipient, reply in zip(accepted, finals, strict=True):
            if reply.code != 250:
                refused[recipient] = reply
        if all(r in refused for r in accepted):
            # No RSET: the final dot ended the transaction.
            raise SMTPRecipientsRefused(refused)
        return Refused.with_replies(refused, finals)
