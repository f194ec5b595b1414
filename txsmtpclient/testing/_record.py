"""
What a scripted test server saw: every session's bytes, byte-exact, and
every message it accepted.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["ReceivedMessage", "ServerSession"]


@dataclass(frozen=True, slots=True)
class ReceivedMessage:
    """
    One message the server accepted (it answered the end of it with 2xx).

    :ivar mail_from: the reverse-path without angle brackets.
    :ivar mail_args: the MAIL command's argument as sent
        (``"FROM:<a@b> SIZE=10"``).
    :ivar rcpt_tos: the accepted forward-paths, in order.
    :ivar rcpt_args: each accepted RCPT's argument as sent.
    :ivar content: the message after dot-unstuffing, CRLFs kept, without the
        final ``.`` line; or the BDAT chunks joined.
    :ivar via: ``"DATA"`` or ``"BDAT"``.
    :ivar helo: the name the client gave in EHLO, HELO or LHLO.
    :ivar tls: whether the session was under TLS.
    :ivar auth_user: the user the session authenticated as, if any.
    """

    mail_from: str
    mail_args: str
    rcpt_tos: tuple[str, ...]
    rcpt_args: tuple[str, ...]
    content: bytes
    via: str
    helo: str | None
    tls: bool
    auth_user: str | None

    @property
    def mail_options(self) -> tuple[str, ...]:
        """
        The MAIL parameters (``("SIZE=10", "BODY=8BITMIME")``).
        """
        return tuple(self.mail_args.split()[1:])


@dataclass(slots=True)
class ServerSession:
    """
    One client connection, as the server saw it.

    :ivar received: every byte the client sent (decrypted under TLS), in order.
    :ivar sent: every byte the server sent, in order.
    :ivar commands: each command line the client sent, without CRLF (message
        content and BDAT chunks not included; AUTH responses included as sent,
        since these are test credentials).
    :ivar messages: the messages accepted in this session.
    :ivar closed: whether the connection is closed.
    """

    received: bytearray = field(default_factory=bytearray)
    sent: bytearray = field(default_factory=bytearray)
    commands: list[bytes] = field(default_factory=list)
    messages: list[ReceivedMessage] = field(default_factory=list)
    closed: bool = False
    #: The client's address as the server saw it (``"127.0.0.1"``).
    peer: str | None = None
    tls: bool = False
    helo: str | None = None
    auth_user: str | None = None
