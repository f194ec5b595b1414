"""
Every exception txsmtpclient raises.

The family mirrors :mod:`smtplib` name for name, and each class subclasses
smtplib's class of the same name, so code written to catch smtplib's errors
keeps working.  Two kinds of fault are kept apart:

* misuse by the caller (a wrong type, CR/LF/NUL in an argument, a non-ASCII
  address the server cannot take) raises :class:`SMTPArgumentError` or
  :class:`TypeError` synchronously, before a byte is written;
* a misbehaving or refusing server fails the returned Deferred with a
  :class:`SMTPResponseException` (carrying the server's :class:`Reply`) or
  :class:`SMTPProtocolError`, and the connection is closed where the session
  cannot continue.

Every error has a ``temporary`` flag: true where trying again later may
succeed (a 4xx reply, a dropped connection, a timeout).  The spool uses it to
decide between retrying and failing a message.
"""

from __future__ import annotations

import smtplib
from collections.abc import Mapping

from txsmtpclient._checks import ArgumentError
from txsmtpclient.reply import Reply

__all__ = [
    "DKIMError",
    "DKIMKeyError",
    "SMTPAmbiguousDelivery",
    "SMTPArgumentError",
    "SMTPAuthenticationError",
    "SMTPConnectError",
    "SMTPDataError",
    "SMTPDestinationDeferred",
    "SMTPException",
    "SMTPHeloError",
    "SMTPLocalProtocolError",
    "SMTPNotSupportedError",
    "SMTPProtocolError",
    "SMTPRecipientsRefused",
    "SMTPResponseException",
    "SMTPRoutingError",
    "SMTPSenderRefused",
    "SMTPServerDisconnected",
    "SMTPTLSError",
    "SMTPTimeoutError",
]


class SMTPException(smtplib.SMTPException):
    """
    Base class of every txsmtpclient error.
    """

    @property
    def temporary(self) -> bool:
        """
        Whether a later attempt at the same thing may succeed.
        """
        return False


class SMTPArgumentError(SMTPException, ArgumentError):
    """
    A caller passed a value that cannot be sent: CR, LF, NUL or another
    control character in a command argument, a non-ASCII address for a server
    without SMTPUTF8, a ``str`` message with non-ASCII characters, an empty
    recipient list, or a malformed host or port.  Raised before anything is
    written to the connection.  A ``ValueError``, and the client's form of
    the light checks' :class:`txsmtpclient._checks.ArgumentError`.
    """


class SMTPLocalProtocolError(SMTPException, RuntimeError):
    """
    The client tried a step the session's state does not allow (a command
    during the TLS handshake, message data before DATA's 354): a bug in the
    calling code, raised before anything is written.  See
    :data:`txsmtpclient.states.SEND_TRANSITIONS`.
    """


class SMTPNotSupportedError(SMTPException, smtplib.SMTPNotSupportedError):
    """
    The command or option asked for is not supported by the server (or is
    refused by policy, such as ``tls="required"`` against a server without
    STARTTLS).

    :ivar enhanced_code: the RFC 3463 status a bounce for it should carry,
        when a standard names one (RFC 8689's ``"5.7.30"``, REQUIRETLS
        support required); ``None`` otherwise.
    """

    enhanced_code: str | None = None


class SMTPServerDisconnected(SMTPException, smtplib.SMTPServerDisconnected, ConnectionError):
    """
    The connection is gone: the server closed it, it was never made, it was
    aborted, or it was closed after an earlier fatal error.
    """

    @property
    def temporary(self) -> bool:
        return True


class SMTPTLSError(SMTPNotSupportedError, SMTPServerDisconnected):
    """
    TLS could not be set up (the handshake failed, the certificate did not
    verify, or ``tls="required"`` and STARTTLS failed); the connection is
    closed and nothing more was sent in the clear.
    """


class SMTPTimeoutError(SMTPServerDisconnected, TimeoutError):
    """
    The server did not answer within the stage's timeout; the connection has
    been aborted.

    :ivar stage: the name of the stage that timed out (``"greeting"``,
        ``"mail"``, ``"data_end"`` ...), see :class:`txsmtpclient.Timeouts`.
    """

    def __init__(self, message: str, stage: str = "") -> None:
        super().__init__(message)
        self.stage = stage


class SMTPProtocolError(SMTPServerDisconnected):
    """
    The server broke the protocol: a malformed reply, a reply line or reply
    over the length limit, or a reply nobody asked for.  The connection has
    been dropped.
    """

    @property
    def temporary(self) -> bool:
        return True


