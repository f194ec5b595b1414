"""
smtplib's one-command methods of :class:`~txsmtpclient.SMTP` (HELP, RSET,
NOOP, VRFY, EXPN, MAIL, RCPT, DATA, QUIT) and close().
"""

from __future__ import annotations

from collections.abc import Sequence

from twisted.internet.defer import Deferred

from txsmtpclient._body import Body, body_source
from txsmtpclient._client_security import Security
from txsmtpclient._data import send_data
from txsmtpclient.commands import (
    check_argument,
    check_options,
    encode_command,
    quote_address,
)
from txsmtpclient.errors import (
    SMTPDataError,
    SMTPException,
    SMTPNotSupportedError,
)
from txsmtpclient.reply import Reply
from txsmtpclient.session import Command, Kind

__all__ = ["Commands"]


class Commands(Security):
    """
    One method per SMTP command, each a queued call returning a Deferred.
    """

    def ehlo_or_helo_if_needed(self) -> Deferred[None]:
        """
        Say EHLO, or HELO when EHLO is refused, unless one was said already.

        :raises SMTPHeloError: when the server refuses both.
        """
        return self._call(lambda: self._ehlo_or_helo_if_needed())

    def help(self, args: str = "") -> Deferred[bytes]:
        """
        Ask for ``HELP``.

        :returns: a Deferred firing with the reply's message, as smtplib.
        """
        check_argument(args, "args")

        async def op() -> bytes:
            return (await self._command(encode_command("HELP", args))).message

        return self._call(op)

    # -- smtplib's low-level escape hatch ------------------------------------------

    def putcmd(self, cmd: str, args: str = "") -> Deferred[None]:
        """
        smtplib's ``putcmd``: write one command without waiting for its
        reply, which :meth:`getreply` then returns.  For commands
        txsmtpclient has no method for; :meth:`docmd` does both at once.

        :raises SMTPArgumentError: (at once) for control characters, or
            non-ASCII without the server's SMTPUTF8.
        """
        check_argument(cmd, "cmd")
        check_argument(args, "args")

        async def op() -> None:
            line = encode_command(cmd, args, utf8=self.has_option("smtputf8"))
            self._put(line)

        return self._call(op)

    def send(self, s: str | bytes) -> Deferred[None]:
        """
        smtplib's ``send``: write one raw command line (CRLF added when
        missing) whose single reply :meth:`getreply` returns.

        :raises SMTPArgumentError: (at once) for anything but one line: a CR,
            LF or NUL inside it is never sent.
        """
        data = s.encode("utf-8") if isinstance(s, str) else bytes(s)
        line = data[:-2] if data.endswith(b"\r\n") else data
        check_argument(line.decode("utf-8", "replace"), "s")

        async def op() -> None:
            self._put(line + b"\r\n")

        return self._call(op)

    def getreply(self) -> Deferred[Reply]:
        """
        smtplib's ``getreply``: the reply to the oldest command written by
        :meth:`putcmd` or :meth:`send` and not yet read.

        :raises SMTPException: when no such command is waiting.
        """

        async def op() -> Reply:
            if not self._put_replies:
                raise SMTPException(
                    "getreply() has no command to read a reply for: putcmd() first"
                )
            return await self._put_replies.popleft()

        return self._call(op)

    def _put(self, line: bytes) -> None:
        reply = self._connection().send(Command(Kind.COMMAND, line))
        # Read by getreply(); a failure stays in the Deferred until then.
        self._put_replies.append(reply)

    def rset(self) -> Deferred[Reply]:
        """
        Send ``RSET``: abandon the current mail transaction.
        """
        return self._call(lambda: self._command(b"RSET\r\n", Kind.RSET))

    def noop(self) -> Deferred[Reply]:
        """
        Send ``NOOP``.
        """
        return self._call(lambda: self._command(b"NOOP\r\n"))

    def _address_command(self, verb: str, address: str) -> Deferred[Reply]:
        check_argument(address, "address")
        # smtplib sends the bare address, without angle brackets.
        bare = quote_address(address)[1:-1]

        async def op() -> Reply:
            line = encode_command(verb, bare, utf8=self.has_option("smtputf8"))
            return await self._command(line)

        return self._call(op)

    def verify(self, address: str) -> Deferred[Reply]:
        """
        Ask the server about ``address`` with ``VRFY``.

        :returns: a Deferred firing with the reply (250 with the full
            address when valid; 4xx/5xx otherwise; many servers say 252).
        """
        return self._address_command("VRFY", address)

    vrfy = verify

    def expn(self, address: str) -> Deferred[Reply]:
        """
        Expand a mailing list with ``EXPN``.
        """
        return self._address_command("EXPN", address)

    def mail(self, sender: str, options: Sequence[str] = ()) -> Deferred[Reply]:
        """
        Send ``MAIL FROM:`` with ``options`` (sent only after a successful
        EHLO, as smtplib).

        :returns: a Deferred firing with the reply, whatever its code.
        :raises SMTPNotSupportedError: for SMTPUTF8 or a non-ASCII address
            when the server lacks SMTPUTF8.
        """
        return self._envelope_command("MAIL", "FROM:", sender, options, Kind.MAIL)

    def rcpt(self, recip: str, options: Sequence[str] = ()) -> Deferred[Reply]:
        """
        Send ``RCPT TO:`` with ``options``.

        :returns: a Deferred firing with the reply, whatever its code.
        """
        return self._envelope_command("RCPT", "TO:", recip, options, Kind.RCPT)

    def _envelope_command(
        self, verb: str, prefix: str, address: str, options: Sequence[str], kind: Kind
    ) -> Deferred[Reply]:
        quoted = quote_address(address)
        checked = check_options(options, f"{verb.lower()} option")

        async def op() -> Reply:
            opts = checked if self.does_esmtp else ()
            utf8 = not quoted.isascii() or any(o.upper() == "SMTPUTF8" for o in opts)
            if utf8 and not self.has_option("smtputf8"):
                raise SMTPNotSupportedError("SMTPUTF8 is not supported by the server")
            tail = "".join(" " + o for o in opts)
            line = encode_command(verb, f"{prefix}{quoted}{tail}", utf8=utf8)
            return await self._command(line, kind)

        return self._call(op)

    def data(self, msg: Body) -> Deferred[Reply]:
        """
        Send ``DATA`` and then the message: line endings made CRLF, lines
        starting with "." doubled, the final ``CRLF.CRLF`` added.

        :param msg: ``bytes``, an ASCII ``str``, a binary file, an iterable
            or async iterable of ``bytes``, or an ``IBodyProducer``; read
            chunk by chunk under flow control.
        :returns: a Deferred firing with the reply to the final dot,
            whatever its code.
        :raises SMTPDataError: when the reply to DATA is not 354.
        """
        source = body_source(msg)

        async def op() -> Reply:
            proto = self._connection()
            # A stream's first chunk is read (and its type checked) first.
            await source.prime(self._reactor)
            reply = await proto.send(Command(Kind.DATA, b"DATA\r\n"))
            if reply.code != 354:
                raise SMTPDataError(reply.code, reply.message)
            return (await send_data(proto, source, self._reactor))[0]

        return self._call(op)

    # -- ending ---------------------------------------------------------------------

    def quit(self) -> Deferred[Reply]:
        """
        Send ``QUIT`` and close the connection.

        :returns: a Deferred firing with the reply to QUIT.
        """

        async def op() -> Reply:
            proto = self._connection()
            try:
                reply = await proto.send(Command(Kind.QUIT, b"QUIT\r\n"))
            finally:
                proto.close()
                self._reset_session()
            await proto.closed
            return reply

        return self._call(op)

    def close(self) -> Deferred[None]:
        """
        Close the connection without QUIT, once the calls queued before
        this one have finished.

        :returns: a Deferred firing with ``None`` once the connection is gone.
        """

        async def op() -> None:
            proto = self._proto
            self._reset_session()
            if proto is not None:
                proto.close()
                await proto.closed

        return self._call(op)