class SMTPAmbiguousDelivery(SMTPServerDisconnected):
    """
    The end of the message (its final dot, or ``BDAT ... LAST``) was written,
    but the connection failed before the server's reply to it arrived: the
    server may or may not have taken the message (RFC 5321 section 6.1).
    Never report such a message as sent; a queue that sends it again may
    deliver it twice (RFC 1047).  ``__cause__`` holds what broke.
    """


class SMTPRoutingError(SMTPException):
    """
    No server could be found for a recipient's domain in direct delivery:
    a null MX (RFC 7505), a domain that does not exist or has no address
    (permanent), or a DNS failure or timeout (temporary).
    """

    def __init__(self, message: str, *, temporary: bool) -> None:
        super().__init__(message)
        self._temporary = temporary

    @property
    def temporary(self) -> bool:
        return self._temporary


class SMTPResponseException(SMTPException, smtplib.SMTPResponseException):
    """
    The server answered with an error reply.

    :ivar smtp_code: the reply code, as in smtplib.
    :ivar smtp_error: the reply text as ``bytes``, lines joined by ``\\n``, as
        in smtplib.
    :ivar reply: the whole :class:`Reply`, with its enhanced status code.
    """

    def __init__(self, code: int, msg: bytes | str) -> None:
        if isinstance(msg, str):
            msg = msg.encode("utf-8", "surrogateescape")
        smtplib.SMTPResponseException.__init__(self, code, msg)
        self.smtp_code: int = code
        self.smtp_error: bytes = msg
        self.reply = Reply(code, msg)

    @property
    def enhanced_code(self) -> str | None:
        """
        The RFC 3463 enhanced status code of the reply (``"5.1.1"``), if any.
        """
        return self.reply.enhanced_code

    @property
    def temporary(self) -> bool:
        return 400 <= self.smtp_code < 500

    def __str__(self) -> str:
        return f"({self.smtp_code}, {self.smtp_error.decode('utf-8', 'replace')!r})"


class SMTPSenderRefused(SMTPResponseException, smtplib.SMTPSenderRefused):
    """
    The server refused the envelope sender (the ``MAIL`` command).

    :ivar sender: the refused address.
    """

    def __init__(self, code: int, msg: bytes | str, sender: str) -> None:
        super().__init__(code, msg)
        self.sender = sender
        self.args = (code, self.smtp_error, sender)


class SMTPRecipientsRefused(SMTPException, smtplib.SMTPRecipientsRefused):
    """
    The server refused every recipient.

    :ivar recipients: ``{address: (code, message)}`` for each refusal, as in
        smtplib; the values are :class:`Reply` tuples.
    """

    def __init__(self, recipients: Mapping[str, tuple[int, bytes]]) -> None:
        self.recipients: dict[str, Reply] = {  # type: ignore[assignment]
            address: Reply(code, message) for address, (code, message) in recipients.items()
        }
        self.args = (self.recipients,)  # type: ignore[assignment]

    @property
    def temporary(self) -> bool:
        """
        True when every refusal was temporary (4xx).
        """
        return all(400 <= reply.code < 500 for reply in self.recipients.values())


class SMTPDataError(SMTPResponseException, smtplib.SMTPDataError):
    """
    The server refused the message data (``DATA``, its final dot, or ``BDAT``).
    """


class SMTPConnectError(SMTPResponseException, smtplib.SMTPConnectError):
    """
    The server's greeting was not 220.
    """


class SMTPHeloError(SMTPResponseException, smtplib.SMTPHeloError):
    """
    The server refused both ``EHLO`` and ``HELO``.
    """


class SMTPAuthenticationError(SMTPResponseException, smtplib.SMTPAuthenticationError):
    """
    The server refused the credentials (or the ``AUTH`` exchange).
    """


class DKIMError(SMTPArgumentError):
    """
    A message cannot be DKIM-signed as asked (no ``From`` header, a header
    block that does not parse, one too large to hold): raised before
    anything of the message is sent.
    """


class DKIMKeyError(DKIMError):
    """
    A DKIM private key cannot be used: unreadable, not RSA or Ed25519,
    encrypted, or an RSA key under 2048 bits (RFC 8301 section 3.2).
    """


class SMTPDestinationDeferred(SMTPException):
    """
    Direct delivery did not try a destination (a recipient domain) because
    it is backed off: a 421, a 4.7.x rate-limit reply or failed connections
    slowed it down, and it opens again at :attr:`until`.  Temporary; a queue
    should wait until then rather than count a failed attempt.

    :ivar destination: the recipient domain.
    :ivar until: when the destination opens again (the clock's seconds).
    """

    def __init__(self, destination: str, until: float, reason: str = "") -> None:
        why = f" after {reason}" if reason else ""
        super().__init__(f"451 4.4.5 destination {destination} is backed off{why}")
        self.destination = destination
        self.until = until

    @property
    def temporary(self) -> bool:
        return True
